"""Clip and video hit@k from a model's clip scores, per-class accuracy, confusion matrices and the
evaluation report of `p3d-evaluate` and `p3d-fuse` (NumPy only, so any Keras backend's outputs work).

Video scores are the mean of the scores of the video's clips, as in the paper. A clip or video is
a hit at k when its label is among its k highest scores; ties count in its favour (a hit when
fewer than k classes score strictly higher).
"""
import numpy as np


def _hits(scores, labels, k):
    label_scores = np.take_along_axis(scores, labels[:, None], axis=1)
    return (scores > label_scores).sum(axis=1) < k


def average_by_video(values, labels, video_ids, name="values"):
    """Mean of `values [N, D]` (clip scores or features) per video, as in the paper.

    Returns `(videos, video_values [V, D], video_labels [V])`, videos in sorted order. Raises if
    a video's clips disagree on the label."""
    values = np.asarray(values, dtype="float64")
    labels = np.asarray(labels).astype("int64").reshape(-1)
    video_ids = np.asarray(video_ids).reshape(-1)
    if values.ndim != 2 or not len(values) == len(labels) == len(video_ids) or not len(values):
        raise ValueError(f"Expected {name} [N, D] with N > 0 and N labels and video_ids. Received: "
                         f"{name}.shape={values.shape}, {len(labels)} labels, {len(video_ids)} video_ids")
    videos, video_index = np.unique(video_ids, return_inverse=True)
    video_values = np.zeros((len(videos), values.shape[1]))
    np.add.at(video_values, video_index, values)
    video_values /= np.bincount(video_index)[:, None]
    video_labels = np.full(len(videos), -1)
    video_labels[video_index] = labels
    if np.any(video_labels[video_index] != labels):
        bad = videos[video_index[video_labels[video_index] != labels][0]].item()
        raise ValueError(f"Expected one label per video. Received: several labels for video_id={bad!r}")
    return videos, video_values, video_labels


def clip_and_video_hits(scores, labels, video_ids, k=(1, 5)):
    """Hit rates from `scores [N, classes]`, `labels [N]` and `video_ids [N]` (one row per clip).

    Returns a dict with `clip_hit@k` and `video_hit@k` for each k (fractions in [0, 1]),
    `num_clips` and `num_videos`. Raises if a video's clips disagree on the label."""
    videos, video_scores, video_labels = average_by_video(scores, labels, video_ids, name="scores")
    scores = np.asarray(scores, dtype="float64")
    labels = np.asarray(labels).astype("int64").reshape(-1)
    result = {"num_clips": len(labels), "num_videos": len(videos)}
    for kk in k:
        result[f"clip_hit@{kk}"] = float(_hits(scores, labels, kk).mean())
        result[f"video_hit@{kk}"] = float(_hits(video_scores, video_labels, kk).mean())
    return result


def predict_clips(model, dataset):
    """Run `model.predict_on_batch` over an `evaluation_dataset`; returns `(outputs, labels,
    video_ids)` for all clips (the video ids never reach the model)."""
    outputs, labels, video_ids = [], [], []
    for clips, batch_labels, batch_ids in dataset.as_numpy_iterator():
        outputs.append(np.asarray(model.predict_on_batch(clips)))
        labels.append(batch_labels)
        video_ids.append(batch_ids)
    return np.concatenate(outputs), np.concatenate(labels), np.concatenate(video_ids)


def evaluate_clips(model, dataset, k=(1, 5)):
    """Score an `evaluation_dataset` with `model` and return `clip_and_video_hits`."""
    return clip_and_video_hits(*predict_clips(model, dataset), k)


def confusion_matrix(labels, predictions, classes):
    """`[true, predicted]` counts of `classes` classes."""
    matrix = np.zeros((classes, classes), dtype="int64")
    np.add.at(matrix, (np.asarray(labels), np.asarray(predictions)), 1)
    return matrix


def per_class_accuracy(matrix, class_names):
    """`{name: {"videos": count, "accuracy": fraction or None (no example)}}` from a confusion matrix."""
    matrix = np.asarray(matrix)
    result = {}
    for index, name in enumerate(class_names):
        total = int(matrix[index].sum())
        result[name] = {"videos": total, "accuracy": float(matrix[index, index] / total) if total else None}
    return result


def evaluation_report(scores, labels, video_ids, class_names):
    """Clip and video hit@1/5 (`clip_and_video_hits`), per-class video accuracy and the
    video-level confusion matrix of clip `scores [N, classes]`, as a JSON-ready dict."""
    report = clip_and_video_hits(scores, labels, video_ids, k=(1, 5))
    _, video_scores, video_labels = average_by_video(scores, labels, video_ids, name="scores")
    matrix = confusion_matrix(video_labels, video_scores.argmax(axis=1), len(class_names))
    report.update(per_class_accuracy=per_class_accuracy(matrix, class_names), classes=list(class_names),
                  confusion_matrix=matrix.tolist())
    return report
