"""What the programs (train, evaluate, extract-features, export, predict) share: the model
arguments and how a model is made from them, and how a converter output folder is read."""
import argparse
import glob
import json
import logging
import math
import os

MANIFEST = "manifest.json"  # written by p3d-tfrecords convert beside its shards
LABELS = "labels.txt"


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


def add_model_arguments(parser):
    """`--model` (a saved .keras model) or an architecture with optional `--weights`."""
    group = parser.add_argument_group("model")
    group.add_argument("--model", help="a whole saved Keras model (.keras), e.g. the output of p3d-train")
    group.add_argument("--depth", default="199",
                       help="63, 131, 199, or four comma-separated block counts (default 199)")
    group.add_argument("--width", type=positive_int, default=64, help="res2 bottleneck width (default 64)")
    group.add_argument("--weights", help="a preset name, a .weights.h5 file or an original checkpoint")
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
                        help="JPEG clip decoder: native (a compiled op, built on first use; 8-19%% less CPU per clip), "
                             "tf (TensorFlow's ops), auto (default: native when it can be built); the same clips")


def preset_of(args):
    """The `WeightPreset` named by `--weights`, or None for no weights or a file path."""
    from p3d_keras.applications import get_preset  # noqa: PLC0415

    return get_preset(args.weights) if args.weights and not os.path.exists(args.weights) else None


def normalization_of(args, modality):
    """`--normalization`, else the `--weights` preset's, else the modality's default."""
    from p3d_keras.normalization import DEFAULT_NORMALIZATION  # noqa: PLC0415

    preset = preset_of(args)
    return args.normalization or (preset.normalization if preset else DEFAULT_NORMALIZATION[modality])


def clip_options(model, args):
    """Reader arguments matching `model`'s input (clip length, crop size, modality, normalisation),
    and the `--decoder`."""
    _, frames, size, _, channels = model.input_shape
    modality = "flow" if channels == 2 else "rgb"
    return dict(clip_length=frames, crop_size=size, frame_stride=args.frame_stride, modality=modality,
                normalization=normalization_of(args, modality), decoder=args.decoder)


def parse_depth(text):
    """`"199"` -> 199; `"1,1,1,1"` -> (1, 1, 1, 1)."""
    parts = [int(p) for p in str(text).split(",")]
    return parts[0] if len(parts) == 1 else tuple(parts)


def model_from_args(args, classes=None, **overrides):
    """A `keras.Model` from `add_model_arguments` values: the saved `--model`, or a new
    P3DResNet (with `classes`, loading `--weights`)."""
    import keras  # noqa: PLC0415

    from p3d_keras.applications import P3DResNet  # noqa: PLC0415

    if args.model:
        if not args.model.endswith(".keras") or not os.path.exists(args.model):
            raise ValueError(f"--model must be an existing .keras file. Received: --model={args.model!r}")
        return keras.saving.load_model(args.model)
    channels = 2 if args.modality == "flow" else 3
    kwargs = dict(weights=args.weights, classes=classes, graph=args.graph, modality=args.modality,
                  dropout_rate=args.dropout, width=args.width, temporal=not args.no_temporal,
                  input_shape=(args.frames, args.size, args.size, channels))
    kwargs.update(overrides)
    return P3DResNet(parse_depth(args.depth), **kwargs)


def shard_files(path):
    """Shard files from a converter output folder, a glob, or a file; raises if there are none."""
    if os.path.isdir(path):
        files = sorted(glob.glob(os.path.join(path, "*.tfrecord")) + glob.glob(os.path.join(path, "*.tfrecord.gz")))
    else:
        files = sorted(glob.glob(path))
    if not files:
        raise ValueError(f"Expected a folder of .tfrecord[.gz] shards (p3d-tfrecords convert output), a glob or a "
                         f"shard file. Received: {path!r}, which matches no shard")
    return files


def read_labels(path):
    """Class names, one per line (`labels.txt` beside the shards, or any such file)."""
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def collection_labels(path):
    """The class names written by the converter beside the shards of `path`, or None."""
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    labels = os.path.join(folder, LABELS)
    return read_labels(labels) if os.path.exists(labels) else None


def collection_size(path):
    """Number of records (videos) in the shards of `path`: from the converter's manifest when
    present, else by counting records (each shard read as its bytes say, GZIP or not)."""
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    manifest = os.path.join(folder, MANIFEST)
    if os.path.isdir(path) and os.path.exists(manifest):
        with open(manifest, encoding="utf-8") as f:
            return int(json.load(f)["totals"]["records"])
    from p3d_keras.tfrecords_tools import reader  # noqa: PLC0415 (imports TensorFlow)

    return int(reader.read_records(shard_files(path)).reduce(0, lambda n, _: n + 1))


class ProgramError(Exception):
    """Bad input reported by a program; `main` turns it into exit status 2."""


def run_program(name, fn, *args):
    """`fn(*args)`, with bad input (OSError, ValueError) logged as `name: message` and re-raised
    as ProgramError, so a `main` reports it and exits 2 instead of printing a traceback."""
    try:
        return fn(*args)
    except (OSError, ValueError) as e:
        logging.getLogger(name).error("%s: %s", name, e)
        raise ProgramError(str(e)) from e


def setup_logging(level="INFO"):
    logging.basicConfig(level=getattr(logging, level), format="%(asctime)s %(levelname)s %(message)s")
