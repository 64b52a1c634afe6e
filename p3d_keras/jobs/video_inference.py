"""Video in, answers out: sliding windows over a video file, streamed through a P3D network.

A video is decoded frame by frame with PyAV (`tfrecords_tools.video.iter_frames`: the
converter's decode options, fps resampling included), each frame is turned upright, resized so
its short side is the model's `resize_short_side` and centre-cropped to its `crop_size`, exactly
as the converter + reader do (`video_frames`). `cut_windows` cuts windows of `clip_length` frames
(spread over `window` frames) starting every `stride` frames or every `stride_seconds`, keeping
only the frames one window spans; `VideoInference` runs them through the network in batches
while a thread decodes ahead, and yields a `WindowResult` per window, with its start and end
taken from the frames' presentation times (a variable frame rate included). Memory does not
grow with the video's length.

Windows: window k starts at frame k * stride (or at the first frame shown at or after
k * stride_seconds) and is emitted when its last frame has been decoded; frames after the last
whole window are not used. A video shorter than one window gives one window that loops its
frames, as the reader's evaluation does (`tfrecords_tools.sampling`), marked `looped`.

Outputs are chosen by name (`OUTPUTS`): `probabilities` (a classifier's softmax), `pool5`, or any
layer of the network (`res5c`, the last block of res4, ...); a layer's 5-D output is averaged over
time and space to `[C]` unless `pool="none"`.

Example:

    from p3d_keras import load_model
    from p3d_keras.jobs.video_inference import VideoInference

    inference = VideoInference(load_model("runs/p3d/best"), outputs=("probabilities", "pool5"))
    for window in inference.windows("talk.mp4", stride_seconds=1.0):
        print(window.start, window.end, window.outputs["probabilities"].argmax())
"""
import collections
import dataclasses
import logging
import queue
import threading

import keras
import numpy as np

from p3d_keras.core.checks import expect
from p3d_keras.core.layers import Normalize
from p3d_keras.core.normalization import normalize
from p3d_keras.jobs import models
from p3d_keras.tfrecords_tools import video

log = logging.getLogger(__name__)

PROBABILITIES = "probabilities"
OUTPUTS = (PROBABILITIES, models.FEATURE_LAYER, "<any layer name>")
POOLING = ("mean", "none")
# Batches decoded ahead of the network by the decoding thread.
PREFETCH_BATCHES = 2


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
class WindowResult:
    """The network's outputs on one window: `outputs` maps each requested name to an array;
    `start` and `end` are in seconds."""
    index: int
    start: float
    end: float
    outputs: dict
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
        expect(self.stride_seconds is None or self.stride_seconds > 0, "stride_seconds to be positive or None",
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


def video_frames(path, metadata, decode=video.DecodeOptions()):
    """The frames of the video file `path` as the network of `metadata` (a `ModelMetadata`) sees
    them, one `Frame` at a time: upright, short side resized to `metadata.resize_short_side`
    (bilinear, PyAV's scaler, as the converter with that `short_side`), centre-cropped to
    `metadata.crop_size`. With `metadata=None`, upright at the video's own displayed size (for a
    network that resizes them itself, e.g. an exported SavedModel, or to draw on them). `decode`
    gives fps resampling, threads and `max_frames` (its size settings are replaced by the
    model's). Raises `video.VideoError` for an unreadable, non-video, zero-frame or truncated file
    (the last after the frames before the damage)."""
    if metadata is not None:
        decode = dataclasses.replace(decode, short_side=metadata.resize_short_side)
    frames = video.iter_frames(path, decode)
    size, last, pending, count = None, None, None, 0
    for time_us, frame in frames:
        if size is None:
            size = video.display_size(frame) if metadata is None else decode.output_size(*video.display_size(frame))
        if frame is not last:  # fps upsampling repeats a frame: convert it once
            last, pixels = frame, np.asarray(video.upright_image(frame, *size, decode.threads))
            if metadata is not None:
                pixels = _centre_crop(pixels, metadata.crop_size)
        if pending is not None:
            yield Frame(pending[0], time_us - pending[0], pending[1])
        pending, count = (time_us, pixels), count + 1
    video.check_complete(frames, decode, count, None if pending is None else pending[0])
    yield Frame(pending[0], _last_duration_us(frames, decode, last), pending[1])


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


class VideoInference:
    """A network and the outputs wanted from it, ready to run over videos.

    Args:
        loaded: a `P3DModel` (`p3d_keras.load_model`, `jobs.models.load`): the network and the
            metadata that says how its frames are prepared.
        outputs: names of the outputs (`OUTPUTS`): `"probabilities"`, `"pool5"`, or layer names.
        pool: `"mean"` averages a layer's 5-D output over time and space; `"none"` keeps it.
        batch_size: windows per call of the network.

    Raises ValueError for a flow network (it reads optical flow, not video frames), an unknown
    output name, `"probabilities"` from a network without a classifier, or a bad argument.
    """

    def __init__(self, loaded, outputs=(PROBABILITIES,), *, pool="mean", batch_size=8):
        self.model, self.metadata = loaded.model, loaded.metadata
        expect(self.metadata.modality == "rgb", "an RGB network (a flow network reads optical flow, not frames)",
               modality=self.metadata.modality)
        expect(pool in POOLING, f"pool in {POOLING}", pool=pool)
        expect(isinstance(batch_size, int) and batch_size > 0, "batch_size to be a positive int", batch_size=batch_size)
        outputs = tuple(outputs)
        expect(bool(outputs) and len(set(outputs)) == len(outputs), "a non-empty list of distinct output names",
               outputs=outputs)
        self.outputs, self.pool, self.batch_size = outputs, pool, batch_size
        self._network = keras.Model(self.model.inputs, {name: self._output(name) for name in outputs},
                                    name=f"{self.model.name}_windows")
        self._takes_raw = any(isinstance(layer, Normalize) for layer in self.model.layers[:2])

    def _output(self, name):
        if name == PROBABILITIES:
            output = self.model.outputs[0]
            if len(output.shape) != 2 or models.output_layer(self.model).name == models.FEATURE_LAYER:
                raise ValueError(f"Expected a classifier for outputs={self.outputs!r}. Received: {self.model.name!r} "
                                 f"without one, output shape {tuple(output.shape)} (ask for 'pool5' or a layer)")
            return output if models.outputs_probabilities(self.model) else keras.layers.Softmax()(output)
        try:
            output = self.model.get_layer(name).output
        except ValueError:
            names = [layer.name for layer in self.model.layers]
            raise ValueError(f"Expected outputs to name {PROBABILITIES!r} or layers of {self.model.name!r} "
                             f"(e.g. {names[-6:]}). Received: {name!r}") from None
        if self.pool == "mean" and len(output.shape) == 5:
            output = keras.ops.mean(output, axis=(1, 2, 3))
        return output

    def plan(self, *, window=None, stride=None, stride_seconds=None):
        """The `WindowPlan` for this network's clip length."""
        return WindowPlan(self.metadata.clip_length, window, stride, stride_seconds)

    def frames(self, path, decode=video.DecodeOptions()):
        """`video_frames` of `path` for this network."""
        return video_frames(path, self.metadata, decode)

    def run_windows(self, windows):
        """`WindowResult`s of an iterable of `Window`s (from `cut_windows`, or any source), in
        batches of `batch_size`; the last batch is padded so the network is traced once."""
        batch = []
        for window in windows:
            batch.append(window)
            if len(batch) == self.batch_size:
                yield from self._run_batch(batch)
                batch = []
        if batch:
            yield from self._run_batch(batch)

    def _run_batch(self, batch):
        clips = np.stack([w.frames for w in batch])
        if len(batch) < self.batch_size:
            clips = np.concatenate([clips, np.repeat(clips[-1:], self.batch_size - len(batch), axis=0)])
        inputs = clips if self._takes_raw else normalize(clips.astype("float32"), self.metadata.normalization)
        outputs = {name: keras.ops.convert_to_numpy(value) for name, value in
                   self._network.predict_on_batch(inputs).items()}
        for i, window in enumerate(batch):
            yield WindowResult(window.index, window.start_us / 1e6, window.end_us / 1e6,
                               {name: value[i] for name, value in outputs.items()}, window.looped)

    def windows(self, path, *, window=None, stride=None, stride_seconds=None, decode=video.DecodeOptions()):
        """`WindowResult`s of the video file `path`, one per window (`WindowPlan`), while a thread
        decodes ahead. Raises `video.VideoError` for a file that is not a readable video (after
        the windows before the damage, for a truncated one)."""
        plan = self.plan(window=window, stride=stride, stride_seconds=stride_seconds)
        windows = prefetch(cut_windows(self.frames(path, decode), plan), self.batch_size * PREFETCH_BATCHES)
        return self.run_windows(windows)

    def run(self, path, **kwargs):
        """All windows of `path` (`windows`' arguments) gathered: a `VideoResult`."""
        return gather(self.windows(path, **kwargs), self.outputs)


@dataclasses.dataclass(frozen=True)
class VideoResult:
    """A video's windows stacked: `outputs[name]` is `[N, ...]`, `times` `[N, 2]` (start, end in
    seconds), `mean[name]` the mean over windows (the per-video descriptor or prediction)."""
    outputs: dict
    times: np.ndarray
    mean: dict
    looped: bool


def gather(results, names):
    """A `VideoResult` of an iterable of `WindowResult`s (at least one) with outputs `names`."""
    stacked = {name: [] for name in names}
    times, looped = [], False
    for result in results:
        for name in names:
            stacked[name].append(result.outputs[name])
        times.append((result.start, result.end))
        looped = looped or result.looped
    expect(bool(times), "at least one window", windows=0)
    outputs = {name: np.stack(values) for name, values in stacked.items()}
    return VideoResult(outputs, np.asarray(times, dtype="float64").reshape(-1, 2),
                       {name: value.mean(axis=0, dtype="float64").astype(value.dtype) for name, value in outputs.items()},
                       looped)


_DONE = object()


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
