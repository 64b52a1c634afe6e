"""A fine-tuned model folder carries its preprocessing (issue #17): every program that reads it
gives exactly what the same flags spelled out give, and a contradicting flag is an error naming both."""
import json

import numpy as np
import pytest
import tensorflow as tf

from p3d_keras.cli import evaluate as evaluate_cli
from p3d_keras.cli import export as export_cli
from p3d_keras.cli import extract_features as extract_features_cli
from p3d_keras.cli import train as train_cli
from p3d_keras.jobs import predict, synthetic
from p3d_keras.jobs.model_folder import MODEL_FILE, read_model_folder
from p3d_keras.jobs.models import ModelSpec
from program_fixtures import MODEL_ARGS


@pytest.fixture(scope="module")
def imagenet_run(shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("imagenet_run")
    assert train_cli.main(["--train", str(shards / "train"), "--val", str(shards / "test"), "--out", str(out),
                           "--epochs", "1", "--batch-size", "4", "--lr", "0.01", "--seed", "4", "--verbose", "0",
                           "--normalization", "imagenet", *MODEL_ARGS]) == 0
    return out


def folder_and_spelled_out(run):
    """The best model folder, and the same network as a plain .keras file with the flag spelled out."""
    folder = run / "best"
    return [["--model", str(folder)], ["--model", str(folder / MODEL_FILE), "--normalization", "imagenet"],
            ["--model", str(folder / MODEL_FILE), "--normalization", "caffe"]]


def test_the_folder_says_how_it_was_trained(imagenet_run):
    meta = read_model_folder(imagenet_run / "best").metadata
    assert meta.normalization == "imagenet" and meta.class_names == ("jump", "run", "sit")
    assert (meta.clip_length, meta.crop_size, meta.modality) == (16, 32, "rgb")


def test_extract_features_uses_the_folders_normalization(shards, imagenet_run, tmp_path):
    outputs = []
    for i, args in enumerate(folder_and_spelled_out(imagenet_run)):
        out = tmp_path / f"f{i}.npz"
        assert extract_features_cli.main(["--data", str(shards / "test"), "--out", str(out), "--num-clips", "2",
                                          *args]) == 0
        outputs.append(np.load(out)["clip_features"])
    np.testing.assert_array_equal(outputs[0], outputs[1])
    assert np.abs(outputs[0] - outputs[2]).max() > 1e-3  # caffe: other numbers


def test_evaluate_uses_the_folders_normalization(shards, imagenet_run, tmp_path):
    reports = []
    for i, args in enumerate(folder_and_spelled_out(imagenet_run)[:2]):
        assert evaluate_cli.main(["--data", str(shards / "test"), "--out", str(tmp_path / str(i)),
                                  "--num-clips", "2", *args]) == 0
        reports.append(json.loads((tmp_path / str(i) / "report.json").read_text()))
    assert reports[0] == reports[1] and reports[0]["classes"] == ["jump", "run", "sit"]


def test_export_carries_the_folders_preprocessing(imagenet_run, tmp_path):
    clip = tf.constant(np.random.default_rng(0).integers(0, 256, (1, 16, 40, 48, 3), dtype=np.uint8))
    outputs = []
    for i, args in enumerate(folder_and_spelled_out(imagenet_run)):
        assert export_cli.main(["--base-dir", str(tmp_path / str(i)), "--no-warmup", *args]) == 0
        serve = tf.saved_model.load(str(tmp_path / str(i) / "p3d" / "1")).signatures["serving_default"]
        outputs.append(serve(frames=clip)["probabilities"].numpy())
    np.testing.assert_array_equal(outputs[0], outputs[1])
    assert np.abs(outputs[0] - outputs[2]).max() > 1e-6
    exported = json.loads((tmp_path / "0" / "p3d" / "1" / "assets.extra" / "p3d_model.json").read_text())
    assert exported["normalization"] == "imagenet" and exported["class_names"] == ["jump", "run", "sit"]


def test_predict_uses_the_folders_normalization_and_labels(imagenet_run, tmp_path):
    video = tmp_path / "clip.mp4"
    synthetic.write_video(video, synthetic.render_clip("move_left", np.random.default_rng(1), frames=24, size=48))
    folder = imagenet_run / "best"
    results = [predict.predict_video(str(video), spec=ModelSpec(model=str(folder))).top(3),
               predict.predict_video(str(video), spec=ModelSpec(model=str(folder / MODEL_FILE)),
                                     normalization="imagenet").top(3),
               predict.predict_video(str(video), spec=ModelSpec(model=str(folder / MODEL_FILE)),
                                     normalization="caffe").top(3)]
    assert [label for _, label, _ in results[0]] != ["0", "1", "2"]  # the folder's class names
    assert [(i, p) for i, _, p in results[0]] == [(i, p) for i, _, p in results[1]]
    assert [p for *_, p in results[0]] != [p for *_, p in results[2]]


@pytest.mark.parametrize("program", ["evaluate", "extract", "export"])
def test_a_flag_that_contradicts_the_folder_exits_2_naming_both(program, shards, imagenet_run, tmp_path, caplog):
    folder = ["--model", str(imagenet_run / "best"), "--normalization", "caffe"]
    data = ["--data", str(shards / "test")]
    code = {"evaluate": lambda: evaluate_cli.main([*data, "--out", str(tmp_path / "e"), *folder]),
            "extract": lambda: extract_features_cli.main([*data, "--out", str(tmp_path / "f.npz"), *folder]),
            "export": lambda: export_cli.main(["--base-dir", str(tmp_path / "b"), *folder])}[program]()
    assert code == 2
    assert "normalization='imagenet'" in caplog.text and "normalization='caffe'" in caplog.text


def test_a_resize_rule_that_contradicts_the_folder_is_refused(imagenet_run, tmp_path, caplog):
    assert export_cli.main(["--base-dir", str(tmp_path), "--model", str(imagenet_run / "best"),
                            "--resize-short-side", "40"]) == 2
    assert "resize_short_side=36" in caplog.text and "resize_short_side=40" in caplog.text
