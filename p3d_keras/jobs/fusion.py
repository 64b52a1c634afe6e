"""Per-video scores files (what `p3d-evaluate` keeps) and their late fusion, the two-stream
convention (`fuse_folders`; the `p3d-fuse` program calls it). NumPy only.

    from p3d_keras.jobs.fusion import fuse_folders

    report = fuse_folders(["rgb_eval", "flow_eval"], weights=[1, 1.5], out="fused")

A scores file (`scores.npz` in an evaluation folder) holds `class_names [C]`, `video_ids [V]`
(sorted), `video_labels [V]` and `video_scores [V, C]` float32: the mean over a video's clips of
the network's softmax scores (logits are turned into softmax scores first, as the paper and TSN
average scores). With `p3d-evaluate --clip-scores` also `clip_scores [N, C]`, `clip_labels [N]`
and `clip_video_ids [N]`, in the reader's order (a video's clips in their temporal order).

Fusion: the fused score of a video is the weighted mean `sum(w_i * s_i) / sum(w_i)` of the
streams' scores: the ranking of the weighted sum, but still softmax scores, so a fused folder
can be fused again. Clips are fused too (and clip hit@k reported) when every stream has clip
scores with the same number of clips per video: the j-th clip of a video in one stream is paired
with its j-th clip in the others.
"""
import dataclasses
import logging
import math
import os

import numpy as np

from p3d_keras.core.checks import expect
from p3d_keras.core.files import read_npz
from p3d_keras.jobs import metrics, reports

log = logging.getLogger(__name__)

SCORES = "scores.npz"
_CLIP_KEYS = ("clip_scores", "clip_labels", "clip_video_ids")
_SHOWN = 10  # ids or names shown in an error


@dataclasses.dataclass
class Scores:
    """One evaluation's scores (see the module docstring); `source` names where they came from."""
    class_names: list
    video_ids: np.ndarray
    video_labels: np.ndarray
    video_scores: np.ndarray
    clip_scores: np.ndarray | None = None
    clip_labels: np.ndarray | None = None
    clip_video_ids: np.ndarray | None = None
    source: str = ""

    @classmethod
    def from_clips(cls, scores, labels, video_ids, class_names, *, keep_clips=False, source=""):
        """The video scores (mean over each video's clips, `metrics.average_by_video`) of clip
        `scores [N, C]`; with `keep_clips`, the clips too."""
        ids = np.array([i.decode("utf-8") if isinstance(i, bytes) else str(i) for i in np.asarray(video_ids)])
        videos, video_scores, video_labels = metrics.average_by_video(scores, labels, ids, name="scores")
        clips = dict(zip(_CLIP_KEYS, (np.asarray(scores, "float32"), np.asarray(labels, "int64"), ids)))
        return cls(list(class_names), videos, video_labels, video_scores.astype("float32"),
                   **(clips if keep_clips else {}), source=source)

    @property
    def has_clips(self):
        return self.clip_scores is not None


def write_scores(path, scores):
    """Write `scores` (`Scores`) to the .npz file `path`."""
    arrays = dict(class_names=np.array(scores.class_names), video_ids=np.asarray(scores.video_ids, dtype=str),
                  video_labels=np.asarray(scores.video_labels, "int64"),
                  video_scores=np.asarray(scores.video_scores, "float32"))
    if scores.has_clips:
        arrays.update({key: getattr(scores, key) for key in _CLIP_KEYS})
    np.savez(path, **arrays)
    return path


def read_scores(path):
    """The `Scores` of a scores file, or of an evaluation folder's `scores.npz`. Raises ValueError
    naming the file when it is missing or is not a scores file."""
    file = os.path.join(path, SCORES) if os.path.isdir(path) else path
    expect(os.path.isfile(file), f"an evaluation folder with {SCORES} (p3d-evaluate --out) or a scores file",
           path=str(path))
    needed = ("class_names", "video_ids", "video_labels", "video_scores")
    data = read_npz(file)
    missing = [key for key in needed if key not in data]
    expect(not missing, f"a scores file with {list(needed)}", file=file, missing=missing)
    arrays = {key: data[key] for key in (*needed, *_CLIP_KEYS) if key in data}
    clip_keys = [key for key in _CLIP_KEYS if key in arrays]
    expect(len(clip_keys) in (0, len(_CLIP_KEYS)), f"all of {list(_CLIP_KEYS)} or none", file=file, found=clip_keys)
    scores = Scores(**{**arrays, "class_names": arrays["class_names"].tolist()}, source=str(path))
    shape = (len(scores.video_ids), len(scores.class_names))
    expect(scores.video_scores.shape == shape and len(scores.video_labels) == shape[0],
           f"video_scores [videos, classes] = {shape} and one label per video", file=file,
           video_scores_shape=scores.video_scores.shape, video_labels=len(scores.video_labels))
    ids, counts = np.unique(scores.video_ids, return_counts=True)
    expect(np.all(counts == 1), "each video once", file=file, repeated=ids[counts > 1][:_SHOWN].tolist())
    for key in ("video_labels", "clip_labels"):
        labels = getattr(scores, key)
        bad = [] if labels is None else labels[(labels < 0) | (labels >= shape[1])]
        expect(not len(bad), f"{key.split('_')[0]} labels below {shape[1]} (the number of classes)", file=file,
               labels=sorted(set(np.asarray(bad).tolist()))[:_SHOWN])
    if clip_keys:
        expect(scores.clip_scores.shape[1:] == (shape[1],)
               and len(scores.clip_labels) == len(scores.clip_video_ids) == len(scores.clip_scores),
               f"clip_scores [clips, {shape[1]}] with one label and video id per clip", file=file,
               clip_scores_shape=scores.clip_scores.shape, clip_labels=len(scores.clip_labels),
               clip_video_ids=len(scores.clip_video_ids))
    return scores


def check_weights(weights, count):
    """`weights` as a list of `count` floats (None: all 1). Raises ValueError unless there are
    `count` of them, each finite and positive."""
    weights = [1.0] * count if weights is None else [float(w) for w in weights]
    expect(len(weights) == count and all(math.isfinite(w) and w > 0 for w in weights),
           f"{count} positive fusion weights, one per stream", weights=weights)
    return weights


def _check_same_classes(streams):
    first = streams[0]
    for other in streams[1:]:
        if other.class_names == first.class_names:
            continue
        if len(other.class_names) != len(first.class_names):
            differ = f"{len(first.class_names)} classes in {first.source}, {len(other.class_names)} in {other.source}"
        else:
            pairs = [(i, a, b) for i, (a, b) in enumerate(zip(first.class_names, other.class_names)) if a != b]
            differ = f"{len(pairs)} differ: " + ", ".join(
                f"class {i}: {a!r} in {first.source}, {b!r} in {other.source}" for i, a, b in pairs[:_SHOWN])
        raise ValueError(f"Expected the same class names, in the same order, in every stream. Received: {differ}")


def _check_same_videos(streams):
    first = streams[0]
    for other in streams[1:]:
        ids, other_ids = set(first.video_ids.tolist()), set(other.video_ids.tolist())
        if ids == other_ids:
            continue
        parts = [f"{len(missing)} videos of {a.source} missing from {b.source}: {sorted(missing)[:_SHOWN]}"
                 for a, b, missing in ((first, other, ids - other_ids), (other, first, other_ids - ids)) if missing]
        raise ValueError(f"Expected the same videos in every stream. Received: {'; '.join(parts)}")


def _by_video(scores):
    """`scores` with its videos in sorted order."""
    order = np.argsort(scores.video_ids, kind="stable")
    return scores.video_ids[order], scores.video_labels[order], scores.video_scores[order].astype("float64")


def _clips_by_video(scores):
    """`(clip scores, labels, video ids)` with the clips grouped by video in sorted order, each
    video's clips in their order."""
    order = np.argsort(scores.clip_video_ids, kind="stable")
    return (scores.clip_scores[order].astype("float64"), scores.clip_labels[order].astype("int64"),
            scores.clip_video_ids[order])


def _clip_fusion(streams, weights):
    """Fused `(clip scores, labels, video ids)`, or `(None, reason)` when the clips cannot be paired."""
    without = [s.source for s in streams if not s.has_clips]
    if without:
        return None, f"no clip scores in {without} (p3d-evaluate --clip-scores keeps them)"
    grouped = [_clips_by_video(s) for s in streams]
    if any(not np.array_equal(g[2], grouped[0][2]) for g in grouped[1:]):
        return None, "the streams have different numbers of clips per video"
    fused = sum(w * g[0] for w, g in zip(weights, grouped)) / sum(weights)
    return (fused, grouped[0][1], grouped[0][2]), None


def fuse(streams, weights=None):
    """Fuse the `Scores` of two or more `streams` (e.g. RGB and flow) with `weights` (default: all
    1): returns `(fused Scores, report)`. The report is `metrics.evaluation_report`'s of the fused
    scores (video hit@1/5, per-class accuracy, confusion matrix; clip hit@1/5 when the clips could
    be fused, else `clip_fusion` says why not) plus `streams` (source and weight of each).

    Raises ValueError when the streams' class names differ (naming the classes), their videos
    differ (naming the ids missing from each), a video's label differs between streams, or for
    bad weights."""
    expect(len(streams) >= 2, "at least two streams to fuse", streams=len(streams))
    weights = check_weights(weights, len(streams))
    _check_same_classes(streams)
    _check_same_videos(streams)
    aligned = [_by_video(s) for s in streams]
    ids, labels = aligned[0][0], aligned[0][1]
    for stream, (_, other_labels, _) in zip(streams[1:], aligned[1:]):
        differ = ids[other_labels != labels]
        expect(not len(differ), f"the same label for each video in every stream (as in {streams[0].source})",
               source=stream.source, videos_labelled_otherwise=differ[:_SHOWN].tolist())
    video_scores = sum(w * a[2] for w, a in zip(weights, aligned)) / sum(weights)
    names = streams[0].class_names
    clips, reason = _clip_fusion(streams, weights)
    if clips is None:
        report = metrics.evaluation_report(video_scores, labels, ids, names)  # one row per video
        for key in ("num_clips", "clip_hit@1", "clip_hit@5"):
            report.pop(key)
        report["clip_fusion"] = reason
        fused = Scores(names, ids, labels, video_scores.astype("float32"))
    else:
        report = metrics.evaluation_report(*clips, names)
        fused = Scores.from_clips(*clips, names, keep_clips=True)
    report["streams"] = [{"source": s.source, "weight": w} for s, w in zip(streams, weights)]
    return fused, report


def fuse_folders(folders, *, weights=None, out=None):
    """`fuse` the scores of the evaluation folders (or scores files) `folders` with `weights`.
    With `out`, writes `out/report.json`, `out/confusion_matrix.png` (the [plots] extra) and the
    fused `out/scores.npz` (which can be fused again). Returns the report."""
    fused, report = fuse([read_scores(folder) for folder in folders], weights)
    if out is not None:
        reports.write_report(out, report)
        write_scores(os.path.join(out, SCORES), fused)
    return report
