"""applications/preprocessing.py: preprocess_input and decode_predictions for each preset."""
import numpy as np
import pytest

from p3d_keras.applications import decode_predictions, preprocess_input


def test_preprocess_input_matches_each_preset():
    frames = np.random.default_rng(1).integers(0, 256, (2, 16, 8, 8, 3), dtype=np.uint8)
    caffe = preprocess_input(frames, preset="kinetics400")
    np.testing.assert_allclose(caffe, frames[..., ::-1].astype("float32") - [104, 117, 123])
    assert caffe.dtype == np.float32
    port = preprocess_input(frames, preset="kinetics400_pytorch")
    np.testing.assert_allclose(port, (frames / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225], atol=1e-5)
    flow = preprocess_input(frames[..., :2], preset="kinetics400_flow")
    np.testing.assert_allclose(flow, frames[..., :2] - 128.0)
    assert preprocess_input(frames, normalization="unit").max() <= 1.0


def test_decode_predictions_names():
    preds = np.zeros((2, 400), "float32")
    preds[0, [0, 399, 161]] = [0.5, 0.3, 0.2]
    preds[1, 208] = 1.0
    top = decode_predictions(preds, top=3)
    assert top[0] == [(0, "abseiling", 0.5), (399, "zumba", pytest.approx(0.3)), (161, "hurling (sport)",
                                                                                  pytest.approx(0.2))]
    assert top[1][0] == (208, "passing American football (in game)", 1.0)
    sports = decode_predictions(np.eye(487, dtype="float32")[[0, 486]], top=1, preset="sports1m")
    assert sports == [[(0, "boomerang", 1.0)], [(486, "model aircraft", 1.0)]]
    with pytest.raises(ValueError, match=r"shape \(samples, 487\).*Received: preds.shape=\(1, 400\)"):
        decode_predictions(preds[:1], preset="sports1m")
