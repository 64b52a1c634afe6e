"""`p3d-extract-features`: pool5 features per clip and per video into an .npz file
(`jobs.features.extract_features`)."""
import argparse
import logging

from p3d_keras.cli import common
from p3d_keras.jobs import features

log = logging.getLogger("p3d-extract-features")


def build_parser():
    p = argparse.ArgumentParser(prog="p3d-extract-features", description="pool5 features per clip and averaged "
                                "per video (the paper's video representation) into an .npz file.")
    p.add_argument("--data", required=True, help="shards: a p3d-tfrecords output folder or a glob")
    p.add_argument("--out", required=True, help="output .npz file")
    p.add_argument("--num-clips", type=common.positive_int, default=20, help="clips per video (default 20)")
    common.add_clip_arguments(p)
    common.add_model_arguments(p)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)

    def job():
        return features.extract_features(common.model_spec(args), data=args.data, out=args.out,
                                         num_clips=args.num_clips, batch_size=args.batch_size,
                                         **common.clip_arguments(args))

    def done(result):
        log.info("%d clips, %d videos, %d-d features -> %s", len(result["clip_labels"]), len(result["video_ids"]),
                 result["video_features"].shape[1], args.out)

    return common.run("p3d-extract-features", job, done=done)
