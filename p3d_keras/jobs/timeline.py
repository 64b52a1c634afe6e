"""A video's predictions over time, for a person: segments, a PNG timeline, an annotated copy.

Everything takes plain arrays, as `jobs.predict` and the demo have them: `times` `[N, 2]` (each
window's start and end in seconds, in order of start) and `probabilities` `[N, classes]`.

* `segments` merges consecutive windows with the same top-1 class into `Segment`s;
* `draw_timeline` draws the top classes' probabilities over time, the predicted segments (and
  true ones, when given) as a bar below, and a strip of frames above with their times marked
  (matplotlib: the `[plots]` extra; without it, one warning and nothing drawn);
* `thumbnails` decodes the frames at a few times again (one seek each), so nothing of the video is
  kept during the pass that classifies it;
* `annotate_video` writes a copy of a video with each frame's current window label drawn on it,
  one frame at a time.
"""
import bisect
import dataclasses
import fractions
import itertools
import os

import numpy as np

from p3d_keras.core.checks import expect
from p3d_keras.core.files import atomic_path
from p3d_keras.jobs import synthetic
from p3d_keras.jobs.reports import pyplot
from p3d_keras.jobs.video_inference import video_frames
from p3d_keras.tfrecords_tools import video

FIGURE_SIZE = (12, 7)  # inches; at DPI, the PNG is 1200 x 700 pixels
DPI = 100
THUMBNAIL_HEIGHT = 120  # pixels of a decoded thumbnail
OTHER_COLOUR = "0.75"


@dataclasses.dataclass(frozen=True)
class Segment:
    """Consecutive windows with the same top-1 class `index` (`label`), from `start` to `end`
    seconds; `probability` is that class's mean probability over them."""
    start: float
    end: float
    index: int
    label: str
    probability: float


def _label(class_names, index):
    return class_names[index] if class_names else str(index)


def _check(times, probabilities):
    times, probabilities = np.asarray(times, dtype="float64"), np.asarray(probabilities, dtype="float64")
    expect(times.ndim == 2 and times.shape[1:] == (2,) and len(times) > 0, "times of shape [N, 2], N >= 1",
           times_shape=times.shape)
    expect(probabilities.ndim == 2 and len(probabilities) == len(times),
           f"probabilities of shape [N={len(times)}, classes]", probabilities_shape=probabilities.shape)
    return times, probabilities


def segments(times, probabilities, class_names=None):
    """The `Segment`s of windows `times [N, 2]` with `probabilities [N, classes]`: each run of
    consecutive windows with the same top-1 class is one segment, from its first window's start
    to its last window's end, cut where the next segment's first window starts (so overlapping
    windows give segments that touch). Labels from `class_names` (None: class numbers)."""
    times, probabilities = _check(times, probabilities)
    best = probabilities.argmax(axis=1)
    runs = [list(run) for _, run in itertools.groupby(range(len(best)), key=lambda i: best[i])]
    found = []
    for n, run in enumerate(runs):
        first, last, index = run[0], run[-1], int(best[run[0]])
        end = times[last, 1] if n + 1 == len(runs) else min(times[last, 1], times[runs[n + 1][0], 0])
        found.append(Segment(float(times[first, 0]), float(end), index, _label(class_names, index),
                             float(probabilities[run, index].mean())))
    return found


def thumbnail_times(times, count):
    """The centres (seconds) of `count` windows of `times [N, 2]` spread evenly (fewer when
    there are fewer windows)."""
    times = np.asarray(times, dtype="float64").reshape(-1, 2)
    picks = np.unique(np.round(np.linspace(0, len(times) - 1, min(count, len(times)))).astype(int))
    return [float(times[i].mean()) for i in picks] if len(times) and count else []


def thumbnails(path, seconds, decode=video.DecodeOptions(), height=THUMBNAIL_HEIGHT):
    """`(time, uint8 image [height, W, 3])` of the video file `path`'s first frame at or after
    each of `seconds`, upright, `height` pixels high (aspect kept); one seek per time, so
    memory holds these images only. A time past the last frame gives nothing. Raises
    `video.VideoError` for a file that cannot be read."""
    found = []
    for second in seconds:
        frames = iter(video.iter_frames(path, video.DecodeOptions(threads=decode.threads), start=second))
        try:
            first = next(frames, None)
        finally:
            frames.close()
        if first is not None:
            time_us, frame = first
            shown_height, shown_width = video.display_size(frame)
            width = max(1, round(shown_width * height / shown_height))
            found.append((second + time_us / 1e6, np.asarray(video.upright_image(frame, height, width))))
    return found


def draw_timeline(path, times, probabilities, class_names=None, *, thumbnails=(), true_segments=None, top=5,
                  title=None):
    """Draw a video's predictions over time into the PNG `path` (`FIGURE_SIZE` at `DPI`).

    The `top` classes (those that are top-1 in the most windows, then those reaching the highest
    probability) as lines of probability against time (seconds; each window at its centre), a
    legend of their names (and of the other classes in the bars);
    below, the predicted `segments` (and `true_segments`, `[(start, end, label)]`, when given) as
    coloured bars; above, the `thumbnails` (`[(time, image)]`) in a strip, each joined to its time
    by a line and the time marked by a dotted rule. Returns `path`, or None without matplotlib
    (one warning). Raises ValueError for arrays of the wrong shapes."""
    times, probabilities = _check(times, probabilities)
    expect(isinstance(top, int) and top > 0, "top to be a positive int", top=top)
    plt = pyplot(path)
    if plt is None:
        return None
    wins = np.bincount(probabilities.argmax(axis=1), minlength=probabilities.shape[1])
    shown = [int(i) for i in np.lexsort((-probabilities.max(axis=0), -wins))[:top]]
    predicted = segments(times, probabilities, class_names)
    truth = [(float(s), float(e), str(label)) for s, e, label in (true_segments or ())]
    colours = _colours([_label(class_names, i) for i in shown] + [s.label for s in predicted]
                       + [label for *_, label in truth])
    end = float(times[:, 1].max())

    figure = plt.figure(figsize=FIGURE_SIZE, dpi=DPI)
    grid = figure.add_gridspec(3, 1, height_ratios=(2.0, 4.0, 0.5 + 0.4 * bool(truth)), hspace=0.12,
                               left=0.08, right=0.8, top=0.93, bottom=0.08)
    plot = figure.add_subplot(grid[1])
    centres = times.mean(axis=1)
    for index in shown:
        label = _label(class_names, index)
        plot.plot(centres, probabilities[:, index], marker="o", markersize=3, linewidth=1.6, color=colours[label],
                  label=label)
    plot.set(xlim=(0, end), ylim=(0, 1.02), ylabel="probability")
    plot.tick_params(labelbottom=False)
    plot.grid(alpha=0.3)
    lines = {_label(class_names, i) for i in shown}
    others = [_patch(colours[label], label) for label in colours if label not in lines]
    plot.legend(handles=plot.get_legend_handles_labels()[0] + others, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                frameon=False, title=f"top {len(shown)} classes" + (" (+ in the bars)" if others else ""))

    bars = figure.add_subplot(grid[2], sharex=plot)
    rows = [("predicted", [(s.start, s.end, s.label) for s in predicted])] + ([("true", truth)] if truth else [])
    for row, (_, spans) in enumerate(reversed(rows)):
        for start, stop, label in spans:
            bars.broken_barh([(start, stop - start)], (row + 0.1, 0.8), color=colours[label], edgecolor="white")
            if stop - start > end / 25:
                bars.text((start + stop) / 2, row + 0.5, label, ha="center", va="center", fontsize=7, clip_on=True)
    bars.set(ylim=(0, len(rows)), yticks=[r + 0.5 for r in range(len(rows))],
             yticklabels=[name for name, _ in reversed(rows)], xlabel="time (s)")

    strip = figure.add_subplot(grid[0])
    strip.axis("off")
    for slot, (second, image) in enumerate(thumbnails):
        box = strip.inset_axes(((slot + 0.05) / len(thumbnails), 0.12, 0.9 / len(thumbnails), 0.88))
        box.imshow(image)
        box.set_xticks([])
        box.set_yticks([])
        box.set_title(f"{second:.1f} s", fontsize=8, pad=2)
        plot.axvline(second, color="0.3", linestyle=":", linewidth=1)
        figure.add_artist(_joining_line(box, plot, second))
    if title:
        figure.suptitle(title, fontsize=11)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=DPI)
    plt.close(figure)
    return path


def _joining_line(box, plot, second):
    """A line from the bottom centre of a thumbnail `box` to `second` at the top of `plot`."""
    from matplotlib.patches import ConnectionPatch  # noqa: PLC0415 (the optional [plots] extra)

    return ConnectionPatch(xyA=(0.5, 0.0), coordsA=box.transAxes, xyB=(second, 1.02), coordsB=plot.transData,
                           color="0.3", linewidth=0.8, linestyle=":")


def _patch(colour, label):
    from matplotlib.patches import Patch  # noqa: PLC0415 (the optional [plots] extra)

    return Patch(color=colour, label=label)


def _colours(labels):
    """A colour per distinct label, in order of first appearance (tab10, then grey)."""
    from matplotlib import colormaps  # noqa: PLC0415 (the optional [plots] extra)

    palette = colormaps["tab10"].colors
    distinct = list(dict.fromkeys(labels))
    return {label: palette[i] if i < len(palette) else OTHER_COLOUR for i, label in enumerate(distinct)}


def annotate_video(source, out, times, probabilities, class_names=None, *, decode=video.DecodeOptions()):
    """Write a copy of the video file `source` to the mp4 `out` (atomically, its folder made), every frame with its
    current window's top-1 label and probability drawn on it (in its top left corner): the window
    that started last at or before the frame (the last window for the frames after it). Frames are read, drawn and
    encoded one at a time (`synthetic.video_writer`, H.264), at the source's own size (an odd side
    padded by one pixel) and frame rate (from its first frame's duration); `decode` gives the
    threads (the copy has every frame of the source, not `decode.fps`'s). Returns `out`. Raises
    `video.VideoError` for a file that cannot be read."""
    from PIL import Image, ImageDraw  # noqa: PLC0415 (the optional [video] extra)

    times, probabilities = _check(times, probabilities)
    starts = list(times[:, 0])
    texts = [f"{_label(class_names, int(i))}  {p:.0%}" for i, p in zip(probabilities.argmax(axis=1),
                                                                      probabilities.max(axis=1))]
    frames = iter(video_frames(source, None, video.DecodeOptions(threads=decode.threads)))
    first = next(frames)
    height, width = first.pixels.shape[:2]
    rate = fractions.Fraction(1_000_000, first.duration_us or 40_000).limit_denominator(1001)
    font = _font(max(texts, key=len), max(10, min(height, width) // 14), width - 8)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with atomic_path(out, suffix=".mp4") as tmp, synthetic.video_writer(tmp, height + height % 2, width + width % 2,
                                                                         fps=rate) as write:
        for frame in itertools.chain([first], frames):
            text = texts[max(bisect.bisect_right(starts, frame.time_us / 1e6 + 1e-9) - 1, 0)]
            image = Image.fromarray(np.pad(frame.pixels, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge"))
            draw = ImageDraw.Draw(image)
            *_, right, bottom = draw.textbbox((4, 4), text, font=font)
            draw.rectangle((0, 0, right + 4, bottom + 4), fill=(0, 0, 0))
            draw.text((4, 4), text, fill=(255, 255, 255), font=font)
            write(np.asarray(image))
    return out


def _font(text, size, width):
    """PIL's default font at `size` pixels, smaller if `text` would be wider than `width` (at
    least 6 pixels; a fixed bitmap font on a Pillow too old to scale it)."""
    from PIL import ImageFont  # noqa: PLC0415 (the optional [video] extra)

    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()
    wide = font.getlength(text)
    return font if wide <= width else ImageFont.load_default(size=max(6, int(size * width / wide)))
