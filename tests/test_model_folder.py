"""p3d_keras.jobs.model_folder: a model folder written and read back (the same outputs, the same
metadata), replaced whole or refused, each bad folder named with what was expected and found, and
`load_model` of a folder, a bare .keras file, a preset and (in a fresh process) through
`p3d_keras.load_model`."""
import dataclasses
import json
import logging
import os
import pathlib
import re
import subprocess
import sys

import keras
import numpy as np
import pytest

import p3d_keras
from p3d_keras.applications import PRESETS, P3DResNet, load_labels
from p3d_keras.core.files import sha256_of
from p3d_keras.jobs import model_folder
from p3d_keras.jobs.clip_input import default_resize_short_side
from p3d_keras.jobs.model_folder import METADATA_FILE, MODEL_FILE, ModelFolderError

TINY = dict(depth=(1, 1, 1, 1), width=4, input_shape=(16, 32, 32, 3))
CLIP = np.random.default_rng(0).uniform(0, 255, size=(2, 16, 32, 32, 3)).astype("float32")
NAMES = ["archery", "bowling", "curling"]


def tiny(**kw):
    return P3DResNet(**{**TINY, "classes": 3, **kw})


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny P3DResNet saved as a model folder with every field given; (folder, model)."""
    model = tiny()
    folder = tmp_path_factory.mktemp("saved") / "best"
    model_folder.save_model_folder(
        folder, model, normalization="imagenet", class_names=NAMES, resize_short_side=40,
        evaluation={"protocol": {"clips": 10, "crops": "center"}, "results": {"clip_top1": 0.5}},
        provenance={"preset": "kinetics400", "training": {"epochs": 2}})
    return folder, model


@pytest.fixture
def copy(saved, tmp_path):
    """A writable copy of the saved folder; returns (folder, its metadata as a dict)."""
    folder = tmp_path / "copy"
    folder.mkdir()
    for name in (MODEL_FILE, METADATA_FILE):
        (folder / name).write_bytes((saved[0] / name).read_bytes())
    return folder, json.loads((folder / METADATA_FILE).read_text())


def rewrite(folder, **changes):
    """Change fields of the folder's JSON (the network untouched, so its sha256 still holds)."""
    data = json.loads((folder / METADATA_FILE).read_text())
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict) and value:
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    (folder / METADATA_FILE).write_text(json.dumps(data))


def test_round_trip_same_outputs_and_metadata(saved):
    folder, model = saved
    p3d = model_folder.read_model_folder(folder)
    np.testing.assert_array_equal(p3d.model(CLIP).numpy(), model(CLIP).numpy())
    assert p3d.path == str(folder) and sorted(os.listdir(folder)) == [MODEL_FILE, METADATA_FILE]
    meta = p3d.metadata
    assert meta.architecture == dict(depth=(1, 1, 1, 1), width=4, graph="caffe", modality="rgb", temporal=True,
                                     classes=3, dropout_rate=0.5)
    assert (meta.format_version, meta.modality, meta.clip_length, meta.crop_size, meta.channels) == \
        (1, "rgb", 16, 32, 3)
    assert (meta.normalization, meta.resize_short_side, meta.class_names) == ("imagenet", 40, tuple(NAMES))
    assert meta.evaluation == {"protocol": {"clips": 10, "crops": "center"}, "results": {"clip_top1": 0.5}}
    assert meta.provenance["preset"] == "kinetics400" and meta.provenance["training"] == {"epochs": 2}
    assert set(meta.provenance["versions"]) == {"p3d_keras", "keras", "tensorflow"}
    assert meta.provenance["versions"]["p3d_keras"] == p3d_keras.__version__ and "created" in meta.provenance
    assert meta.weights_sha256 == sha256_of(folder / MODEL_FILE)
    on_disk = json.loads((folder / METADATA_FILE).read_text())
    assert on_disk == meta.to_json() and on_disk["architecture"]["depth"] == [1, 1, 1, 1]
    assert model_folder.ModelMetadata.from_json(on_disk, "x") == meta


def test_describe_model_reads_the_network():
    meta = model_folder.describe_model(P3DResNet(199, weights=None, input_shape=(32, 64, 64, 2), modality="flow",
                                                 include_top=False, pooling="avg", graph="pytorch", temporal=False,
                                                 width=8),
                                       normalization="flow")
    assert meta.architecture == dict(depth=199, width=8, graph="pytorch", modality="flow", temporal=False,
                                     classes=None, dropout_rate=0.0)
    assert (meta.clip_length, meta.crop_size, meta.channels, meta.modality) == (32, 64, 2, "flow")
    assert meta.resize_short_side == default_resize_short_side(64) and meta.weights_sha256 == ""
    inputs = keras.Input((16, 32, 32, 3))
    foreign = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling3D()(inputs)))
    assert model_folder.describe_model(foreign, normalization="unit", class_names=["x", "y"]).architecture == {}


@pytest.mark.parametrize("kwargs, message", [
    (dict(normalization="flow"), "Expected a normalization for 3 channels. Received: normalization='flow'"),
    (dict(normalization="nope"), "Expected normalization in ['caffe', 'flow', 'imagenet', 'imagenet_caffe', 'unit']. "
                                 "Received: normalization='nope'"),
    (dict(normalization="caffe", class_names=["a", "b"]), "Expected one class name per output of the classifier "
                                                          "(output shape (None, 3)). Received: 2 class names"),
    (dict(normalization="caffe", resize_short_side=20), "Expected resize_short_side >= crop_size=32. Received: "
                                                        "resize_short_side=20"),
])
def test_describe_model_refuses_what_does_not_fit(kwargs, message):
    with pytest.raises(ModelFolderError, match=re.escape(message)):
        model_folder.describe_model(tiny(), **kwargs)


def test_an_existing_model_folder_is_replaced_anything_else_refused(saved, tmp_path):
    folder = tmp_path / "best"
    model_folder.save_model_folder(folder, saved[1], normalization="caffe")
    other = tiny(classes=2)
    assert model_folder.save_model_folder(folder, other, normalization="unit") == str(folder)
    p3d = model_folder.read_model_folder(folder)
    np.testing.assert_array_equal(p3d.model(CLIP).numpy(), other(CLIP).numpy())
    assert p3d.metadata.normalization == "unit" and sorted(os.listdir(tmp_path)) == ["best"]  # nothing left beside
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(ModelFolderError, match=re.escape(f"{tmp_path / 'notes'}: Expected a new path or an existing "
                                                         f"model folder (holding {METADATA_FILE})")):
        model_folder.save_model_folder(tmp_path / "notes", other, normalization="unit")
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"


def test_a_failed_write_leaves_the_old_folder_and_nothing_else(saved, tmp_path, monkeypatch):
    folder = tmp_path / "best"
    model_folder.save_model_folder(folder, saved[1], normalization="caffe")
    before = {name: (folder / name).read_bytes() for name in os.listdir(folder)}
    model = tiny()
    monkeypatch.setattr(model, "save", lambda path: (open(path, "wb").write(b"half"), 1 / 0))
    with pytest.raises(ZeroDivisionError):
        model_folder.save_model_folder(folder, model, normalization="imagenet")
    with pytest.raises(ZeroDivisionError):
        model_folder.save_model_folder(tmp_path / "new", model, normalization="imagenet")
    assert sorted(os.listdir(tmp_path)) == ["best"]
    assert {name: (folder / name).read_bytes() for name in os.listdir(folder)} == before


def test_a_failed_rename_puts_the_old_folder_back(saved, tmp_path, monkeypatch):
    folder = tmp_path / "best"
    model_folder.save_model_folder(folder, saved[1], normalization="caffe")
    before = {name: (folder / name).read_bytes() for name in os.listdir(folder)}
    real_replace = os.replace

    def replace(src, dst):
        if pathlib.Path(src).name.startswith("best.tmp-"):
            raise OSError("disk gone")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="disk gone"):
        model_folder.save_model_folder(folder, tiny(), normalization="imagenet")
    assert sorted(os.listdir(tmp_path)) == ["best"]
    assert {name: (folder / name).read_bytes() for name in os.listdir(folder)} == before


def test_metadata_that_contradicts_the_model_is_not_written(tmp_path):
    meta = model_folder.describe_model(tiny(), normalization="caffe")
    with pytest.raises(ModelFolderError, match=re.escape("Expected a network taking (T, H, W, C) = (16, 32, 32, 3)")):
        model_folder.save_model_folder(tmp_path / "m", tiny(input_shape=(32, 32, 32, 3)), meta)
    assert not (tmp_path / "m").exists()


def test_a_folder_without_json(copy):
    folder, _ = copy
    (folder / METADATA_FILE).unlink()
    with pytest.raises(ModelFolderError, match=re.escape(f"{folder}: Expected a P3D model folder holding "
                                                         f"{METADATA_FILE} (and {MODEL_FILE}). Received: a folder "
                                                         f"without {METADATA_FILE} (files: ['{MODEL_FILE}'])")):
        model_folder.read_model_folder(folder)


def test_malformed_json(copy):
    folder, _ = copy
    (folder / METADATA_FILE).write_text('{"format_version": 1,')
    with pytest.raises(ModelFolderError, match=re.escape(f"{folder / METADATA_FILE}: Expected JSON model metadata. "
                                                         "Received: malformed JSON (")):
        model_folder.read_model_folder(folder)


def test_a_newer_format_version(copy):
    folder, _ = copy
    rewrite(folder, format_version=2)
    with pytest.raises(ModelFolderError, match=re.escape(f"{folder / METADATA_FILE}: Expected format_version <= 1 ")
                       + ".*upgrade p3d_keras.*" + re.escape("Received: format_version=2")):
        model_folder.read_model_folder(folder)


def test_weights_that_do_not_match_their_sha256(copy):
    folder, data = copy
    weights = bytearray((folder / MODEL_FILE).read_bytes())
    weights[-100] ^= 1
    (folder / MODEL_FILE).write_bytes(bytes(weights))
    with pytest.raises(ModelFolderError, match=re.escape(
            f"{folder / MODEL_FILE}: Expected sha256 {data['weights_sha256']} (from {METADATA_FILE}). Received: a "
            f"file with sha256 {sha256_of(folder / MODEL_FILE)} (changed or damaged)")):
        model_folder.read_model_folder(folder)
    (folder / MODEL_FILE).unlink()
    with pytest.raises(ModelFolderError, match=re.escape(f"{folder}: Expected {MODEL_FILE} beside {METADATA_FILE}")):
        model_folder.read_model_folder(folder)


@pytest.mark.parametrize("changes, message", [
    # 3 channels declared (an RGB model), 2 in the network: see test_channels_declared_..._network
    (dict(clip_length=32), "Expected a network taking (T, H, W, C) = (32, 32, 32, 3) (clip_length, crop_size, "
                           "crop_size, channels). Received: a network taking (16, 32, 32, 3)"),
    (dict(crop_size=30, resize_short_side=36), "Expected a network taking (T, H, W, C) = (16, 30, 30, 3)"),
    (dict(class_names=["a", "b"]), "Expected 3 class_names (architecture classes=3). Received: 2 class names"),
    (dict(class_names=["a", "b"], architecture={}), "Expected a classifier with 2 outputs (one per class name). "
                                                   "Received: a network with output shape (None, 3)"),
    (dict(architecture={"width": 8, "graph": "pytorch"}),
     "Expected a network with the declared architecture. Received: width=4 in the network, width=8 declared, "
     "graph='caffe' in the network, graph='pytorch' declared"),
    (dict(channels=2), "Expected channels=3 for modality='rgb'. Received: channels=2"),
    (dict(normalization="flow"), "Expected a normalization for 3 channels. Received: normalization='flow'"),
    (dict(modality="depth"), "Expected modality in ['flow', 'rgb']. Received: modality='depth'"),
    (dict(clip_length="16"), "Expected clip_length to be a positive integer. Received: clip_length='16'"),
    (dict(weights_sha256="abc"), "Expected weights_sha256, 64 lowercase hex digits. Received: weights_sha256='abc'"),
    (dict(extra=1), "Expected exactly the keys ['format_version', "),
])
def test_metadata_that_contradicts_itself_or_the_network(copy, changes, message):
    folder, _ = copy
    rewrite(folder, **changes)
    with pytest.raises(ModelFolderError, match=re.escape(message)) as error:
        model_folder.read_model_folder(folder)
    assert str(error.value).startswith(str(folder))


def test_channels_declared_three_found_two_in_the_network(tmp_path):
    folder = tmp_path / "flow"
    model_folder.save_model_folder(folder, tiny(modality="flow", input_shape=(16, 32, 32, 2)), normalization="flow")
    rewrite(folder, modality="rgb", channels=3, normalization="caffe", architecture={"modality": "rgb"})
    with pytest.raises(ModelFolderError, match=re.escape(f"{folder}: Expected a network taking (T, H, W, C) = "
                                                         "(16, 32, 32, 3) (clip_length, crop_size, crop_size, "
                                                         "channels). Received: a network taking (16, 32, 32, 2)")):
        model_folder.read_model_folder(folder)


def test_load_model_of_a_folder_and_of_a_bare_keras_file(saved, tmp_path, caplog):
    folder, model = saved
    assert model_folder.load_model(folder).metadata == model_folder.read_model_folder(folder).metadata
    bare = tmp_path / "bare.keras"
    model.save(bare)
    with caplog.at_level(logging.WARNING, logger="p3d_keras"):
        p3d = model_folder.load_model(str(bare))
    (record,) = [r for r in caplog.records if r.name.startswith("p3d_keras")]
    assert record.levelno == logging.WARNING and str(bare) in record.getMessage()
    assert "preprocessing defaults are assumed (normalization='caffe'" in record.getMessage()
    np.testing.assert_array_equal(p3d.model(CLIP).numpy(), model(CLIP).numpy())
    assert p3d.path is None and p3d.metadata.normalization == "caffe" and p3d.metadata.class_names is None
    assert p3d.metadata.architecture["classes"] == 3 and p3d.metadata.provenance["assumed_defaults"] is True


def test_load_model_of_a_preset(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    source = P3DResNet(**TINY, classes=400, graph="pytorch")
    preset = dataclasses.replace(PRESETS["kinetics400_pytorch"], name="tiny", depth=TINY["depth"], width=4,
                                 input_shape=TINY["input_shape"], url=None)
    cached = tmp_path / "keras_home" / "models" / preset.filename
    cached.parent.mkdir(parents=True)
    source.save_weights(cached)
    monkeypatch.setitem(PRESETS, "tiny", dataclasses.replace(preset, sha256=sha256_of(cached)))
    p3d = model_folder.load_model("tiny")
    np.testing.assert_allclose(p3d.model(CLIP).numpy(), source(CLIP).numpy(), rtol=1e-6, atol=1e-7)
    meta = p3d.metadata
    assert p3d.path is None and meta.normalization == "imagenet" and meta.class_names == load_labels("kinetics400")
    assert meta.architecture == dict(depth=(1, 1, 1, 1), width=4, graph="pytorch", modality="rgb", temporal=True,
                                     classes=400, dropout_rate=0.5)
    assert meta.provenance["preset"] == "tiny" and meta.provenance["original_file"] == preset.original_file


def test_load_model_of_anything_else_says_what_it_takes(tmp_path):
    with pytest.raises(ModelFolderError, match=re.escape("Expected a model folder, a .keras file, a preset name (one "
                                                         f"of {sorted(PRESETS)}) or a hub handle hf://owner/name"
                                                         f"[@revision]. Received: '{tmp_path / 'x.keras'}'")):
        model_folder.load_model(tmp_path / "x.keras")


FRESH = """
import json, sys
import p3d_keras
assert "keras" not in sys.modules and "tensorflow" not in sys.modules, "import p3d_keras imported Keras"
import numpy as np
p3d = p3d_keras.load_model(sys.argv[1])
clip = np.random.default_rng(0).uniform(0, 255, size=(2, 16, 32, 32, 3)).astype("float32")
print(json.dumps({"outputs": p3d.model(clip).numpy().tolist(), "class_names": p3d.metadata.class_names,
                  "imported": sorted(m for m in sys.modules if m.startswith("p3d_keras."))}))
"""


def test_load_model_in_a_fresh_process_that_imports_nothing_else(saved):
    folder, model = saved
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", FRESH, str(folder)], capture_output=True, text=True, env=env,
                          timeout=300, cwd=pathlib.Path(folder).parent)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    np.testing.assert_array_equal(np.array(report["outputs"], dtype="float32"), model(CLIP).numpy())
    assert report["class_names"] == NAMES and "p3d_keras.jobs.model_folder" in report["imported"]


def test_import_p3d_keras_alone_stays_free_of_keras():
    code = "import sys, p3d_keras; print('keras' in sys.modules, 'tensorflow' in sys.modules, p3d_keras.__all__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.split()[:2] == ["False", "False"] and "'load_model'" in done.stdout
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        p3d_keras.nothing  # noqa: B018
    assert p3d_keras.load_model is model_folder.load_model
