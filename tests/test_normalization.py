import numpy as np
import pytest

from p3d_keras.core.normalization import NORMALIZATIONS, get_normalization, normalize


def test_caffe_is_bgr_minus_mean():
    rgb = np.array([[10.0, 20.0, 30.0]], "float32")
    np.testing.assert_allclose(normalize(rgb, "caffe"), [[30 - 104, 20 - 117, 10 - 123]])


def test_imagenet_and_unit():
    x = np.full((2, 3), 255.0, "float32")
    np.testing.assert_allclose(normalize(x, "unit"), np.ones((2, 3)))
    np.testing.assert_allclose(normalize(x, "imagenet")[0],
                               (1 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]),
                               rtol=1e-6)


def test_flow_minus_128():
    np.testing.assert_allclose(normalize(np.array([[0.0, 255.0]], "float32"), "flow"), [[-128, 127]])


def test_works_on_tf_tensors():
    tf = pytest.importorskip("tensorflow")
    x = np.random.default_rng(0).uniform(0, 255, (2, 4, 4, 3)).astype("float32")
    for name in ("caffe", "imagenet", "unit"):
        np.testing.assert_allclose(normalize(tf.constant(x), name).numpy(), normalize(x, name), rtol=1e-6)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="Received: normalization='bgr'"):
        get_normalization("bgr")
    with pytest.raises(ValueError, match="expects 2 channels"):
        normalize(np.zeros((1, 3), "float32"), "flow")
    assert set(NORMALIZATIONS) == {"caffe", "imagenet_caffe", "imagenet", "unit", "flow"}


def test_same_values_on_numpy_tf_and_jax_with_static_and_dynamic_width():
    tf = pytest.importorskip("tensorflow")
    jnp = pytest.importorskip("jax.numpy")
    x = np.random.default_rng(1).uniform(0, 255, (2, 3, 5, 3)).astype("float32")
    def dynamic(t, name):  # a width unknown when traced: the constants stay [C]
        return tf.function(lambda u: normalize(u, name), input_signature=[tf.TensorSpec([None, None, None, 3])])(t)

    for name in ("caffe", "imagenet", "unit"):
        expected = normalize(x, name)
        # XLA and graph mode may divide by 255 as a multiply by 1/255: a last-bit difference
        np.testing.assert_allclose(np.asarray(normalize(jnp.asarray(x), name)), expected, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(normalize(tf.constant(x), name).numpy(), expected, rtol=1e-6)
        np.testing.assert_allclose(dynamic(tf.constant(x), name).numpy(), expected, rtol=1e-6, atol=1e-6)
    flow = np.random.default_rng(2).uniform(0, 255, (4, 2)).astype("float32")
    np.testing.assert_allclose(np.asarray(normalize(jnp.asarray(flow), "flow")), flow - 128)
    np.testing.assert_allclose(normalize(x[0, 0, 0], "caffe"), x[0, 0, 0, ::-1] - [104, 117, 123])  # 1-D


def test_tf_channel_reversal_is_a_reverse_not_a_strided_slice():
    # A negative-stride StridedSlice costs ~25 ms per 16x160x160x3 clip, tf.reverse ~3 ms.
    tf = pytest.importorskip("tensorflow")
    from p3d_keras.core.normalization import reverse_channels

    graph = tf.function(lambda t: normalize(t, "caffe")).get_concrete_function(
        tf.TensorSpec([None, None, None, 3])).graph
    ops = {op.type for op in graph.get_operations()}
    assert "ReverseV2" in ops and "StridedSlice" not in ops
    x = np.arange(12, dtype="float32").reshape(2, 2, 3)
    np.testing.assert_array_equal(reverse_channels(tf.constant(x)).numpy(), x[..., ::-1])
    assert isinstance(reverse_channels(x), np.ndarray)


def test_per_channel_constants_are_tiled_only_over_a_static_width():
    from p3d_keras.core.normalization import per_channel

    assert per_channel((1.0, 2.0, 3.0), np.zeros((4, 5, 3))).shape == (5, 3)
    assert per_channel((1.0, 2.0, 3.0), np.zeros(3)).shape == (3,)
    tf = pytest.importorskip("tensorflow")
    seen = []
    tf.function(lambda t: seen.append(per_channel((1.0, 2.0), t).shape) or t).get_concrete_function(
        tf.TensorSpec([None, None, 2]))
    assert seen == [(2,)]
