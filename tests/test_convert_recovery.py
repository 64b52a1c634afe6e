"""The converter loses nothing, whatever happens: a full disk, a second run on the same output,
`kill -9` of the main process with workers running, an output that is a file, inputs that are
dangling symlinks or FIFOs. Each recovery ends in the bytes an uninterrupted run writes."""
import errno
import fcntl
import io
import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

import tfrecords_fixtures as fx
from p3d_keras.core import files as core_files, output_folder
from p3d_keras.tfrecords_tools import framing, schema, sources, video, writer
from p3d_keras.cli import tfrecords

DECODE = video.DecodeOptions(size=(32, 48), max_frames=6)
SHARDS = 3


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """`root/<class>/...`: 9 small videos in 3 classes, a corrupt file, a dangling symlink and a
    FIFO named like videos."""
    root = tmp_path_factory.mktemp("recovery") / "videos"
    for i in range(9):
        fx.make_video(root / f"class{i % 3}" / f"v{i}", "h264", num_frames=4 + i % 4)
    (root / "class0" / "corrupt.mp4").write_bytes(bytes(range(256)) * 8)
    (root / "class1" / "dangling.mp4").symlink_to(root / "moved-away.mp4")
    os.mkfifo(root / "class2" / "fifo.mp4")
    return root


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory):
    """The listing and the files of an uninterrupted, in-process run."""
    items, label_map = sources.list_videos("folder", dataset)
    out = tmp_path_factory.mktemp("reference")
    writer.convert(items, label_map, out, decode=DECODE, num_shards=SHARDS, workers=0)
    return items, label_map, _outputs(out), out


def _outputs(out):
    """`{name: bytes}` of everything a conversion leaves beside `.work/`: shards, window indexes,
    labels.txt, failures.jsonl, manifest.json."""
    return {p.name: p.read_bytes() for p in sorted(pathlib.Path(out).iterdir()) if p.is_file()}


def _records(out):
    """The parsed records of the (uncompressed) shards in `out`, in order."""
    records = []
    for shard in sorted(pathlib.Path(out).glob("*.tfrecord")):
        data = shard.read_bytes()
        with open(shard, "rb") as f:
            records += [schema.parse_example(data[start:start + n]) for start, n in framing.read_frames(f, shard)]
    return records


def test_every_listed_input_is_a_record_or_a_failure(reference, dataset):
    items, _, files, out = reference
    records = {r[schema.MEDIA_ID].numpy().decode() for r in _records(out)}
    failures = {f["media_id"]: f["reason"] for f in map(json.loads, files[writer.FAILURES].decode().splitlines())}
    assert len(items) == 12 and not records & set(failures)
    assert records | set(failures) == {item.media_id for item in items}
    moved = str(dataset / "moved-away.mp4")
    assert failures["class1/dangling"] == f"dangling symlink to {moved!r}: No such file or directory"
    assert failures["class2/fifo"] == "not a regular file (a folder, FIFO, socket or device)"
    assert failures["class0/corrupt"].startswith("unreadable")


class _Disk:
    """The output side's disk with `left` bytes free: every file the converter writes (through
    `files.atomic_file`, and the workers' spool files) counts, and a write that does not fit
    raises OSError(ENOSPC), as a full disk does."""

    def __init__(self, left):
        self.left, self.used = left, 0

    def install(self, monkeypatch):
        real_open, real_temporary = open, writer.tempfile.TemporaryFile
        monkeypatch.setattr(core_files, "open", lambda *a, **k: _DiskFile(real_open(*a, **k), self), raising=False)
        monkeypatch.setattr(writer.tempfile, "TemporaryFile", lambda *a, **k: _DiskFile(real_temporary(*a, **k), self))


class _DiskFile:
    def __init__(self, f, disk):
        self._f, self._disk = f, disk

    def write(self, data):
        size = memoryview(data).nbytes
        if size > self._disk.left:  # a smaller write may still fit, as on a real disk
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._disk.left -= size
        self._disk.used += size
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._f.__exit__(*exc)


@pytest.mark.parametrize("compression", [None, "GZIP"])
def test_a_full_disk_stops_the_run_marks_no_video_failed_and_resumes_byte_identical(
        reference, tmp_path, monkeypatch, compression):
    items, label_map, expected, _ = reference
    convert = dict(decode=DECODE, num_shards=SHARDS, compression=compression, workers=0)
    measure = _Disk(float("inf"))
    with monkeypatch.context() as patch:
        measure.install(patch)
        writer.convert(items, label_map, tmp_path / "measure", **convert)
    uninterrupted = _outputs(tmp_path / "measure")
    if compression is None:
        assert uninterrupted == expected  # the injection itself changes nothing
    # out of space at every stage: the first work file, videos, shards, indexes, manifest
    for k, left in enumerate([0, 100, *(measure.used * j // 8 for j in range(1, 8)), measure.used - 10]):
        out = tmp_path / f"full{k}"
        with monkeypatch.context() as patch:
            _Disk(left).install(patch)
            with pytest.raises(writer.OutputError) as info:
                writer.convert(items, label_map, out, **convert)
        message = str(info.value)
        assert f"Expected to write the conversion's files in {out}. Received: [Errno 28] No space left" in message
        assert "rerun the same command to resume" in message
        assert not list((out / writer.WORK_DIR).glob("*.tmp")), left  # no partial file left behind
        if (out / writer.FAILURES).exists():  # only the last stage: everything else was written
            assert (out / writer.FAILURES).read_bytes() == uninterrupted[writer.FAILURES]
        writer.convert(items, label_map, out, **convert)  # space freed
        assert _outputs(out) == uninterrupted, left


@pytest.mark.slow  # spawns a pool of worker processes
def test_a_full_disk_in_a_worker_stops_the_run_and_resumes_byte_identical(reference, tmp_path, monkeypatch):
    items, label_map, expected, _ = reference
    full = [sources.VideoItem(item.path, item.label, item.media_id.replace("v4", "v4-full"), item.start, item.end)
            for item in items]
    monkeypatch.setattr(writer, "_convert_task", fx.task_on_a_full_disk)
    with pytest.raises(writer.OutputError, match=r"Received: \[Errno 28\] No space left on device"):
        writer.convert(full, label_map, tmp_path, decode=DECODE, num_shards=SHARDS, workers=2)
    assert not any("No space" in p.read_text() for p in (tmp_path / writer.WORK_DIR).glob("*.fail"))
    monkeypatch.undo()
    writer.convert(full, label_map, tmp_path, decode=DECODE, num_shards=SHARDS, workers=2)
    reference_full = tmp_path.parent / f"{tmp_path.name}-ref"
    writer.convert(full, label_map, reference_full, decode=DECODE, num_shards=SHARDS, workers=0)
    assert _outputs(tmp_path) == _outputs(reference_full)


def test_a_second_run_exits_2_naming_the_holder_and_a_killed_holders_lock_is_recovered(tmp_path, caplog):
    first, args, workers = _start_a_long_run(tmp_path, workers=1)  # holds the output folder
    try:
        with caplog.at_level(logging.ERROR):
            assert tfrecords.main([*args, "--output", str(tmp_path / "out")]) == 2
        assert (f"Expected no other conversion running on {tmp_path / 'out'}. Received: it is locked by pid "
                f"{first.pid} on host ") in caplog.text
        items, label_map = sources.list_videos("folder", tmp_path / "videos")
        with pytest.raises(writer.OutputError, match=f"locked by pid {first.pid} "):
            writer.convert(items, label_map, tmp_path / "out", decode=DECODE, workers=0)
    finally:
        first.kill()  # SIGKILL: a crashed run, its lock file left behind
        first.wait(timeout=30)
    assert tfrecords.main([*args, "--output", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / writer.WORK_DIR / writer.LOCK).read_text().startswith(f"pid {os.getpid()} on host ")
    assert tfrecords.main([*args, "--output", str(tmp_path / "uninterrupted"), "--workers", "0"]) == 0
    assert _outputs(tmp_path / "out") == _outputs(tmp_path / "uninterrupted")


def test_a_run_waits_for_the_workers_of_a_killed_run(reference, tmp_path, monkeypatch):
    items, label_map, expected, _ = reference
    (tmp_path / writer.WORK_DIR).mkdir()
    fd = os.open(tmp_path / writer.WORK_DIR / writer.WORKERS_LOCK, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_SH)  # a worker of an earlier run that is still alive
    try:
        monkeypatch.setattr(output_folder, "WORKERS_EXIT_S", 0.3)
        with pytest.raises(writer.OutputError, match=r"Expected the worker processes of an earlier run on .* to have "
                                                     r"exited. Received: some still hold .*workers.lock after 0.3s"):
            writer.convert(items, label_map, tmp_path, decode=DECODE, num_shards=SHARDS, workers=0)
        assert not list((tmp_path / writer.WORK_DIR).glob("*.rec"))  # fenced off: nothing was written
    finally:
        os.close(fd)  # the old worker is gone
    writer.convert(items, label_map, tmp_path, decode=DECODE, num_shards=SHARDS, workers=0)
    assert _outputs(tmp_path) == expected


LONG_RUN = """
import sys
import tfrecords_fixtures as fx
from p3d_keras.tfrecords_tools import writer
from p3d_keras.cli import tfrecords
writer._convert_task = fx.sleeping_task  # the videos named sleep-* take a minute each
sys.exit(tfrecords.main(sys.argv[1:]))
"""


def _start_a_long_run(tmp_path, workers):
    """Start `p3d-tfrecords convert --workers N` of 5 videos into `tmp_path/out` in a process
    whose conversions of `sleep-a` and `sleep-b` last a minute; return it once `min(workers, 2)`
    of them are in progress in worker processes, the program's arguments but `--output`, and
    the pids of those workers."""
    root = tmp_path / "videos"
    for name in ("sleep-a", "sleep-b", "v1", "v2", "v3"):
        fx.make_video(root / "a" / name, "h264", num_frames=5)
    markers = tmp_path / "markers"
    markers.mkdir()
    args = ["convert", "--root", str(root), "--size", "32x48", "--shards", "2", "--workers", str(workers),
            "--no-progress"]
    env = dict(os.environ, P3D_TEST_MARKERS=str(markers),
               PYTHONPATH=os.pathsep.join([str(pathlib.Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    run = subprocess.Popen([sys.executable, "-c", LONG_RUN, *args, "--output", str(tmp_path / "out")], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(list(markers.iterdir())) < min(workers, 2) and time.monotonic() < deadline:
        assert run.poll() is None, f"the conversion ended early: {run.stderr.read()}"
        time.sleep(0.05)
    return run, args, sorted(int(p.name) for p in markers.iterdir())


def _alive(pid):
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


@pytest.mark.slow  # spawns worker pools
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_of_the_main_process_kills_its_workers_and_the_rerun_is_byte_identical(tmp_path):
    run, args, workers = _start_a_long_run(tmp_path, workers=2)
    assert len(workers) == 2 and run.pid not in workers and all(map(_alive, workers))
    run.send_signal(signal.SIGKILL)
    run.wait(timeout=30)
    deadline = time.monotonic() + 2
    while any(map(_alive, workers)) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(map(_alive, workers)), "a worker outlived its killed run"
    assert tfrecords.main([*args, "--output", str(tmp_path / "out")]) == 0  # at once, in this process
    assert tfrecords.main([*args, "--output", str(tmp_path / "uninterrupted"), "--workers", "0"]) == 0
    assert _outputs(tmp_path / "out") == _outputs(tmp_path / "uninterrupted")


def test_an_output_that_is_a_file_exits_2_naming_it(dataset, tmp_path, caplog):
    (tmp_path / "file").write_text("not a folder")
    args = ["convert", "--root", str(dataset), "--workers", "0", "--no-progress", "--output"]
    with caplog.at_level(logging.ERROR):
        assert tfrecords.main([*args, str(tmp_path / "file")]) == 2
        assert tfrecords.main([*args, str(tmp_path / "file" / "under")]) == 2
    assert f"Expected output_dir to be a folder (new or existing). Received: output_dir={str(tmp_path / 'file')!r}, " \
           f"an existing file" in caplog.text
    assert f"Expected to write the conversion's files in {tmp_path / 'file' / 'under'}. Received: [Errno 20] Not a " \
           f"directory" in caplog.text
    assert (tmp_path / "file").read_text() == "not a folder"


def test_a_rotated_phone_video_is_converted_upright(tmp_path):
    path = fx.make_video(tmp_path / "in" / "phone", "h264", num_frames=3, rotation=-90)
    item = sources.VideoItem(str(path), "a", "a/phone")
    writer.convert([item], {"a": 0}, tmp_path / "out", decode=video.DecodeOptions(short_side=48, jpeg_quality=95),
                   workers=0)
    (record,) = _records(tmp_path / "out")
    assert (record[schema.HEIGHT], record[schema.WIDTH]) == (64, 48)
    for i, jpeg in enumerate(record[schema.ENCODED].numpy()):
        stored = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), np.float32)
        assert np.abs(stored - fx.displayed(fx.synthetic_frame(i), -90)).mean() < 12


def test_an_input_that_fails_to_read_is_a_failed_video_not_a_stopped_run(reference, dataset, tmp_path, monkeypatch):
    """An OSError reading a video (a failing input disk) is the video's: failures.jsonl."""
    import av

    items, label_map, expected, _ = reference
    real_open = av.open

    def failing_disk(path, *args, **kwargs):
        if path.endswith("v4.mp4"):
            raise OSError(errno.EIO, os.strerror(errno.EIO), path)  # a plain OSError, not PyAV's
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(av, "open", failing_disk)
    summary = writer.convert(items, label_map, tmp_path, decode=DECODE, num_shards=SHARDS, workers=0)
    reasons = {f["media_id"]: f["reason"] for f in summary.failures}
    assert reasons["class1/v4"] == f"unreadable: [Errno 5] Input/output error: {str(dataset / 'class1' / 'v4.mp4')!r}"
    assert summary.converted == json.loads(expected[writer.MANIFEST])["totals"]["records"] - 1


def test_the_program_exits_2_on_a_full_disk_and_a_rerun_succeeds(dataset, reference, tmp_path, monkeypatch, caplog):
    _, _, expected, _ = reference
    args = ["convert", "--root", str(dataset), "--output", str(tmp_path), "--size", "32x48", "--max-frames", "6",
            "--shards", str(SHARDS), "--workers", "0", "--no-progress"]
    with monkeypatch.context() as patch, caplog.at_level(logging.ERROR):
        _Disk(5000).install(patch)
        assert tfrecords.main(args) == 2
    assert f"Expected to write the conversion's files in {tmp_path}. Received: [Errno 28] No space left on device" \
        in caplog.text
    assert tfrecords.main(args) == 0
    assert _outputs(tmp_path) == expected
