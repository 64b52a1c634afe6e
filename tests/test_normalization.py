import numpy as np
import pytest

from p3d_keras.normalization import NORMALIZATIONS, get_normalization, normalize


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
    assert set(NORMALIZATIONS) == {"caffe", "imagenet", "unit", "flow"}
