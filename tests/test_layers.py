"""P3DBottleneck: wiring, shapes, serialization, bad input. Runs on every Keras backend."""
import keras
import numpy as np
import pytest
from keras import ops

from p3d_keras.core.layers import GRAPHS, KINDS, Normalize, P3DBottleneck
from p3d_keras.core.normalization import NORMALIZATIONS, normalize


def _block(kind, graph="caffe", **kw):
    return P3DBottleneck(4, kind=kind, graph=graph, **kw)


@pytest.mark.parametrize("kind", KINDS)
def test_shapes(kind):
    x = np.random.default_rng(0).normal(size=(2, 4, 8, 8, 16)).astype("float32")
    y = _block(kind, strides=2, projection=True)(x)
    assert tuple(y.shape) == (2, 4, 4, 4, 16)
    assert _block(kind).compute_output_shape((None, 4, 8, 8, 16)) == (None, 4, 8, 8, 16)


def test_2d_kind_is_per_frame():
    x = np.random.default_rng(1).normal(size=(2, 3, 8, 8, 16)).astype("float32")
    block = _block("2D")
    clip = ops.convert_to_numpy(block(x))
    frames = ops.convert_to_numpy(block(x.reshape(6, 8, 8, 16))).reshape(clip.shape)
    np.testing.assert_allclose(clip, frames, atol=1e-5)
    # No temporal mixing: changing frame 0 leaves frames 1, 2 unchanged.
    x2 = x.copy()
    x2[:, 0] += 1
    np.testing.assert_allclose(ops.convert_to_numpy(block(x2))[:, 1:], clip[:, 1:], atol=1e-5)


def test_temporal_kinds_mix_time():
    x = np.random.default_rng(2).normal(size=(1, 4, 6, 6, 16)).astype("float32")
    for kind in "ABC":
        block = _block(kind)
        y = ops.convert_to_numpy(block(x))
        x2 = x.copy()
        x2[:, 0] += 1
        assert np.abs(ops.convert_to_numpy(block(x2))[:, 1] - y[:, 1]).max() > 1e-4, kind


def _set_weights(block, seed=0):
    """Identity BN and random kernels, the same for every graph."""
    rng = np.random.default_rng(seed)
    for v in block.weights:
        name = v.path.split("/")[-1]
        fixed = {"gamma": 1.0, "beta": 0.0, "moving_mean": 0.0, "moving_variance": 1.0 - 1e-5}.get(name)
        v.assign(np.full(v.shape, fixed, "float32") if fixed is not None
                 else rng.normal(scale=0.3, size=v.shape).astype("float32"))


@pytest.mark.parametrize("kind", "ABC")
def test_graphs_differ_only_for_b_and_c(kind):
    x = np.random.default_rng(3).normal(size=(1, 4, 6, 6, 16)).astype("float32")
    outs = []
    for graph in GRAPHS:
        block = _block(kind, graph)
        block.build(x.shape)
        _set_weights(block)
        outs.append(ops.convert_to_numpy(block(x)))
    assert np.allclose(outs[0], outs[1]) == (kind == "A")


def test_caffe_c_is_half_half():
    """Caffe's C: u = ReLU(0.5 s + 0.5 BN(T s)); the port's C: u = s + ReLU(BN(T s))."""
    from p3d_keras.core.layers import MERGES

    s = np.array([1.0, -2.0, 3.0], "float32")
    t = np.array([-3.0, 1.0, 1.0], "float32")
    np.testing.assert_allclose(ops.convert_to_numpy(MERGES["caffe"]["C"](s, t)), [0.0, 0.0, 2.0])
    np.testing.assert_allclose(ops.convert_to_numpy(MERGES["pytorch"]["C"](s, t)), [1.0, -1.0, 4.0])
    np.testing.assert_allclose(ops.convert_to_numpy(MERGES["caffe"]["B"](s, t)), [0.0, 0.0, 4.0])
    np.testing.assert_allclose(ops.convert_to_numpy(MERGES["pytorch"]["B"](s, t)), [1.0, -1.0, 4.0])


def test_config_round_trip():
    block = P3DBottleneck(8, kind="C", graph="pytorch", strides=2, projection=True, bn_epsilon=1e-3, name="res3a")
    config = block.get_config()
    for key, value in dict(filters=8, kind="C", graph="pytorch", strides=2, projection=True, bn_epsilon=1e-3).items():
        assert config[key] == value
    clone = P3DBottleneck.from_config(config)
    assert clone.get_config() == config


def test_keras_file_round_trip(tmp_path):
    inputs = keras.Input((4, 8, 8, 8))
    x = P3DBottleneck(2, kind="B", projection=True)(inputs)
    x = P3DBottleneck(2, kind="2D")(x)
    model = keras.Model(inputs, x)
    data = np.random.default_rng(4).normal(size=(2, 4, 8, 8, 8)).astype("float32")
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(ops.convert_to_numpy(loaded(data)), ops.convert_to_numpy(model(data)), atol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    (dict(kind="D"), "Received: kind='D'"),
    (dict(graph="torch"), "Received: graph='torch'"),
    (dict(strides=3, projection=True), "Received: strides=3"),
    (dict(strides=2), "needs a projection"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        P3DBottleneck(4, **kwargs)


def test_bad_input_shapes():
    with pytest.raises(ValueError, match="expects a clip"):
        P3DBottleneck(4, kind="A")(np.zeros((1, 8, 8, 16), "float32"))
    with pytest.raises(ValueError, match="identity shortcut needs 16 input channels"):
        P3DBottleneck(4, kind="A")(np.zeros((1, 2, 8, 8, 8), "float32"))


@pytest.mark.parametrize("name", sorted(NORMALIZATIONS))
def test_normalize_casts_and_applies_the_preset(name):
    channels = NORMALIZATIONS[name].channels
    frames = np.random.default_rng(5).integers(0, 256, (2, 3, 4, 5, channels)).astype("uint8")
    out = Normalize(name)(frames)
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    # Equal on TensorFlow (test_reader checks it bit for bit); XLA (JAX) divides by multiplying by
    # the reciprocal, which moves the last bit.
    np.testing.assert_allclose(ops.convert_to_numpy(out), normalize(frames.astype("float32"), name), rtol=1e-6,
                               atol=1e-6)


def test_normalize_caffe_reverses_to_bgr():
    rgb = np.array([[[10, 20, 30]]], "uint8")
    np.testing.assert_array_equal(ops.convert_to_numpy(Normalize("caffe")(rgb)), [[[30 - 104, 20 - 117, 10 - 123]]])


def test_normalize_uses_the_compute_dtype():
    out = Normalize("unit", dtype="mixed_float16")(np.full((1, 2, 3), 255, "uint8"))
    assert keras.backend.standardize_dtype(out.dtype) == "float16"
    np.testing.assert_array_equal(ops.convert_to_numpy(out), np.ones((1, 2, 3)))


def test_normalize_config_and_keras_file_round_trip(tmp_path):
    layer = Normalize("imagenet", name="norm")
    config = layer.get_config()
    assert config["normalization"] == "imagenet" and config["name"] == "norm"
    assert Normalize.from_config(config).get_config() == config
    inputs = keras.Input((2, 4, 4, 3), dtype="uint8")
    model = keras.Model(inputs, keras.layers.Conv3D(2, 1)(Normalize("caffe")(inputs)))
    frames = np.random.default_rng(6).integers(0, 256, (2, 2, 4, 4, 3)).astype("uint8")
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert [type(layer).__name__ for layer in loaded.layers][1] == "Normalize"
    assert loaded.layers[1].normalization == "caffe"
    np.testing.assert_allclose(ops.convert_to_numpy(loaded(frames)), ops.convert_to_numpy(model(frames)), atol=1e-5)


def test_normalize_bad_arguments():
    with pytest.raises(ValueError, match="Unknown normalization.*Received: normalization='bgr'"):
        Normalize("bgr")
    with pytest.raises(ValueError, match="Expected normalization to be a preset name.*Received: normalization=None"):
        Normalize(None)
    with pytest.raises(ValueError, match="expects 2 channels.*Received: x.shape"):
        Normalize("flow")(np.zeros((1, 4, 4, 3), "uint8"))


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="reads the TensorFlow graph of the layer")
def test_normalize_reverses_the_channels_of_the_uint8_frames():
    """BGR presets reverse the channels before the cast: a full-integer LiteRT form then reverses
    the input's own bytes (a reversal of float values got other quantisation parameters and lost
    27.5 points of accuracy, bench/README.md)."""
    import tensorflow as tf

    layer = Normalize("caffe")
    graph = tf.function(layer).get_concrete_function(tf.TensorSpec([None, 4, 4, 3], tf.uint8)).graph
    reversals = [op for op in graph.get_operations() if op.type == "ReverseV2"]
    assert [op.inputs[0].dtype for op in reversals] == [tf.uint8]
    frames = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(frames)),
                               normalize(frames.astype("float32"), "caffe"), rtol=0, atol=0)
