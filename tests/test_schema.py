import numpy as np
import tensorflow as tf

from p3d_keras.tfrecords_tools import schema


def test_make_and_parse_round_trip():
    frames = [tf.io.encode_jpeg(np.full((8, 10, 3), i * 20, np.uint8)).numpy() for i in range(3)]
    ex = schema.make_example(encoded_frames=frames, timestamps_us=[0, 40000, 80000], height=8, width=10,
                             frame_rate=25.0, label_index=7, label_string="jump ü", media_id="v_ü_1",
                             start_us=1_000_000)
    parsed = schema.parse_example(tf.constant(ex.SerializeToString()))
    assert parsed[schema.LABEL_INDEX].numpy() == 7
    assert parsed[schema.LABEL_STRING].numpy().decode() == "jump ü"
    assert parsed[schema.MEDIA_ID].numpy().decode() == "v_ü_1"
    assert parsed[schema.CLIP_START].numpy() == 1_000_000
    assert parsed[schema.CLIP_END].numpy() == 1_080_000
    assert (parsed[schema.HEIGHT].numpy(), parsed[schema.WIDTH].numpy()) == (8, 10)
    assert parsed[schema.TIMESTAMP].numpy().tolist() == [0, 40000, 80000]
    assert [bytes(b) for b in parsed[schema.ENCODED].numpy()] == frames


def test_mismatched_lengths_raise():
    import pytest
    with pytest.raises(ValueError, match="same length"):
        schema.make_example(encoded_frames=[b"x"], timestamps_us=[], height=1, width=1, frame_rate=1,
                            label_index=0, label_string="a", media_id="m")
