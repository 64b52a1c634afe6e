"""Video -> sharded TFRecords, and the tf.data clip reader (installed as p3d_keras.tfrecords_tools)."""
