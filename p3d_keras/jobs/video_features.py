"""Features of many videos, one file each: sliding windows of every video through a network
(`jobs.video_inference`), decoded ahead by worker processes (`jobs.window_workers`), resumable.

    from p3d_keras import load_model
    from p3d_keras.jobs.video_features import extract_video_features

    summary = extract_video_features(load_model("runs/p3d/best"), ["a.mp4", "b.mp4"], "features/",
                                     layers=("pool5", "res5c"), stride_seconds=1.0, workers=2)

The output folder `out`:
- `<name>.npz` per video, `name` = its media id made a safe relative path (`output_name`: a
  media id `class/video` gives `class/video.npz`), holding `features/<layer>` `[N, D]` float32
  for each layer (a layer's 5-D output averaged over time and space), `timestamps` `[N, 2]`
  float64 (each window's start and end in seconds of the video; a segment's offset included),
  `fps`, `seconds` (what the decoded frames cover), `media_id`, `path`, `looped`, and
  `provenance` (a JSON string: the model's metadata provenance and architecture, the layers,
  the window plan and the decode options). Written atomically: a file that exists is complete.
  `feature_files.read_features` reads one back.
- `index.jsonl`: one line per finished video (media_id, path, file, windows, seconds, looped);
  `failures.jsonl`: one line per failed video (path, media_id, reason), as the converter's.
  Both are written at the end of a run (from `.work/journal.jsonl`, which the run appends to as
  each video ends).
- `settings.json`: what makes the features what they are (the network's weights digest, layers,
  window plan, decode options). A rerun with other settings is refused (ValueError), so one
  folder never mixes features of two models or plans.

Resume: a rerun skips every video whose file exists (and those that failed, unless
`retry_failed`): a killed run loses at most the videos it was working on. Two runs never share
a folder (`core.output_folder.locked`: the second raises `OutputError` naming the holder).

Failures: a video that cannot be decoded (unreadable, not a video, audio only, zero frames,
truncated) goes to failures.jsonl with the reason and the run goes on. A video shorter than one
window is not a failure: it gives ONE window that loops its frames (the library's behaviour),
written with `looped=True` and counted in the summary (`Summary.looped`). An error of the
output side (no space left) stops the run (`OutputError`) without marking any video failed.

Beyond one machine: `jobs.beam_features` writes the same folder with an Apache Beam pipeline,
from the pieces here (`output_folder`, `pending`, `write_video`, the journal, `write_lists`).

Memory: windows travel through a bounded queue and are batched across videos; a video's
features `[N, D]` are all that is kept of it until its file is written.
"""
import collections
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import string
import time

import keras
import numpy as np

from p3d_keras.core.checks import expect
from p3d_keras.core.files import write_atomic
from p3d_keras.core.output_folder import WORK_DIR, check_or_write_settings, locked, output_side
from p3d_keras.jobs import models, window_workers
from p3d_keras.jobs.feature_files import SUFFIX, encode_features, read_features
from p3d_keras.jobs.video_inference import VideoInference
from p3d_keras.jobs.window_workers import DONE, FAILED, WINDOW, FrameGeometry, Task
from p3d_keras.tfrecords_tools import sources, video
from p3d_keras.tfrecords_tools.collection import FAILURES
from p3d_keras.version import __version__

log = logging.getLogger(__name__)

FORMAT = 1  # of the files and settings; part of the settings
INDEX = "index.jsonl"
SETTINGS = "settings.json"
JOURNAL = "journal.jsonl"  # in .work: one line per video as it ends
WHAT = "feature extraction"  # the job, in the messages of core.output_folder
_SAFE = frozenset(string.ascii_letters + string.digits + "-_.@+=,")
_MAX_NAME = 200  # bytes of one path component, below every file system's 255


@dataclasses.dataclass
class Progress:
    """A snapshot passed to `on_progress` after every finished video: `done` of `total` videos
    (`resumed` of them from an earlier run), `written`, `failed`, `looped` and `windows` by
    this run, in `elapsed_s`."""
    done: int
    total: int
    resumed: int
    written: int = 0
    failed: int = 0
    looped: int = 0
    windows: int = 0
    elapsed_s: float = 0.0

    @property
    def videos_per_s(self):
        return (self.written + self.failed) / self.elapsed_s if self.elapsed_s else 0.0

    @property
    def windows_per_s(self):
        return self.windows / self.elapsed_s if self.elapsed_s else 0.0

    @property
    def eta_s(self):
        """Seconds left at this run's rate (nan before the first video)."""
        return (self.total - self.done) / self.videos_per_s if self.videos_per_s else float("nan")


@dataclasses.dataclass
class Summary:
    """What `extract_video_features` did: the last `Progress`, and the failures of this folder
    (this run's and earlier runs', as in failures.jsonl)."""
    out: str
    progress: Progress
    failures: list


def output_name(media_id):
    """The file of `media_id` relative to the output folder: each `/`-separated part with every
    character outside `[A-Za-z0-9-_.@+=,]` (and a leading `.`) percent-encoded (UTF-8), an empty
    part as `%`, a part longer than 200 bytes cut and ended with `~` and a hash; plus `.npz`.
    Distinct media ids give distinct names, none hidden or outside the folder."""
    expect(isinstance(media_id, str) and media_id != "", "a non-empty media id", media_id=media_id)
    parts = []
    for part in media_id.split("/"):
        text = "".join(c if c in _SAFE else "".join(f"%{b:02X}" for b in c.encode("utf-8")) for c in part)
        text = "%2E" + text[1:] if text.startswith(".") else text or "%"
        if len(text) > _MAX_NAME:
            text = f"{text[:_MAX_NAME - 17]}~{hashlib.sha1(part.encode('utf-8')).hexdigest()[:16]}"
        parts.append(text)
    return "/".join(parts) + SUFFIX


def as_items(videos):
    """`sources.VideoItem`s of `videos`: items as they are; a path gives an item with the file's
    name (no extension) as media id. Raises ValueError for none, or for two with one media id."""
    items = [v if isinstance(v, sources.VideoItem) else sources.VideoItem(str(v), "", pathlib.Path(v).stem)
             for v in videos]
    expect(bool(items), "at least one video", videos=items)
    ids = collections.Counter(item.media_id for item in items)
    twice = sorted(i for i, n in ids.items() if n > 1)
    expect(not twice, "one video per media id", duplicate_media_ids=twice[:5])
    return items


def weights_digest(model):
    """sha256 of the network's weight values, in order: which network made a folder's features."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
    return digest.hexdigest()


def run_settings(inference, plan, decode):
    """The settings of a folder (`settings.json`): what the features depend on."""
    metadata = inference.metadata
    return {"format": FORMAT, "layers": list(inference.outputs), "pool": inference.pool,
            "model": {"architecture": metadata.architecture, "weights_digest": weights_digest(inference.model),
                      "normalization": metadata.normalization, "clip_length": metadata.clip_length,
                      "crop_size": metadata.crop_size, "resize_short_side": metadata.resize_short_side},
            "plan": dataclasses.asdict(plan),
            "decode": {"fps": decode.fps, "max_frames": decode.max_frames, "min_frames": decode.min_frames}}


def provenance(inference, settings):
    """The JSON string stored in each file: `settings` plus the model's provenance."""
    return json.dumps({**settings, "model": {**settings["model"], "provenance": inference.metadata.provenance,
                                             "weights_sha256": inference.metadata.weights_sha256},
                       "p3d_keras": __version__}, sort_keys=True)


@dataclasses.dataclass
class _Video:
    """One video's windows so far: outputs by layer, times, and its decoding's end."""
    outputs: dict = dataclasses.field(default_factory=lambda: collections.defaultdict(list))
    times: list = dataclasses.field(default_factory=list)
    looped: bool = False
    outstanding: int = 0  # windows handed to the network, results not back yet
    decoded: window_workers.Decoded | None = None


def finished_videos(inference, messages):
    """Run the windows of `messages` (`window_workers.messages`) through `inference` in batches
    that may span videos, and yield `(number, _Video, None)` when a video's last window is done,
    or `(number, None, reason)` when it failed (its other windows are dropped)."""
    tags, events, videos = collections.deque(), collections.deque(), {}

    def windows():
        for kind, number, payload in messages:
            if kind == WINDOW:
                tags.append(number)
                videos.setdefault(number, _Video()).outstanding += 1
                yield payload
            else:
                events.append((kind, number, payload))

    def ready():
        while events:
            kind, number, payload = events.popleft()
            if kind == FAILED:
                videos.pop(number, None)
                yield number, None, payload
            elif kind == DONE:
                videos.setdefault(number, _Video()).decoded = payload
        for number in [n for n, v in videos.items() if v.decoded is not None and not v.outstanding]:
            yield number, videos.pop(number), None

    for result in inference.run_windows(windows()):
        current = videos.get(tags.popleft())
        if current is not None:
            for name, value in result.outputs.items():
                current.outputs[name].append(value)
            current.times.append((result.start, result.end))
            current.looped = current.looped or result.looped
            current.outstanding -= 1
        yield from ready()
    yield from ready()


def video_file(item, done, inference, provenance_json):
    """`(file bytes, index entry)` of a finished `_Video` of `item` (its times shifted by the
    segment's start)."""
    offset = item.start or 0.0
    times = np.asarray(done.times, "float64").reshape(-1, 2) + offset
    features = {name: np.stack(done.outputs[name]) for name in inference.outputs}
    entry = {"media_id": item.media_id, "path": item.path, "file": output_name(item.media_id),
             "windows": len(times), "seconds": done.decoded.seconds, "looped": done.looped}
    return encode_features(item, features, times, done.decoded, done.looped, provenance_json), entry


def failure(item, reason):
    """A failures.jsonl entry."""
    return {"path": item.path, "media_id": item.media_id, "reason": reason}


def extract_video_features(model, videos, out, *, layers=(models.FEATURE_LAYER,), window=None, stride=None,
                           stride_seconds=None, decode=video.DecodeOptions(), batch_size=8, workers=0,
                           retry_failed=False, on_progress=None):
    """Features of every video of `videos` into the folder `out` (the module docstring says what
    it holds); resumes a killed run in the same folder.

    Args:
        model: a `P3DModel` (`p3d_keras.load_model`, `jobs.models.load`, `features.feature_network`).
        videos: `sources.VideoItem`s (`sources.list_videos`, `list_any`) or video paths.
        layers: `VideoInference` output names: "pool5", "probabilities", layer names.
        window, stride, stride_seconds: the `WindowPlan`. decode: `video.DecodeOptions` (fps,
            threads, max_frames; the size is the model's).
        batch_size: windows per call of the network (across videos).
        workers: decoding processes (0: a thread of this process).
        retry_failed: decode again the videos an earlier run recorded as failed.
        on_progress: called with a `Progress` after each finished video.

    Returns a `Summary`. Raises ValueError for bad arguments (an unknown layer, a plan, no
    videos, `out` a file) or a folder of other settings; `OutputError` when another run holds
    `out` or its files cannot be written.
    """
    items = as_items(videos)
    expect(isinstance(workers, int) and workers >= 0, "workers to be an int >= 0", workers=workers)
    inference = VideoInference(model, layers, batch_size=batch_size)
    plan = inference.plan(window=window, stride=stride, stride_seconds=stride_seconds)
    settings = run_settings(inference, plan, decode)
    with output_folder(out, settings) as out:
        return _Run(inference, items, out, provenance(inference, settings)).run(
            plan, decode, workers, retry_failed, on_progress)


@contextlib.contextmanager
def output_folder(out, settings):
    """The folder `out` (a `pathlib.Path`) held by this run for the block: created, locked
    (`core.output_folder.locked`), its `settings.json` written or checked against `settings`
    (`run_settings`), its output-side OSErrors raised as `OutputError`. Raises ValueError when
    `out` is a file or holds other settings, `OutputError` when another run holds it."""
    out = pathlib.Path(out)
    expect(not out.exists() or out.is_dir(), "out to be a folder (new or existing)", out=str(out))
    with output_side(out, WHAT):
        (out / WORK_DIR).mkdir(parents=True, exist_ok=True)
        with locked(out / WORK_DIR, WHAT):
            check_or_write_settings(out / SETTINGS, settings, out)
            yield out


def write_video(out, item, done, inference, provenance_json):
    """Write the file of a finished `_Video` of `item` into the folder `out` (atomically, its
    folders made) and return its index entry (`video_file`)."""
    data, entry = video_file(item, done, inference, provenance_json)
    path = pathlib.Path(out) / entry["file"]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data)
    return entry


def entry_of_file(out, item):
    """The journal entry of `item` whose file in the folder `out` exists (from the file)."""
    data = read_features(pathlib.Path(out) / output_name(item.media_id))
    return {"media_id": item.media_id, "path": item.path, "file": output_name(item.media_id),
            "windows": len(data["timestamps"]), "seconds": data["seconds"], "looped": data["looped"],
            "status": "done"}


def pending(out, items, retry_failed=False):
    """`(number, item)` of each of `items` still to do in the folder `out`: those without a file
    (those an earlier run recorded as failed only with `retry_failed`). A file without its journal
    line (a run killed between the two) gets its line."""
    entries, todo = read_journal(out), []
    for number, item in enumerate(items):
        latest = entries.get(item.media_id)
        if (pathlib.Path(out) / output_name(item.media_id)).exists():
            if latest is None or "reason" in latest:  # killed between its file and its line
                append_journal(out, [entry_of_file(out, item)])
        elif latest is None or "reason" not in latest or retry_failed:
            todo.append((number, item))
    return todo


def read_journal(out):
    """The latest journal entry of each media id of the folder `out` (a line cut by a kill is
    skipped, and ended so that the next entry starts a line of its own)."""
    journal, entries = pathlib.Path(out) / WORK_DIR / JOURNAL, {}
    if journal.exists():
        with open(journal, "rb+") as f:
            if f.seek(0, os.SEEK_END) and (f.seek(-1, os.SEEK_END), f.read(1))[1] != b"\n":
                f.write(b"\n")
        for line in journal.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            entries[entry["media_id"]] = entry
    return entries


def append_journal(out, entries):
    """Append `entries` (with their `status`: done or failed) to the journal of the folder `out`, synced."""
    with open(pathlib.Path(out) / WORK_DIR / JOURNAL, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(entry, ensure_ascii=False, sort_keys=True) + "\n" for entry in entries))
        f.flush()
        os.fsync(f.fileno())


def write_lists(out):
    """index.jsonl and failures.jsonl of the folder `out` from its journal (every run's videos,
    by media id); returns the failures."""
    entries = sorted(read_journal(out).values(), key=lambda e: e["media_id"])
    done = [{k: v for k, v in e.items() if k != "status"} for e in entries if e["status"] == "done"]
    failed = [failure(sources.VideoItem(e["path"], "", e["media_id"]), e["reason"])
              for e in entries if e["status"] == "failed"]
    for name, lines in ((INDEX, done), (FAILURES, failed)):
        write_atomic(pathlib.Path(out) / name, "".join(json.dumps(e, ensure_ascii=False, sort_keys=True) + "\n"
                                                       for e in lines).encode("utf-8"))
    return failed


class _Run:
    def __init__(self, inference, items, out, provenance_json):
        self.inference, self.items, self.out, self.provenance = inference, items, out, provenance_json

    def run(self, plan, decode, workers, retry_failed, on_progress):
        todo = [Task(number, item.path, item.start, item.end)
                for number, item in pending(self.out, self.items, retry_failed)]
        progress = Progress(len(self.items) - len(todo), len(self.items), len(self.items) - len(todo))
        if progress.resumed:
            log.info("Resuming: %d of %d videos already done", progress.resumed, progress.total)
        started = time.monotonic()
        geometry = FrameGeometry.of(self.inference.metadata)
        stream = window_workers.messages(todo, geometry, plan, decode, workers=workers, work=self.out / WORK_DIR,
                                         queue_size=2 * self.inference.batch_size + 2 * workers)
        try:
            for number, done, reason in finished_videos(self.inference, stream):
                item = self.items[number]
                if done is None:
                    log.warning("Skipped %s: %s", item.path, reason)
                    append_journal(self.out, [{**failure(item, reason), "status": "failed"}])
                    progress.failed += 1
                else:
                    entry = write_video(self.out, item, done, self.inference, self.provenance)
                    append_journal(self.out, [{**entry, "status": "done"}])
                    progress.written, progress.looped = progress.written + 1, progress.looped + done.looped
                    progress.windows += entry["windows"]
                progress.done += 1
                progress.elapsed_s = time.monotonic() - started
                if on_progress is not None:
                    on_progress(dataclasses.replace(progress))
        finally:
            stream.close()
        progress.elapsed_s = time.monotonic() - started
        return Summary(str(self.out), progress, write_lists(self.out))
