"""A synthetic motion dataset that can only be solved by modelling time.

Each clip shows one textured object (random shape, random colour-block texture) on a static
textured background. The class is the object's motion: moving left/right/up/down, rotating
clockwise/counter-clockwise, or approaching/receding (growing/shrinking).

No single frame tells the class. Every appearance parameter is drawn the same way for every
class, and the motion parameters live on circles:

* position is uniform on the frame seen as a torus: an object leaving one edge re-enters at the
  opposite edge (it is drawn split across the border meanwhile);
* orientation is uniform on [0, 2 pi);
* the log of the object's diameter is uniform on a cycle: an approaching object that reaches the
  largest size pops back to the smallest (and a receding one the other way round).

So the frame at any time index has the same distribution for all eight classes; with the same
random generator state even the first frames are identical. A clip played backwards is a clip of
the opposite class (left <-> right, cw <-> ccw, approach <-> recede) with the same distribution,
so a model that ignores frame order is at chance within each pair.

`render_clip` makes one clip as a NumPy array, `write_video` writes frames to an mp4 with PyAV
(`video_writer` one frame at a time, for a video of any length),
and `make_motion_dataset` writes `root/<split>/<class>/<class>_<i:04d>.mp4` trees that the
folder-per-class converter reads.
"""
import concurrent.futures
import contextlib
import json
import logging
import multiprocessing
import os
import zlib

import numpy as np

logger = logging.getLogger(__name__)

# Per class: (dx, dy, spin, zoom) signs. Image coordinates: x to the right, y downwards, so a
# positive spin (angle growing from +x towards +y) is clockwise on screen.
MOTIONS = {
    "move_left": (-1, 0, 0, 0),
    "move_right": (1, 0, 0, 0),
    "move_up": (0, -1, 0, 0),
    "move_down": (0, 1, 0, 0),
    "rotate_cw": (0, 0, 1, 0),
    "rotate_ccw": (0, 0, -1, 0),
    "approach": (0, 0, 0, 1),
    "recede": (0, 0, 0, -1),
}
CLASSES = tuple(MOTIONS)

# Speeds. Translation is in pixels per frame at 64 px and scales with the frame size.
SPEED_RANGE = (1.0, 2.0)
SPIN_RANGE = (np.deg2rad(5.0), np.deg2rad(10.0))  # radians per frame
ZOOM_RANGE = (0.015, 0.03)  # change of log(diameter) per frame
DIAMETER_RANGE = (0.2, 0.8)  # object diameter as a fraction of the frame size

CODECS = ("h264", "mpeg4")
DEFAULT_SPLITS = {"train": 48, "test": 16}


def _check_class(cls):
    if cls not in MOTIONS:
        raise ValueError(f"Unknown motion class. Expected one of {list(CLASSES)}. Received: cls={cls!r}")


def _smooth_noise(rng, size, cells, low, high):
    """A (size, size, 3) colour field: uniform random colours on a `cells` grid, bilinearly upsampled."""
    grid = rng.uniform(low, high, (cells, cells, 3))
    coords = np.linspace(0.0, cells - 1.0, size)
    i0 = np.minimum(coords.astype(int), cells - 2)
    w = (coords - i0)[:, None, None]
    rows = grid[i0] * (1 - w) + grid[i0 + 1] * w  # (size, cells, 3)
    w = w.reshape(1, size, 1)
    return rows[:, i0] * (1 - w) + rows[:, i0 + 1] * w


def _background(rng, size):
    """A static uint8 textured background: a smooth colour field plus fixed fine-grained grey noise."""
    cells = int(rng.integers(3, 7))
    field = _smooth_noise(rng, size, cells, 30.0, 225.0)
    return np.clip(field + rng.normal(0.0, 12.0, (size, size, 1)), 0, 255).astype(np.uint8)


def _object_sprite(rng):
    """A random non-symmetric shape and texture in object coordinates ([-1, 1]^2).

    Returns `(shape, offset, texture)`. In polar coordinates about its own origin, the outline's
    radius at angle phi is `sum_k shape[k, 0] * cos(k phi) + shape[k, 1] * sin(k phi)` for
    k = 0..3. `offset` is its centre of area in those coordinates: object coordinates are centred
    there (the object turns about it), so a point (u, v) is inside when (u, v) + offset is, and
    the outline reaches at most radius 1 from it. The k = 2 term is never small, so the outline is
    elongated and its rotation is visible. `texture` is a (g, g, 3) grid of colours, sampled by
    nearest neighbour over [-1, 1]^2.
    """
    amplitude = np.array([0.7, rng.uniform(0.0, 0.15), rng.uniform(0.15, 0.25), rng.uniform(0.0, 0.12)])
    phase = np.concatenate([[0.0], rng.uniform(0.0, 2 * np.pi, 3)])
    shape = np.stack([amplitude * np.cos(phase), -amplitude * np.sin(phase)], axis=1)
    phi = np.linspace(0.0, 2 * np.pi, 720, endpoint=False)
    k = np.arange(4)
    # Elementwise sums, not `@`: a BLAS product may sum in an order that depends on its threads.
    radius = (np.cos(np.outer(phi, k)) * shape[:, 0] + np.sin(np.outer(phi, k)) * shape[:, 1]).sum(axis=1)
    outline = radius[:, None] * np.stack([np.cos(phi), np.sin(phi)], axis=1)
    centre = (2 / 3) * (radius[:, None] ** 2 * outline).sum(axis=0) / (radius**2).sum()  # of area
    reach = np.linalg.norm(outline - centre, axis=1).max()
    cells = int(rng.integers(3, 7))
    texture = rng.uniform(0.0, 255.0, (cells, cells, 3))
    return (shape / reach).astype(np.float32), (centre / reach).astype(np.float32), texture


def _inside(u, v, shape):
    """Whether object coordinates (u, v) lie inside the outline `shape` (see `_object_sprite`)."""
    rho = np.hypot(u, v)
    c, s = u / (rho + 1e-6), v / (rho + 1e-6)
    c2, s2 = c * c - s * s, 2 * c * s
    c3, s3 = c * c2 - s * s2, s * c2 + c * s2
    boundary = (shape[0, 0] + shape[1, 0] * c + shape[1, 1] * s + shape[2, 0] * c2 + shape[2, 1] * s2
                + shape[3, 0] * c3 + shape[3, 1] * s3)
    return rho <= boundary


def _trajectory(cls, rng, frames, size):
    """Per-frame centre (T, 2), angle (T,) and diameter (T,) of the object.

    The random draws are the same for every class (only their signs differ), so one generator
    state gives the same first frame whatever the class.
    """
    dx, dy, spin, zoom = MOTIONS[cls]
    t = np.arange(frames, dtype=float)
    start = rng.uniform(0.0, size, 2)
    direction = np.array([dx, dy], dtype=float)
    speed = rng.uniform(*SPEED_RANGE) * size / 64.0
    centre = np.mod(start + speed * direction * t[:, None], size)

    angle = rng.uniform(0.0, 2 * np.pi) + spin * rng.uniform(*SPIN_RANGE) * t

    log_low, log_high = np.log(np.array(DIAMETER_RANGE) * size)
    cycle = rng.uniform(0.0, 1.0) + zoom * rng.uniform(*ZOOM_RANGE) * t / (log_high - log_low)
    diameter = np.exp(log_low + np.mod(cycle, 1.0) * (log_high - log_low))
    return centre, angle, diameter


def render_clip(cls, rng, *, frames=32, size=64, return_mask=False):
    """Render one clip of motion class `cls`.

    Args:
        cls: one of `CLASSES`.
        rng: a `numpy.random.Generator`; the clip is a pure function of its state.
        frames: number of frames.
        size: frame height and width in pixels.
        return_mask: also return the object's mask.

    Returns:
        uint8 array (frames, size, size, 3), RGB; with `return_mask=True` the pair
        `(clip, mask)`, `mask` a bool array (frames, size, size) that is True on the object.
    """
    _check_class(cls)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"Expected a numpy.random.Generator. Received: rng={rng!r}")
    if int(frames) < 2 or int(size) < 16:
        raise ValueError(f"Expected frames >= 2 and size >= 16. Received: frames={frames}, size={size}")
    background = _background(rng, size)
    shape, offset, texture = _object_sprite(rng)
    centre, angle, diameter = _trajectory(cls, rng, frames, size)

    # Offsets of every pixel from the centre, taken the short way round the torus: (T, S, S).
    pixels = np.arange(size, dtype=np.float32)
    centre = centre.astype(np.float32)
    off_x = np.mod(pixels[None, None, :] - centre[:, None, None, 0] + size / 2, size) - size / 2
    off_y = np.mod(pixels[None, :, None] - centre[:, None, None, 1] + size / 2, size) - size / 2
    # Into object coordinates: rotate by -angle, divide by the radius.
    scale = (2 / diameter).astype(np.float32)[:, None, None]
    cos = np.cos(angle).astype(np.float32)[:, None, None] * scale
    sin = np.sin(angle).astype(np.float32)[:, None, None] * scale
    u = cos * off_x + sin * off_y
    v = cos * off_y - sin * off_x

    mask = _inside(u + offset[0], v + offset[1], shape)
    cells = texture.shape[0]
    iu = np.clip(((u + 1) * (cells / 2)).astype(np.intp), 0, cells - 1)
    iv = np.clip(((v + 1) * (cells / 2)).astype(np.intp), 0, cells - 1)
    clip = np.where(mask[..., None], texture.astype(np.uint8)[iv, iu], background[None])
    return (clip, mask) if return_mask else clip


def _encoder(codec):
    """(encoder name, options, codec-context attributes) for `codec`, at a quality that keeps motion."""
    import av  # noqa: PLC0415 (optional dependency: the `video` extra)

    if codec == "mpeg4":
        return "mpeg4", {}, {"qscale": 2}
    available = av.codec.codecs_available
    if "libx264" in available:
        # One encoder thread: x264's automatic count follows the CPUs the process may use, which
        # differs between processes (and it is written into the stream), so the bytes would too.
        # No lookahead (nor the macroblock tree it feeds): on small frames (32, 96 px) its output
        # followed whatever the process had decoded before, not only the frames.
        return "libx264", {"crf": "17", "preset": "medium", "threads": "1",
                           "x264-params": "rc-lookahead=0:mbtree=0"}, {}
    if "libopenh264" in available:
        return "libopenh264", {}, {"bit_rate": 2_000_000}
    raise RuntimeError(
        "Expected PyAV built with an H.264 encoder (libx264 or libopenh264). "
        f"Received: codecs with 264 in the name={sorted(c for c in available if '264' in c)}"
    )


def rgb_to_yuv420p(frame):
    """One uint8 RGB frame (H, W, 3), H and W even, as a yuv420p plane stack (H * 3 // 2, W).

    BT.601 limited range in integer arithmetic (the coefficients libswscale uses), with the
    chroma of each 2x2 block taken from its mean colour. Converting here rather than letting the
    encoder call libswscale keeps the encoder's input a pure function of the frame, in plain
    integer arithmetic.
    """
    rgb = frame.astype(np.int32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = ((66 * r + 129 * g + 25 * b + 128) >> 8) + 16
    height, width = r.shape
    blocks = rgb.reshape(height // 2, 2, width // 2, 2, 3).sum(axis=(1, 3))  # 4 x the mean colour
    r, g, b = blocks[..., 0], blocks[..., 1], blocks[..., 2]
    u = ((-38 * r - 74 * g + 112 * b + 512) >> 10) + 128
    v = ((112 * r - 94 * g - 18 * b + 512) >> 10) + 128
    planes = np.concatenate([y.ravel(), u.ravel(), v.ravel()])
    return planes.astype(np.uint8).reshape(height * 3 // 2, width)


def write_video(path, frames, *, fps=25, codec="h264"):
    """Write uint8 RGB `frames` (T, H, W, 3) to the mp4 file `path` (yuv420p) with PyAV.

    `codec` is "h264" (libx264 at CRF 17, or libopenh264 at 2 Mb/s) or "mpeg4" (qscale 2).
    H and W must be even (4:2:0 chroma subsampling). With libx264 or mpeg4 the bytes are a pure
    function of the arguments (see `rgb_to_yuv420p`).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(
            "Expected uint8 frames of shape (T, H, W, 3) with T >= 1. "
            f"Received: frames.shape={frames.shape}, frames.dtype={frames.dtype}"
        )
    with video_writer(path, frames.shape[1], frames.shape[2], fps=fps, codec=codec) as write:
        for frame in frames:
            write(frame)


@contextlib.contextmanager
def video_writer(path, height, width, *, fps=25, codec="h264"):
    """A context giving `write(frame)`, which encodes one uint8 RGB `frame` (height, width, 3)
    into the mp4 file `path` (yuv420p) at once, so a video of any length is written in constant
    memory; the file is complete when the context exits. `fps` is an int or a `Fraction`;
    `codec` as in `write_video`. Raises ValueError for an odd height or width (4:2:0 chroma
    subsampling), an unknown codec, or a frame of another shape."""
    import av  # noqa: PLC0415 (optional dependency: the `video` extra)

    if height % 2 or width % 2:
        raise ValueError(f"Expected an even frame height and width (yuv420p). Received: {height}x{width} ({path})")
    if codec not in CODECS:
        raise ValueError(f"Unknown codec. Expected one of {list(CODECS)}. Received: codec={codec!r}")
    name, options, attributes = _encoder(codec)
    with av.open(os.fspath(path), mode="w") as container:
        stream = container.add_stream(name, rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for key, value in attributes.items():
            setattr(stream.codec_context, key, value)

        def write(frame):
            if frame.shape != (height, width, 3) or frame.dtype != np.uint8:
                raise ValueError(f"Expected a uint8 frame of shape {(height, width, 3)}. Received: "
                                 f"shape {frame.shape}, dtype {frame.dtype} ({path})")
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb_to_yuv420p(frame), format="yuv420p")))

        yield write
        container.mux(stream.encode())


def _write_one(task):
    """Render and write one video of `make_motion_dataset` (a worker task)."""
    path, seed, split, cls, i, frames, size, fps, codec = task
    rng = np.random.default_rng([seed, zlib.crc32(split.encode()), CLASSES.index(cls), i])
    write_video(path, render_clip(cls, rng, frames=frames, size=size), fps=fps, codec=codec)


def make_motion_dataset(root, *, splits=None, frames=32, size=64, fps=25, codec="h264", seed=0,
                        classes=CLASSES, workers=0):
    """Write the synthetic motion dataset as mp4 files and return its manifest.

    Writes `root/<split>/<class>/<class>_<i:04d>.mp4`, so each split is a folder-per-class tree,
    and `root/manifest.json`. Each clip is a pure function of `(seed, split name, class, i)`, so
    the files do not depend on `workers`.

    Args:
        root: output folder (created if missing; existing files of the same names are replaced).
        splits: mapping of split name to videos per class; default `{"train": 48, "test": 16}`.
        frames, size: clip length and frame size (size even).
        fps, codec: passed to `write_video`.
        seed: random seed.
        classes: the motion classes to write, a subset of `CLASSES`.
        workers: processes rendering in parallel (0: in this process; None: one per core).

    Returns:
        The manifest dict: classes, per-split per-class counts, total, and the settings.
    """
    splits = dict(DEFAULT_SPLITS if splits is None else splits)
    for name, count in splits.items():
        if not isinstance(name, str) or not name or os.sep in name or int(count) != count or count < 0:
            raise ValueError(
                "Expected splits to map folder names to non-negative video counts per class. "
                f"Received: splits={splits!r}"
            )
    if workers is not None and (not isinstance(workers, int) or workers < 0):
        raise ValueError(f"Expected workers to be an int >= 0 or None. Received: workers={workers!r}")
    classes = tuple(classes)
    for cls in classes:
        _check_class(cls)
    tasks, counts = [], {}
    for split, count in splits.items():
        counts[split] = dict.fromkeys(classes, int(count))
        for cls in classes:
            folder = os.path.join(os.fspath(root), split, cls)
            os.makedirs(folder, exist_ok=True)
            tasks += [(os.path.join(folder, f"{cls}_{i:04d}.mp4"), seed, split, cls, i, frames, size, fps, codec)
                      for i in range(int(count))]
    if workers == 0:
        for task in tasks:
            _write_one(task)
    else:
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            list(pool.map(_write_one, tasks, chunksize=16))
    logger.info("Wrote %d videos under %s", len(tasks), root)
    manifest = {
        "classes": list(classes),
        "splits": counts,
        "total": len(tasks),
        "frames": frames, "size": size, "fps": fps, "codec": codec, "seed": seed,
    }
    with open(os.path.join(os.fspath(root), "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
    return manifest
