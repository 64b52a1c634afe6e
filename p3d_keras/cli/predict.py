"""`p3d-predict`: classify a video file, streaming, and print the top classes; optionally its
timeline (JSON + PNG) and an annotated copy (`jobs.predict.predict_video`)."""
import argparse
import dataclasses
import logging
import sys

from p3d_keras.cli import common
from p3d_keras.jobs import predict

log = logging.getLogger("p3d-predict")


def build_parser():
    p = argparse.ArgumentParser(prog="p3d-predict", description="Classify a video file and print the top classes: "
                                "the mean of dense windows' probabilities, decoded and classified as it streams.")
    p.add_argument("video", help="a video file (anything PyAV/FFmpeg decodes)")
    p.add_argument("--saved-model", "--exported", dest="saved_model",
                   help="an export instead of a model: a SavedModel version folder, or an ONNX (.onnx), OpenVINO "
                        "(.xml) or LiteRT (.tflite) file (p3d-export --format)")
    common.add_labels_argument(p, "the model folder's, the export's or the preset's")
    common.add_normalization_argument(p)
    p.add_argument("--top", type=common.positive_int, default=5,
                   help="classes printed, and per window in the timeline (default 5)")
    p.add_argument("--max-frames", type=common.positive_int, default=None, help="decode at most N frames")
    p.add_argument("--batch-size", type=common.positive_int, default=8, help="windows per call of a Keras network")
    p.add_argument("--num-clips", type=common.positive_int, default=None,
                   help="deprecated and ignored: windows now cover the whole video (see --stride)")
    common.add_window_arguments(p)
    outputs = p.add_argument_group("timeline")
    outputs.add_argument("--timeline", metavar="OUT",
                         help="write the per-window top classes to OUT.json and a picture of them over time to "
                              "OUT.png; OUT a folder (existing, or ending in /): OUT/<video name>.timeline.json|png")
    outputs.add_argument("--thumbnails", type=common.non_negative_int, default=predict.THUMBNAILS,
                         help=f"frames shown above the timeline (default {predict.THUMBNAILS})")
    outputs.add_argument("--annotate", metavar="OUT.mp4",
                         help="write a copy of the video with each frame's current label and probability on it")
    common.add_model_arguments(p, classes=True)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    window = common.window_arguments(args)
    window["decode"] = dataclasses.replace(window["decode"], max_frames=args.max_frames)

    def job():
        if args.num_clips is not None:
            log.warning("p3d-predict: --num-clips is deprecated and ignored: the prediction is the mean over dense "
                        "windows covering the whole video (--window, --stride)")
        return predict.predict_video(args.video, spec=None if args.saved_model else common.model_spec(args),
                                     saved_model=args.saved_model, labels_file=args.labels,
                                     normalization=args.normalization, classes=args.classes, top=args.top,
                                     timeline_out=args.timeline, annotate=args.annotate, thumbnails=args.thumbnails,
                                     batch_size=args.batch_size, **window)

    def done(prediction):
        windows = f"{len(prediction.times)} window{'s' * (len(prediction.times) != 1)}"
        print(f"{args.video}: {windows}{' (shorter than one: looped)' if prediction.looped else ''}")  # noqa: T201
        for rank, (index, label, probability) in enumerate(prediction.top(args.top), 1):
            print(f"  {rank}. {label:<40} {probability:7.2%}  (class {index})")  # noqa: T201 (a program's output)
        for kind, path in prediction.files.items():
            print(f"  {kind}: {path}")  # noqa: T201

    return common.run("p3d-predict", job, done=done, log_level="WARNING")


if __name__ == "__main__":
    sys.exit(main())
