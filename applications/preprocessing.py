"""`preprocess_input` and `decode_predictions` for the P3D presets, in the keras.applications style."""
import functools
import importlib.resources

import numpy as np
from keras import ops

from p3d_keras.core.labels import parse_labels
from p3d_keras.core.normalization import normalize

from .presets import get_preset


@functools.lru_cache(maxsize=None)
def load_labels(name):
    """Class names (a tuple, in index order) of a label set shipped with the package
    ("kinetics400", "sports1m"); raises ValueError for any other name."""
    try:
        text = (importlib.resources.files("p3d_keras.applications") / "labels" / f"{name}.txt").read_text("utf-8")
    except FileNotFoundError:
        raise ValueError(f"Unknown label set. Expected 'kinetics400' or 'sports1m'. "
                         f"Received: labels={name!r}") from None
    return tuple(parse_labels(text, f"the shipped label set {name!r}"))


def preprocess_input(x, preset="kinetics400", normalization=None):
    """Turn RGB (or flow) frames with values 0-255 into exactly what a preset's weights expect.

    Args:
        x: frames `[..., C]` (uint8 or float, 0-255, RGB channel order), a NumPy array or a
            backend tensor.
        preset: the weights preset whose normalisation to apply (e.g. the Caffe presets: BGR,
            0-255 minus [104, 117, 123]).
        normalization: a normalisation name from `p3d_keras.core.normalization.NORMALIZATIONS`,
            instead of a preset's.

    Returns:
        float32 frames: a NumPy array for NumPy input, else a backend tensor.
    """
    name = normalization or get_preset(preset).normalization
    if isinstance(x, (np.ndarray, list, tuple)):
        return normalize(np.asarray(x, dtype="float32"), name)
    return normalize(ops.cast(x, "float32"), name)


def decode_predictions(preds, top=5, preset="kinetics400"):
    """The `top` classes of each prediction: a list (one per sample) of
    `(class_index, class_name, score)` tuples, best first, named by the label set of `preset`.

    Raises ValueError when `preds` is not `(samples, classes)` for that label set. Example:
        decode_predictions(model.predict(clips), top=3)[0]  # the 3 best (index, name, score) of clip 0
    """
    preds = np.asarray(ops.convert_to_numpy(preds))
    labels = load_labels(get_preset(preset).labels)
    if preds.ndim != 2 or preds.shape[1] != len(labels):
        raise ValueError(f"decode_predictions expects a batch of predictions of shape (samples, {len(labels)}) "
                         f"for preset={preset!r}. Received: preds.shape={preds.shape}")
    return [top_classes(row, labels, top) for row in preds]


def top_classes(scores, labels=None, top=5):
    """`(index, label, score)` of the `top` highest of the 1-D `scores`, best first (ties: the
    lower index first); label is `labels[index]`, or the index as a string without labels."""
    scores = np.asarray(scores)
    order = np.argsort(-scores, kind="stable")[:top]
    return [(int(i), labels[i] if labels else str(i), float(scores[i])) for i in order]
