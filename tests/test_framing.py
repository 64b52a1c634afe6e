import io

import numpy as np
import pytest
import tensorflow as tf

from p3d_keras.tfrecords_tools import framing


def _framed(record, chunk):
    out = io.BytesIO()
    writer = framing.FrameWriter(out, len(record))
    for start in range(0, len(record), chunk):
        writer.write(record[start:start + chunk])
    writer.finish()
    return out.getvalue()


def test_frames_are_byte_identical_to_tensorflows_writer(tmp_path):
    rng = np.random.default_rng(0)
    records = [b"", b"x", rng.bytes(1000), rng.bytes(3 << 20)]
    path = str(tmp_path / "tf.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for record in records:
            writer.write(record)
    expected = open(path, "rb").read()
    assert b"".join(_framed(r, 4096) for r in records) == expected
    assert len(expected) == sum(map(len, records)) + len(records) * framing.FRAMING_BYTES


def test_a_frame_of_the_wrong_length_raises():
    writer = framing.FrameWriter(io.BytesIO(), 10)
    writer.write(b"123")
    with pytest.raises(ValueError, match="Expected 10 bytes of record data. Received: 3"):
        writer.finish()
