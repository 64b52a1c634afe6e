"""Training (`jobs.training`, `p3d-train`): models and logs written, uint8 vs float32 input, resume,
partial BN, optimizers and schedules, several devices, fine-tuning a preset on other classes."""
import csv
import dataclasses
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest

from p3d_keras.applications import PRESETS, P3DResNet
from p3d_keras.cli import train as train_cli
from p3d_keras.core.layers import Normalize
from p3d_keras.jobs import training
from p3d_keras.jobs.model_folder import MODEL_FILE, read_model_folder
from p3d_keras.weights import cache
from program_fixtures import MODEL_ARGS, REPO, SPEC


def test_train_writes_models_and_logs(trained):
    assert {"last", "best", "log.csv", "tensorboard"} <= set(os.listdir(trained))
    rows = list(csv.DictReader(open(trained / "log.csv")))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert {"loss", "accuracy", "val_accuracy", "top5"} <= set(rows[0])
    last = read_model_folder(trained / "last")
    model = last.model
    assert last.metadata.class_names == ("jump", "run", "sit") and last.metadata.normalization == "caffe"
    assert last.metadata.provenance["training"]["epochs"] == 2
    best = read_model_folder(trained / "best").metadata.evaluation
    assert best["protocol"]["num_clips"] == 1 and 0 <= best["results"]["val_accuracy"] <= 1
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
        saved = read_model_folder(out / "last").model
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
    # oneDNN on (as p3d-demo runs, and TensorFlow's default on AVX-512 CPUs): grappler's remapper
    # would log "remapper failed ... Mutation::Apply error" for the training graph (training.without_remapper)
    env = {**os.environ, "KERAS_BACKEND": backend, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "TF_ENABLE_ONEDNN_OPTS": "1"}
    argv = ["--train", str(shards / "train"), "--out", str(tmp_path), "--epochs", "1", "--batch-size", "4",
            "--distribute", distribute, "--verbose", "0", *MODEL_ARGS]
    code = f"{setup}\nimport sys\nfrom p3d_keras.cli.train import main\nsys.exit(main({argv!r}))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.path.exists(tmp_path / "last" / MODEL_FILE)
    if distribute == "mirrored":
        assert "CPU:1" in result.stderr  # MirroredStrategy logs its devices
    assert not re.search(r"^E\d{4} |remapper failed", result.stderr, re.MULTILINE), result.stderr[-3000:]


def test_fine_tuning_a_preset_on_other_classes_keeps_the_trunk(shards, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "home"))
    preset = dataclasses.replace(PRESETS["kinetics400"], name="tiny5", depth=(1, 1, 1, 1), width=4, classes=5,
                                 input_shape=(16, 32, 32, 3))
    monkeypatch.setitem(PRESETS, "tiny5", preset)
    source = P3DResNet((1, 1, 1, 1), width=4, input_shape=(16, 32, 32, 3), classes=5)
    os.makedirs(cache.cache_dir())
    source.save_weights(os.path.join(cache.cache_dir(), preset.filename))  # in the cache: no network
    loaded = training.model_for_classes(dataclasses.replace(SPEC, weights="tiny5"), classes=3)
    model = loaded.model
    assert model.output_shape == (None, 3) and loaded.metadata.normalization == "caffe"  # the preset's
    for name in ("conv1", "res3a", "res5a"):
        for a, b in zip(model.get_layer(name).get_weights(), source.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)


def test_training_does_not_make_keras_warn(shards, tmp_path):
    """Not that shuffle=True is ignored (the reader shuffles), nor that the validation data "ran out"."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        training.train(SPEC, train=str(shards / "train"), val=str(shards / "test"), out=str(tmp_path), epochs=2,
                       batch_size=4, verbose=0)
    assert not [str(w.message) for w in caught if "shuffle" in str(w.message) or "ran out" in str(w.message)]
