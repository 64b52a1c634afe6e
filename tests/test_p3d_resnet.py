"""P3DResNet family: structure, arguments, input rules, mixed precision, bad input, and
`include_preprocessing` (uint8 clips in, the model's own `Normalize` first)."""
import dataclasses
import inspect

import keras
import numpy as np
import pytest
from keras import ops

from p3d_keras.applications import (PRESETS, P3DResNet, P3DResNet63, P3DResNet131, P3DResNet199, p3d_resnet,
                                    preprocess_input)
from p3d_keras.applications.p3d_resnet import block_kinds, block_suffixes
from p3d_keras.core.files import sha256_of
from p3d_keras.weights import cache

TINY = dict(depth=(1, 1, 1, 1), width=4, input_shape=(16, 32, 32, 3), weights=None)


def trainable(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


@pytest.mark.slow
@pytest.mark.parametrize("build, kwargs, count", [
    (P3DResNet199, {}, 66_492_240),
    (P3DResNet199, dict(classes=487), 66_670_503),
    (P3DResNet199, dict(modality="flow"), 66_489_104),
    (P3DResNet131, {}, 48_088_400),
    (P3DResNet63, {}, 25_745_232),
])
def test_parameter_counts(build, kwargs, count):
    model = build(**kwargs)
    assert trainable(model) == count
    assert model.output_shape == (None, kwargs.get("classes", 400))


def test_p3d199_block_kinds_follow_the_paper():
    kinds = block_kinds((3, 8, 36, 3))
    p3d = [k for stage in kinds[:3] for k in stage]
    assert (p3d.count("A"), p3d.count("B"), p3d.count("C")) == (16, 16, 15)
    assert kinds[2][0] == "C" and kinds[3] == ["2D"] * 3
    assert block_suffixes(8) == ["a"] + [f"b{i}" for i in range(1, 8)]
    assert block_suffixes(3) == ["a", "b", "c"]


def test_p3d63_layer_names_and_stage_shapes():
    model = P3DResNet63(include_top=False)
    names = [layer.name for layer in model.layers]
    assert names[names.index("pool1") + 1:names.index("pool1") + 4] == ["res2a", "res2b", "res2c"]
    assert model.get_layer("res4f").output.shape == (None, 2, 10, 10, 1024)
    assert model.get_layer("pool4").output.shape == (None, 1, 10, 10, 1024)
    assert model.output_shape == (None, 1, 5, 5, 2048)


@pytest.mark.parametrize("shape, out", [((32, 32, 32, 3), (None, 2, 1, 1, 128)),
                                        ((16, 33, 47, 3), (None, 1, 1, 2, 128)),
                                        ((48, 64, 40, 3), (None, 3, 2, 2, 128))])
def test_any_multiple_of_16_frames_and_frame_size_at_least_32(shape, out):
    model = P3DResNet(**{**TINY, "input_shape": shape}, include_top=False)
    assert model.output_shape == out
    clip = np.zeros((1,) + shape, "float32")
    assert tuple(model(clip).shape) == (1,) + out[1:]


def test_pooling_gives_clip_descriptor(small_clip):
    avg = P3DResNet(**TINY, include_top=False, pooling="avg")
    assert avg.output_shape == (None, 128)
    full = P3DResNet(**TINY, include_top=False)
    full.set_weights(avg.get_weights())
    np.testing.assert_allclose(ops.convert_to_numpy(avg(small_clip)),
                               ops.convert_to_numpy(ops.mean(full(small_clip), axis=(1, 2, 3))), atol=1e-5)
    assert P3DResNet(**TINY, include_top=False, pooling="max").output_shape == (None, 128)


def test_head_classes_activation_dropout_and_name(small_clip):
    model = P3DResNet(**TINY, classes=7, dropout_rate=0.7, name="mine")
    probs = ops.convert_to_numpy(model(small_clip))
    assert probs.shape == (2, 7) and model.name == "mine"
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert model.get_layer("dropout").rate == 0.7
    logits = P3DResNet(**TINY, classes=7, dropout_rate=0.7, classifier_activation=None)
    logits.set_weights(model.get_weights())  # same network without the softmax: its logits
    np.testing.assert_allclose(ops.convert_to_numpy(ops.softmax(logits(small_clip))), probs, atol=1e-6)


def test_flow_modality_has_two_channels():
    model = P3DResNet(**{**TINY, "input_shape": (16, 32, 32, 2)}, modality="flow")
    assert model.get_layer("conv1").kernel.shape == (1, 7, 7, 2, 4)


def test_input_tensor():
    inputs = keras.Input((16, 32, 32, 3), name="frames")
    model = P3DResNet(**{**TINY, "input_shape": None}, input_tensor=inputs, classes=3)
    assert model.inputs[0].name == "frames" and model.output_shape == (None, 3)


def test_temporal_false_removes_temporal_convs():
    p3d = P3DResNet(**TINY, include_top=False)
    control = P3DResNet(**TINY, include_top=False, temporal=False)
    assert any("branch2b_t" in v.path for v in p3d.weights)
    assert not any("branch2b_t" in v.path for v in control.weights)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision(policy, small_clip):
    keras.mixed_precision.set_dtype_policy(policy)
    try:
        model = P3DResNet(**TINY, classes=5)
        features = P3DResNet(**TINY, include_top=False)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    probs = model(small_clip)
    assert probs.dtype == "float32"
    assert np.isfinite(ops.convert_to_numpy(probs)).all()
    assert features(small_clip).dtype == policy.split("_")[1]
    assert model.get_layer("res2a").conv_reduce.kernel.dtype == "float32"  # variables stay float32


def test_keras_save_load_round_trip(tmp_path, small_clip):
    model = P3DResNet(**TINY, classes=3)
    model.save(tmp_path / "p3d.keras")
    loaded = keras.saving.load_model(tmp_path / "p3d.keras")
    np.testing.assert_allclose(ops.convert_to_numpy(loaded(small_clip)), ops.convert_to_numpy(model(small_clip)),
                               atol=1e-6)
    model.save_weights(tmp_path / "p3d.weights.h5")
    again = P3DResNet(**{**TINY, "weights": str(tmp_path / "p3d.weights.h5")}, classes=3)
    np.testing.assert_allclose(ops.convert_to_numpy(again(small_clip)), ops.convert_to_numpy(model(small_clip)),
                               atol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    (dict(depth=50), r"Received: depth=50"),
    (dict(depth=(1, 1, 1)), r"Received: depth=\(1, 1, 1\)"),
    (dict(graph="tf"), "Received: graph='tf'"),
    (dict(modality="depth"), "Received: modality='depth'"),
    (dict(pooling="mean", include_top=False), "Received: pooling='mean'"),
    (dict(input_shape=(8, 32, 32, 3)), r"multiple of 16 .* Received: input_shape=\(8, 32, 32, 3\)"),
    (dict(input_shape=(20, 32, 32, 3)), r"Received: input_shape=\(20, 32, 32, 3\)"),
    (dict(input_shape=(16, 31, 32, 3)), r"at least 32. Received: input_shape=\(16, 31, 32, 3\)"),
    (dict(input_shape=(16, 32, 32, 2)), r"Expected \(T, H, W, 3\) for modality='rgb'"),
    (dict(input_shape=(16, 32, 32)), "Received: input_shape"),
    (dict(input_shape=(None, 32, 32, 3)), "Received: input_shape"),
    (dict(classes=0), "Received: classes=0"),
    (dict(weights="no/such/file.weights.h5"), "Received: weights='no/such/file.weights.h5'"),
])
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        P3DResNet(**{**TINY, **kwargs})


def test_family_members_take_no_depth():
    with pytest.raises(TypeError):
        P3DResNet199(199)
    assert P3DResNet199.__doc__.startswith("P3D ResNet-199 (from ResNet-152 with 47 temporal convs)")
    assert P3DResNet199.__name__ == "P3DResNet199"


def test_family_members_share_one_keyword_only_signature_and_docstring():
    signatures = {inspect.signature(build) for build in (P3DResNet63, P3DResNet131, P3DResNet199)}
    assert len(signatures) == 1
    (signature,) = signatures
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in signature.parameters.values())
    assert set(signature.parameters) == set(inspect.signature(P3DResNet).parameters) - {"depth", "width", "temporal"}
    assert P3DResNet63.__doc__.startswith("P3D ResNet-63 (from ResNet-50 with 13 temporal convs)")
    assert P3DResNet131.__doc__.startswith("P3D ResNet-131 (from ResNet-101 with 30 temporal convs)")


# include_preprocessing=True: the model takes uint8 clips and normalises them itself.

FRAMES = np.random.default_rng(3).integers(0, 256, (2, 16, 32, 32, 3), dtype=np.uint8)


def assert_same_outputs(actual, expected):
    actual, expected = ops.convert_to_numpy(actual), ops.convert_to_numpy(expected)
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(expected).max()))


@pytest.mark.parametrize("normalization, modality", [("caffe", "rgb"), ("imagenet", "rgb"), ("flow", "flow")])
@pytest.mark.parametrize("head", [dict(classes=6, classifier_activation=None),
                                  dict(include_top=False, pooling="avg")], ids=["top", "pooled"])
def test_include_preprocessing_equals_the_plain_model_on_preprocess_input(normalization, modality, head):
    channels = 3 if modality == "rgb" else 2
    kwargs = {**TINY, **head, "input_shape": (16, 32, 32, channels), "modality": modality}
    frames = FRAMES[..., :channels]
    plain = P3DResNet(**kwargs)
    raw = P3DResNet(**kwargs, include_preprocessing=True, normalization=normalization)
    raw.set_weights(plain.get_weights())
    assert raw.input.dtype == "uint8" and plain.input.dtype == "float32"
    assert [layer.name for layer in raw.layers] == ["clip", "normalize"] + [layer.name for layer in plain.layers][1:]
    assert raw.get_layer("normalize").normalization == normalization
    expected = plain(preprocess_input(frames, normalization=normalization))
    assert_same_outputs(raw(frames), expected)
    assert_same_outputs(raw.predict(frames.astype("float32"), verbose=0), expected)  # whole numbers 0-255 as floats


def test_caffe_preprocessing_reverses_to_bgr():
    plain = P3DResNet(**TINY, classes=6, classifier_activation=None)
    raw = P3DResNet(**TINY, classes=6, classifier_activation=None, include_preprocessing=True)
    raw.set_weights(plain.get_weights())
    rgb_minus_mean = FRAMES.astype("float32") - np.array([104.0, 117.0, 123.0], "float32")
    assert raw.get_layer("normalize").normalization == "caffe"  # the RGB default
    assert_same_outputs(raw(FRAMES), plain(FRAMES[..., ::-1].astype("float32") - [104.0, 117.0, 123.0]))
    assert not np.allclose(ops.convert_to_numpy(raw(FRAMES)), ops.convert_to_numpy(plain(rgb_minus_mean)))


def test_default_normalization_follows_the_modality():
    flow = P3DResNet(**{**TINY, "input_shape": (16, 32, 32, 2)}, modality="flow", include_preprocessing=True)
    assert flow.get_layer("normalize").normalization == "flow"
    assert "normalize" not in [layer.name for layer in P3DResNet(**TINY).layers]


def test_include_preprocessing_with_an_input_tensor():
    inputs = keras.Input((16, 32, 32, 3), dtype="uint8", name="frames")
    model = P3DResNet(**{**TINY, "input_shape": None}, input_tensor=inputs, classes=3, include_preprocessing=True,
                      normalization="unit")
    assert model.inputs[0].name == "frames" and model.layers[1].name == "normalize"


@pytest.mark.parametrize("kwargs, match", [
    (dict(include_preprocessing=True, normalization="bgr"),
     r"Invalid normalization. Expected one of \['caffe', 'imagenet_caffe', 'imagenet', 'unit', 'flow'\]. "
         r"Received: normalization='bgr'"),
    (dict(normalization="imagenet"), "needs include_preprocessing=True.*Received: normalization='imagenet', "
                                     "include_preprocessing=False"),
    (dict(include_preprocessing=True, normalization="flow"),
     r"normalization='flow' is for 2 channels; modality='rgb' has 3. Received: normalization='flow', modality='rgb'"),
    (dict(include_preprocessing=True, normalization="imagenet", modality="flow", input_shape=(16, 32, 32, 2)),
     "Received: normalization='imagenet', modality='flow'"),
])
def test_bad_normalization_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        P3DResNet(**{**TINY, **kwargs})


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_include_preprocessing_under_mixed_precision(policy):
    keras.mixed_precision.set_dtype_policy(policy)
    try:
        model = P3DResNet(**TINY, classes=5, include_preprocessing=True)
        features = P3DResNet(**TINY, include_top=False, pooling="avg", include_preprocessing=True)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    assert model.input.dtype == "uint8"
    probs = model(FRAMES)
    assert probs.dtype == "float32" and np.isfinite(ops.convert_to_numpy(probs)).all()
    assert features(FRAMES).dtype == policy.split("_")[1]


def test_include_preprocessing_keras_round_trip_and_config(tmp_path):
    model = P3DResNet(**TINY, classes=3, include_preprocessing=True, normalization="imagenet")
    config = model.get_config()
    normalize = next(layer for layer in config["layers"] if layer["name"] == "normalize")
    assert normalize["class_name"] == "Normalize" and normalize["config"]["normalization"] == "imagenet"
    assert config["layers"][0]["config"]["dtype"] == "uint8"
    rebuilt = keras.Model.from_config(config)
    rebuilt.set_weights(model.get_weights())
    assert_same_outputs(rebuilt(FRAMES), model(FRAMES))
    model.save(tmp_path / "raw.keras")
    loaded = keras.saving.load_model(tmp_path / "raw.keras")
    assert loaded.input.dtype == "uint8" and loaded.get_layer("normalize").normalization == "imagenet"
    assert_same_outputs(loaded(FRAMES), model(FRAMES))


def test_weights_files_load_into_either_form(tmp_path):
    plain = P3DResNet(**TINY, classes=3, classifier_activation=None)
    plain.save_weights(tmp_path / "plain.weights.h5")
    raw = P3DResNet(**{**TINY, "weights": str(tmp_path / "plain.weights.h5")}, classes=3,
                    classifier_activation=None, include_preprocessing=True)
    expected = plain(preprocess_input(FRAMES, normalization="caffe"))
    assert_same_outputs(raw(FRAMES), expected)
    raw.save_weights(tmp_path / "raw.weights.h5")
    again = P3DResNet(**{**TINY, "weights": str(tmp_path / "raw.weights.h5")}, classes=3, classifier_activation=None)
    assert_same_outputs(again(preprocess_input(FRAMES, normalization="caffe")), expected)


@pytest.fixture
def tiny_imagenet_preset(tmp_path, monkeypatch):
    """A tiny preset normalised with `imagenet`, its converted file in an empty Keras cache;
    returns the network the file holds."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.delenv(cache.MIRROR_ENV, raising=False)
    source = P3DResNet(**TINY, classes=5, classifier_activation=None)
    preset = dataclasses.replace(PRESETS["kinetics400"], name="tiny", depth=TINY["depth"], width=4, classes=5,
                                 normalization="imagenet", input_shape=TINY["input_shape"])
    path = tmp_path / "keras_home" / "models" / preset.filename
    path.parent.mkdir(parents=True)
    source.save_weights(path)
    monkeypatch.setitem(PRESETS, "tiny", dataclasses.replace(preset, sha256=sha256_of(path)))
    return source


def test_a_preset_loads_into_the_include_preprocessing_model(tiny_imagenet_preset):
    source = tiny_imagenet_preset
    expected = source(preprocess_input(FRAMES, normalization="imagenet"))
    raw = P3DResNet(**{**TINY, "weights": "tiny"}, classifier_activation=None, include_preprocessing=True)
    assert raw.get_layer("normalize").normalization == "imagenet"  # the preset's
    assert_same_outputs(raw(FRAMES), expected)
    plain = P3DResNet(**{**TINY, "weights": "tiny"}, classifier_activation=None)
    assert_same_outputs(plain(preprocess_input(FRAMES, normalization="imagenet")), expected)
    trunk = P3DResNet(**{**TINY, "weights": "tiny"}, include_top=False, pooling="avg", include_preprocessing=True,
                      normalization="imagenet")
    probe = P3DResNet(**TINY, include_top=False, pooling="avg")
    probe.set_weights([w for layer in source.layers if layer.name != "fc" for w in layer.get_weights()])
    assert_same_outputs(trunk(FRAMES), probe(preprocess_input(FRAMES, normalization="imagenet")))


def test_a_normalization_that_contradicts_the_preset_raises(tiny_imagenet_preset):
    with pytest.raises(ValueError, match="weights='tiny' is a normalization='imagenet' model. "
                                         "Received: normalization='caffe'"):
        P3DResNet(**{**TINY, "weights": "tiny"}, include_preprocessing=True, normalization="caffe")


def test_family_members_pass_include_preprocessing_on(monkeypatch):
    calls = []
    monkeypatch.setattr(p3d_resnet, "P3DResNet", lambda *args, **kwargs: calls.append((args, kwargs)))
    for build in (P3DResNet63, P3DResNet131, P3DResNet199):
        build(include_preprocessing=True, normalization="unit")
    assert [args for args, _ in calls] == [(63,), (131,), (199,)]
    assert all(kw["include_preprocessing"] is True and kw["normalization"] == "unit" for _, kw in calls)
    assert "include_preprocessing=True" in P3DResNet199.__doc__
