"""Loading weights into a P3D ResNet: a Keras weights file or an original checkpoint."""
import os

KERAS_WEIGHTS_SUFFIXES = (".weights.h5",)
ORIGINAL_SUFFIXES = (".pth", ".pth.tar", ".tar", ".npz", ".caffemodel")


def load_weights(model, weights):
    """Load `weights` into `model`: a `.weights.h5` file saved by Keras, or an original
    checkpoint (`.pth`, `.pth.tar`, `.npz`, `.caffemodel`) converted on the fly."""
    path = os.fspath(weights)
    if not os.path.exists(path):
        raise ValueError("weights must be None, a Keras weights file (.weights.h5) or an original checkpoint "
                         f"({', '.join(ORIGINAL_SUFFIXES)}) that exists. Received: weights={weights!r}")
    if path.endswith(KERAS_WEIGHTS_SUFFIXES):
        model.load_weights(path)
        return
    from p3d_keras.convert import load_original_weights  # noqa: PLC0415

    load_original_weights(model, path)
