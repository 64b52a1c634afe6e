"""`p3d-evaluate`: clip and video hit@1/5 of a P3D ResNet on TFRecord shards (`jobs.evaluation.evaluate`)."""
import argparse
import sys
import logging

from p3d_keras.cli import common
from p3d_keras.jobs import evaluation

log = logging.getLogger("p3d-evaluate")


def build_parser():
    p = argparse.ArgumentParser(prog="p3d-evaluate", description="Clip and video hit@1/5 of a P3D ResNet on "
                                "TFRecord shards (N clips per video, scores averaged per video as in the paper).")
    common.add_labels_argument(p, "labels.txt beside the shards")
    p.add_argument("--crops", choices=("center", "three"), default="center")
    p.add_argument("--clip-scores", action="store_true",
                   help="keep each clip's scores in scores.npz too (for p3d-fuse's clip hit@k; [clips, classes] "
                        "floats: large for Kinetics)")
    common.add_shard_reading_arguments(
        p, out_help="folder for report.json, confusion_matrix.png (the [plots] extra) and scores.npz (per-video "
                    "scores, what p3d-fuse fuses)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)

    def job():
        return evaluation.evaluate(common.model_spec(args), labels_file=args.labels, crops=args.crops,
                                   clip_scores=args.clip_scores, **common.shard_reading_arguments(args))

    def done(report):
        log.info("%d videos, %d clips: clip hit@1 %.4f, hit@5 %.4f; video hit@1 %.4f, hit@5 %.4f; report in %s",
                 report["num_videos"], report["num_clips"], report["clip_hit@1"], report["clip_hit@5"],
                 report["video_hit@1"], report["video_hit@5"], args.out)

    return common.run("p3d-evaluate", job, done=done)


if __name__ == "__main__":
    sys.exit(main())
