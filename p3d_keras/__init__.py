"""p3d_keras: Pseudo-3D Residual Networks (Qiu, Yao, Mei, ICCV 2017) for Keras 3.

The layers of the code base, each a folder; a module imports only from its own layer or those
below it (`tests/test_layout.py` checks it):

    p3d_keras.cli              programs: flags -> keyword arguments -> one job (one module each)
    p3d_keras.jobs             train, evaluate, extract_features, export_model, predict_video,
                               run_demo; models.ModelSpec says which network a job runs
    p3d_keras.applications     the P3D ResNet family and its weight presets (keras.applications style)
    p3d_keras.tfrecords_tools  videos -> TFRecord shards (converter) and shards -> clips (tf.data reader)
    p3d_keras.weights          weight files: the presets' cache and downloads, original
                               checkpoints read without torch or Caffe, their name mapping
    p3d_keras.core             layers, normalization, labels, files, protowire

`applications` and `weights` never import `tfrecords_tools`, nor it them. Importing `p3d_keras`
itself imports nothing else: the converter's worker processes stay free of Keras and TensorFlow.
"""
from p3d_keras.version import __version__

__all__ = ["__version__"]
