"""What the programs (train, evaluate, extract-features, export, predict) share: the model
arguments and how a model is made from them, and how a converter output folder is read."""
import argparse
import glob
import json
import logging
import math
import os


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
