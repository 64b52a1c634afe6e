"""The demo (`p3d-demo`, `jobs.demo`), in its fast mode: every step runs, and its output carries no
noise a newcomer must learn to ignore."""
import json
import os
import subprocess
import sys

from p3d_keras.jobs import demo


def test_demo_fast_mode(tmp_path):
    program = subprocess.run([sys.executable, "-m", "p3d_keras.cli.demo", "--fast", "--out", str(tmp_path)],
                             capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONWARNINGS": ""})
    assert program.returncode == 0, program.stderr[-3000:]
    # The demo's own log lines and TensorFlow's INFO lines (its import banner, printed before its
    # logging is set up, whatever TF_CPP_MIN_LOG_LEVEL says); no warning or error line of either.
    banner = ("WARNING: All log messages before absl::InitializeLog()", "To enable the following instructions")
    noise = [line for line in program.stderr.splitlines()
             if " INFO " not in line and not line.startswith(("I0000 ", *banner))]
    assert noise == [], noise
    with open(tmp_path / "summary.json", encoding="utf-8") as f:
        summary = json.load(f)
    assert summary["test_videos"] == 16
    assert set(summary["p3d"]["pairs"]) == {"/".join(p) for p in demo.PAIRS}
    assert os.path.exists(os.path.join(summary["saved_model"], "saved_model.pb"))
    assert open(summary["picture"], "rb").read(4) == b"\x89PNG"
    assert "video accuracy" in program.stdout and demo.format_summary(summary) in program.stdout
    long_video = summary["long_video"]
    truth = long_video["true_segments"]
    assert [cls for *_, cls in truth] == list(demo.LONG_VIDEO_CLASSES)
    assert truth[-1][1] == len(demo.LONG_VIDEO_CLASSES) * demo.LONG_SEGMENT_FRAMES / 25
    # windows of 32 frames every LONG_STRIDE; the predicted segments tile the windows' span
    assert long_video["windows"] == (len(truth) * demo.LONG_SEGMENT_FRAMES - 32) // demo.LONG_STRIDE + 1
    predicted = long_video["predicted_segments"]
    assert predicted[0][0] == 0.0 and all(a[1] == b[0] for a, b in zip(predicted, predicted[1:]))
    assert 0.0 <= long_video["window_accuracy"] <= 1.0
    assert open(long_video["picture"], "rb").read(4) == b"\x89PNG"
    assert "long video" in program.stdout
