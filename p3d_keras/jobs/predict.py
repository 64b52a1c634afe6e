"""Classify a video file with a P3D ResNet (Keras model, preset) or an exported SavedModel, and
the `p3d-predict` program, which prints the top classes."""
import argparse
import re

import numpy as np

from p3d_keras.cli import common


def read_video(path, max_frames=None):
    """All frames of a video file as uint8 RGB `[T, H, W, 3]`, upright as displayed (a phone
    video's rotation applied, as the converter does: `tfrecords_tools.video.upright_image`).
    Raises ValueError naming `path` for a file that is not a readable video."""
    from p3d_keras.tfrecords_tools import video  # noqa: PLC0415 (PyAV and Pillow: the [video] extra)

    options = video.DecodeOptions(max_frames=max_frames)
    try:
        frames = [np.asarray(video.upright_image(frame)) for _, frame in video.iter_frames(path, options)]
    except video.VideoError as error:
        raise ValueError(f"Expected a video file that PyAV can decode. Received: {path!r}: {error}") from error
    if not frames:
        raise ValueError(f"Expected a video with at least one frame. Received: {path!r} with none")
    return np.stack(frames)


def predict_video(frames, model, *, normalization="caffe", num_clips=5):
    """Mean class probabilities of a Keras classifier over `num_clips` windows of uint8 `frames`,
    placed as in evaluation (one window: the centre one; short videos loop), each resized,
    centre-cropped and normalised exactly as the exported SavedModel does."""
    import keras  # noqa: PLC0415

    from p3d_keras.jobs import export  # noqa: PLC0415
    from p3d_keras.tfrecords_tools import sampling  # noqa: PLC0415

    clip_length, size = model.input_shape[1], model.input_shape[2]
    preprocess = export.make_preprocess(model, normalization, export.default_resize_short_side(size))
    clips = frames[sampling.evaluation_indices(len(frames), clip_length, 1, num_clips).numpy()]
    outputs = keras.ops.convert_to_numpy(model(np.asarray(preprocess(clips)), training=False))
    if not export.classifier_outputs_probabilities(model):
        outputs = keras.ops.convert_to_numpy(keras.ops.softmax(outputs))
    return outputs.mean(axis=0)


def predict_saved_model(frames, saved_model_dir):
    """Class probabilities and labels from an exported SavedModel's `serving_default`; raises
    ValueError when there are fewer frames than the model's clip length (its graph asserts it)."""
    import tensorflow as tf  # noqa: PLC0415

    serving = tf.saved_model.load(saved_model_dir).signatures["serving_default"]
    try:
        out = serving(frames=tf.constant(frames[None]))
    except tf.errors.InvalidArgumentError as e:
        needed = re.search(r"Expected at least (\d+) frames", e.message)  # export.make_preprocess's assertion
        if needed is None:
            raise
        raise ValueError(f"Expected at least {needed[1]} frames for the SavedModel {saved_model_dir!r} (its "
                         f"clip length). Received: {len(frames)} frames") from e
    return out["probabilities"].numpy()[0], [b.decode("utf-8") for b in out["top_k_labels"].numpy()[0]]


def top_classes(probabilities, labels, top=5):
    """`(index, label, probability)` of the `top` classes, best first."""
    order = np.argsort(-probabilities, kind="stable")[:top]
    return [(int(i), labels[i] if labels else str(i), float(probabilities[i])) for i in order]


def build_parser():
    p = argparse.ArgumentParser(prog="p3d-predict", description="Classify a video file and print the top classes.")
    p.add_argument("video", help="a video file (anything PyAV/FFmpeg decodes)")
    p.add_argument("--saved-model", help="an exported SavedModel version folder (p3d-export) instead of a model")
    p.add_argument("--labels", help="class names, one per line (default: the preset's)")
    p.add_argument("--normalization", help="input normalisation (default: caffe, or the preset's)")
    p.add_argument("--num-clips", type=common.positive_int, default=5,
                   help="windows averaged over the video (default 5)")
    p.add_argument("--top", type=common.positive_int, default=5, help="classes printed (default 5)")
    p.add_argument("--max-frames", type=common.positive_int, default=None, help="decode at most N frames")
    p.add_argument("--classes", type=common.positive_int,
                   help="classes of a new network (default 400, or the preset's)")
    common.add_model_arguments(p)
    return p


def run(args):
    """The top classes of `args.video`, as `p3d-predict` prints them."""
    from p3d_keras.jobs.export import labels_and_normalization  # noqa: PLC0415

    frames = read_video(args.video, args.max_frames)
    if args.saved_model:
        try:
            probabilities, _ = predict_saved_model(frames, args.saved_model)
        except ValueError as e:
            raise ValueError(f"{args.video!r}: {e}") from e
        labels = common.read_labels(args.labels) if args.labels else None
    else:
        model = common.model_from_args(args, classes=args.classes)
        labels, normalization = labels_and_normalization(args, model)
        probabilities = predict_video(frames, model, normalization=normalization, num_clips=args.num_clips)
    return top_classes(probabilities, labels, args.top)


def main(argv=None):
    args = build_parser().parse_args(argv)
    common.setup_logging("WARNING")
    try:
        top = common.run_program("p3d-predict", run, args)
    except common.ProgramError:
        return 2
    print(f"{args.video}:")  # noqa: T201 (a CLI's output)
    for rank, (index, label, probability) in enumerate(top, 1):
        print(f"  {rank}. {label:<40} {probability:7.2%}  (class {index})")  # noqa: T201
    return 0
