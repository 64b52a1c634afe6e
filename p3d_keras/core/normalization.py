"""Input normalisation presets: the one definition shared by the tf.data reader and
`p3d_keras.applications.preprocess_input`.

Each preset maps float pixels in [0, 255] (RGB order, or the two TV-L1 flow channels) to what a
set of weights was trained on. `normalize` works on NumPy arrays, TensorFlow tensors (inside
`tf.data`) and JAX arrays alike, using slicing and arithmetic with NumPy constants; the caller casts
to a float dtype first.

Two choices are made for TensorFlow's speed (measurements in bench/README.md): TensorFlow tensors
are reversed with `tf.reverse` rather than a negative-stride slice `x[..., ::-1]`
(`reverse_channels` dispatches on the type explicitly), and per-channel constants are tiled to
`[W, C]` when the width is static rather than broadcast from `[C]` (`per_channel`; the values are
the same).
"""
import dataclasses
import sys

import numpy as np


MODALITY_CHANNELS = {"rgb": 3, "flow": 2}
DEFAULT_NORMALIZATION = {"rgb": "caffe", "flow": "flow"}  # for a modality, when nothing else says


def modality_of_channels(channels):
    """`"rgb"` for 3 channels, `"flow"` for 2; raises ValueError for any other count."""
    for modality, count in MODALITY_CHANNELS.items():
        if channels == count:
            return modality
    raise ValueError(f"Expected a clip of 3 (RGB) or 2 (flow) channels. Received: {channels} channels")


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
        Normalization("imagenet_caffe", 3, bgr=True, mean=(103.939, 116.779, 123.68),
                      description="BGR, 0-255 minus the ImageNet mean [103.939, 116.779, 123.68] (Keras' ImageNet "
                                  "ResNets, keras.applications.resnet.preprocess_input: the inflated weights)"),
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
        x = reverse_channels(x)
    if norm.scale != 1.0:
        x = x / norm.scale
    if norm.mean:
        x = x - per_channel(norm.mean, x)
    if norm.std:
        x = x / per_channel(norm.std, x)
    return x


def reverse_channels(x):
    """`x` with its last axis reversed (RGB <-> BGR): `tf.reverse` for TensorFlow tensors, whose
    negative-stride slice is slower (see bench/README.md); `x[..., ::-1]` for NumPy (a view), JAX and other arrays."""
    tf = sys.modules.get("tensorflow")  # a TensorFlow tensor implies TensorFlow is imported
    if tf is not None and tf.is_tensor(x):
        return tf.reverse(x, axis=[-1])
    return x[..., ::-1]


def per_channel(values, x):
    """Per-channel constants as float32 to combine with `x[..., C]`: tiled to `[W, C]` when `x` has
    a static width (second-to-last axis), which TensorFlow broadcasts faster than `[C]` (see
    bench/README.md); else `[C]`."""
    row = np.asarray(values, dtype="float32")
    shape = getattr(x, "shape", None)
    try:
        width = shape[-2] if shape is not None and len(shape) >= 2 else None
    except (ValueError, TypeError):  # a TensorFlow shape of unknown rank
        width = None
    if isinstance(width, (int, np.integer)) and width > 1:
        row = np.tile(row, (int(width), 1))
    return row
