"""The video feature extraction of `jobs.video_features`, beyond one machine: an Apache Beam
pipeline (`pip install p3d_keras[beam]`; the workers need TensorFlow too).

    from p3d_keras.jobs.beam_features import run

    summary = run(items, "runs/p3d/best", "/nfs/features", layers=("pool5",), stride_seconds=1.0,
                  pipeline_args=["--runner=FlinkRunner", "--flink_master=host:8081"])

The folder it writes is the local extractor's, file for file: each video's `.npz` (the same
writer: `video_features.write_video`), `settings.json`, `.work/journal.jsonl`, and `index.jsonl`
and `failures.jsonl` written from the journal by the pipeline's last step. So either extractor
resumes or extends a folder the other wrote, with the same settings (others are refused).

Workers cannot receive a live Keras model: `model` names one that every worker loads the same,
once per worker (`load_network`): a model folder, a `.keras` file, a preset name or an
`hf://owner/name[@revision]` handle (what `p3d_keras.load_model` takes), or a `jobs.models.ModelSpec`
with a saved model or weights. Each worker checks that its network gives the folder's settings
(its weights digest included) before it writes anything.

`out` is a folder of a file system every worker and the launcher see as the same path: local (the
DirectRunner, one machine) or shared (NFS and the like, for a cluster). Object stores (`gs://`,
`s3://`) are refused: the folder's lock, journal and atomic renames need a file system.

Resume: `run` leaves out the videos whose file exists (and those an earlier run recorded as
failed, unless `retry_failed`); a worker skips a video whose file exists (a retried bundle). The
journal gets this run's lines at the end: after a killed pipeline, its files are kept (a rerun
gives them their lines) and its failures are tried again.

Order: videos are spread over the workers (`beam.Reshuffle`), each video's windows are batched
on its own (features equal the local run's within float tolerance, timestamps exactly).
"""
import dataclasses
import json
import logging
import os
import pathlib
import time

from p3d_keras.core.checks import expect
from p3d_keras.core.output_folder import WORK_DIR, check_or_write_settings
from p3d_keras.jobs import features, models, window_workers
from p3d_keras.jobs.model_folder import load_model
from p3d_keras.jobs.video_features import (SETTINGS, Progress, Summary, append_journal, as_items,
                                           entry_of_file, failure, finished_videos, output_folder, output_name,
                                           pending, provenance, read_journal, run_settings, write_lists,
                                           write_video)
from p3d_keras.jobs.video_inference import VideoInference
from p3d_keras.jobs.window_workers import FrameGeometry, Task
from p3d_keras.tfrecords_tools import video
from p3d_keras.tfrecords_tools.collection import FAILURES
from p3d_keras.tfrecords_tools.sources import VideoItem

log = logging.getLogger(__name__)


def load_network(model, normalization=None):
    """The `P3DModel` of a model reference that a worker can load: a path or name as
    `p3d_keras.load_model` takes it (with `normalization`: as `jobs.models.load` takes a model
    folder or a `.keras` file), or a `jobs.models.ModelSpec` (`features.feature_network`: a new
    network without its classifier). Raises ValueError for a live model, or for a spec of a new
    network without weights (each worker would draw other random weights)."""
    if isinstance(model, models.ModelSpec):
        expect(bool(model.model or model.weights), "a saved model or weights (each worker would build another "
               "random network)", model=model)
        return features.feature_network(model, normalization)
    expect(isinstance(model, (str, os.PathLike)), "a model folder, a .keras file, a preset name, an hf:// handle or "
           "a jobs.models.ModelSpec (workers cannot receive a live model)", model=type(model).__name__)
    if normalization is None:
        return load_model(model)
    return features.feature_network(models.ModelSpec(model=os.fspath(model)), normalization)


def check_folder(out):
    """`out` as a `pathlib.Path`; raises ValueError for a URL (`gs://...`): a shared file system only."""
    expect("://" not in str(out), "out to be a folder of a file system every worker sees (local, NFS); object "
           "stores are not supported: write to a shared folder and copy it", out=str(out))
    return pathlib.Path(out)


class _ExtractFn:
    """A picklable callable for `beam.FlatMap` on `VideoItem` tuples: writes the video's file into
    `out` and yields its journal entry (status done, or failed with the reason). The network is
    loaded on the first call, once per instance (Beam keeps an instance per worker thread and
    reuses it for every bundle), and never pickled."""

    def __init__(self, model, out, *, layers, plan, decode, batch_size, normalization, provenance_json=None):
        self.model, self.out, self.layers, self.plan = model, str(out), tuple(layers), dict(plan)
        self.decode, self.batch_size, self.normalization = decode, batch_size, normalization
        self.provenance, self._ready = provenance_json, None

    def __getstate__(self):
        return {**self.__dict__, "_ready": None}

    def setup(self):
        """Load the network and check that it gives the folder's settings (writing them into a
        new folder)."""
        inference = VideoInference(load_network(self.model, self.normalization), self.layers,
                                   batch_size=self.batch_size)
        plan = inference.plan(**self.plan)
        settings = run_settings(inference, plan, self.decode)
        (pathlib.Path(self.out) / WORK_DIR).mkdir(parents=True, exist_ok=True)
        check_or_write_settings(pathlib.Path(self.out) / SETTINGS, settings, self.out)
        geometry = FrameGeometry.of(inference.metadata)
        self._ready = inference, plan, geometry, self.provenance or provenance(inference, settings)

    def __call__(self, row):
        if self._ready is None:
            self.setup()
        inference, plan, geometry, provenance_json = self._ready
        item = VideoItem(*row)
        if (pathlib.Path(self.out) / output_name(item.media_id)).exists():  # an earlier try of this bundle
            yield entry_of_file(self.out, item)
            return
        stream = window_workers.messages([Task(0, item.path, item.start, item.end)], geometry, plan, self.decode,
                                         workers=0, work=None, queue_size=2 * self.batch_size)
        try:
            for _, done, reason in finished_videos(inference, stream):
                if done is None:
                    log.warning("Skipped %s: %s", item.path, reason)
                    yield {**failure(item, reason), "status": "failed"}
                else:
                    yield {**write_video(self.out, item, done, inference, provenance_json), "status": "done"}
        finally:
            stream.close()


def _finish(entries, out):
    """The last step: this pipeline's entries into the journal of `out`, then the lists; returns
    the number of entries."""
    (pathlib.Path(out) / WORK_DIR).mkdir(parents=True, exist_ok=True)
    append_journal(out, entries)
    write_lists(out)
    return len(entries)


def build_pipeline(pipeline, items, model, out, *, layers=(models.FEATURE_LAYER,), window=None, stride=None,
                   stride_seconds=None, decode=video.DecodeOptions(), batch_size=8, normalization=None,
                   provenance_json=None):
    """Add the extraction of `items` (`sources.VideoItem`s or video paths) into the folder `out`
    to `pipeline` (a `beam.Pipeline`). `model` and `normalization`: `load_network`'s; the other
    arguments are `video_features.extract_video_features`'. Every item is decoded, except those
    whose file exists (`run` leaves out those an earlier run did or failed). The workers raise
    ValueError when their network's settings differ from the folder's `settings.json` (they
    write it into a new folder). `provenance_json` is stored in every file (`run` passes the
    launcher's); None: each worker's own (`video_features.provenance`: a model folder's is the
    same in every load, a network described on load says when it was loaded)."""
    import apache_beam as beam  # noqa: PLC0415 (optional extra: [beam])

    out = check_folder(out)
    rows = [dataclasses.astuple(item) for item in as_items(items)]  # plain tuples pickle on every runner
    plan = dict(window=window, stride=stride, stride_seconds=stride_seconds)
    extract = _ExtractFn(model, out, layers=layers, plan=plan, decode=decode, batch_size=batch_size,
                         normalization=normalization, provenance_json=provenance_json)
    (pipeline
     | "Items" >> beam.Create(rows)
     | "Reshuffle" >> beam.Reshuffle()  # spread videos over workers
     | "Extract" >> beam.FlatMap(extract)
     | "All" >> beam.combiners.ToList()
     | "Lists" >> beam.Map(_finish, str(out)))
    return pipeline


def run(items, model, out, *, layers=(models.FEATURE_LAYER,), window=None, stride=None, stride_seconds=None,
        decode=video.DecodeOptions(), batch_size=8, normalization=None, retry_failed=False, pipeline_args=()):
    """Extract the features of `items` into the folder `out` with a Beam pipeline run with
    `pipeline_args` (e.g. `["--runner=FlinkRunner", ...]`; none: the DirectRunner), as
    `video_features.extract_video_features` does locally (the same arguments; `model` and
    `normalization`: `load_network`'s). The launcher loads the network too, to fix the folder's
    settings, and holds the folder's lock until the pipeline ends.

    Returns a `video_features.Summary` (its `Progress` counts this run's videos). Raises
    ValueError for bad arguments, a URL `out` or a folder of other settings; `OutputError` when
    another run holds `out` or it cannot be written.
    """
    import apache_beam as beam  # noqa: PLC0415 (optional extra: [beam])
    from apache_beam.options.pipeline_options import PipelineOptions  # noqa: PLC0415 (optional extra: [beam])

    out, items = check_folder(out), as_items(items)
    inference = VideoInference(load_network(model, normalization), layers, batch_size=batch_size)
    plan = inference.plan(window=window, stride=stride, stride_seconds=stride_seconds)
    started, settings = time.monotonic(), run_settings(inference, plan, decode)
    with output_folder(out, settings) as folder:
        todo = [item for _, item in pending(folder, items, retry_failed)]
        log.info("%d of %d videos to do (the others done before)", len(todo), len(items))
        if todo:
            with beam.Pipeline(options=PipelineOptions(list(pipeline_args))) as pipeline:
                build_pipeline(pipeline, todo, model, folder, layers=layers, window=window, stride=stride,
                               stride_seconds=stride_seconds, decode=decode, batch_size=batch_size,
                               normalization=normalization, provenance_json=provenance(inference, settings))
        else:
            write_lists(folder)
        entries = read_journal(folder)
        mine = [entries[item.media_id] for item in todo if item.media_id in entries]
        failures = [json.loads(line) for line in (folder / FAILURES).read_text(encoding="utf-8").splitlines()]
    done = [e for e in mine if e["status"] == "done"]
    progress = Progress(len(items), len(items), len(items) - len(todo), written=len(done),
                        failed=len(mine) - len(done), looped=sum(e["looped"] for e in done),
                        windows=sum(e["windows"] for e in done), elapsed_s=time.monotonic() - started)
    return Summary(str(folder), progress, failures)
