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
import dataclasses
import logging

import keras
import numpy as np

from p3d_keras.core.checks import expect
from p3d_keras.core.normalization import normalize
from p3d_keras.jobs import models
from p3d_keras.jobs.video_windows import (  # noqa: F401 (Frame, Window: part of this module's API)
    Frame, Window, WindowPlan, batched, cut_windows, prefetch, video_frames)
from p3d_keras.tfrecords_tools import video

log = logging.getLogger(__name__)

PROBABILITIES = "probabilities"
OUTPUTS = (PROBABILITIES, models.FEATURE_LAYER, "<any layer name>")
POOLING = ("mean", "none")
# Batches decoded ahead of the network by the decoding thread.
PREFETCH_BATCHES = 2


@dataclasses.dataclass(frozen=True)
class WindowResult:
    """The network's outputs on one window: `outputs` maps each requested name to an array;
    `start` and `end` are in seconds."""
    index: int
    start: float
    end: float
    outputs: dict
    looped: bool = False


class VideoInference:
    """A network and the outputs wanted from it, ready to run over videos.

    Args:
        loaded: a `P3DModel` (`p3d_keras.load_model`, `jobs.models.load`): the network and the
            metadata that says how its frames are prepared.
        outputs: names of the outputs (`OUTPUTS`): `"probabilities"`, `"pool5"`, or layer names.
        pool: `"mean"` averages a layer's 5-D output over time and space; `"none"` keeps it.
        batch_size: windows per call of the network.

    A flow network gets the TV-L1 flow of the frames (`video_windows.video_frames`). Raises
    ValueError for an unknown output name, `"probabilities"` from a network without a classifier,
    or a bad argument.
    """

    def __init__(self, loaded, outputs=(PROBABILITIES,), *, pool="mean", batch_size=8):
        self.model, self.metadata = loaded.model, loaded.metadata
        expect(pool in POOLING, f"pool in {POOLING}", pool=pool)
        expect(isinstance(batch_size, int) and batch_size > 0, "batch_size to be a positive int", batch_size=batch_size)
        expect(not isinstance(outputs, str), "a list of output names, e.g. ('pool5',)", outputs=outputs)
        outputs = tuple(outputs)
        expect(bool(outputs) and len(set(outputs)) == len(outputs), "a non-empty list of distinct output names",
               outputs=outputs)
        self.outputs, self.pool, self.batch_size = outputs, pool, batch_size
        self._network = keras.Model(self.model.inputs, {name: self._output(name) for name in outputs},
                                    name=f"{self.model.name}_windows")
        self._takes_raw = models.inside_normalization(self.model) is not None

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
        return self.run_batches(self.batches(windows))

    def batches(self, windows):
        """`(windows, network input)` for each batch of `batch_size` of the `Window`s `windows`:
        stacked, the last batch padded, normalised unless the network normalises itself (what
        `windows` prepares in its decoding thread)."""
        for batch in batched(windows, self.batch_size):
            yield batch, self._inputs(batch)

    def _inputs(self, batch):
        clips = np.stack([w.frames for w in batch])
        if len(batch) < self.batch_size:
            clips = np.concatenate([clips, np.repeat(clips[-1:], self.batch_size - len(batch), axis=0)])
        return clips if self._takes_raw else normalize(clips.astype("float32"), self.metadata.normalization)

    def run_batches(self, batches):
        """`WindowResult`s of an iterable of `batches`' items, one network call each."""
        for batch, inputs in batches:
            outputs = {name: keras.ops.convert_to_numpy(value) for name, value in
                       self._network.predict_on_batch(inputs).items()}
            for i, window in enumerate(batch):
                yield WindowResult(window.index, window.start_us / 1e6, window.end_us / 1e6,
                                   {name: value[i] for name, value in outputs.items()}, window.looped)

    def windows(self, path, *, window=None, stride=None, stride_seconds=None, decode=video.DecodeOptions()):
        """`WindowResult`s of the video file `path`, one per window (`WindowPlan`), while a thread
        decodes ahead and prepares the network's `batches`. Raises `video.VideoError` for a file
        that is not a readable video (after the windows before the damage, for a truncated one)."""
        plan = self.plan(window=window, stride=stride, stride_seconds=stride_seconds)
        batches = self.batches(cut_windows(self.frames(path, decode), plan))
        return self.run_batches(prefetch(batches, PREFETCH_BATCHES))

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
    mean = {name: value.mean(axis=0, dtype="float64").astype(value.dtype) for name, value in outputs.items()}
    return VideoResult(outputs, np.asarray(times, dtype="float64").reshape(-1, 2), mean, looped)
