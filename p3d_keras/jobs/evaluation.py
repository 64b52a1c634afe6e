"""Evaluating a P3D ResNet on TFRecord shards, as in the paper, and the `p3d-evaluate` program.

Clip hit@1/5 and video hit@1/5 (a video's score is the mean of its clips' scores), per-class
accuracy, a confusion matrix (JSON and PNG) and a JSON report.
"""
import argparse
import json
import logging
import os

import numpy as np

from p3d_keras.cli import common

log = logging.getLogger(__name__)

PLOTS_EXTRA = "p3d_keras[plots]"  # the extra that brings matplotlib


def confusion_matrix(labels, predictions, classes):
    """`[true, predicted]` counts."""
    matrix = np.zeros((classes, classes), dtype="int64")
    np.add.at(matrix, (np.asarray(labels), np.asarray(predictions)), 1)
    return matrix


def evaluation_report(scores, labels, video_ids, class_names):
    """Hit rates, per-class video accuracy and the video-level confusion matrix."""
    from p3d_keras.jobs import metrics  # noqa: PLC0415

    report = metrics.clip_and_video_hits(scores, labels, video_ids, k=(1, 5))
    _, video_scores, video_labels = metrics.average_by_video(scores, labels, video_ids, name="scores")
    matrix = confusion_matrix(video_labels, video_scores.argmax(axis=1), len(class_names))
    per_class = {}
    for index, name in enumerate(class_names):
        total = int(matrix[index].sum())
        per_class[name] = {"videos": total, "accuracy": float(matrix[index, index] / total) if total else None}
    report.update(per_class_accuracy=per_class, classes=list(class_names), confusion_matrix=matrix.tolist())
    return report


def save_confusion_png(matrix, class_names, path):
    """Draw a labelled confusion-matrix heat map (rows: true class, columns: predicted) into `path`.

    Returns `path`, or None when matplotlib (the `p3d_keras[plots]` extra) is not installed: then
    nothing is drawn and one warning says which extra to install.
    """
    try:
        import matplotlib  # noqa: PLC0415 (the optional [plots] extra)
    except ImportError:
        log.warning("%s not drawn: matplotlib is not installed (pip install '%s')", path, PLOTS_EXTRA)
        return None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

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


def build_parser():
    p = argparse.ArgumentParser(prog="p3d-evaluate", description="Clip and video hit@1/5 of a P3D ResNet on "
                                "TFRecord shards (N clips per video, scores averaged per video as in the paper).")
    p.add_argument("--data", required=True, help="shards: a p3d-tfrecords output folder or a glob")
    p.add_argument("--out", required=True,
                   help="folder for report.json and confusion_matrix.png (the PNG needs the [plots] extra)")
    p.add_argument("--labels", help="class names, one per line (default: labels.txt beside the shards)")
    p.add_argument("--num-clips", type=common.positive_int, default=20,
                   help="clips per video (default 20, as the paper)")
    p.add_argument("--crops", choices=("center", "three"), default="center")
    p.add_argument("--batch-size", type=common.positive_int, default=8)
    p.add_argument("--frame-stride", type=common.positive_int, default=1)
    p.add_argument("--normalization", help="input normalisation (default: caffe, or the preset's)")
    common.add_decoder_argument(p)
    common.add_model_arguments(p)
    return p


def clip_dataset_for(model, args, num_clips):
    """The `evaluation_dataset` matching `model`'s input (clip length, crop size, channels)."""
    from p3d_keras.tfrecords_tools import reader  # noqa: PLC0415

    return reader.evaluation_dataset(common.shard_files(args.data), batch_size=args.batch_size,
                                     num_clips=num_clips, crops=getattr(args, "crops", "center"),
                                     **common.clip_options(model, args))


def run(args):
    """Evaluate as `p3d-evaluate` describes; returns the report dict."""
    from p3d_keras.jobs import metrics  # noqa: PLC0415

    class_names = common.read_labels(args.labels) if args.labels else common.collection_labels(args.data)
    model = common.model_from_args(args, classes=len(class_names) if class_names else None)
    classes = model.output_shape[-1]
    class_names = class_names or [str(i) for i in range(classes)]
    if len(class_names) != classes:
        raise ValueError(f"The model has {classes} classes. Received: {len(class_names)} class names")
    scores, labels, video_ids = metrics.predict_clips(model, clip_dataset_for(model, args, args.num_clips))
    report = evaluation_report(scores, labels, video_ids, class_names)
    report.update(num_clips_per_video=args.num_clips, crops=args.crops, data=args.data)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "report.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2, ensure_ascii=False)
    save_confusion_png(report["confusion_matrix"], class_names, os.path.join(args.out, "confusion_matrix.png"))
    return report


def main(argv=None):
    args = build_parser().parse_args(argv)
    common.setup_logging()
    try:
        report = common.run_program("p3d-evaluate", run, args)
    except common.ProgramError:
        return 2
    log.info("%d videos, %d clips: clip hit@1 %.4f, hit@5 %.4f; video hit@1 %.4f, hit@5 %.4f; report in %s",
             report["num_videos"], report["num_clips"], report["clip_hit@1"], report["clip_hit@5"],
             report["video_hit@1"], report["video_hit@5"], args.out)
    return 0
