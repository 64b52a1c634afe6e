"""`shards`: each shard's compression, its records read with the CRC32C and length checks, and
byte-range reads of local shards (`read_window`)."""
import os

import numpy as np
import pytest
import tensorflow as tf

from p3d_keras.tfrecords_tools import framing, shards
from shard_fixtures import write_shards


def test_corrupt_record_inside_a_check_batch(tmp_path):
    """A bad record in the middle of a shard, inside one of the check's batches of
    `RECORDS_PER_CHECK` records: the records before it are read, then the error names the shard
    (or, with a counter, the shard counts once)."""
    videos = [(3, n % 3) for n in range(10)]
    path = write_shards(tmp_path, videos)[0]
    data = bytearray(open(path, "rb").read())
    bad = shards.RECORDS_PER_CHECK + 1  # the second record of the second batch
    offset = 0
    for record in tf.data.TFRecordDataset(path).take(bad):
        offset += len(record.numpy()) + framing.FRAMING_BYTES
    data[offset + framing.HEADER_BYTES + 100] ^= 0xFF  # a byte of the bad record's data: its CRC fails
    with open(path, "wb") as f:
        f.write(bytes(data))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"corrupt or truncated record in shard=.*train-00000"):
        list(shards.read_records([path]))
    counter = shards.CorruptRecordCounter()
    records = [serialized for _, serialized in shards.read_records([path], counter=counter)]
    assert len(records) == bad and counter.count == 1
    (tmp_path / "clean").mkdir()
    clean = tf.data.TFRecordDataset(write_shards(tmp_path / "clean", videos)[0]).take(bad)
    assert [r.numpy() for r in clean] == [r.numpy() for r in records]


def test_read_range_without_pread_returns_what_is_there_and_read_window_names_a_short_read(tmp_path, monkeypatch):
    paths = write_shards(tmp_path, [(10, 0), (3, 1), (20, 2), (6, 1)], num_shards=2)
    monkeypatch.delattr(os, "pread")  # a seek and a read, as on Windows
    size = os.path.getsize(paths[0])
    tail = open(paths[0], "rb").read()[-5:]
    assert shards._read_range(paths[0].encode(), size - 5, 5) == tail
    assert shards._read_range(paths[0].encode(), size - 5, 9) == tail  # short at the end; read_window raises
    no_frames = np.zeros(0, "int64")
    with pytest.raises(ValueError, match=r"Expected 9 bytes at byte \d+ of shard=.*train-00000-of-00002\.tfrecord"):
        shards.read_window(paths[0].encode(), size - 5, 9, no_frames, no_frames, no_frames, 0, False)


def test_a_shard_that_contradicts_the_compression_asked_for_is_named(tmp_path):
    plain, = write_shards(tmp_path, [(3, 0)])
    gz, = write_shards(tmp_path, [(3, 0)], compression="GZIP", prefix="gz")
    assert shards.shard_compression(plain) == "" and shards.shard_compression(gz) == "GZIP"
    assert shards.shard_compression(plain, None) == "" and shards.shard_compression(gz, "GZIP") == "GZIP"
    with pytest.raises(ValueError, match=r"Expected a GZIP-compressed shard.*Received: an uncompressed shard=.*train-"):
        shards.shard_compression(plain, "GZIP")
    with pytest.raises(ValueError, match=r"Expected compression to be one of .*Received: compression='zip'"):
        shards.shard_compression(plain, "zip")
