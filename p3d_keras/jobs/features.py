"""Clip features (pool5, 2048-d for the full networks) and their per-video average, the paper's
video representation (`extract_features`; the `p3d-extract-features` program calls it)."""
import logging

import numpy as np

from p3d_keras.jobs import metrics, models

log = logging.getLogger(__name__)


def features_of(model, dataset):
    """Features of every clip of an `evaluation_dataset` and their per-video mean: a dict with
    `clip_features [N, D]`, `clip_labels`, `clip_video_ids`, `video_features [V, D]`,
    `video_labels`, `video_ids`."""
    features, labels, video_ids = metrics.predict_clips(models.feature_model(model), dataset)
    videos, video_features, video_labels = metrics.average_by_video(features, labels, video_ids, name="features")
    return dict(clip_features=features.astype("float32"), clip_labels=labels, clip_video_ids=_text(video_ids),
                video_features=video_features.astype("float32"), video_labels=video_labels, video_ids=_text(videos))


def _text(ids):
    """Video ids as a unicode array (the reader yields UTF-8 bytes)."""
    return np.array([i.decode("utf-8") if isinstance(i, bytes) else str(i) for i in ids])


def feature_network(spec, normalization=None):
    """The `P3DModel` of `spec` (`models.ModelSpec`) to take features from: a saved model as it
    is; a new network without its classifier (its output is pool5)."""
    return models.load(spec, normalization=normalization,
                       **({} if spec.model else dict(include_top=False, pooling="avg")))


def extract_features(spec, *, data, out=None, num_clips=20, batch_size=8, frame_stride=1, normalization=None,
                     decoder="auto"):
    """pool5 features of `num_clips` clips per video of the shards `data` and their per-video mean
    (`features_of`), from the network of `spec` (`models.ModelSpec`: a new one is built without
    its classifier). With `out` (a path ending in `.npz`) they are also saved there. The reader
    arguments are `evaluation.evaluate`'s. Raises ValueError for a bad `out` or bad shards."""
    if out is not None and not str(out).endswith(".npz"):
        raise ValueError(f"Expected out to end in .npz. Received: out={out!r}")
    loaded = feature_network(spec, normalization)
    dataset = models.clip_dataset(loaded.metadata, data, num_clips=num_clips, batch_size=batch_size,
                                  frame_stride=frame_stride, decoder=decoder)
    result = features_of(loaded.model, dataset)
    if out is not None:
        np.savez(out, **result)
    return result
