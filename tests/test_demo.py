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
    long_video = summary["long_video"]
    truth = long_video["true_segments"]
    assert [cls for *_, cls in truth] == list(demo.LONG_VIDEO_CLASSES)
    assert truth[-1][1] == len(demo.LONG_VIDEO_CLASSES) * demo.LONG_SEGMENT_FRAMES / 25
    # windows of 32 frames every 8 over 8 x 64 frames; predicted segments tile the windows' span
    assert long_video["windows"] == (len(truth) * demo.LONG_SEGMENT_FRAMES - 32) // demo.LONG_STRIDE + 1
    predicted = long_video["predicted_segments"]
    assert predicted[0][0] == 0.0 and all(a[1] == b[0] for a, b in zip(predicted, predicted[1:]))
    assert 0.0 <= long_video["window_accuracy"] <= 1.0
    assert open(long_video["picture"], "rb").read(4) == b"\x89PNG"
    assert "long video" in demo.format_summary(summary)
