"""Classify a video file with a P3D ResNet (a `ModelSpec`: model folder, preset, weights) or an
exported SavedModel, streaming (`predict_video`; the `p3d-predict` program calls it).

The video is decoded frame by frame and cut into dense windows (`video_inference.WindowPlan`:
`clip_length` frames, a new window every `stride` frames or `stride_seconds`, default one window
after the other); each window's class probabilities come from the network, and the video's are
their mean. Only the frames of the windows in flight are in memory, whatever the video's length;
what is kept per window is its times and probabilities (`[N, 2]`, `[N, classes]`). A video shorter
than one window gives one window looping its frames.

A Keras network (`Predictor` of a `VideoInference`) sees frames prepared by `video_inference` as its
model folder says; an exported SavedModel (`SavedModelInference`) gets each window's frames at the
video's own size and resizes and crops them in its graph (`jobs.export`), one window per call.

With `timeline`, the per-window top classes go to `<out>.json` and a picture of them over time to
`<out>.png` (`jobs.timeline.draw_timeline`); with `annotate`, a copy of the video with each frame's
current label drawn on it (`jobs.timeline.annotate_video`).
"""
import contextlib
import dataclasses
import json
import os
import re

import numpy as np
import tensorflow as tf

from p3d_keras.applications import top_classes
from p3d_keras.core.files import write_atomic
from p3d_keras.core.labels import read_label_file
from p3d_keras.jobs import export, models, portable, timeline
from p3d_keras.jobs.model_folder import ModelMetadata
from p3d_keras.jobs.video_inference import (PROBABILITIES, VideoInference, WindowPlan, WindowResult, gather,
                                            video_frames)
from p3d_keras.tfrecords_tools import video


# The assertion of `clip_input.make_preprocess` in an exported graph: it names the clip length.
CLIP_LENGTH_ASSERTION = re.compile(rb"Expected at least (\d+) frames")
THUMBNAILS = 6  # frames shown above the timeline


class SavedModelInference:
    """An exported SavedModel version folder (`p3d-export`) run over a video's windows, as
    `VideoInference` runs a Keras network (the same `plan`, `frames`, `batches`, `run_batches`,
    `run_windows`, `windows`), with output `"probabilities"` only. Frames are handed over at the
    video's own size, one window per call of `serving_default`: its graph resizes and crops them.
    The clip length and class names come from the export's `assets.extra` metadata, else the clip
    length from the graph's own frame-count assertion; `classes` (how many) from its signature. Raises
    ValueError naming the folder when it is not such an export."""

    outputs = (PROBABILITIES,)
    batch_size = 1

    def __init__(self, saved_model_dir):
        self.path = os.fspath(saved_model_dir)
        try:
            self._serve = tf.saved_model.load(self.path).signatures[export.SERVING_SIGNATURE]
        except (OSError, KeyError) as error:
            raise ValueError(f"Expected an exported SavedModel version folder (p3d-export) with a "
                             f"{export.SERVING_SIGNATURE!r} signature. Received: {self.path!r} ({error})") from None
        asset = os.path.join(self.path, export.METADATA_ASSET)
        self.metadata = None
        if os.path.isfile(asset):
            with open(asset, encoding="utf-8") as f:
                self.metadata = ModelMetadata.from_json(json.load(f), asset)
        self.clip_length = self.metadata.clip_length if self.metadata else self._asserted_clip_length()
        self.classes = self._serve.structured_outputs[PROBABILITIES].shape[-1]

    def _asserted_clip_length(self):
        found = CLIP_LENGTH_ASSERTION.search(self._serve.graph.as_graph_def().SerializeToString())
        if found is None:
            raise ValueError(f"Expected a p3d-export SavedModel (its graph asserts the clip length). Received: "
                             f"{self.path!r} without {export.METADATA_ASSET} or that assertion")
        return int(found[1])

    def plan(self, *, window=None, stride=None, stride_seconds=None):
        """The `WindowPlan` for this export's clip length."""
        return WindowPlan(self.clip_length, window, stride, stride_seconds)

    def frames(self, path, decode=video.DecodeOptions()):
        """`video_frames` of `path` at the video's own size (the graph resizes and crops)."""
        return video_frames(path, None, decode)

    @staticmethod
    def batches(windows):
        """`((window,), frames [1, T, H, W, 3])` for each `Window`: one call of the signature each."""
        for window in windows:
            yield (window,), window.frames[None]

    def run_batches(self, batches):
        """A `WindowResult` per item of `batches`."""
        for (window,), frames in batches:
            probabilities = self._serve(frames=tf.constant(frames))[PROBABILITIES].numpy()[0]
            yield WindowResult(window.index, window.start_us / 1e6, window.end_us / 1e6,
                               {PROBABILITIES: probabilities}, window.looped)

    run_windows = VideoInference.run_windows
    windows = VideoInference.windows  # the same streaming: plan, decode and batch ahead in a thread, run_batches


def exported_inference(path, batch_size=8):
    """The inference of an export: `SavedModelInference` of a SavedModel version folder, or
    `portable.PortableInference` of an ONNX, OpenVINO or LiteRT file (`p3d-export --format`)."""
    if os.path.isfile(path):
        return portable.PortableInference(portable.load_portable(path), batch_size=batch_size)
    return SavedModelInference(path)


@contextlib.contextmanager
def video_errors(path):
    """Turn a `video.VideoError` of the video file `path` in the block into a ValueError naming it."""
    try:
        yield
    except video.VideoError as error:
        raise ValueError(f"Expected a video file that PyAV can decode. Received: {os.fspath(path)!r}: "
                         f"{error}") from error


@dataclasses.dataclass(frozen=True)
class Predictor:
    """A network ready to classify videos: `inference` (a `VideoInference` or a
    `SavedModelInference`), the `class_names` of its outputs (None: class numbers) and its
    `provenance` (where it came from, for the timeline's JSON)."""
    inference: object
    class_names: tuple | None
    provenance: dict

    def predict(self, path, *, window=None, stride=None, stride_seconds=None, decode=video.DecodeOptions()):
        """The `VideoPrediction` of the video file `path` (windows as `WindowPlan` says; `decode`:
        fps, threads, max_frames). Raises ValueError naming `path` for a file that is not a
        readable video (a truncated one after decoding what it holds)."""
        plan = self.inference.plan(window=window, stride=stride, stride_seconds=stride_seconds)
        with video_errors(path):
            result = gather(self.inference.windows(path, window=window, stride=stride, stride_seconds=stride_seconds,
                                                   decode=decode), (PROBABILITIES,))
        return VideoPrediction(os.fspath(path), result.times, result.outputs[PROBABILITIES],
                               result.mean[PROBABILITIES], result.looped, self.class_names, plan, decode.fps,
                               self.provenance)


def load_predictor(*, spec=None, saved_model=None, labels_file=None, normalization=None, classes=None,
                   batch_size=8):
    """The `Predictor` of a Keras network (`spec`, a `models.ModelSpec`, with `classes` and
    `normalization`: a model folder's normalisation, resize rule and class names decide, else the
    preset's) or of an export (`saved_model`: a SavedModel version folder, or an ONNX, OpenVINO or
    LiteRT file of `p3d-export --format`: `exported_inference`); give one of the two.
    labels_file: a class-name file (default: the folder's, the export's or the preset's names;
    numbers without any; contradicting a folder's raises). batch_size: windows per call of a Keras
    network."""
    if (spec is None) == (saved_model is None):
        raise ValueError("Expected exactly one of spec (a Keras network) and saved_model. Received: "
                         f"spec={spec!r}, saved_model={saved_model!r}")
    if saved_model:
        inference = exported_inference(saved_model, batch_size)
        names = read_label_file(labels_file) if labels_file else inference.metadata and inference.metadata.class_names
        classes = getattr(inference, "classes", None) or (inference.metadata and
                                                          inference.metadata.architecture.get("classes"))
        if labels_file and classes is not None and len(names) != classes:
            raise ValueError(f"Expected one class name per output of the export ({classes} classes). Received: "
                             f"{len(names)} in {os.fspath(labels_file)!r}")
        provenance = {"export": os.path.abspath(saved_model),
                      **(inference.metadata.provenance if inference.metadata else {})}
        return Predictor(inference, None if names is None else tuple(names), provenance)
    loaded = models.load(spec, classes=classes, normalization=normalization, labels_file=labels_file)
    provenance = {**({"model_folder": os.path.abspath(loaded.path)} if loaded.path else {}),
                  **loaded.metadata.provenance}
    return Predictor(VideoInference(loaded, batch_size=batch_size), loaded.metadata.class_names, provenance)


@dataclasses.dataclass(frozen=True)
class VideoPrediction:
    """A video's windows and what the network said of them: `times` `[N, 2]` (start, end in
    seconds), `probabilities` `[N, classes]`, `mean` `[classes]` (the video's prediction),
    `looped` (a video shorter than one window), the `class_names` (None: numbers), the `plan`
    (`WindowPlan`) and `fps` (resampling, None: as decoded) the windows were cut with, and the
    network's `provenance`. `files` names what `predict_video` wrote (`json`, `png`, `video`)."""
    path: str
    times: np.ndarray
    probabilities: np.ndarray
    mean: np.ndarray
    looped: bool
    class_names: tuple | None
    plan: WindowPlan
    fps: float | None
    provenance: dict
    files: dict = dataclasses.field(default_factory=dict)

    def top(self, k=5):
        """The video's `k` best classes as `(index, label, probability)`, best first."""
        return top_classes(self.mean, self.class_names, k)

    def to_json(self, k=5):
        """A JSON-ready dict: the video-level top `k`, each window's `{index, start, end, top}`,
        the `segments` (consecutive windows with the same top-1 merged, `timeline.segments`), the
        window plan and the model's provenance."""
        def ranked(scores):
            return [{"index": i, "label": label, "probability": p} for i, label, p in top_classes(scores,
                                                                                                self.class_names, k)]

        return {
            "video": self.path,
            "top": ranked(self.mean),
            "looped": self.looped,
            "plan": {**dataclasses.asdict(self.plan), "fps": self.fps},
            "provenance": self.provenance,
            "windows": [{"index": i, "start": float(start), "end": float(end), "top": ranked(scores)}
                        for i, ((start, end), scores) in enumerate(zip(self.times, self.probabilities))],
            "segments": [dataclasses.asdict(s) for s in timeline.segments(self.times, self.probabilities,
                                                                          self.class_names)],
        }


def timeline_paths(out, video_path):
    """The JSON and PNG paths of `--timeline out`: `out` a folder (existing, or ending in a path
    separator) -> `out/<video name>.timeline.json|.png`; else a prefix -> `out.json|.png`."""
    out = os.fspath(out)
    if os.path.isdir(out) or out.endswith(("/", os.sep)):
        out = os.path.join(out, f"{os.path.splitext(os.path.basename(video_path))[0]}.timeline")
    return f"{out}.json", f"{out}.png"


def predict_video(path, *, spec=None, saved_model=None, labels_file=None, normalization=None, classes=None,
                  window=None, stride=None, stride_seconds=None, decode=video.DecodeOptions(), top=5, timeline_out=None,
                  annotate=None, thumbnails=THUMBNAILS, batch_size=8):
    """Classify the video file `path` (`load_predictor`'s network arguments, `Predictor.predict`'s
    window arguments) and return its `VideoPrediction`; `.top(top)` is the answer.

    timeline_out: write the per-window top `top` classes as JSON and a PNG timeline of the `top`
    classes with `thumbnails` frames above it (`timeline_paths(timeline_out, path)`; the PNG is
    skipped with one warning without matplotlib). annotate: write a copy of the video there
    (an .mp4) with each frame's current window label drawn on it. Files are written atomically and
    named in the result's `files`. Raises ValueError naming `path` for a video that cannot be read."""
    prediction = load_predictor(spec=spec, saved_model=saved_model, labels_file=labels_file,
                                normalization=normalization, classes=classes, batch_size=batch_size).predict(
        path, window=window, stride=stride, stride_seconds=stride_seconds, decode=decode)
    files = {}
    with video_errors(path):  # read again for the thumbnails and the annotated copy
        if timeline_out is not None:
            files.update(_write_timeline(prediction, timeline_out, top=top, thumbnails=thumbnails, decode=decode))
        if annotate is not None:
            files["video"] = timeline.annotate_video(path, annotate, prediction.times, prediction.probabilities,
                                                     prediction.class_names, decode=decode)
    return dataclasses.replace(prediction, files=files)


def _write_timeline(prediction, out, *, top, thumbnails, decode):
    json_path, png = timeline_paths(out, prediction.path)
    os.makedirs(os.path.dirname(os.path.abspath(png)), exist_ok=True)
    write_atomic(json_path, json.dumps(prediction.to_json(top), indent=1).encode("utf-8"))
    frames = timeline.thumbnails(prediction.path, timeline.thumbnail_times(prediction.times, thumbnails), decode)
    drawn = timeline.draw_timeline(png, prediction.times, prediction.probabilities, prediction.class_names,
                                   thumbnails=frames, top=top, title=os.path.basename(prediction.path))
    return {"json": json_path, **({"png": png} if drawn else {})}
