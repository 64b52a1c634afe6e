"""Evaluating a P3D ResNet on TFRecord shards, as in the paper (`evaluate`; the `p3d-evaluate`
program calls it).

Clip hit@1/5 and video hit@1/5 (a video's score is the mean of its clips' scores), per-class
accuracy, a confusion matrix (JSON and PNG) and a JSON report.
"""
import json
import logging
import os

import numpy as np

from p3d_keras.core.labels import read_label_file
from p3d_keras.jobs import metrics, models
from p3d_keras.tfrecords_tools import collection

log = logging.getLogger(__name__)

PLOTS_EXTRA = "p3d_keras[plots]"  # the extra that brings matplotlib


def confusion_matrix(labels, predictions, classes):
    """`[true, predicted]` counts."""
    matrix = np.zeros((classes, classes), dtype="int64")
    np.add.at(matrix, (np.asarray(labels), np.asarray(predictions)), 1)
    return matrix


def evaluation_report(scores, labels, video_ids, class_names):
    """Hit rates, per-class video accuracy and the video-level confusion matrix."""
    report = metrics.clip_and_video_hits(scores, labels, video_ids, k=(1, 5))
    _, video_scores, video_labels = metrics.average_by_video(scores, labels, video_ids, name="scores")
    matrix = confusion_matrix(video_labels, video_scores.argmax(axis=1), len(class_names))
    per_class = {}
    for index, name in enumerate(class_names):
        total = int(matrix[index].sum())
        per_class[name] = {"videos": total, "accuracy": float(matrix[index, index] / total) if total else None}
    report.update(per_class_accuracy=per_class, classes=list(class_names), confusion_matrix=matrix.tolist())
    return report


def pyplot(path):
    """`matplotlib.pyplot` on the Agg backend, to draw `path`; None when matplotlib (the
    `p3d_keras[plots]` extra) is not installed, after one warning that `path` is not drawn and
    which extra to install."""
    try:
        import matplotlib  # noqa: PLC0415 (the optional [plots] extra)
    except ImportError:
        log.warning("%s not drawn: matplotlib is not installed (pip install '%s')", path, PLOTS_EXTRA)
        return None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 (the optional [plots] extra)

    return plt


def save_confusion_png(matrix, class_names, path):
    """Draw a labelled confusion-matrix heat map (rows: true class, columns: predicted) into `path`.

    Returns `path`, or None when matplotlib (the `p3d_keras[plots]` extra) is not installed: then
    nothing is drawn and one warning says which extra to install.
    """
    plt = pyplot(path)
    if plt is None:
        return None
    matrix = np.asarray(matrix, dtype="float64")
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.35 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=90, fontsize=7)
    ax.set_yticks(ticks, class_names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(class_names) <= 30:
        for (i, j), count in np.ndenumerate(matrix):
            if count:
                ax.text(j, i, int(count), ha="center", va="center", fontsize=7,
                        color="white" if rates[i, j] > 0.5 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def evaluate(spec, *, data, out=None, labels_file=None, num_clips=20, crops="center", batch_size=8, frame_stride=1,
             normalization=None, decoder="auto"):
    """Evaluate the network of `spec` (`models.ModelSpec`) on the shards `data` with `num_clips`
    clips per video (`crops`: "center" or "three") and return the report: clip and video hit@1/5,
    per-class accuracy, the video-level confusion matrix. With `out`, also writes
    `out/report.json` and `out/confusion_matrix.png` (the PNG needs the [plots] extra).

    labels_file: a class-name file (default: a model folder's names, else `labels.txt` beside
        the shards, else class numbers; with a model folder it must agree with the folder's).
    frame_stride, normalization, decoder, batch_size: the reader's; normalization None means the
        preset's or the modality's default. Raises ValueError when the class names do not match
        the model, or for bad shards (naming them).
    """
    names = read_label_file(labels_file) if labels_file else collection.collection_labels(data)
    loaded = models.load(spec, classes=len(names) if names else None, normalization=normalization,
                         labels_file=labels_file)
    model = loaded.model
    classes = model.output_shape[-1]
    class_names = list(loaded.metadata.class_names or names or [str(i) for i in range(classes)])
    if len(class_names) != classes:
        raise ValueError(f"Expected {classes} class names (the model's classes). Received: {len(class_names)}")
    dataset = models.clip_dataset(loaded.metadata, data, num_clips=num_clips, crops=crops, batch_size=batch_size,
                                  frame_stride=frame_stride, decoder=decoder)
    scores, clip_labels, video_ids = metrics.predict_clips(model, dataset)
    report = evaluation_report(scores, clip_labels, video_ids, class_names)
    report.update(num_clips_per_video=num_clips, crops=crops, data=data)
    if out is not None:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "report.json"), "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2, ensure_ascii=False)
        save_confusion_png(report["confusion_matrix"], class_names, os.path.join(out, "confusion_matrix.png"))
    return report
