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
`p3d_keras.load_model` (`jobs.model_folder.load_model`: a model folder, a `.keras` file, a preset
or an `hf://` handle -> the network and its metadata) imports Keras on first use.
"""
from p3d_keras.version import __version__

__all__ = ["__version__", "load_model"]


def __getattr__(name):
    """`load_model`, imported on first access (PEP 562), so that `import p3d_keras` stays free of Keras."""
    if name == "load_model":
        # Late on purpose: the converter's worker processes import p3d_keras without Keras or TensorFlow.
        from p3d_keras.jobs.model_folder import load_model
        return load_model
    raise AttributeError(f"module 'p3d_keras' has no attribute {name!r}")
