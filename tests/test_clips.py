"""`clips`: one record's frames checked, decoded over a box, cut into crops and normalised."""
import re

import numpy as np
import pytest
import tensorflow as tf

from p3d_keras.core import normalization
from p3d_keras.tfrecords_tools import clips
from shard_fixtures import frame, jpeg_frames, record_of_frames


def test_check_frames_names_the_first_frame_that_is_not_a_jpeg_or_not_of_the_size():
    numbers = tf.constant([4, 5, 6])
    where = tf.constant("record 2 of shard=x")
    ok, _ = clips.check_frames(tf.constant(jpeg_frames(3)), numbers, where)
    assert ok.numpy()
    ok, message = clips.check_frames(tf.constant([*jpeg_frames(2), b"not a jpeg"]), numbers, where)
    assert not ok.numpy()
    assert message().numpy().decode() == ("Expected every frame to be a JPEG. Received: frame 6 of record 2 of "
                                          "shard=x, which does not start with a JPEG's bytes FF D8 FF")
    mixed = [*jpeg_frames(2), tf.io.encode_jpeg(frame(0, 16, 16)).numpy()]
    ok, message = clips.check_frames(tf.constant(mixed), numbers, where)
    assert not ok.numpy()
    assert message().numpy().decode() == ("Expected the frames of a record to be of one size. Received: frame 4 of "
                                          "32x48 and frame 6 of 16x16 in record 2 of shard=x")


def test_check_frames_refuses_a_frame_claiming_more_than_the_pixel_limit():
    """A tiny JPEG can claim a huge size (its header's height and width): refused before decoding."""
    huge = bytearray(tf.io.encode_jpeg(frame(0, 16, 16)).numpy())
    sof = huge.index(b"\xff\xc0")  # the baseline frame header: length (2), precision (1), height (2), width (2)
    huge[sof + 5:sof + 9] = (5000).to_bytes(2, "big") + (5000).to_bytes(2, "big")
    assert tf.io.extract_jpeg_shape(bytes(huge)).numpy().tolist()[:2] == [5000, 5000] and len(huge) < 2000
    ok, message = clips.check_frames(tf.constant([bytes(huge)] * 2), tf.constant([0, 1]), tf.constant("record 0"))
    assert not ok.numpy()
    assert message().numpy().decode() == ("Expected frames of at most 16777216 pixels (4096x4096). Received: "
                                          "frame 0 of 5000x5000 in record 0")


def test_parse_checked_gives_a_record_without_frames_a_stand_in_and_a_message():
    where = tf.constant("record 0 of shard=x")
    example, ok, _ = clips.parse_checked(where, tf.constant(record_of_frames(jpeg_frames(3), 1, "v")))
    assert ok.numpy() and example["num_frames"].numpy() == 3
    example, ok, message = clips.parse_checked(where, tf.constant(record_of_frames([], 1, "v")))
    assert not ok.numpy() and example["num_frames"].numpy() == 1
    assert message().numpy().decode() == "Expected every record to have at least one frame. Received: 0 frames in " \
                                         "record 0 of shard=x"


@pytest.mark.parametrize("flip", [False, True])
def test_decode_frames_with_tensorflow_ops(flip):
    encoded = tf.constant(jpeg_frames(2))
    box = tf.constant([4, 8, 16, 24])
    frames = clips.decode_frames(encoded, box, 3, flip=tf.constant(flip), reverse_channels=True).numpy()
    whole = tf.stack([tf.io.decode_and_crop_jpeg(f, box) for f in encoded]).numpy()[..., ::-1]
    np.testing.assert_array_equal(frames, whole[:, :, ::-1] if flip else whole)
    assert clips.decode_frames(encoded, box, 2).shape[-1] == 2  # flow: the first two channels


def test_split_channel_order_and_finish_clip():
    assert clips.split_channel_order(None) == (False, None)
    bgr, rest = clips.split_channel_order("caffe")
    assert bgr and not rest.bgr and rest.mean == normalization.get_normalization("caffe").mean
    uint8 = tf.constant(np.full([2, 8, 8, 3], 100, np.uint8))
    assert clips.finish_clip(uint8, 8, None).dtype == tf.uint8
    resized = clips.finish_clip(uint8, 4, None)
    assert resized.shape == (2, 4, 4, 3) and resized.dtype == tf.uint8
    unit = clips.finish_clip(uint8, 8, normalization.get_normalization("unit"))
    np.testing.assert_allclose(unit.numpy(), 100 / 255, rtol=1e-6)


def test_crop_windows_cuts_every_box_of_every_window_window_major():
    frames = tf.reshape(tf.range(2 * 1 * 4 * 6 * 1), [2, 1, 4, 6, 1])  # 2 windows of 1 frame, 4x6
    boxes = tf.constant([[0, 0, 2, 2], [0, 4, 2, 2]])
    region = tf.constant([0, 0, 4, 6])
    crops = clips.crop_windows(frames, boxes, region).numpy()
    assert crops.shape == (4, 1, 2, 2, 1)
    np.testing.assert_array_equal(crops[1, 0, :, :, 0], frames.numpy()[0, 0, 0:2, 4:6, 0])
    np.testing.assert_array_equal(crops[2, 0, :, :, 0], frames.numpy()[1, 0, 0:2, 0:2, 0])


def test_centre_clip_decodes_the_centre_window_whole_and_loops_a_short_record():
    jpegs = [tf.io.encode_jpeg(frame(i, 32, 48)).numpy() for i in range(7)]
    decoded = np.stack([tf.io.decode_jpeg(jpeg).numpy() for jpeg in jpegs])
    where = tf.constant("record 0 of the request")
    long = clips.centre_clip(tf.constant(record_of_frames(jpegs, 1, "v")), where, 4, 3)  # starts at (7 - 4 + 1) // 2
    np.testing.assert_array_equal(long.numpy(), decoded[2:6])
    short = clips.centre_clip(tf.constant(record_of_frames(jpegs[:3], 1, "v")), where, 4, 2)
    np.testing.assert_array_equal(short.numpy(), decoded[[0, 1, 2, 0], ..., :2])


@pytest.mark.parametrize("case, expected", [
    ("truncated", "Expected every frame to be a JPEG that decodes. Received: frame 3 of record 1 of the request, "
                  "which libjpeg cannot decode (truncated or corrupt)"),
    ("not a jpeg", "Expected every frame to be a JPEG. Received: frame 3 of record 1 of the request"),
    ("no frames", "Expected every record to have at least one frame. Received: 0 frames in record 1 of the request"),
    ("not a protocol buffer", "Invalid protocol message input, example id: record 1 of the request"),
])
def test_centre_clip_errors_name_the_record_and_the_frame(case, expected):
    jpegs = [tf.io.encode_jpeg(frame(i, 32, 48)).numpy() for i in range(6)]
    serialized = {"truncated": record_of_frames([*jpegs[:3], jpegs[3][:-40], *jpegs[4:]], 1, "v"),
                  "not a jpeg": record_of_frames([*jpegs[:3], b"GIF89a", *jpegs[4:]], 1, "v"),
                  "no frames": record_of_frames([], 1, "v"),
                  "not a protocol buffer": b"\xff\xff not a SequenceExample"}[case]
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(expected)):
        clips.centre_clip(tf.constant(serialized), tf.constant("record 1 of the request"), 4, 3)
