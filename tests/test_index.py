"""Window indexes (`index`) and the reader's `reads="windows"`, which reads only each window's bytes."""
import logging
import os

import numpy as np
import pytest
import tensorflow as tf

from p3d_keras.core import protowire as pw
from p3d_keras.tfrecords_tools import framing, index, reader, schema
from p3d_keras.cli import tfrecords
from shard_fixtures import jpeg_frames, video_example, write_shards

# Frame counts chosen so that windows of 4 (stride 1 and 3) cover short videos that loop.
VIDEOS = [(10, 0), (3, 1), (20, 2), (6, 1), (1, 0), (13, 2)]
SMALL = dict(clip_length=4, crop_size=24, output_dtype="uint8")


@pytest.fixture()
def shards(tmp_path):
    paths = write_shards(tmp_path, VIDEOS, num_shards=2)
    for path in paths:
        index.write_index(path)
    return paths


def epoch(dataset):
    return [tuple(t.numpy() for t in batch) for batch in dataset]


def test_iter_file_fields_reads_headers_and_gives_payload_offsets(tmp_path):
    message = pw.length_delimited(1, b"abc") + pw.field_key(2, pw.VARINT) + pw.encode_varint(300) \
        + pw.length_delimited(3, b"\x00" * 200)
    path = tmp_path / "message.bin"
    path.write_bytes(b"junk" + message + b"more")
    with open(path, "rb") as f:
        fields = list(pw.iter_file_fields(f, 4, 4 + len(message)))
    assert fields == [(1, pw.LENGTH_DELIMITED, 3, 6), (2, pw.VARINT, 300, 10), (3, pw.LENGTH_DELIMITED, 200, 15)]
    with open(path, "rb") as f, pytest.raises(pw.ProtobufDecodeError, match="runs past the end"):
        list(pw.iter_file_fields(f, 4, 4 + len(message) - 1))


def test_index_locates_every_frame_of_tensorflow_and_converter_records(shards, tmp_path):
    ours = str(tmp_path / "ours.tfrecord")
    jpegs = jpeg_frames(2, 8, 16)
    with open(ours, "wb") as f:
        record = schema.make_example(encoded_frames=jpegs, timestamps_us=[0, 40_000], height=1, width=1,
                                     frame_rate=25.0, label_index=7, label_string="x", media_id="m")
        writer = framing.FrameWriter(f, len(record))
        writer.write(record)
        writer.finish()
    for path in shards + [ours]:
        built = index.write_index(path)
        loaded = index.load_index(path)
        assert loaded.shard_bytes == os.path.getsize(path)
        data = open(path, "rb").read()
        parsed = [schema.parse_example(r) for r in tf.data.TFRecordDataset(path)]
        assert loaded.labels.tolist() == [int(p[schema.LABEL_INDEX]) for p in parsed] == built.labels.tolist()
        assert loaded.num_frames.tolist() == [len(p[schema.ENCODED]) for p in parsed]
        frames = [data[o:o + n] for o, n in zip(loaded.frame_offsets, loaded.frame_lengths)]
        assert frames == [f for p in parsed for f in p[schema.ENCODED].numpy().tolist()]
    assert index.load_index(ours).labels.tolist() == [7] and frames == jpegs


@pytest.mark.parametrize("options", [dict(), dict(frame_stride=3), dict(stride_range=(1, 4), flip=False)])
def test_windows_give_the_same_clips_as_whole_records(tmp_path, options):
    path = write_shards(tmp_path, VIDEOS)[0]
    index.write_index(path)
    kw = dict(batch_size=3, shuffle_buffer=0, deterministic=True, seed=5, **SMALL, **options)
    records = epoch(reader.training_dataset(path, reads="records", **kw))
    windows = epoch(reader.training_dataset(path, reads="windows", **kw))
    assert len(records) == len(windows) == 2
    for (clips_r, labels_r), (clips_w, labels_w) in zip(records, windows):
        np.testing.assert_array_equal(clips_w, clips_r)
        np.testing.assert_array_equal(labels_w, labels_r)


def test_windows_shuffle_every_video_each_epoch_deterministically(shards, tmp_path):
    kw = dict(batch_size=2, reads="windows", deterministic=True, seed=1, **SMALL)
    glob = os.path.join(os.path.dirname(shards[0]), "*")  # index files beside the shards are not shards
    first, second = epoch(reader.training_dataset(glob, **kw)), epoch(reader.training_dataset(glob, **kw))
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a[0], b[0])
    dataset = reader.training_dataset(glob, **kw).repeat(2)
    labels = np.concatenate([b[1] for b in epoch(dataset)])
    assert sorted(labels[:6]) == sorted(labels[6:]) == sorted(label for _, label in VIDEOS)
    orders = [tuple(np.concatenate([b[1] for b in epoch(reader.training_dataset(glob, **{**kw, "seed": s}))]))
              for s in range(6)]
    assert len(set(orders)) > 1  # the whole epoch is shuffled, not kept in shard order


def test_auto_reads_windows_only_when_every_shard_is_indexed(tmp_path, caplog):
    paths = write_shards(tmp_path, VIDEOS, num_shards=2)
    kw = dict(batch_size=2, deterministic=True, seed=3, **SMALL)

    def read(**options):
        with caplog.at_level(logging.INFO, logger="p3d_keras.tfrecords_tools"):
            caplog.clear()
            batches = epoch(reader.training_dataset(paths, **kw, **options))
            return batches, caplog.text

    def assert_same(a, b):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            for u, v in zip(x, y):
                np.testing.assert_array_equal(u, v)

    index.write_index(paths[0])  # one shard of two indexed: whole records
    auto, log = read()
    assert "reading whole records: 1 of 2 shards have no window index" in log
    assert_same(auto, read(reads="records")[0])
    index.write_index(paths[1])
    auto, log = read()
    assert "reading only the windows of 2 indexed shards" in log
    assert_same(auto, read(reads="windows")[0])
    cycled, log = read(cycle_length=2)  # an option only records can honour
    assert "reading whole records: cycle_length=2" in log
    assert_same(cycled, read(reads="records")[0])
    counted, log = read(skip_corrupt=True)  # both reads honour skip_corrupt
    assert "reading only the windows of 2 indexed shards" in log
    assert_same(counted, auto)
    with open(paths[1], "ab") as f:
        f.write(b"\x00")  # a stale index is an error, not a reason to read records
    with pytest.raises(ValueError, match=r"train-00001-of-00002\.tfrecord to be the \d+ bytes"):
        reader.training_dataset(paths, **kw)


def test_missing_stale_and_gzip_indexes_are_errors_naming_the_files(tmp_path):
    path = write_shards(tmp_path, VIDEOS)[0]
    with pytest.raises(FileNotFoundError, match=r"train-00000-of-00001\.tfindex.*p3d-tfrecords index"):
        reader.training_dataset(path, batch_size=2, reads="windows", **SMALL)
    index.write_index(path)
    with open(path, "ab") as f:
        f.write(b"\x00")  # the shard changed after it was indexed
    with pytest.raises(ValueError, match=r"train-00000-of-00001\.tfrecord to be the \d+ bytes.*tfindex"):
        reader.training_dataset(path, batch_size=2, reads="windows", **SMALL)
    (tmp_path / "gz").mkdir()
    gz = write_shards(tmp_path / "gz", VIDEOS, compression="GZIP")[0]
    with pytest.raises(ValueError, match=r"uncompressed shard.*\.tfrecord\.gz"):
        index.write_index(gz)
    with pytest.raises(ValueError, match=r"local, uncompressed shards.*\.tfrecord\.gz"):
        reader.training_dataset(gz, batch_size=2, reads="windows", **SMALL)
    os.rename(gz, tmp_path / "gz" / "named.tfrecord")
    with pytest.raises(ValueError, match=r"GZIP-compressed shard=.*named\.tfrecord"):
        index.write_index(tmp_path / "gz" / "named.tfrecord")


def test_a_shard_truncated_after_indexing_names_the_shard_when_read(tmp_path):
    path = write_shards(tmp_path, VIDEOS)[0]
    built = index.write_index(path)
    dataset = reader.training_dataset(path, batch_size=6, reads="windows", shuffle_buffer=0, **SMALL)
    last_video = sum(built.num_frames[:-1])
    os.truncate(path, int(built.frame_offsets[last_video]) + 1)  # after the dataset checked the size
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"bytes at byte \d+ of shard=.*train-00000"):
        epoch(dataset)


def test_zero_frame_record_is_refused_naming_the_shard(tmp_path):
    path = str(tmp_path / "empty-00000-of-00001.tfrecord")
    with tf.io.TFRecordWriter(path) as w:
        w.write(video_example(3, 1, "fine"))
        w.write(video_example(0, 0, "nothing"))
    second = framing.FRAMING_BYTES + len(video_example(3, 1, "fine"))
    with pytest.raises(ValueError, match=rf"0 frames \(record at byte {second} of shard=.*empty-00000"):
        index.write_index(path)


def test_index_refuses_corrupt_records_naming_shard_and_byte(tmp_path):
    path = write_shards(tmp_path, VIDEOS)[0]
    data = bytearray(open(path, "rb").read())
    second = framing.HEADER_BYTES + len(video_example(*VIDEOS[0], "v0")) + framing.FOOTER_BYTES
    data[second + framing.HEADER_BYTES + 50] ^= 0xFF
    with open(path, "wb") as f:
        f.write(bytes(data))
    with pytest.raises(ValueError, match=rf"corrupt data \(CRC32C mismatch\) in the record at byte {second} of shard="):
        index.write_index(path)
    with open(path, "wb") as f:
        f.write(bytes(data[:second + 20]))
    with pytest.raises(ValueError, match=rf"truncated data in the record at byte {second} of shard="):
        index.write_index(path)
    assert not os.path.exists(index.index_path(path))


@pytest.mark.parametrize("frames, label, error", [
    ([[b"\xff\xd8a", b"\xff\xd8b"]], [3], "one JPEG per frame"),  # one frame holding two images
    ([[b"\xff\xd8a"]], None, "context feature 'clip/label/index'"),
])
def test_index_refuses_records_it_cannot_locate_naming_shard_and_byte(tmp_path, frames, label, error):
    example = tf.train.SequenceExample()
    if label is not None:
        example.context.feature[schema.LABEL_INDEX].int64_list.value.extend(label)
    for images in frames:
        example.feature_lists.feature_list[schema.ENCODED].feature.add().bytes_list.value.extend(images)
    path = str(tmp_path / "odd.tfrecord")
    with tf.io.TFRecordWriter(path) as w:
        w.write(video_example(2, 0, "fine"))
        w.write(example.SerializeToString())
    second = framing.FRAMING_BYTES + len(video_example(2, 0, "fine"))
    with pytest.raises(ValueError, match=rf"{error}.*record at byte {second} of shard=.*odd\.tfrecord"):
        index.write_index(path)


def test_windows_refuse_options_they_cannot_honour(shards):
    for bad in (dict(cycle_length=2), dict(compression="GZIP"), dict(reads="bytes")):
        with pytest.raises(ValueError, match="reads"):
            reader.training_dataset(shards, batch_size=2, **{"reads": "windows", **SMALL, **bad})


def test_cli_index_skips_and_reports_a_bad_shard(tmp_path, caplog):
    good, bad = write_shards(tmp_path, VIDEOS, num_shards=2)
    with open(bad, "r+b") as f:
        f.truncate(100)
    with caplog.at_level(logging.INFO, logger="p3d_keras.tfrecords_tools"):
        assert tfrecords.main(["index", str(tmp_path)]) == 1
    assert os.path.exists(index.index_path(good)) and not os.path.exists(index.index_path(bad))
    assert "Skipped" in caplog.text and "train-00001-of-00002.tfrecord" in caplog.text
    assert index.load_index(good).num_frames.tolist() == [n for n, _ in VIDEOS[::2]]
    os.remove(bad)
    assert tfrecords.main(["index", str(tmp_path)]) == 0  # the index files in the folder are not shards


def _rewrite(path, edit):
    """Apply `edit(bytearray)` to the file `path` in place."""
    data = bytearray(open(path, "rb").read())
    edit(data)
    with open(path, "wb") as f:
        f.write(bytes(data))


def test_a_truncated_or_damaged_index_names_the_index_file(tmp_path):
    path = write_shards(tmp_path, VIDEOS)[0]
    built = index.write_index(path)
    name = index.index_path(path)
    whole = open(name, "rb").read()
    header = len(index.MAGIC) + index.HEADER.size
    records, frames = len(built.num_frames), len(built.frame_offsets)
    for cut in sorted({0, 3, header - 1, header, header + 1, header + 4 * records + 2, len(whole) - 5,
                       len(whole) - 1}):
        with open(name, "wb") as f:
            f.write(whole[:cut])
        with pytest.raises(ValueError, match=r"Received: .*train-00000-of-00001\.tfindex.*p3d-tfrecords index"):
            index.load_index(path)
        with pytest.raises(ValueError, match=r"train-00000-of-00001\.tfindex"):
            reader.training_dataset(path, batch_size=2, reads="windows", **SMALL)
    with open(name, "wb") as f:
        f.write(whole + b"\x00")
    with pytest.raises(ValueError, match=rf"{len(whole)} bytes. Received: .*\.tfindex of {len(whole) + 1} bytes"):
        index.load_index(path)

    num_frames = header  # the first record's frame count: one more than the frames there are
    with open(name, "wb") as f:
        f.write(whole)
    _rewrite(name, lambda data: data.__setitem__(slice(num_frames + 4 * records, num_frames + 4 * records + 4),
                                                 (VIDEOS[0][0] + 1).to_bytes(4, "little")))
    with pytest.raises(ValueError, match=rf"\.tfindex with frame counts adding up to {frames + 1} for {frames} frames"):
        reader.training_dataset(path, batch_size=2, reads="windows", **SMALL)
    offsets = header + 8 * records  # the last frame's offset: past the shard's end
    with open(name, "wb") as f:
        f.write(whole)
    _rewrite(name, lambda data: data.__setitem__(slice(offsets + 8 * (frames - 1), offsets + 8 * frames),
                                                 os.path.getsize(path).to_bytes(8, "little")))
    with pytest.raises(ValueError, match=r"\.tfindex with frames outside the shard's \d+ bytes"):
        reader.training_dataset(path, batch_size=2, reads="windows", **SMALL)
    with open(name, "wb") as f:
        f.write(whole)
    _rewrite(name, lambda data: data.__setitem__(slice(len(index.MAGIC), len(index.MAGIC) + 4),
                                                 (1).to_bytes(4, "little")))  # an index of format 1: no CRC32Cs
    with pytest.raises(ValueError, match=r"format version 2. Received: version 1 in .*\.tfindex; rebuild it"):
        reader.training_dataset(path, batch_size=2, reads="windows", **SMALL)


def test_an_index_header_claiming_huge_counts_is_refused_without_reading_them(tmp_path):
    """A header claiming 2**40 frames is refused by the file's size, before anything is read, in a
    process limited to ~1 GB of address space above its start (no TensorFlow in it)."""
    import subprocess
    import sys
    import textwrap

    path = write_shards(tmp_path, VIDEOS)[0]
    index.write_index(path)
    name = index.index_path(path)
    _rewrite(name, lambda data: data.__setitem__(
        slice(len(index.MAGIC), len(index.MAGIC) + index.HEADER.size),
        index.HEADER.pack(index.FORMAT_VERSION, os.path.getsize(path), 2 ** 40, 2 ** 40)))
    with open(name, "ab") as f:
        f.write(b"\x00" * (1 << 20))
    script = textwrap.dedent(f"""
        import resource, sys
        from p3d_keras.tfrecords_tools import index
        with open("/proc/self/statm") as f:
            used = int(f.read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (used + (1 << 30), used + (1 << 30)))
        try:
            index.load_index({path!r})
        except ValueError as error:
            sys.exit(0 if "Received: " in str(error) and ".tfindex" in str(error) else 3)
        sys.exit(4)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
