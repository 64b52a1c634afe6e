"""What the evaluation programs write (`p3d-evaluate`, `p3d-fuse`, `p3d-transfer`): `report.json`,
`confusion_matrix.png` and a 2-D embedding picture (`save_embedding_png`, the t-SNE of
`p3d-transfer`). NumPy only; the pictures need matplotlib (the `p3d_keras[plots]` extra): without
it they are skipped with one warning naming the extra."""
import json
import logging
import os

import numpy as np

log = logging.getLogger(__name__)

PLOTS_EXTRA = "p3d_keras[plots]"  # the extra that brings matplotlib
REPORT = "report.json"
CONFUSION_PNG = "confusion_matrix.png"


def pyplot(path):
    """matplotlib.pyplot on the Agg backend, or None (with a warning that `path` is not drawn)
    when matplotlib is not installed."""
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


def save_embedding_png(points, labels, class_names, path, *, title=None):
    """Draw 2-D `points [N, 2]` as dots coloured by class (`labels [N]` index `class_names`), with
    a legend of the classes present (at most 40 entries), into `path`. Returns `path`, or None
    without matplotlib (as `save_confusion_png`)."""
    plt = pyplot(path)
    if plt is None:
        return None
    points, labels = np.asarray(points), np.asarray(labels)
    present = np.unique(labels)
    colours = plt.get_cmap("tab20" if len(present) > 10 else "tab10")
    fig, ax = plt.subplots(figsize=(8, 6.5))
    for n, label in enumerate(present):
        chosen = points[labels == label]
        ax.scatter(chosen[:, 0], chosen[:, 1], s=14, color=colours(n % colours.N),
                   marker="os^vD<>"[n // colours.N % 7], label=class_names[label])
    if len(present) <= 40:
        ax.legend(fontsize=7, markerscale=1.2, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False,
                  ncol=1 + len(present) // 21)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(out, report):
    """Write `out/report.json` (`report`, JSON-ready) and, when the report has a
    `confusion_matrix` and `classes`, `out/confusion_matrix.png` (`save_confusion_png`)."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, REPORT), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2, ensure_ascii=False)
    if "confusion_matrix" in report:
        save_confusion_png(report["confusion_matrix"], report["classes"], os.path.join(out, CONFUSION_PNG))
