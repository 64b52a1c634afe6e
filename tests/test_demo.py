"""The demo (`jobs.demo`), in its fast mode: every step runs."""
import os

from p3d_keras.jobs import demo


def test_demo_fast_mode(tmp_path):
    summary = demo.run_demo(str(tmp_path), demo.FAST)
    assert summary["test_videos"] == 16
    assert set(summary["p3d"]["pairs"]) == {"/".join(p) for p in demo.PAIRS}
    assert os.path.exists(os.path.join(summary["saved_model"], "saved_model.pb"))
    assert open(summary["picture"], "rb").read(4) == b"\x89PNG"
    assert "video accuracy" in demo.format_summary(summary)
