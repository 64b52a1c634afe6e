"""`p3d-fuse`: late fusion of evaluation folders, e.g. RGB and flow (`jobs.fusion.fuse_folders`).

    p3d-fuse rgb_eval/ flow_eval/ --fusion-weights 1,1.5 --out fused/
"""
import argparse
import logging
import sys

from p3d_keras.cli import common
from p3d_keras.jobs import fusion

PROG = "p3d-fuse"
log = logging.getLogger(PROG)


def fusion_weights(text):
    """An argparse type: comma-separated positive numbers, e.g. `1,1.5`."""
    try:
        return [common.positive_float(part) for part in text.split(",")]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"Expected comma-separated positive numbers, one per folder, e.g. 1,1.5. "
                                         f"Received: {text!r}") from None


def build_parser():
    p = argparse.ArgumentParser(prog=PROG, description="Fuse the per-video scores of two or more p3d-evaluate "
                                "folders (e.g. RGB and flow): a weighted mean of their softmax scores, with video "
                                "(and clip) hit@1/5, per-class accuracy and a confusion matrix.")
    p.add_argument("folders", nargs="+", help="p3d-evaluate --out folders (or their scores.npz files), two or more")
    p.add_argument("--fusion-weights", type=fusion_weights,
                   help="one weight per folder, in order, e.g. 1,1.5 (default: equal weights)")
    p.add_argument("--out", required=True,
                   help="folder for report.json, confusion_matrix.png (the [plots] extra) and the fused scores.npz")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)

    def job():
        return fusion.fuse_folders(args.folders, weights=args.fusion_weights, out=args.out)

    def done(report):
        clips = (f"clip hit@1 {report['clip_hit@1']:.4f}, hit@5 {report['clip_hit@5']:.4f}; "
                 if "clip_hit@1" in report else "")
        log.info("%d videos: %svideo hit@1 %.4f, hit@5 %.4f; report in %s", report["num_videos"], clips,
                 report["video_hit@1"], report["video_hit@5"], args.out)

    return common.run(PROG, job, done=done)


if __name__ == "__main__":
    sys.exit(main())
