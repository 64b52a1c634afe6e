"""P3DResNet family: structure, arguments, input rules, mixed precision, bad input."""
import inspect

import keras
import numpy as np
import pytest
from keras import ops

from p3d_keras.applications import P3DResNet, P3DResNet63, P3DResNet131, P3DResNet199
from p3d_keras.applications.p3d_resnet import block_kinds, block_suffixes

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
