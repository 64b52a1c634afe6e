"""The programs (train, evaluate, extract-features, predict, demo), run in-process on tiny data."""
import argparse
import csv
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from p3d_keras.cli import common
from p3d_keras.cli import evaluate as evaluate_cli
from p3d_keras.cli import export as export_cli
from p3d_keras.cli import extract_features as extract_features_cli
from p3d_keras.cli import predict as predict_cli
from p3d_keras.cli import train as train_cli
from p3d_keras.jobs import evaluation
from p3d_keras.jobs import export
from p3d_keras.jobs import predict
from p3d_keras.jobs import training
from p3d_keras.jobs.models import ModelSpec
from p3d_keras.applications import P3DResNet
from p3d_keras.core.layers import Normalize
from p3d_keras.tfrecords_tools import index
from shard_fixtures import write_shards

MODEL_ARGS = ["--depth", "1,1,1,1", "--width", "4", "--frames", "16", "--size", "32"]
SPEC = ModelSpec(depth=(1, 1, 1, 1), width=4, frames=16, size=32)  # what MODEL_ARGS say
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Train and test shard folders (converter layout: shards, their window indexes, labels.txt) of 3 classes."""
    root = tmp_path_factory.mktemp("programs")
    for split, n in (("train", 12), ("test", 6)):
        folder = root / split
        folder.mkdir()
        for shard in write_shards(folder, [(20 + i, i % 3) for i in range(n)], num_shards=2, prefix=split,
                                  height=36, width=40):
            index.write_index(shard)
        (folder / "labels.txt").write_text("jump\nrun\nsit\n")
    return root


@pytest.fixture(scope="module")
def trained(shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    code = train_cli.main(["--train", str(shards / "train"), "--val", str(shards / "test"), "--out", str(out),
                          "--epochs", "2", "--batch-size", "4", "--lr", "0.01", "--seed", "1", "--verbose", "0",
                          "--reads", "windows", *MODEL_ARGS])
    assert code == 0
    return out


def test_train_writes_models_and_logs(trained):
    assert {"last.keras", "best.keras", "log.csv", "tensorboard"} <= set(os.listdir(trained))
    rows = list(csv.DictReader(open(trained / "log.csv")))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert {"loss", "accuracy", "val_accuracy", "top5"} <= set(rows[0])
    model = keras.saving.load_model(trained / "last.keras")
    assert model.output_shape == (None, 3) and model.input_shape == (None, 16, 32, 32, 3)
    # Trained on uint8 clips normalised in a wrapper; saved is the network alone, on float input.
    assert model.inputs[0].dtype == "float32" and not any(isinstance(layer, Normalize) for layer in model.layers)


def test_uint8_and_float32_input_train_the_same_network(shards, tmp_path):
    def train(input_dtype):
        keras.utils.set_random_seed(0)
        out = tmp_path / input_dtype
        history = training.train(SPEC, train=str(shards / "train"), val=str(shards / "test"), out=str(out), epochs=1,
                                 batch_size=4, lr=0.01, seed=3, verbose=0, input_dtype=input_dtype)
        assert history.model.name.startswith("p3d") and history.model.inputs[0].dtype == "float32"
        saved = keras.saving.load_model(out / "last.keras")
        for a, b in zip(saved.weights, history.model.weights):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
        return history.history, [w.numpy() for w in saved.weights]

    (uint8_log, uint8_weights), (float_log, float_weights) = train("uint8"), train("float32")
    assert uint8_log["loss"] == pytest.approx(float_log["loss"], rel=1e-5)
    assert uint8_log["val_accuracy"] == float_log["val_accuracy"]
    for a, b in zip(uint8_weights, float_weights):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_training_resumes_after_an_interruption(shards, tmp_path, monkeypatch):
    class Crash(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt("simulated crash")

    make_callbacks = training.training_callbacks
    monkeypatch.setattr(training, "training_callbacks", lambda *a, **k: make_callbacks(*a, **k) + [Crash()])
    args = ["--train", str(shards / "train"), "--out", str(tmp_path), "--epochs", "3", "--batch-size", "4",
            "--optimizer", "adamw", "--seed", "2", "--verbose", "0", *MODEL_ARGS]
    with pytest.raises(KeyboardInterrupt):
        train_cli.main(args)
    monkeypatch.setattr(training, "training_callbacks", make_callbacks)
    history = training.train(SPEC, train=str(shards / "train"), out=str(tmp_path), epochs=3, batch_size=4,
                             optimizer="adamw", seed=2, verbose=0)
    assert len(history.history["loss"]) == 1  # only epoch 2 was left
    assert [int(r["epoch"]) for r in csv.DictReader(open(tmp_path / "log.csv"))] == [0, 1, 2]


def test_partial_bn_freezes_all_but_the_first():
    model = P3DResNet((1, 1, 1, 1), width=4, input_shape=(16, 32, 32, 3), classes=3)
    bns = training.batch_norm_layers(model)
    assert training.batch_norm_layers(training.with_input_normalization(model, "caffe")) == bns
    assert training.apply_partial_bn(model) == len(bns) - 1
    assert bns[0].name == "bn_conv1" and bns[0].trainable and not any(b.trainable for b in bns[1:])
    before = [b.moving_mean.numpy().copy() for b in bns[:2]]
    training.compile_for_training(model, schedule=0.01, partial_bn=False)
    model.train_on_batch(np.random.default_rng(0).normal(size=(2, 16, 32, 32, 3)).astype("float32"), np.array([0, 1]))
    assert not np.allclose(bns[0].moving_mean.numpy(), before[0])
    np.testing.assert_array_equal(bns[1].moving_mean.numpy(), before[1])


def test_optimizers():
    sgd = training.make_optimizer("sgd", 0.1, momentum=0.8, weight_decay=1e-4)
    assert isinstance(sgd, keras.optimizers.SGD) and sgd.momentum == 0.8 and sgd.weight_decay == 1e-4
    adamw = training.make_optimizer("adamw", 0.1, weight_decay=1e-4)
    assert isinstance(adamw, keras.optimizers.AdamW) and adamw.weight_decay == 1e-4
    with pytest.raises(ValueError, match="Received: optimizer='adam'"):
        training.make_optimizer("adam", 0.1)


def test_learning_rate_schedules():
    step = training.learning_rate_schedule("step", 0.1, steps_per_epoch=10, epochs=9, step_epochs=[3, 6])
    assert [float(step(s)) for s in (0, 29, 31, 61)] == pytest.approx([0.1, 0.1, 0.01, 0.001])
    cosine = training.learning_rate_schedule("cosine", 0.1, steps_per_epoch=10, epochs=2)
    assert float(cosine(0)) == pytest.approx(0.1) and float(cosine(10)) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="Received: schedule='linear'"):
        training.learning_rate_schedule("linear", 0.1, 1, 1)
    with pytest.raises(ValueError, match="needs the JAX backend"):
        with training.distribution_scope("data-parallel"):
            pass


@pytest.mark.parametrize("backend, distribute, setup", [
    ("tensorflow", "mirrored", "import tensorflow as tf; cpu = tf.config.list_physical_devices('CPU')[0]; "
                               "tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)"),
    ("jax", "data-parallel", "import jax; assert len(jax.devices()) == 2"),
])
def test_multi_device_training(shards, tmp_path, backend, distribute, setup):
    env = {**os.environ, "KERAS_BACKEND": backend, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    argv = ["--train", str(shards / "train"), "--out", str(tmp_path), "--epochs", "1", "--batch-size", "4",
            "--distribute", distribute, "--verbose", "0", *MODEL_ARGS]
    code = f"{setup}\nimport sys\nfrom p3d_keras.cli.train import main\nsys.exit(main({argv!r}))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.path.exists(tmp_path / "last.keras")
    if distribute == "mirrored":
        assert "CPU:1" in result.stderr  # MirroredStrategy logs its devices


def test_evaluation_report_against_hand_computed_values():
    scores = np.array([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1],    # video a (label 0): mean [0.4, 0.5, 0.1] -> 1
                       [0.1, 0.2, 0.7], [0.1, 0.1, 0.8],    # video b (label 2): -> 2
                       [0.5, 0.4, 0.1]])                    # video c (label 1): -> 0
    report = evaluation.evaluation_report(scores, [0, 0, 2, 2, 1], ["a", "a", "b", "b", "c"], ["x", "y", "z"])
    assert report["clip_hit@1"] == pytest.approx(3 / 5) and report["video_hit@1"] == pytest.approx(1 / 3)
    assert report["confusion_matrix"] == [[0, 1, 0], [1, 0, 0], [0, 0, 1]]
    assert report["per_class_accuracy"]["z"] == {"videos": 1, "accuracy": 1.0}
    assert report["per_class_accuracy"]["x"]["accuracy"] == 0.0


def test_evaluate_program(shards, trained, tmp_path):
    out = tmp_path / "eval"
    assert evaluate_cli.main(["--data", str(shards / "test"), "--out", str(out), "--num-clips", "2",
                            "--model", str(trained / "last.keras")]) == 0
    report = json.load(open(out / "report.json"))
    assert report["num_videos"] == 6 and report["num_clips"] == 12
    assert report["classes"] == ["jump", "run", "sit"]
    assert sum(map(sum, report["confusion_matrix"])) == 6
    assert 0 <= report["video_hit@1"] <= report["video_hit@5"] == 1.0
    assert (out / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"


def test_extract_features_program(shards, trained, tmp_path):
    out = tmp_path / "features.npz"
    assert extract_features_cli.main(["--data", str(shards / "test"), "--out", str(out), "--num-clips", "3",
                          "--model", str(trained / "last.keras")]) == 0
    data = np.load(out)
    assert data["clip_features"].shape == (18, 128) and data["video_features"].shape == (6, 128)
    first = data["video_ids"][0]
    np.testing.assert_allclose(data["video_features"][0],
                               data["clip_features"][data["clip_video_ids"] == first].mean(axis=0), rtol=1e-5)
    assert sorted(data["video_ids"]) == [f"v{i}" for i in range(6)]
    assert extract_features_cli.main(["--data", str(shards / "test"), "--out", str(tmp_path / "f.txt"), *MODEL_ARGS]) == 2


def test_predict_program(trained, tmp_path, capsys):
    from p3d_keras.jobs import export
    from p3d_keras.jobs import synthetic

    rng = np.random.default_rng(0)
    video = tmp_path / "clip.mp4"
    synthetic.write_video(video, synthetic.render_clip("move_left", rng, frames=24, size=48))
    assert predict_cli.main([str(video), "--model", str(trained / "last.keras"), "--labels",
                         str(trained.parent / "dummy")]) == 2  # a missing labels file is reported
    labels = tmp_path / "labels.txt"
    labels.write_text("jump\nrun\nsit\n")
    assert predict_cli.main([str(video), "--model", str(trained / "last.keras"), "--labels", str(labels),
                         "--top", "3", "--num-clips", "2"]) == 0
    printed = capsys.readouterr().out
    assert "clip.mp4" in printed and all(name in printed for name in ("jump", "run", "sit"))
    model = keras.saving.load_model(trained / "last.keras")
    saved = export.export_saved_model(model, tmp_path / "serving", labels=["jump", "run", "sit"], top_k=3,
                                      warmup=False)
    frames = predict.read_video(str(video))
    probabilities, top_labels = predict.saved_model_probabilities(frames, saved)
    assert probabilities.shape == (3,) and set(top_labels) == {"jump", "run", "sit"}
    np.testing.assert_allclose(probabilities, predict.video_probabilities(frames, model, num_clips=1), atol=1e-5)
    looped = predict.video_probabilities(frames[:8], model, num_clips=2)  # short videos loop, as in evaluation
    assert looped.shape == (3,) and np.isclose(looped.sum(), 1.0)


def test_demo_fast_mode(tmp_path):
    from p3d_keras.jobs import demo

    summary = demo.run_demo(str(tmp_path), demo.FAST)
    assert summary["test_videos"] == 16
    assert set(summary["p3d"]["pairs"]) == {"/".join(p) for p in demo.PAIRS}
    assert os.path.exists(os.path.join(summary["saved_model"], "saved_model.pb"))
    assert open(summary["picture"], "rb").read(4) == b"\x89PNG"
    assert "video accuracy" in demo.format_summary(summary)


def test_fine_tuning_a_preset_on_other_classes_keeps_the_trunk(shards, tmp_path, monkeypatch):
    import dataclasses

    from p3d_keras.weights import cache
    from p3d_keras.applications import PRESETS

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "home"))
    preset = dataclasses.replace(PRESETS["kinetics400"], name="tiny5", depth=(1, 1, 1, 1), width=4, classes=5,
                                 input_shape=(16, 32, 32, 3))
    monkeypatch.setitem(PRESETS, "tiny5", preset)
    source = P3DResNet((1, 1, 1, 1), width=4, input_shape=(16, 32, 32, 3), classes=5)
    os.makedirs(cache.cache_dir())
    source.save_weights(os.path.join(cache.cache_dir(), preset.filename))  # in the cache: no network
    model = training.model_for_classes(dataclasses.replace(SPEC, weights="tiny5"), classes=3)
    assert model.output_shape == (None, 3)
    for name in ("conv1", "res3a", "res5a"):
        for a, b in zip(model.get_layer(name).get_weights(), source.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------------------------
# Failing cleanly: optional extras, bad videos, bad numbers


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory):
    """An untrained 3-class tiny network: its .keras file and its SavedModel export."""
    root = tmp_path_factory.mktemp("tiny_classifier")
    model = P3DResNet((1, 1, 1, 1), width=4, input_shape=(16, 32, 32, 3), classes=3)
    model.save(root / "tiny.keras")
    saved = export.export_saved_model(model, root / "serving", labels=["jump", "run", "sit"], top_k=3,
                                      warmup=False)
    return root / "tiny.keras", saved


def test_evaluate_without_matplotlib_writes_the_report_and_skips_the_png(shards, tiny_classifier, tmp_path,
                                                                         monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    out = tmp_path / "eval"
    assert evaluate_cli.main(["--data", str(shards / "test"), "--out", str(out), "--num-clips", "1",
                            "--model", str(tiny_classifier[0])]) == 0
    assert json.load(open(out / "report.json"))["num_videos"] == 6
    assert not (out / "confusion_matrix.png").exists()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [f"{out / 'confusion_matrix.png'} not drawn: matplotlib is not installed "
                        "(pip install 'p3d_keras[plots]')"]


def write_audio_only(path):
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1600), np.int16), format="s16", layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)


def bad_video(kind, folder):
    """A path that is not a usable video, of the given `kind`."""
    from p3d_keras.jobs import synthetic

    rng = np.random.default_rng(0)
    path = folder / {"text": "notes.txt", "audio_only": "speech.wav", "folder": "clips.mp4"}.get(kind, f"{kind}.mp4")
    if kind == "corrupt":
        path.write_bytes(rng.bytes(5000))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind in ("text", "text_as_mp4"):
        path.write_text("not a video\n" * 50)  # FFmpeg decodes a .txt file as ANSI art
    elif kind == "audio_only":
        write_audio_only(path)
    elif kind == "folder":
        path.mkdir()
    elif kind in ("truncated", "short"):
        synthetic.write_video(path, synthetic.render_clip("move_left", rng, frames=24 if kind == "truncated" else 8,
                                                          size=48))
        if kind == "truncated":
            path.write_bytes(path.read_bytes()[:2000])
    return path


@pytest.mark.parametrize("kind, expected", [
    ("corrupt", "Expected a video file that PyAV can decode"),
    ("empty", "Expected a video file that PyAV can decode"),
    ("text", "not a video: a text file"),
    ("text_as_mp4", "Expected a video file that PyAV can decode"),
    ("audio_only", "not a video: no video stream"),
    ("truncated", "Expected a video file that PyAV can decode"),
    ("missing", "Expected a video file that PyAV can decode. Received: {path!r}: unreadable: No such file"),
    ("folder", "Expected a video file that PyAV can decode. Received: {path!r}: not a regular file"),
    ("short", "Expected at least 16 frames for the SavedModel"),
])
def test_predict_reports_a_bad_video_and_exits_2(kind, expected, tiny_classifier, tmp_path, caplog, capsys):
    path = str(bad_video(kind, tmp_path))
    model_file, saved = tiny_classifier
    source = ["--saved-model", saved] if kind == "short" else ["--model", str(model_file)]
    assert predict_cli.main([path, *source]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].startswith("p3d-predict: ") and repr(path) in errors[0]
    assert expected.format(path=path) in errors[0] and "Traceback" not in errors[0]
    if kind == "short":
        assert errors[0].endswith("Received: 8 frames")
    assert capsys.readouterr().out == ""


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
