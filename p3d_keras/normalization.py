"""Input normalisation presets: the one definition shared by the tf.data reader and
`p3d_keras.applications.preprocess_input`.

Each preset maps float pixels in [0, 255] (RGB order, or the two TV-L1 flow channels) to what a
set of weights was trained on. `normalize` uses only slicing and arithmetic, so it works on NumPy
arrays, TensorFlow tensors (inside `tf.data`) and any Keras backend tensor alike; the caller casts
to a float dtype first.
"""
import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Normalization:
    """How frames are turned into network input: `(x[..., order] / scale - mean) / std`."""

    name: str
    channels: int
    bgr: bool = False
    scale: float = 1.0
    mean: tuple = ()
    std: tuple = ()
    description: str = ""


NORMALIZATIONS = {
    n.name: n
    for n in (
        Normalization("caffe", 3, bgr=True, mean=(104.0, 117.0, 123.0),
                      description="BGR, 0-255 minus the per-channel mean [104, 117, 123] "
                                  "(the authors' Caffe weights)"),
        Normalization("imagenet", 3, scale=255.0, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                      description="RGB on [0, 1], minus ImageNet mean, divided by ImageNet std"),
        Normalization("unit", 3, scale=255.0, description="RGB on [0, 1]"),
        Normalization("flow", 2, mean=(128.0, 128.0),
                      description="two flow channels (x, y) stored as 0-255, minus 128"),
    )
}


def get_normalization(name):
    """The `Normalization` preset called `name`; raises ValueError listing the known ones."""
    if isinstance(name, Normalization):
        return name
    if name not in NORMALIZATIONS:
        raise ValueError(
            f"Unknown normalization. Expected one of {sorted(NORMALIZATIONS)}. Received: normalization={name!r}"
        )
    return NORMALIZATIONS[name]


def normalize(x, normalization):
    """Normalise float frames `x[..., C]` (values 0-255) with a preset name or `Normalization`."""
    norm = get_normalization(normalization)
    if x.shape[-1] is not None and x.shape[-1] != norm.channels:
        raise ValueError(
            f"Normalization {norm.name!r} expects {norm.channels} channels in the last axis. "
            f"Received: x.shape={tuple(x.shape)}"
        )
    if norm.bgr:
        x = x[..., ::-1]
    if norm.scale != 1.0:
        x = x / norm.scale
    if norm.mean:
        x = x - np.asarray(norm.mean, dtype="float32")
    if norm.std:
        x = x / np.asarray(norm.std, dtype="float32")
    return x
