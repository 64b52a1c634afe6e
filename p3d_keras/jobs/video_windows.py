"""Windows of a video file, free of Keras: decoded frames as a network sees them
(`video_frames`) cut into windows (`WindowPlan`, `cut_windows`), and `prefetch` (a thread). `jobs.video_inference` runs
them through a network; the feature extractor's decoding processes (`jobs.window_workers`)
import only this, so they never load TensorFlow.

See `jobs.video_inference` for how frames are prepared and windows cut.
"""
import collections
import dataclasses
import queue
import threading

import numpy as np

from p3d_keras.core.checks import expect
from p3d_keras.tfrecords_tools import flow, video


@dataclasses.dataclass(frozen=True)
class Frame:
    """One decoded frame: presentation time and duration in microseconds from the video's start
    (the duration is the time to the next frame; for the last one, its own duration or the one
    before), and the uint8 RGB pixels `[crop, crop, 3]` the network sees (`[H, W, 3]` as
    displayed, from `video_frames(path, None)`)."""
    time_us: int
    duration_us: int
    pixels: np.ndarray


@dataclasses.dataclass(frozen=True)
class Window:
    """One window of frames: uint8 `frames[T, crop, crop, 3]`, its start and end in
    microseconds (the first frame's time; the last frame's time plus its duration), its index in
    the video and whether it loops a video shorter than a window."""
    index: int
    start_us: int
    end_us: int
    frames: np.ndarray
    looped: bool = False


@dataclasses.dataclass(frozen=True)
class WindowPlan:
    """How windows are cut for a network of `clip_length` frames.

    `window` is the frames a window covers (default `clip_length`; a multiple of it: the network
    sees every `window // clip_length`-th frame). A new window starts every `stride` frames or
    every `stride_seconds` (at most one of the two; default: `stride = window`, so windows touch
    without overlapping)."""
    clip_length: int
    window: int | None = None
    stride: int | None = None
    stride_seconds: float | None = None

    def __post_init__(self):
        expect(isinstance(self.clip_length, int) and self.clip_length > 0, "clip_length to be a positive int",
               clip_length=self.clip_length)
        expect(self.window is None or (isinstance(self.window, int) and self.window > 0
                                       and self.window % self.clip_length == 0),
               f"window to be a multiple of the network's clip length {self.clip_length} (frames)", window=self.window)
        expect(self.stride is None or self.stride_seconds is None, "at most one of stride and stride_seconds",
               stride=self.stride, stride_seconds=self.stride_seconds)
        expect(self.stride is None or (isinstance(self.stride, int) and self.stride > 0),
               "stride to be a positive int (frames) or None", stride=self.stride)
        expect(self.stride_seconds is None or self.stride_seconds >= 1e-6,
               "stride_seconds to be at least 1e-06 (a microsecond: frame times are whole microseconds) or None",
               stride_seconds=self.stride_seconds)

    @property
    def frame_stride(self):
        """The step between the frames of a window that the network sees."""
        return (self.window or self.clip_length) // self.clip_length

    @property
    def span(self):
        """Consecutive frames a window covers (`window`): from its start to its end time."""
        return self.window or self.clip_length

    @property
    def frame_step(self):
        """Frames between window starts when the stride is counted in frames."""
        return self.stride or self.window or self.clip_length


def video_frames(path, metadata, decode=video.DecodeOptions(), start=None, end=None):
    """The frames of the video file `path` as the network of `metadata` (a `ModelMetadata`) sees
    them, one `Frame` at a time: upright, short side resized to `metadata.resize_short_side`
    (bilinear, PyAV's scaler, as the converter with that `short_side`), centre-cropped to
    `metadata.crop_size`. With `metadata=None`, upright at the video's own displayed size (for a
    network that resizes them itself, e.g. an exported SavedModel, or to draw on them). `decode`
    gives fps resampling, threads and `max_frames` (its size settings are replaced by the
    model's). With `start`/`end` (seconds), only that segment, its times counted from `start`
    (`video.iter_frames`).

    For a flow network (`metadata.modality == "flow"`) each frame is instead the TV-L1 flow from
    it to the next frame (`tfrecords_tools.flow.flow_frames`, the converter's `--modality flow`
    with its default `FlowOptions`), computed on the resized frames, then cropped: uint8
    `[crop, crop, 2]`, N frames giving N - 1, each at its first frame's time.

    Raises `video.VideoError` for an unreadable, non-video, zero-frame or truncated file (the
    last after the frames before the damage), and for a flow network one of a single frame."""
    flows = metadata is not None and metadata.modality == "flow"
    crop = None if metadata is None or flows else metadata.crop_size
    frames = _decoded_frames(path, decode if metadata is None else
                             dataclasses.replace(decode, short_side=metadata.resize_short_side), start, end, crop)
    return _flow_frames(frames, metadata.crop_size) if flows else frames


def _decoded_frames(path, decode, start, end, crop):
    """`Frame`s of `path` upright at `decode`'s size, centre-cropped to `crop` (None: whole)."""
    frames = video.iter_frames(path, decode, start, end)
    size, last, pending, count = None, None, None, 0
    for time_us, frame in frames:
        if size is None:
            size = video.display_size(frame) if decode.short_side is None else \
                decode.output_size(*video.display_size(frame))
        if frame is not last:  # fps upsampling repeats a frame: convert it once
            last, pixels = frame, np.asarray(video.upright_image(frame, *size, decode.threads))
            if crop is not None:
                pixels = _centre_crop(pixels, crop)
        if pending is not None:
            yield Frame(pending[0], time_us - pending[0], pending[1])
        pending, count = (time_us, pixels), count + 1
    video.check_complete(frames, decode, count, None if pending is None else pending[0], end)
    yield Frame(pending[0], _last_duration_us(frames, decode, last), pending[1])


def _flow_frames(frames, crop):
    """The flow `Frame`s of the `Frame`s `frames`: frame i's time and duration, the flow from it to
    frame i + 1, centre-cropped to `crop`."""
    held = collections.deque()  # the frames whose flow is not out yet: at most two

    def pixels():
        for frame in frames:
            held.append(frame)
            yield frame.pixels

    count = 0
    for xy in flow.flow_frames(pixels()):
        first = held.popleft()
        count += 1
        yield Frame(first.time_us, first.duration_us, _centre_crop(xy, crop))
    if not count:  # frames were decoded (`_decoded_frames` raises for none): one gives no flow
        raise video.VideoError(video.TOO_SHORT_FOR_FLOW)


def _last_duration_us(frames, decode, frame):
    if decode.fps:
        return round(1e6 / decode.fps)
    if frame.duration:
        return round(float(frame.duration * frame.time_base) * 1e6)
    return round(1e6 / frames.frame_rate) if frames.frame_rate else 0


def _centre_crop(image, size):
    height, width = image.shape[:2]
    expect(height >= size and width >= size, f"frames at least {size}x{size} after the resize",
           frame_size=(height, width))
    top, left = (height - size) // 2, (width - size) // 2
    return image[top:top + size, left:left + size]


def cut_windows(frames, plan):
    """`Window`s of the `Frame` iterable `frames` as `plan` (a `WindowPlan`) says, each as soon as
    its last frame arrives; only the frames one window spans are kept."""
    ring = collections.deque(maxlen=plan.span)
    starts = collections.deque()  # frame numbers of windows begun but not complete
    next_start_us = 0
    count = emitted = 0
    for number, frame in enumerate(frames):
        ring.append(frame)
        count = number + 1
        if plan.stride_seconds is None:
            if number % plan.frame_step == 0:
                starts.append(number)
        elif frame.time_us >= next_start_us:
            starts.append(number)
            steps = int(frame.time_us // round(plan.stride_seconds * 1e6)) + 1
            next_start_us = steps * round(plan.stride_seconds * 1e6)
        if starts and starts[0] + plan.span - 1 == number:
            first = starts.popleft()
            picked = [ring[first - (number - len(ring) + 1) + i * plan.frame_stride] for i in range(plan.clip_length)]
            yield _window(emitted, picked, frame)
            emitted += 1
    if emitted == 0 and count:
        looped = [ring[(i * plan.frame_stride) % count] for i in range(plan.clip_length)]
        yield dataclasses.replace(_window(0, looped, ring[-1]), looped=True)


def _window(index, picked, last):
    return Window(index, picked[0].time_us, last.time_us + last.duration_us, np.stack([f.pixels for f in picked]))


_DONE = object()


def batched(items, size):
    """Lists of `size` consecutive items of the iterable `items` (the last one shorter)."""
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def prefetch(iterable, size):
    """Iterate `iterable` in a daemon thread, at most `size` items ahead; its exceptions are
    raised here, in order. Closing the returned generator stops the thread."""
    items = queue.Queue(maxsize=size)
    stop = threading.Event()

    def put(item):
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for item in iterable:
                if not put((item, None)):
                    return
            put((_DONE, None))
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, raised there
            put((_DONE, error))

    thread = threading.Thread(target=produce, name="p3d-decode", daemon=True)
    thread.start()
    try:
        while True:
            item, error = items.get()
            if item is _DONE:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        thread.join()
