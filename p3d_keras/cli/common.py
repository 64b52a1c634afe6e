"""What the programs share, declared once: the argparse types of numeric flags, the flag groups
(model, clips, batch size, labels), and `run`, which turns an expected error into one message and
exit code 2. Light on purpose: `p3d-tfrecords` uses it and never imports Keras or TensorFlow."""
import argparse
import logging
import math
import sys

from p3d_keras.tfrecords_tools import sources


def _number(kind, minimum, strict, expected):
    """An argparse type: `kind(text)`, finite and above (`strict`) or at least `minimum`."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or value < minimum or (strict and value == minimum):
            raise argparse.ArgumentTypeError(f"Expected {expected}. Received: {text!r}")
        return value

    parse.__name__ = expected  # argparse names the type by it
    return parse


# The argparse types of every program's numeric flags: bad values are argument errors (exit 2).
positive_int = _number(int, 0, True, "a positive integer")
non_negative_int = _number(int, 0, False, "a non-negative integer")
positive_float = _number(float, 0.0, True, "a positive number")
non_negative_float = _number(float, 0.0, False, "a non-negative number")


def dropout_rate(text):
    """An argparse type: a float in [0, 1)."""
    value = non_negative_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"Expected a rate in [0, 1). Received: {text!r}")
    return value


def add_model_arguments(parser, *, classes=False):
    """`--model` (a saved .keras model) or an architecture with optional `--weights`; with
    `classes`, also `--classes` (of a new network)."""
    group = parser.add_argument_group("model")
    if classes:
        group.add_argument("--classes", type=positive_int,
                           help="classes of a new network (default 400, or the preset's)")
    group.add_argument("--model", help="a P3D model folder (e.g. p3d-train's runs/x/best: its normalisation, clip "
                                       "spec and class names are used), an hf://owner/name[@revision] handle of one, "
                                       "or a plain .keras file")
    group.add_argument("--depth", default="199",
                       help="63, 131, 199, or four comma-separated block counts (default 199)")
    group.add_argument("--width", type=positive_int, default=64, help="res2 bottleneck width (default 64)")
    group.add_argument("--weights", help="a preset name (imagenet: inflated from Keras' ImageNet ResNet, --depth "
                                         "63, 131 or 199), a .weights.h5 file or an original checkpoint")
    group.add_argument("--graph", choices=("caffe", "pytorch"), help="default: caffe, or the preset's")
    group.add_argument("--modality", choices=("rgb", "flow"), help="default: rgb, or the preset's")
    group.add_argument("--frames", type=positive_int, default=16, help="clip length T (default 16)")
    group.add_argument("--size", type=positive_int, default=160, help="crop size H = W (default 160)")
    group.add_argument("--dropout", type=dropout_rate, help="head dropout (default 0.5, or the preset's)")
    group.add_argument("--no-temporal", action="store_true",
                       help="remove every temporal convolution (a 2D control network)")
    return group


def add_decoder_argument(parser):
    """`--decoder` of the programs that read clips (`reader.training_dataset(decoder=...)`)."""
    parser.add_argument("--decoder", choices=("auto", "native", "tf"), default="auto",
                        help="JPEG clip decoder: native (a compiled op, built on first use; less CPU per clip), "
                             "tf (TensorFlow's ops), auto (default: native when it can be built); the same clips")


def add_clip_arguments(parser, *, batch_size=8):
    """The flags of the programs that read clips from shards: `--batch-size`, `--frame-stride`,
    `--normalization` and `--decoder`."""
    group = parser.add_argument_group("clips")
    group.add_argument("--batch-size", type=positive_int, default=batch_size, help=f"default {batch_size}")
    group.add_argument("--frame-stride", type=positive_int, default=1, help="take every k-th frame (default 1)")
    add_normalization_argument(group)
    add_decoder_argument(group)
    return group


def add_shard_reading_arguments(parser, *, out_help, data_required=True):
    """The flags of the programs that read clips of the shards' videos with a model: `--data`
    (optional without `data_required`), `--out` (`out_help`), `--num-clips`, the clip flags and
    the model flags."""
    parser.add_argument("--data", required=data_required, help="shards: a p3d-tfrecords output folder or a glob")
    parser.add_argument("--out", required=True, help=out_help)
    parser.add_argument("--num-clips", type=positive_int, default=20, help="clips per video (default 20, as the paper)")
    add_clip_arguments(parser)
    add_model_arguments(parser)


def shard_reading_arguments(args):
    """The keyword arguments of `add_shard_reading_arguments`' flags but the model's (`model_spec`)."""
    return dict(data=args.data, out=args.out, num_clips=args.num_clips, batch_size=args.batch_size,
                **clip_arguments(args))


def window_stride(text):
    """An argparse type for `--stride`: `"16"` (frames) -> `{"stride": 16}`, `"0.5s"` (seconds) ->
    `{"stride_seconds": 0.5}`."""
    seconds = str(text).endswith("s")
    try:
        value = positive_float(text[:-1]) if seconds else positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"Expected a positive number of frames (16) or of seconds (0.5s). "
                                         f"Received: {text!r}") from None
    return {"stride_seconds": value} if seconds else {"stride": value}


def add_window_arguments(parser):
    """The flags of the programs that cut windows out of video files (`jobs.video_inference`):
    `--window`, `--stride`, `--fps`, `--decode-threads`."""
    group = parser.add_argument_group("windows")
    group.add_argument("--window", type=positive_int,
                       help="frames a window covers, a multiple of the clip length (default: the clip length)")
    group.add_argument("--stride", type=window_stride, default={},
                       help="a new window every N frames, or every Xs seconds, e.g. 8 or 0.5s (default: --window)")
    group.add_argument("--fps", type=positive_float, help="resample the video to this frame rate first")
    group.add_argument("--decode-threads", type=non_negative_int, default=0,
                       help="decoder and scaler threads per video (default 0: FFmpeg picks)")
    return group


def window_arguments(args):
    """The keyword arguments of `add_window_arguments`' flags, as `VideoInference.windows` takes them."""
    from p3d_keras.tfrecords_tools.video import DecodeOptions  # noqa: PLC0415 (kept out of the programs without videos)

    return dict(window=args.window, **args.stride, decode=DecodeOptions(fps=args.fps, threads=args.decode_threads))


def add_video_list_arguments(parser, *, layout_default="folder", root_names=("--root",), root_help=None):
    """The flags that list a video collection (`sources.list_videos`; `video_list` reads them):
    `--layout` (default `layout_default`), the root folder (`root_names`), `--csv`,
    `--split-dir`, `--split`, `--fold`, `--label-file`."""
    group = parser.add_argument_group("input")
    group.add_argument("--layout", choices=sources.LAYOUTS, default=layout_default,
                       help="folder: <root>/<class>/*.video (also HMDB51); ucf101/hmdb51: with "
                            "--split-dir; kinetics: --csv rows label,youtube_id,time_start,"
                            "time_end,split; csv: --csv rows path,label[,start,end]")
    group.add_argument(*root_names, dest="root", help=root_help or "folder holding the videos (csv: paths are "
                                                                   "relative to it; default: the CSV's folder)")
    group.add_argument("--csv", help="the Kinetics or path,label CSV file")
    group.add_argument("--split-dir", help="folder with the official split files (UCF101, HMDB51)")
    group.add_argument("--split", help="train/test (UCF101, HMDB51) or the Kinetics split column value")
    group.add_argument("--fold", type=positive_int, default=1, help="official split number (default 1)")
    group.add_argument("--label-file", help="class names in index order (default: sorted names)")
    return group


def video_list(args):
    """`(items, label map)` of `add_video_list_arguments`' flags (`sources.list_videos`). Raises
    ValueError naming a flag that `--layout` needs and that is missing."""
    needs = {"csv": ("csv",), "kinetics": ("csv", "root"), "ucf101": ("root", "split_dir")}
    for name in needs.get(args.layout, ("root",)):
        if getattr(args, name) is None:
            raise ValueError(f"Expected --{name.replace('_', '-')} for --layout {args.layout}. Received: none")
    return sources.list_videos(args.layout, args.root, csv_path=args.csv, split_dir=args.split_dir,
                               split=args.split, fold=args.fold, label_file=args.label_file)


def add_normalization_argument(parser):
    """`--normalization`: a name of `p3d_keras.core.normalization.NORMALIZATIONS`."""
    parser.add_argument("--normalization", help="input normalisation (default: the model folder's, else the "
                                                "preset's, else caffe; flow for flow)")


def add_labels_argument(parser, default):
    """`--labels`: a class-name file, one per line (`default` says what is used without it)."""
    parser.add_argument("--labels", help=f"class names, one per line (default: {default})")


def model_spec(args):
    """The `jobs.models.ModelSpec` of `add_model_arguments`' flags."""
    from p3d_keras.jobs.models import ModelSpec, parse_depth  # noqa: PLC0415 (Keras: kept out of p3d-tfrecords)

    return ModelSpec(model=args.model, depth=parse_depth(args.depth), width=args.width, weights=args.weights,
                     graph=args.graph, modality=args.modality, frames=args.frames, size=args.size,
                     dropout=args.dropout, temporal=not args.no_temporal)


def clip_arguments(args):
    """The keyword arguments of `add_clip_arguments`' flags (batch size apart), as the jobs take them."""
    return dict(normalization=args.normalization, frame_stride=args.frame_stride, decoder=args.decoder)


EXPECTED_ERRORS = (OSError, ValueError)  # bad input, a file that cannot be read or written


def run(prog, job, *, done=None, expected=(), log_level="INFO"):
    """Run `job()` as the program `prog` and return its exit code. Logging is set up at
    `log_level`; an expected error (`EXPECTED_ERRORS`, plus `expected`) is logged as one line
    `prog: message` and gives 2, without a traceback; otherwise `done(result)` reports the
    result and its return value (None: 0) is the exit code."""
    setup_logging(log_level)
    try:
        result = job()
    except (*EXPECTED_ERRORS, *expected) as error:
        logging.getLogger(prog).error("%s: %s", prog, error)
        return 2
    code = done(result) if done is not None else None
    return 0 if code is None else code


def setup_logging(level="INFO"):
    """Log records at `level` and above to stderr, each once: TensorFlow, imported before this
    (the programs import it first), gave its `tensorflow` logger a handler of its own, which would
    print that logger's records a second time ("INFO:tensorflow:Assets written to: ...")."""
    logging.basicConfig(level=getattr(logging, level) if isinstance(level, str) else level,
                        format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    if "tensorflow" in sys.modules:
        tensorflow_logger = logging.getLogger("tensorflow")
        for handler in list(tensorflow_logger.handlers):
            tensorflow_logger.removeHandler(handler)
