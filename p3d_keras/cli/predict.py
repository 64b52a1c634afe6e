"""`p3d-predict`: classify a video file and print the top classes (`jobs.predict.predict_video`)."""
import argparse
import sys

from p3d_keras.cli import common
from p3d_keras.jobs import predict


def build_parser():
    p = argparse.ArgumentParser(prog="p3d-predict", description="Classify a video file and print the top classes.")
    p.add_argument("video", help="a video file (anything PyAV/FFmpeg decodes)")
    p.add_argument("--saved-model", help="an exported SavedModel version folder (p3d-export) instead of a model")
    common.add_labels_argument(p, "the preset's")
    common.add_normalization_argument(p)
    p.add_argument("--num-clips", type=common.positive_int, default=5,
                   help="windows averaged over the video (default 5)")
    p.add_argument("--top", type=common.positive_int, default=5, help="classes printed (default 5)")
    p.add_argument("--max-frames", type=common.positive_int, default=None, help="decode at most N frames")
    common.add_model_arguments(p, classes=True)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)

    def job():
        return predict.predict_video(args.video, spec=None if args.saved_model else common.model_spec(args),
                                     saved_model=args.saved_model, labels_file=args.labels,
                                     normalization=args.normalization, classes=args.classes,
                                     num_clips=args.num_clips, max_frames=args.max_frames, top=args.top)

    def done(top):
        print(f"{args.video}:")  # noqa: T201 (a program's output)
        for rank, (index, label, probability) in enumerate(top, 1):
            print(f"  {rank}. {label:<40} {probability:7.2%}  (class {index})")  # noqa: T201

    return common.run("p3d-predict", job, done=done, log_level="WARNING")


if __name__ == "__main__":
    sys.exit(main())
