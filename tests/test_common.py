"""The programs' shared flags (`cli.common`): every numeric flag is range-checked, bad numbers are
argument errors (exit 2)."""
import argparse
import logging

import pytest
import tensorflow as tf

from p3d_keras.cli import common
from p3d_keras.cli import evaluate as evaluate_cli
from p3d_keras.cli import export as export_cli
from p3d_keras.cli import extract_features as extract_features_cli
from p3d_keras.cli import predict as predict_cli
from p3d_keras.cli import train as train_cli


PARSERS = {"p3d-train": train_cli.build_parser, "p3d-evaluate": evaluate_cli.build_parser,
           "p3d-extract-features": extract_features_cli.build_parser, "p3d-export": export_cli.build_parser,
           "p3d-predict": predict_cli.build_parser}


def test_every_numeric_flag_is_range_checked():
    bare = [(name, action.option_strings) for name, build in PARSERS.items() for action in build()._actions
            if action.type in (int, float)]
    assert bare == []


@pytest.mark.parametrize("main, argv", [
    (predict_cli.main, ["v.mp4", "--num-clips", "0"]),
    (predict_cli.main, ["v.mp4", "--top", "-1"]),
    (predict_cli.main, ["v.mp4", "--max-frames", "many"]),
    (evaluate_cli.main, ["--data", "d", "--out", "o", "--batch-size", "0"]),
    (evaluate_cli.main, ["--data", "d", "--out", "o", "--frame-stride", "0"]),
    (extract_features_cli.main, ["--data", "d", "--out", "o.npz", "--num-clips", "0"]),
    (train_cli.main, ["--train", "t", "--out", "o", "--epochs", "0"]),
    (train_cli.main, ["--train", "t", "--out", "o", "--lr", "nan"]),
    (train_cli.main, ["--train", "t", "--out", "o", "--weight-decay", "-0.1"]),
    (export_cli.main, ["--base-dir", "b", "--top-k", "0"]),
    (export_cli.main, ["--base-dir", "b", "--frames", "0"]),
    (export_cli.main, ["--base-dir", "b", "--size", "-32"]),
    (export_cli.main, ["--base-dir", "b", "--dropout", "1.5"]),
])
def test_invalid_numbers_are_argument_errors(main, argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"error: argument {argv[-2]}: Expected a" in err and f"Received: {argv[-1]!r}" in err


def test_numeric_argument_types():
    assert common.positive_int("3") == 3 and common.non_negative_int("0") == 0
    assert common.positive_float("1e-3") == 1e-3 and common.dropout_rate("0") == 0.0
    for parse, text in [(common.positive_int, "0"), (common.positive_int, "2.5"),
                        (common.non_negative_int, "-1"), (common.positive_float, "inf"),
                        (common.non_negative_float, "nan"), (common.dropout_rate, "1")]:
        with pytest.raises(argparse.ArgumentTypeError, match=f"Received: {text!r}"):
            parse(text)


def test_window_flags():
    parser = argparse.ArgumentParser()
    common.add_window_arguments(parser)
    seconds = common.window_arguments(parser.parse_args(["--stride", "0.5s", "--window", "32", "--fps", "15"]))
    assert seconds["stride_seconds"] == 0.5 and seconds["window"] == 32 and "stride" not in seconds
    assert seconds["decode"].fps == 15.0 and seconds["decode"].threads == 0
    frames = common.window_arguments(parser.parse_args(["--stride", "8", "--decode-threads", "2"]))
    assert frames["stride"] == 8 and frames["window"] is None and frames["decode"].threads == 2
    assert "stride" not in common.window_arguments(parser.parse_args([]))
    for bad in ("0", "-1s", "xs", "1.5", "nans"):
        with pytest.raises(argparse.ArgumentTypeError, match=f"Received: '{bad}'"):
            common.window_stride(bad)


def test_setup_logging_prints_tensorflow_records_once(monkeypatch):
    tensorflow_logger = tf.get_logger()
    monkeypatch.setattr(tensorflow_logger, "handlers", [logging.StreamHandler()])  # as TensorFlow adds it
    common.setup_logging("INFO")
    assert tensorflow_logger.handlers == [] and tensorflow_logger.propagate  # the root's handler prints it once
