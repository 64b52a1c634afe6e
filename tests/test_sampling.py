"""Temporal windows, crop boxes and flips as pure functions (no files)."""
import numpy as np
import tensorflow as tf

from p3d_keras.tfrecords_tools import sampling


def seed(n):
    return tf.constant([n, 0], tf.int64)


def test_training_window_is_strided_and_in_range():
    starts = set()
    for n in range(40):
        idx = sampling.training_indices(20, 4, 3, seed(n)).numpy()
        np.testing.assert_array_equal(np.diff(idx), [3, 3, 3])
        assert 0 <= idx[0] <= 20 - 10
        starts.add(idx[0])
    assert len(starts) > 5  # the start is random
    a, b = (sampling.training_indices(20, 4, 3, seed(7)).numpy() for _ in range(2))
    np.testing.assert_array_equal(a, b)  # stateless: same seed, same window


def test_short_videos_loop():
    np.testing.assert_array_equal(sampling.training_indices(5, 8, 1, seed(3)), [0, 1, 2, 3, 4, 0, 1, 2])
    np.testing.assert_array_equal(sampling.evaluation_indices(3, 4, 2, 2), [[0, 2, 1, 0], [0, 2, 1, 0]])


def test_evaluation_windows_are_uniform():
    # 20 frames, span 7 -> starts 0..13 (14 positions); 2 clips -> middles 3.5 and 10.5.
    np.testing.assert_array_equal(sampling.evaluation_indices(20, 4, 2, 2), [[3, 5, 7, 9], [10, 12, 14, 16]])
    np.testing.assert_array_equal(sampling.evaluation_indices(20, 4, 2, 1), [[7, 9, 11, 13]])
    np.testing.assert_array_equal(sampling.evaluation_indices(4, 4, 1, 3)[:, 0], [0, 0, 0])


def test_stride_range():
    strides = {int(sampling.sample_stride((1, 3), seed(n))) for n in range(40)}
    assert strides == {1, 2, 3}


def test_center_and_three_crops():
    np.testing.assert_array_equal(sampling.center_crop_box(182, 242, 160), [11, 41, 160, 160])
    np.testing.assert_array_equal(sampling.three_crop_boxes(182, 242, 160),
                                  [[11, 0, 160, 160], [11, 41, 160, 160], [11, 82, 160, 160]])
    np.testing.assert_array_equal(sampling.three_crop_boxes(50, 30, 20),
                                  [[0, 5, 20, 20], [15, 5, 20, 20], [30, 5, 20, 20]])
    np.testing.assert_array_equal(sampling.center_crop_box(10, 30, 16), [0, 7, 10, 16])  # shrunk to frame
    np.testing.assert_array_equal(sampling.union_box(sampling.three_crop_boxes(182, 242, 160)), [11, 0, 160, 242])


def test_random_crop_box_stays_inside():
    for n in range(20):
        y, x, h, w = sampling.random_crop_box(32, 48, 24, 24, seed(n)).numpy()
        assert (h, w) == (24, 24) and 0 <= y <= 8 and 0 <= x <= 24
    np.testing.assert_array_equal(sampling.random_crop_box(16, 48, 24, 24, seed(0))[::2], [0, 16])


def test_multiscale_boxes_follow_tsn():
    sides = {int(256 * s) for s in sampling.TSN_SCALES}
    for n in range(50):
        y, x, h, w = sampling.multiscale_crop_box(256, 340, seed(n)).numpy()
        assert h in sides and w in sides
        assert y % ((256 - h) // 4 or 1) == 0 and x % ((340 - w) // 4 or 1) == 0
        assert y + h <= 256 and x + w <= 340


def test_scale_jitter_side():
    sides = [int(sampling.jittered_box_side(100, (0.8, 1.25), seed(n))) for n in range(30)]
    assert 80 <= min(sides) and max(sides) <= 125 and len(set(sides)) > 3


def test_flip_is_clip_consistent():
    clip = tf.reshape(tf.range(2 * 1 * 3), [2, 1, 3, 1])
    outcomes = set()
    for n in range(10):
        flip = bool(sampling.flip_decision(seed(n)))
        out = sampling.flip_clip(clip, flip).numpy()
        np.testing.assert_array_equal(out, clip.numpy()[:, :, ::-1] if flip else clip.numpy())
        outcomes.add(flip)
    assert outcomes == {True, False}


def test_flip_with_channel_reversal():
    clip = tf.reshape(tf.range(2 * 1 * 3 * 3), [2, 1, 3, 3])
    for n in range(10):
        flip = sampling.flip_decision(seed(n))
        plain = sampling.flip_clip(clip, flip).numpy()
        np.testing.assert_array_equal(sampling.flip_clip(clip, flip, reverse_channels=True), plain[..., ::-1])


def test_flip_keeps_the_static_shape():
    spec = tf.TensorSpec([4, 6, 5, 3], tf.uint8)
    for reverse_channels in (False, True):
        graph = tf.function(lambda c: sampling.flip_clip(c, sampling.flip_decision(seed(0)), reverse_channels)).get_concrete_function(spec)
        assert graph.output_shapes.as_list() == [4, 6, 5, 3]
