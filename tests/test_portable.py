"""ONNX Runtime, OpenVINO and LiteRT exports (`jobs.portable`): parity with Keras on uint8 clips
(probabilities and pool5 features), the contract each file carries, the runners' input checks,
`p3d-export --format`, and the quantised LiteRT variants' drift (reported, sanity-checked)."""
import json
import logging
import time

import keras
import numpy as np
import pytest

from p3d_keras.applications import P3DResNet
from p3d_keras.cli.export import main
from p3d_keras.core.normalization import normalize
from p3d_keras.jobs import models, portable
from p3d_keras.jobs.model_folder import ModelMetadata, P3DModel, describe_model

pytest.importorskip("onnxruntime")  # the [onnx], [openvino] and [litert] extras come with [test]

LABELS = ["archery", "bowling", "curling"]
CLIP = (16, 32, 32, 3)
SUFFIX = {name: fmt.suffix for name, fmt in portable.FORMATS.items()}
TOLERANCE = 1e-4  # float32 exports against Keras, probabilities and features

log = logging.getLogger(__name__)


def p3d_model(classifier_activation=None, **kwargs):
    """A tiny P3D classifier and its metadata (logits by default: the export adds the softmax)."""
    model = P3DResNet((1, 1, 1, 1), width=4, input_shape=CLIP, classes=len(LABELS),
                      classifier_activation=classifier_activation, **kwargs)
    return P3DModel(model, describe_model(model, normalization="caffe", class_names=LABELS), None)


def reference(loaded, clips):
    """What Keras computes from float clips normalised outside the network: probabilities, features."""
    x = normalize(clips.astype("float32"), loaded.metadata.normalization)
    outputs = loaded.model.predict(x, verbose=0)
    if not models.outputs_probabilities(loaded.model):
        outputs = keras.ops.convert_to_numpy(keras.ops.softmax(outputs))
    return {"probabilities": outputs, "features": models.feature_model(loaded.model).predict(x, verbose=0)}


def max_drift(outputs, expected):
    """max |delta| per output, and relative to the output's largest magnitude (`<name>/relative`)."""
    drift = {name: float(np.abs(outputs[name] - expected[name]).max()) for name in expected}
    return {**drift, **{f"{name}/relative": drift[name] / float(np.abs(expected[name]).max()) for name in expected}}


@pytest.fixture(scope="module")
def tiny():
    return p3d_model()


@pytest.fixture(scope="module")
def clips():
    return np.random.default_rng(0).integers(0, 256, size=(3, *CLIP), dtype=np.uint8)


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    """The tiny P3D as ONNX, OpenVINO and LiteRT float32, with features."""
    out = tmp_path_factory.mktemp("portable")
    return {name: portable.export_portable(tiny, out / f"tiny{SUFFIX[name]}", format=name, features=True)
            for name in ("onnx", "openvino", "litert")}


@pytest.mark.parametrize("name", ["onnx", "openvino"])
def test_float32_matches_keras(exported, tiny, clips, name):
    runner = portable.load_portable(exported[name])
    outputs = runner(clips)
    expected = reference(tiny, clips)
    log.info("%s float32 max |delta| against Keras: %s", name, max_drift(outputs, expected))
    assert sorted(outputs) == ["features", "probabilities"]
    for key, value in expected.items():
        assert outputs[key].dtype == np.float32 and outputs[key].shape == value.shape
        np.testing.assert_allclose(outputs[key], value, atol=TOLERANCE, rtol=TOLERANCE)


def test_litert_float32_matches_keras_and_has_builtin_operators_only(exported, tiny, clips):
    """The LiteRT file holds the 2D-ops form (`applications.as_2d_ops`): builtin 2D operators only."""
    outputs = portable.load_portable(exported["litert"])(clips)  # batch 3 on a batch-1 model: clip by clip
    expected = reference(tiny, clips)
    log.info("litert float32 max |delta| against Keras: %s", max_drift(outputs, expected))
    for key, value in expected.items():
        np.testing.assert_allclose(outputs[key], value, atol=TOLERANCE, rtol=TOLERANCE)
    operators = portable.litert_operators(exported["litert"])
    assert operators["custom"] == [] and "CONV_2D" in operators["builtin"]
    assert not [name for name in operators["builtin"] if "3D" in name], operators


@pytest.mark.parametrize("precision", ["float16", "int8-dynamic", "int8"])
def test_litert_quantised_drift_is_reported(tiny, clips, tmp_path, precision):
    """Not asserted against a bound: the drift and top-1 agreement are logged; only sanity is checked."""
    calibration = None
    if precision == "int8":  # as the reader gives them: (uint8 clips, labels) batches
        rng = np.random.default_rng(1)
        calibration = [(rng.integers(0, 256, size=(2, *CLIP), dtype=np.uint8), np.zeros(2)) for _ in range(4)]
    path = portable.export_portable(tiny, tmp_path / f"{precision}.tflite", format="litert", precision=precision,
                                    features=True, calibration=calibration)
    runner = portable.load_portable(path)
    outputs, expected = runner(clips), reference(tiny, clips)
    agreement = float(np.mean(outputs["probabilities"].argmax(-1) == expected["probabilities"].argmax(-1)))
    log.info("litert %s: top-1 agreement %.2f, max |delta| %s", precision, agreement, max_drift(outputs, expected))
    assert runner.contract["precision"] == precision
    assert portable.litert_operators(path)["custom"] == []
    assert outputs["probabilities"].shape == (len(clips), len(LABELS))
    assert outputs["features"].shape == expected["features"].shape
    np.testing.assert_allclose(outputs["probabilities"].sum(-1), 1, atol=1e-2)
    assert np.isfinite(outputs["features"]).all()


@pytest.mark.parametrize("name", ["onnx", "openvino", "litert"])
def test_contract_round_trip(exported, tiny, name):
    contract = portable.load_portable(exported[name]).contract
    expected = portable.portable_contract(tiny.metadata, format=name, precision="float32", features=True)
    assert contract == json.loads(json.dumps(expected))
    assert contract["class_names"] == LABELS and contract["normalized_inside"] is True
    assert contract["channel_order"] == "RGB" and contract["normalization"] == "caffe"
    assert contract["input"]["shape"][1:] == [16, 32, 32, 3] and contract["outputs"] == ["probabilities", "features"]
    fields = {key: contract[key] for key in ModelMetadata.__dataclass_fields__}
    assert ModelMetadata.from_json(fields, name) == tiny.metadata


BAD_CLIPS = {
    "float32": np.zeros((1, *CLIP), np.float32),
    "rank 4": np.zeros(CLIP, np.uint8),
    "15 frames": np.zeros((1, 15, 32, 32, 3), np.uint8),
    "2 channels": np.zeros((1, 16, 32, 32, 2), np.uint8),
    "40 px": np.zeros((1, 16, 40, 40, 3), np.uint8),
    "no clip": np.zeros((0, *CLIP), np.uint8),
    "a list": [[0]],
}


@pytest.mark.parametrize("name", ["onnx", "openvino", "litert"])
@pytest.mark.parametrize("bad", BAD_CLIPS, ids=list(BAD_CLIPS))
def test_runner_rejects_bad_clips_naming_the_expected_shape(exported, name, bad):
    runner = portable.load_portable(exported[name])
    with pytest.raises(ValueError, match=r"Expected uint8 clips of shape \[batch, 16, 32, 32, 3\].*Received"):
        runner(BAD_CLIPS[bad])


def test_a_network_normalising_inside_is_not_normalised_twice(clips, tmp_path):
    model = P3DResNet((1, 1, 1, 1), width=4, input_shape=CLIP, classes=len(LABELS), include_preprocessing=True,
                      normalization="caffe")
    loaded = P3DModel(model, describe_model(model, normalization="caffe", class_names=LABELS), None)
    path = portable.export_portable(loaded, tmp_path / "raw.onnx", format="onnx")
    outputs = portable.load_portable(path)(clips)
    np.testing.assert_allclose(outputs["probabilities"], model.predict(clips, verbose=0), atol=TOLERANCE)
    other = P3DModel(model, describe_model(model, normalization="imagenet", class_names=LABELS), None)
    with pytest.raises(ValueError, match="normalises its frames as its metadata says"):
        portable.export_portable(other, tmp_path / "other.onnx", format="onnx")


@pytest.mark.parametrize("kwargs, match", [
    (dict(format="torchscript"), "Invalid format"),
    (dict(format="onnx", precision="float16"), "precision in \\['float32'\\] for format='onnx'"),
    (dict(format="openvino", path="model.onnx"), "a path ending in '.xml'"),
    (dict(format="litert", precision="int8"), "calibration clips with precision='int8'"),
    (dict(format="litert", calibration=[np.zeros((1, *CLIP), np.uint8)]), "calibration clips with precision='int8'"),
    (dict(format="litert", precision="int8", calibration=[np.zeros((1, 8, 32, 32, 3), np.uint8)]),
     "Expected uint8 calibration clips of shape \\[batch, 16, 32, 32, 3\\]"),
    (dict(format="litert", precision="int8", calibration=[]), "at least one calibration clip"),
])
def test_export_rejects_bad_arguments(tiny, tmp_path, kwargs, match):
    kwargs = {"path": f"model{SUFFIX.get(kwargs['format'], '.onnx')}", **kwargs}
    with pytest.raises(ValueError, match=match):
        portable.export_portable(tiny, tmp_path / kwargs.pop("path"), **kwargs)


def test_load_rejects_what_is_not_an_export(tmp_path, tiny, monkeypatch):
    with pytest.raises(ValueError, match="an export file ending in one of"):
        portable.load_portable(tmp_path / "model.pt")
    with pytest.raises(ValueError, match="an existing export file"):
        portable.load_portable(tmp_path / "missing.onnx")
    # A LiteRT file without the contract: the converter's own output.
    monkeypatch.setattr(portable, "_with_litert_metadata", lambda flatbuffer, key, value: flatbuffer)
    path = portable.export_portable(tiny, tmp_path / "bare.tflite", format="litert")
    with pytest.raises(ValueError, match="carrying its contract under the metadata key 'p3d_contract'"):
        portable.load_portable(path)


@pytest.mark.parametrize("name", list(portable.FORMATS))
@pytest.mark.parametrize("content", [b"", b"garbage, not a model", b"\x00" * 64], ids=["empty", "text", "zeros"])
def test_load_rejects_a_corrupt_file_naming_it(tmp_path, name, content):
    path = tmp_path / f"model{SUFFIX[name]}"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"Expected an export file that the {name} runtime reads.*{path.name}"):
        portable.load_portable(path)


def test_p3d_export_program_writes_a_versioned_onnx_file(tmp_path, clips):
    args = ["--base-dir", str(tmp_path), "--name", "tiny", "--depth", "1,1,1,1", "--width", "4", "--size", "32",
            "--classes", "3", "--format", "onnx", "--features"]
    assert main(args) == 0
    runner = portable.load_portable(tmp_path / "tiny" / "1" / "model.onnx")
    outputs = runner(clips)
    assert runner.contract["outputs"] == ["probabilities", "features"] and runner.contract["export_format"] == "onnx"
    np.testing.assert_allclose(outputs["probabilities"].sum(-1), 1, atol=1e-5)
    assert main(args + ["--version", "1"]) == 2  # an existing version is never overwritten


@pytest.mark.parametrize("flags", [["--format", "onnx", "--top-k", "2"], ["--precision", "float32"],
                                   ["--features"], ["--format", "litert", "--no-warmup"]])
def test_p3d_export_program_rejects_flags_of_the_other_kind(tmp_path, flags, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--base-dir", str(tmp_path), "--depth", "1,1,1,1", "--width", "4", "--size", "32", *flags])
    assert exit_.value.code == 2 and "cannot be used with --format" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("name", ["onnx", "openvino", "litert"])
def test_p3d63_float32_matches_keras(tmp_path, name):
    model = P3DResNet(63, input_shape=(16, 160, 160, 3), classes=400, classifier_activation=None)
    loaded = P3DModel(model, describe_model(model, normalization="caffe"), None)
    clips = np.random.default_rng(2).integers(0, 256, size=(1, 16, 160, 160, 3), dtype=np.uint8)
    start = time.perf_counter()
    path = portable.export_portable(loaded, tmp_path / f"p3d63{SUFFIX[name]}", format=name, features=True)
    outputs = portable.load_portable(path)(clips)
    expected = reference(loaded, clips)
    log.info("P3D-63 %s float32 (export + run %.0f s) max |delta| against Keras: %s", name,
             time.perf_counter() - start, max_drift(outputs, expected))
    for key, value in expected.items():
        np.testing.assert_allclose(outputs[key], value, atol=TOLERANCE, rtol=TOLERANCE)


def test_exports_run_over_a_video_as_the_keras_network_does(exported, tiny, tmp_path):
    """`PortableInference` (and `p3d-predict --exported`) streams a video through each format: the
    same windows and times as `VideoInference`, probabilities and pool5 within the formats' tolerance."""
    from p3d_keras.jobs import predict, synthetic
    from p3d_keras.jobs.video_inference import VideoInference

    video = tmp_path / "v.mp4"
    synthetic.write_video(video, synthetic.render_clip("move_left", np.random.default_rng(0), frames=40, size=40))
    expected = VideoInference(tiny, ("probabilities", "pool5")).run(video, stride=8)
    for name, path in exported.items():
        inference = portable.PortableInference(portable.load_portable(path), batch_size=2)
        assert inference.outputs == ("probabilities", "pool5") and inference.metadata == tiny.metadata
        result = inference.run(video, stride=8)
        np.testing.assert_array_equal(result.times, expected.times)
        for key in ("probabilities", "pool5"):
            np.testing.assert_allclose(result.outputs[key], expected.outputs[key], atol=TOLERANCE, rtol=TOLERANCE)
        prediction = predict.predict_video(str(video), saved_model=str(path), stride=8)
        np.testing.assert_allclose(prediction.mean, expected.mean["probabilities"], atol=TOLERANCE)
        assert prediction.class_names == tuple(LABELS)
    from p3d_keras.cli import predict as predict_cli

    assert predict_cli.main([str(video), "--exported", str(exported["onnx"]), "--stride", "8", "--top", "2"]) == 0
