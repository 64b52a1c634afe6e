"""`p3d-extract-features` on video files: a killed run resumes without redoing finished videos,
a second run on a held folder is refused naming the holder, bad flags exit 2."""
import json
import logging
import signal
import subprocess
import sys
import time

import pytest

from p3d_keras.applications import P3DResNet
from p3d_keras.cli import extract_features
from program_fixtures import REPO
from test_video_features import write_videos

pytest.importorskip("av")

# The program, slowed after each finished video so that a kill lands between videos.
SLOW_PROGRAM = """
import sys, time
from p3d_keras.cli import extract_features, progress
call = progress.ProgressDisplay.__call__
progress.ProgressDisplay.__call__ = lambda self, p: (call(self, p), time.sleep(30 if p.done == 1 else 0))
sys.exit(extract_features.main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("program")
    P3DResNet((1, 1, 1, 1), width=4, input_shape=(16, 32, 32, 3), classes=3).save(root / "tiny.keras")
    write_videos(root / "videos", lengths=(40, 20, 70, 32))
    return root


def _args(root, out):
    return ["--videos", str(root / "videos"), "--out", str(out), "--model", str(root / "tiny.keras"),
            "--stride", "8", "--workers", "0", "--batch-size", "2", "--normalization", "caffe"]


def _start_slow(root, out):
    process = subprocess.Popen([sys.executable, "-c", SLOW_PROGRAM, *_args(root, out)], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list(out.glob("*.npz")):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    return process


def test_a_killed_run_resumes_without_redoing_finished_videos(videos, tmp_path, capsys):
    out = tmp_path / "out"
    process = _start_slow(videos, out)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    finished = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*.npz")}
    assert len(finished) == 1
    assert extract_features.main(_args(videos, out)) == 0
    assert "3 videos written (11 windows, 0 looped: shorter than a window), 1 done before, 0 failed" in \
        capsys.readouterr().out
    assert all((p.stat().st_ino, p.stat().st_mtime_ns) == stat for p, stat in finished.items())
    index = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert [e["media_id"] for e in index] == ["v0", "v1", "v2", "v3"]
    assert extract_features.main(_args(videos, out)) == 0  # complete: nothing to do
    assert "0 videos written (0 windows, 0 looped: shorter than a window), 4 done before" in capsys.readouterr().out


def test_a_second_run_on_a_held_folder_exits_2_naming_the_holder(videos, tmp_path, caplog):
    out = tmp_path / "out"
    process = _start_slow(videos, out)
    try:
        with caplog.at_level(logging.ERROR):
            assert extract_features.main(_args(videos, out)) == 2
        assert f"Expected no other feature extraction running on {out}. Received: it is locked by pid " \
               f"{process.pid} on host " in caplog.text
    finally:
        process.kill()
        process.wait(timeout=30)


@pytest.mark.parametrize("flags, expected", [
    (["--layers", "pool5,nope"], "Received: 'nope'"),
    (["--data", "shards/"], "Expected either --data (shards) or --videos/--csv (video files). Received: both"),
])
def test_bad_flags_exit_2_with_one_line(videos, tmp_path, caplog, flags, expected):
    with caplog.at_level(logging.ERROR):
        assert extract_features.main([*_args(videos, tmp_path / "out"), *flags]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].startswith("p3d-extract-features: ") and expected in errors[0]
