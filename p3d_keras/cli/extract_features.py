"""`p3d-extract-features`: pool5 features per clip and per video into an .npz file
(`jobs.features.extract_features`)."""
import argparse
import sys
import logging

from p3d_keras.cli import common
from p3d_keras.jobs import features

log = logging.getLogger("p3d-extract-features")


def build_parser():
    p = argparse.ArgumentParser(prog="p3d-extract-features", description="pool5 features per clip and averaged "
                                "per video (the paper's video representation) into an .npz file.")
    common.add_shard_reading_arguments(p, out_help="output .npz file")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)

    def job():
        return features.extract_features(common.model_spec(args), **common.shard_reading_arguments(args))

    def done(result):
        log.info("%d clips, %d videos, %d-d features -> %s", len(result["clip_labels"]), len(result["video_ids"]),
                 result["video_features"].shape[1], args.out)

    return common.run("p3d-extract-features", job, done=done)


if __name__ == "__main__":
    sys.exit(main())
