"""Shards are read as their bytes say, GZIP or not, whatever their names: the detection
(`compression`), every reader of shards, and the README's Kinetics `--gzip` example end to end."""
import csv
import gzip
import json
import os
import shutil
import struct

import google_crc32c
import numpy as np
import pytest
import tensorflow as tf

import tfrecords_fixtures as fx
from p3d_keras.cli import tfrecords
from p3d_keras.cli import train as train_cli
from p3d_keras.tfrecords_tools import collection, compression, framing, index, inspection, reader, schema, sources
from p3d_keras.tfrecords_tools import shards as shards_lib
from p3d_keras.tfrecords_tools import video, writer
from shard_fixtures import frame, video_example, write_shards

VIDEOS = [(6, 0), (4, 1), (9, 2), (5, 1)]
SMALL = dict(clip_length=4, crop_size=24, normalization="unit")
AMBIGUOUS_LENGTH = 0x088B1F  # a record of this length starts its shard with gzip's magic and method: 1f 8b 08


def header(length):
    """The 12 header bytes of a TFRecord of `length` data bytes, framed with google-crc32c."""
    head = struct.pack("<Q", length)
    return head + struct.pack("<I", framing.masked_crc32c(google_crc32c.value(head)))


def test_the_header_check_agrees_with_google_crc32c():
    rng = np.random.default_rng(0)
    for length in [0, 1, AMBIGUOUS_LENGTH, 2 ** 32 + 7, *rng.integers(0, 2 ** 40, 50).tolist()]:
        assert compression.is_record_header(header(length)), length
        broken = bytearray(header(length))
        broken[int(rng.integers(0, 12))] ^= 1 << int(rng.integers(0, 8))
        assert not compression.is_record_header(bytes(broken))


@pytest.mark.parametrize("head, want", [
    pytest.param(header(AMBIGUOUS_LENGTH) + b"data", "", id="plain-starting-with-1f8b08"),
    pytest.param(header(AMBIGUOUS_LENGTH + 5 * 2 ** 24), "", id="plain-starting-with-1f8b08-longer"),
    pytest.param(header(300), "", id="plain"),
    pytest.param(b"", "", id="empty-plain"),
    pytest.param(header(300)[:7], "", id="truncated-plain"),
    pytest.param(gzip.compress(header(300), mtime=0), "GZIP", id="python-gzip"),
    pytest.param(gzip.compress(b""), "GZIP", id="gzip-of-nothing"),
    pytest.param(b"\x1f\x8b\x07" + bytes(9), "", id="gzip-magic-other-method"),
])
def test_detect(head, want):
    assert compression.detect(head[:framing.HEADER_BYTES]) == want


def test_no_gzip_header_without_a_time_or_name_passes_as_a_record_header():
    """Python's gzip (the converter) and zlib (TensorFlow) write `1f 8b 08 00`, a zero time, then
    XFL and OS: whatever those two bytes, the 12 bytes are never a TFRecord header, so bytes alone
    tell these shards apart (other gzip headers match by a 1 in 2**32 chance)."""
    for xfl in range(256):
        for os_byte in range(256):
            head = b"\x1f\x8b\x08\x00" + bytes(4) + bytes([xfl, os_byte]) + b"\xff\xff"
            assert compression.detect(head) == "GZIP"


def test_gzip_writers_outputs_are_gzip(tmp_path):
    """TensorFlow's (zlib's) and the converter's (Python's gzip) GZIP shards."""
    tf_gzip = write_shards(tmp_path, VIDEOS[:1], compression="GZIP")[0]
    assert compression.shard_compression(tf_gzip) == "GZIP"
    with open(tmp_path / "python.gz", "wb") as raw, writer._compressed(raw, "GZIP") as out:
        out.write(header(3) + b"abc" + bytes(4))
    assert compression.shard_compression(tmp_path / "python.gz") == "GZIP"


def ambiguous_shard(path):
    """A plain shard whose first record is `AMBIGUOUS_LENGTH` bytes long (a 3-frame video whose
    media id pads it to that length), then a short video; returns the path."""
    rng = np.random.default_rng(1)
    noise = [tf.io.encode_jpeg(np.clip(frame(i, 240, 320) + rng.integers(-60, 60, (240, 320, 3)), 0, 255)
                               .astype(np.uint8), quality=95).numpy() for i in range(3)]

    def example(media_id):
        return schema.make_example(encoded_frames=noise, timestamps_us=[0, 1, 2], height=240, width=320,
                                   frame_rate=25.0, label_index=0, label_string="class0", media_id=media_id)

    padding = 0
    while len(record := example("v" * (1 + padding))) != AMBIGUOUS_LENGTH:
        padding += AMBIGUOUS_LENGTH - len(record)
        assert padding >= 0, "the frames alone are longer than the record must be"
    with tf.io.TFRecordWriter(str(path)) as w:
        w.write(record)
        w.write(video_example(5, 1, "short", 240, 320))
    return str(path)


def test_a_plain_shard_that_starts_like_gzip_is_read_as_plain(tmp_path):
    shard = ambiguous_shard(tmp_path / "train-00000-of-00001.tfrecord")
    with open(shard, "rb") as f:
        assert f.read(3) == compression.GZIP_HEADER
    assert shards_lib.shard_compression(shard) == ""
    built = index.write_index(shard)  # today's main refused it as GZIP
    assert list(built.num_frames) == [3, 5]
    for reads in ("records", "windows"):
        ds = reader.training_dataset(shard, batch_size=2, reads=reads, deterministic=True, seed=0, **SMALL)
        assert sorted(np.concatenate([labels for _, labels in ds]).tolist()) == [0, 1]
    assert shards_lib.count_records(shard) == 2


def misnamed_folder(root):
    """A converter-like folder of a GZIP shard named `.tfrecord` (an older run's `--gzip` output),
    an uncompressed shard named `.tfrecord.gz`, an interrupted write's `.tmp` file and no
    manifest; returns (folder, gzip, plain)."""
    folder = root / "shards"
    folder.mkdir()
    gz = write_shards(root, VIDEOS[:2], compression="GZIP", prefix="a")[0]
    plain = write_shards(root, VIDEOS[2:], prefix="b")[0]
    gz_named_plain, plain_named_gz = folder / "a-00000-of-00002.tfrecord", folder / "b-00001-of-00002.tfrecord.gz"
    shutil.move(gz, gz_named_plain)
    shutil.move(plain, plain_named_gz)
    (folder / "labels.txt").write_text("jump\nrun\nsit\n")
    (folder / "c-00000-of-00001.tfrecord.gz.tmp").write_bytes(b"\x1f\x8b\x08 an interrupted write")
    return folder, str(gz_named_plain), str(plain_named_gz)


def test_misnamed_shards_are_read_by_their_bytes_everywhere(tmp_path, capsys):
    folder, gz, plain = misnamed_folder(tmp_path)
    shards = collection.shard_files(str(folder))
    assert shards == [gz, plain]
    assert [shards_lib.shard_compression(p) for p in shards] == ["GZIP", ""]
    train = reader.training_dataset(shards, batch_size=1, reads="records", deterministic=True, seed=0, **SMALL)
    assert sorted(np.concatenate([labels for _, labels in train]).tolist()) == [0, 1, 1, 2]
    evaluation = reader.evaluation_dataset(shards, batch_size=8, num_clips=1, **SMALL)
    assert sorted(np.concatenate([ids for _, _, ids in evaluation]).tolist()) == [b"v0", b"v0", b"v1", b"v1"]
    assert shards_lib.count_records(str(folder)) == 4  # no manifest: the records are counted
    summary = inspection.summarize(shards)
    assert summary["records"] == 4 and summary["frames"]["total"] == sum(n for n, _ in VIDEOS)
    assert tfrecords.main(["inspect", str(folder)]) == 0
    assert json.loads(capsys.readouterr().out)["records"] == 4
    # The window index refuses the GZIP shard by its bytes and indexes the plain one whatever its name.
    with pytest.raises(ValueError, match=r"uncompressed shard.*Received: a GZIP-compressed "
                                         r"shard=.*a-00000-of-00002\.tfrecord$"):
        index.write_index(gz)
    assert list(index.write_index(plain).num_frames) == [9, 5]
    assert reader.resolve_reads([plain], compression="auto", skip_corrupt=False, cycle_length=None) == "windows"
    with pytest.raises(ValueError, match=r"shard=.*a-00000-of-00002\.tfrecord, not a local, uncompressed file"):
        reader.training_dataset(shards, batch_size=1, reads="windows", **SMALL)


def test_a_compression_that_contradicts_the_bytes_is_an_error_naming_the_shard(tmp_path):
    folder, gz, plain = misnamed_folder(tmp_path)
    with pytest.raises(ValueError, match=r"Expected a GZIP-compressed shard.*Received: an uncompressed "
                                         r"shard=.*b-00001-of-00002\.tfrecord\.gz"):
        reader.training_dataset([gz, plain], batch_size=1, compression="GZIP", **SMALL)
    with pytest.raises(ValueError, match=r"Expected an uncompressed shard.*Received: a GZIP-compressed "
                                         r"shard=.*a-00000-of-00002\.tfrecord"):
        reader.evaluation_dataset([gz, plain], batch_size=1, compression=None, **SMALL)
    assert tfrecords.main(["inspect", "--gzip", str(folder)]) == 2  # one message, exit 2


def make_kinetics(root, videos_per_class=2):
    """A tiny Kinetics layout: `train.csv` and trimmed `<youtube_id>_<start>_<end>.mp4` files."""
    rows = []
    for label in ("abseiling", "juggling"):
        for k in range(videos_per_class):
            youtube_id = f"{label[:3]}{k:08d}"
            fx.make_video(root / "train" / f"{youtube_id}_000010_000020", num_frames=18 + k, height=40, width=48)
            rows.append([label, youtube_id, "10", "20", "train"])
    with open(root / "train.csv", "w", newline="") as f:
        csv.writer(f).writerows([["label", "youtube_id", "time_start", "time_end", "split"], *rows])


def test_readme_kinetics_gzip_example_trains(tmp_path):
    """`p3d-tfrecords convert --layout kinetics ... --gzip` (the README's example, smaller), then
    `p3d-train` on its output: GZIP shards named `.tfrecord.gz`, read by their bytes."""
    make_kinetics(tmp_path)
    out = tmp_path / "shards" / "k400-train"
    assert tfrecords.main(["convert", "--layout", "kinetics", "--csv", str(tmp_path / "train.csv"),
                     "--root", str(tmp_path / "train"), "--split", "train", "--short-side", "36", "--fps", "10",
                     "--max-frames", "30", "--gzip", "--output", str(out), "--shards", "2", "--workers", "0",
                     "--no-progress"]) == 0
    names = sorted(p.name for p in out.iterdir() if p.is_file())
    assert names == ["data-00000-of-00002.tfrecord.gz", "data-00001-of-00002.tfrecord.gz", "failures.jsonl",
                     "labels.txt", "manifest.json"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["params"]["compression"] == "GZIP"
    assert [s["file"] for s in manifest["shards"]] == names[:2]
    assert all(shards_lib.shard_compression(str(out / n)) == "GZIP" for n in names[:2])
    run = tmp_path / "run"
    assert train_cli.main(["--train", str(out), "--val", str(out), "--out", str(run), "--epochs", "1",
                          "--batch-size", "2", "--seed", "1", "--verbose", "0", "--decoder", "tf",
                          "--depth", "1,1,1,1", "--width", "4", "--frames", "16", "--size", "32"]) == 0
    assert (run / "last" / "model.keras").exists()


def test_a_run_resumed_from_one_with_the_old_gzip_names_keeps_them(tmp_path):
    """An output folder of an earlier `--gzip` run, whose shards were named `.tfrecord`: a rerun
    keeps those shards and names, and the folder holds each shard once."""
    videos = [str(fx.make_video(tmp_path / "in" / f"v{i}", num_frames=3 + i)) for i in range(3)]
    items = [sources.VideoItem(path, "a", f"a/{i}") for i, path in enumerate(videos)]
    out = tmp_path / "out"
    options = dict(decode=video.DecodeOptions(size=(32, 48)), num_shards=2, compression="GZIP", workers=0)
    writer.convert(items, {"a": 0}, out, **options)
    for marker in sorted((out / writer.WORK_DIR).glob("shard-*.json")):  # as the earlier run left them
        fields = json.loads(marker.read_text())
        old = fields["file"].removesuffix(".gz")
        (out / fields["file"]).rename(out / old)
        marker.write_text(json.dumps({**fields, "file": old}))
    summary = writer.convert(items, {"a": 0}, out, **options)
    assert summary.resumed_shards == 2
    assert [s["file"] for s in summary.manifest["shards"]] == ["data-00000-of-00002.tfrecord",
                                                              "data-00001-of-00002.tfrecord"]
    shards = collection.shard_files(str(out))
    assert [os.path.basename(p) for p in shards] == ["data-00000-of-00002.tfrecord", "data-00001-of-00002.tfrecord"]
    assert inspection.summarize(shards)["frames"]["total"] == 3 + 4 + 5


def test_gzip_shard_names():
    assert writer.shard_name("data", 3, 10, "GZIP") == "data-00003-of-00010.tfrecord.gz"
    assert writer.shard_name("data", 3, 10) == "data-00003-of-00010.tfrecord"
    assert writer.shard_suffix("GZIP") == ".tfrecord.gz" and writer.shard_suffix(None) == ".tfrecord"
