"""Records the readers cannot use name their record and shard (and `skip_corrupt=True` counts and
skips them), with either read: another tool's `tf.train.Example`, bytes that are not a protocol
buffer, frames that are not JPEGs or not of one size, and (`reads="windows"`) a frame whose bytes
changed after the shard was indexed."""
import logging
import os
import re

import numpy as np
import pytest
import tensorflow as tf

from p3d_keras.tfrecords_tools import index, reader
from shard_fixtures import frame, jpeg_frames, record_of_frames, video_example, write_records

SMALL = dict(clip_length=4, crop_size=24, output_dtype="uint8")
SHARD = "bad-00000-of-00001.tfrecord"


def epoch(dataset):
    return [tuple(t.numpy() for t in batch) for batch in dataset]


def with_frame_2(encoded):
    """A 4-frame record (label 1, the window of 4 frames is all of it) whose frame 2 is `encoded`."""
    frames = jpeg_frames(4)
    frames[2] = encoded
    return record_of_frames(frames, 1, "bad")


def foreign_example():
    feature = {"image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=jpeg_frames(1))),
               "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[1]))}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


BAD_FRAMES = {  # name: (record 1 of the shard, what the error says)
    "PNG frame": (with_frame_2(tf.io.encode_png(frame(2, 32, 48)).numpy()),
                  r"Expected every frame to be a JPEG. Received: frame 2 of record 1 of shard=.*bad-00000"),
    "random bytes as a frame": (with_frame_2(np.random.default_rng(0).bytes(300)),
                                r"frame to be a JPEG. Received: frame 2 of record 1 of shard=.*bad-00000"),
    "empty frame": (with_frame_2(b""), r"frame to be a JPEG. Received: frame 2 of record 1 of shard=.*bad-00000"),
    "a smaller frame": (with_frame_2(jpeg_frames(3, 24, 40)[2]),
                        r"Expected the frames of a record to be of one size. Received: frame 0 of 32x48 and "
                        r"frame 2 of 24x40 in record 1 of shard=.*bad-00000"),
    "a larger frame": (with_frame_2(jpeg_frames(3, 40, 56)[2]),
                       r"one size. Received: frame 0 of 32x48 and frame 2 of 40x56 in record 1 of shard=.*bad-00000"),
}
BAD_RECORDS = {  # records the window index already refuses to index, so read whole
    **BAD_FRAMES,
    "tf.train.Example": (foreign_example(), r"Received: a record without one clip/label/index \(e.g. a "
                                            r"tf.train.Example from another tool\) in record 1 of shard=.*bad-00000"),
    "a SequenceExample without frames": (video_example(0, 1, "empty"),
                                         r"0 frames in record 1 of shard=.*bad-00000"),
}

INDEX_ERRORS = {  # what `index.write_index` says of each
    "PNG frame": r"Expected every frame to be a JPEG. Received: frame 2, which does not start with",
    "random bytes as a frame": r"to be a JPEG. Received: frame 2,",
    "empty frame": r"to be a JPEG. Received: frame 2,",
    "a smaller frame": r"of one size. Received: frame 0 of 32x48 and frame 2 of 24x40",
    "a larger frame": r"of one size. Received: frame 0 of 32x48 and frame 2 of 40x56",
    "tf.train.Example": r"context feature 'clip/label/index'. Received: none",
    "a SequenceExample without frames": r"at least one frame. Received: 0 frames",
}


def bad_shard(tmp_path, bad_record, indexed=False):
    """A shard of record 0 (10 frames, label 0), `bad_record`, record 2 (6 frames, label 2)."""
    path = write_records(tmp_path / SHARD, [video_example(10, 0, "v0"), bad_record, video_example(6, 2, "v2")])
    if indexed:
        index.write_index(path)
    return path


def training(path, reads, **options):
    return reader.training_dataset(path, batch_size=1, reads=reads, shuffle_buffer=0, deterministic=True, seed=0,
                                   **SMALL, **options)


def evaluation(path, **options):
    return reader.evaluation_dataset(path, batch_size=1, num_clips=1, **SMALL, **options)


@pytest.mark.parametrize("case", sorted(BAD_RECORDS))
def test_whole_record_reads_name_the_record_and_count_it(tmp_path, case):
    record, error = BAD_RECORDS[case]
    path = bad_shard(tmp_path, record)
    for make in (lambda **kw: training(path, "records", **kw), lambda **kw: evaluation(path, **kw)):
        with pytest.raises(tf.errors.InvalidArgumentError, match=error):
            epoch(make())
        dataset = make(skip_corrupt=True)
        assert sorted(label for batch in epoch(dataset) for label in batch[1]) == [0, 2]
        assert dataset.corrupt_records.count == 1
        epoch(dataset)
        assert dataset.corrupt_records.count == 2  # once per epoch


@pytest.mark.parametrize("case", sorted(BAD_RECORDS))
def test_indexing_refuses_the_shard_naming_the_record(tmp_path, caplog, case):
    """So `reads="windows"` never reads such a record; `reads="auto"` reads the shard's whole
    records, where `skip_corrupt` counts and skips it."""
    from p3d_keras.cli import tfrecords

    path = bad_shard(tmp_path, BAD_RECORDS[case][0])
    second = len(video_example(10, 0, "v0")) + 16  # the byte the bad record starts at
    with pytest.raises(ValueError, match=rf"{INDEX_ERRORS[case]}.* \(record at byte {second} of shard=.*bad-00000"):
        index.write_index(path)
    with caplog.at_level(logging.INFO, logger="p3d_keras.tfrecords_tools"):
        assert tfrecords.main(["index", path]) == 1
    assert f"record at byte {second} of shard={path}" in caplog.text
    dataset = reader.training_dataset(path, batch_size=1, skip_corrupt=True, **SMALL)  # reads="auto"
    assert sorted(batch[1].tolist() for batch in epoch(dataset)) == [[0], [2]]
    assert dataset.corrupt_records.count == 1


def test_a_shard_of_another_tool_names_its_first_record(tmp_path):
    path = write_records(tmp_path / "theirs.tfrecord", [foreign_example()] * 3)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"clip/label/index .* in record 0 of shard=.*theirs"):
        epoch(training(path, "records"))
    with pytest.raises(ValueError, match=r"context feature 'clip/label/index'.*byte 0 of shard=.*theirs"):
        index.write_index(path)  # so reads="windows" never sees it


def test_bytes_that_are_not_a_protocol_buffer_name_the_record(tmp_path):
    path = bad_shard(tmp_path, b"\x0a\xff\xff\xff\xff\x0fnot a protocol buffer")
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"record 1 of shard=.*bad-00000"):
        epoch(training(path, "records"))


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_a_byte_flipped_after_indexing_is_caught_by_window_reads(tmp_path, where):
    """The frame's bytes are still a JPEG of the right size (a byte of its entropy-coded data):
    only the CRC32C of the index can tell."""
    path = bad_shard(tmp_path, with_frame_2(jpeg_frames(3)[2]), indexed=True)
    built = index.load_index(path)
    frame_2 = int(built.num_frames[0]) + 2
    offset, length = int(built.frame_offsets[frame_2]), int(built.frame_lengths[frame_2])
    byte = {"first": offset, "middle": offset + length // 2, "last": offset + length - 3}[where]
    data = bytearray(open(path, "rb").read())
    data[byte] ^= 0x01
    with open(path, "wb") as f:
        f.write(bytes(data))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=rf"CRC32C of the window index. Received: a mismatch in the frame at byte {offset} "
                             r"of record 1 of shard=.*bad-00000"):
        epoch(training(path, "windows"))
    dataset = training(path, "windows", skip_corrupt=True)
    assert [batch[1].tolist() for batch in epoch(dataset)] == [[0], [2]]
    assert dataset.corrupt_records.count == 1


def test_bytes_that_are_not_a_protocol_buffer_are_counted_and_skipped(tmp_path):
    garbage = b"\x0a\xff\xff\xff\xff\x0fnot a protocol buffer"
    path = write_records(tmp_path / SHARD, [garbage, video_example(10, 0, "v0"), garbage, garbage,
                                            video_example(6, 2, "v2"), garbage])  # first, inside, last
    for make in (lambda **kw: training(path, "records", **kw), lambda **kw: evaluation(path, **kw)):
        dataset = make(skip_corrupt=True)
        assert sorted(label for batch in epoch(dataset) for label in batch[1]) == [0, 2]
        assert dataset.corrupt_records.count == 4
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[:-10])  # and a truncated last record: one more
    dataset = training(path, "records", skip_corrupt=True)
    assert sorted(label for batch in epoch(dataset) for label in batch[1]) == [0, 2]
    assert dataset.corrupt_records.count == 4


@pytest.mark.parametrize("damage, error", [
    ("truncated", r"Expected intact TFRecord records. Received: truncated record at \d+.*after record 1 of "
                  r"shard=\S*bad-00000-of-00001\.tfrecord$"),
    ("foreign record", r"Expected a SequenceExample .* in record 1 of shard=\S*bad-00000-of-00001\.tfrecord$"),
])
def test_cli_inspect_names_a_damaged_shard_and_exits_2(tmp_path, capsys, caplog, damage, error):
    from p3d_keras.cli import tfrecords

    path = bad_shard(tmp_path, foreign_example() if damage == "foreign record" else video_example(4, 1, "v1"))
    if damage == "truncated":
        os.truncate(path, os.path.getsize(path) - 100)  # inside its last record
    with caplog.at_level(logging.ERROR, logger="p3d_keras.tfrecords_tools"):
        assert tfrecords.main(["inspect", path]) == 2
    assert re.search(error, caplog.text, re.MULTILINE)
    assert "Traceback" not in capsys.readouterr().err
