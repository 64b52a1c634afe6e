"""Items -> sharded TFRecords: deterministic shard assignment, a worker pool, atomic shard files,
a manifest, failures.jsonl, and resume after any interruption (even `kill -9`).

How it stays deterministic, bounded and resumable:
- items are ordered by a hash of their media id (classes mixed, order fixed) and shard k takes
  the k-th contiguous block of that order, so shards fill up one after another;
- workers convert one video per task, in any order (each block's videos are handed out largest
  file first, so a block ends on short ones and the workers finish together), and write its
  record, already framed as in a TFRecord file (`framing`), or its failure reason to
  `<out>/.work/<item>.rec|.fail` atomically; once a block is done, the main process writes its
  shard by copying those files in the fixed order, in chunks (through gzip for GZIP shards);
- a worker streams: each frame's JPEG goes to a temporary file as it is encoded, and the record
  is then written from the frames' sizes and that file, copied in chunks, so a worker's memory
  does not grow with the video's length;
- no process of the converter imports TensorFlow: `schema` encodes the records (`protowire`),
  `framing` frames them; so memory stays flat in the workers and in the main process, whatever
  the length of the videos.
- a shard is written to a temporary name and renamed, then a per-shard marker (record count,
  sha256, failures) is written, then its item files are removed. A rerun keeps every shard that
  has a marker and redoes only the unfinished items.

What it never does (so nothing is lost, whatever happens):
- a failure of the output side (no space left, quota, a read-only or vanished output folder)
  is not a bad video: it stops the run with an `OutputError`, no video is marked failed for it,
  and the rerun resumes to the shards an uninterrupted run writes; only errors of an input
  video (`video.VideoError`, or anything else its decoding raises) go to failures.jsonl;
- two runs never write into one output folder: a run holds an exclusive lock (`core.output_folder.locked`) on
  `.work/lock` (which names it) from start to end, and the kernel releases it when the run
  dies, so a killed run's lock is never stale;
- a worker never outlives its run: it dies with the main process (Linux: PR_SET_PDEATHSIG) and
  holds a shared lock on `.work/workers.lock` while it lives, which a new run waits for
  before it touches `.work/` (PR_SET_PDEATHSIG is Linux's, shared locks are POSIX's: on Windows
  there is neither, and a rerun right after a kill should wait for the old workers to exit).
"""
import collections
import concurrent.futures
import contextlib
import dataclasses
import gzip
import hashlib
import io
import json
import logging
import multiprocessing
import os
import pathlib
import shutil
import tempfile
import time

from p3d_keras.core.files import atomic_file, sha256_of, write_atomic
from p3d_keras.core.output_folder import (  # noqa: F401 (LOCK, WORKERS_LOCK: the converter's names of them)
    LOCK, WORK_DIR, WORKERS_LOCK, OutputError, check_or_write_settings, init_worker, locked, output_side)

from .collection import FAILURES, GZIP_SUFFIX, LABELS, MANIFEST, PLAIN_SUFFIX
from .compression import GZIP, WRITER_COMPRESSIONS as COMPRESSIONS
from . import framing
from . import index as index_lib
from . import schema
from . import video as video_lib

logger = logging.getLogger(__name__)

COPY_CHUNK = 1 << 20  # bytes of a record's frames copied at a time
# The layout of `.work/<item>.rec` files (2: frame count + a TFRecord frame). It is one of the
# run's parameters, so a resume never copies work files of another layout into shards.
WORK_FORMAT = 2


@dataclasses.dataclass
class Progress:
    """A snapshot passed to `on_progress` after every finished video."""
    done: int
    total: int
    converted: int
    failed: int
    frames: int
    elapsed_s: float
    last_media_id: str = ""
    last_frames: int = 0


@dataclasses.dataclass
class Summary:
    """What `convert` did. `manifest` is the content of manifest.json."""
    output_dir: str
    manifest: dict
    failures: list
    resumed_shards: int
    elapsed_s: float

    @property
    def converted(self):
        return self.manifest["totals"]["records"]

    @property
    def failed(self):
        return len(self.failures)


def shard_suffix(compression):
    """`collection.PLAIN_SUFFIX`, or `GZIP_SUFFIX` for GZIP shards (readers go by the bytes, not the name)."""
    return GZIP_SUFFIX if compression == GZIP else PLAIN_SUFFIX


def shard_name(prefix, index, num_shards, compression=None):
    return f"{prefix}-{index:05d}-of-{num_shards:05d}{shard_suffix(compression)}"


def default_num_shards(num_items, videos_per_shard=100):
    return max(1, -(-num_items // videos_per_shard))


def shard_order(items):
    """Items in a fixed order that mixes classes: by sha1 of the media id."""
    return sorted(items, key=lambda item: hashlib.sha1(item.media_id.encode("utf-8")).hexdigest())


def shard_blocks(num_items, num_shards):
    """`[(first, stop), ...]`: balanced contiguous blocks (sizes differ by at most one)."""
    return [(k * num_items // num_shards, (k + 1) * num_items // num_shards)
            for k in range(num_shards)]


def convert(items, label_map, output_dir, *, decode=video_lib.DecodeOptions(), num_shards=None,
            prefix="data", compression=None, workers=None, on_progress=None):
    """Convert `items` (`sources.VideoItem`s) into `num_shards` TFRecord shards in `output_dir`.

    workers: processes (None = all cores, 0 = in this process). compression: None or "GZIP".
    decode: `video.DecodeOptions`; with `decode.flow` the records hold TV-L1 flow (`flow`), and
    the manifest says so (`modality`, and the flow parameters in `params.decode.flow`).
    Rerunning with the same arguments after an interruption (an exception, `kill -9`, a full
    disk) resumes and writes the shards an uninterrupted run writes; different arguments in a
    non-empty output dir raise ValueError. Returns a `Summary`; failed videos are skipped and
    listed in failures.jsonl. Raises `OutputError` when the output side fails or another run
    holds `output_dir` (see the module docstring), ValueError for bad arguments (also an
    `output_dir` that is an existing file), ImportError for flow without OpenCV's contrib modules
    (`flow.FlowOptions.algorithm`)."""
    items = shard_order(items)
    num_shards = default_num_shards(len(items)) if num_shards is None else num_shards
    _validate(items, num_shards, compression, workers, decode)
    out = pathlib.Path(output_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"Expected output_dir to be a folder (new or existing). Received: "
                         f"output_dir={str(out)!r}, an existing file")
    work = out / WORK_DIR
    params = _params(items, label_map, decode, num_shards, prefix, compression)
    with output_side(out):
        work.mkdir(parents=True, exist_ok=True)
        with locked(work):
            check_or_write_settings(work / "params.json", params, out)
            job = _Job(items, label_map, decode, out, work, prefix, compression, num_shards)
            started = time.monotonic()
            resumed = job.run(workers, on_progress, started)
            manifest, failures = job.finish(params)
    return Summary(str(out), manifest, failures, resumed, time.monotonic() - started)


def _validate(items, num_shards, compression, workers, decode):
    if not items:
        raise ValueError("Expected at least one video to convert. Received: 0 items")
    if not isinstance(num_shards, int) or num_shards < 1:
        raise ValueError(f"Expected num_shards to be a positive int. Received: num_shards={num_shards!r}")
    if compression not in COMPRESSIONS:
        raise ValueError(f"Expected compression in {COMPRESSIONS}. Received: compression={compression!r}")
    if workers is not None and (not isinstance(workers, int) or workers < 0):
        raise ValueError(f"Expected workers to be an int >= 0 or None. Received: workers={workers!r}")
    if decode.flow is not None:
        decode.flow.algorithm()  # OpenCV's TV-L1 is there: not one failure per video without it


def _params(items, label_map, decode, num_shards, prefix, compression):
    listing = json.dumps([dataclasses.astuple(item) for item in items]).encode("utf-8")
    decode = dataclasses.asdict(decode)  # with the flow parameters (`flow.FlowOptions`) of flow records
    del decode["threads"]  # changes speed, not records: a resume may use other --workers/--threads
    if decode["flow"] is None:
        del decode["flow"]  # RGB: the parameters of the folders written before flow records existed
    return {
        "decode": decode,
        "num_shards": num_shards,
        "prefix": prefix,
        "compression": compression,
        "labels": sorted(label_map, key=label_map.get),
        "num_items": len(items),
        "items_sha256": hashlib.sha256(listing).hexdigest(),
        "work_format": WORK_FORMAT,
    }


def write_record(item, label_index, decode, out, spool, framed=False):
    """Convert one item and write its serialised SequenceExample to the binary file `out`
    (with `framed=True` as one TFRecord frame, as in a shard); returns the frame count; raises
    `VideoError`.

    Streams: each frame goes to `spool` (a binary file open for reading and writing, e.g. a
    temporary file) as soon as it is encoded; the record is then the head computed from the
    frames' total size, the frames copied from `spool` in chunks, and the timestamps. So memory
    does not grow with the video's length."""
    origin = spool.tell()
    info = video_lib.stream_clip(item.path, lambda jpeg: spool.write(schema.encode_frame(jpeg)),
                                 decode, item.start, item.end)
    context = schema.encode_context(
        height=info.height, width=info.width, frame_rate=info.frame_rate, label_index=label_index,
        label_string=item.label, media_id=item.media_id, start_us=info.start_us, end_us=info.end_us,
        modality=decode.modality,
    )
    frames_size = spool.tell() - origin
    head, tail = schema.record_parts(context, frames_size, info.timestamps_us)
    sink = framing.FrameWriter(out, len(head) + frames_size + len(tail)) if framed else out
    sink.write(head)
    spool.seek(origin)
    shutil.copyfileobj(spool, sink, COPY_CHUNK)
    sink.write(tail)
    if framed:
        sink.finish()
    return len(info.timestamps_us)


def convert_item(item, label_index, decode):
    """`(serialised SequenceExample, frame count)` of one item, in memory (the bytes
    `write_record` writes); raises `VideoError`."""
    out = io.BytesIO()
    frames = write_record(item, label_index, decode, out, io.BytesIO())
    return out.getvalue(), frames


def _convert_task(index, item, label_index, decode, work):
    """Worker task: convert one item and leave `<index>.rec` (the frame count as 8 little-endian
    bytes, then the record as a TFRecord frame) or `<index>.fail` in `work`. Raises `OutputError`
    (and leaves neither) when writing them fails: that is not the video's failure."""
    base = pathlib.Path(work) / f"{index:08d}"
    with output_side(pathlib.Path(work).parent):
        try:
            # The spool is unnamed: nothing of it outlives this process, even after a kill -9.
            with tempfile.TemporaryFile(dir=work) as spool, atomic_file(base.with_suffix(".rec")) as out:
                out.write(bytes(8))  # the frame count, known at the end
                frames = write_record(item, label_index, decode, out, spool, framed=True)
                out.seek(0)
                out.write(frames.to_bytes(8, "little"))
        except video_lib.VideoError as error:
            reason = str(error)
        except OSError:  # the output side's (the input's are VideoErrors): stop the run
            raise
        except Exception as error:  # noqa: BLE001 - one bad file must not stop the run
            reason = f"{type(error).__name__}: {error}"
        else:
            return index, frames, None
        write_atomic(base.with_suffix(".fail"), json.dumps({"reason": reason}).encode("utf-8"))
    return index, 0, reason


def _copy_item(work, index, shard):
    """Append a finished item's framed record to the file `shard`, in chunks; returns
    `(frames, None)`, or `(0, failure reason)` for a failed item."""
    base = pathlib.Path(work) / f"{index:08d}"
    if base.with_suffix(".fail").exists():
        return 0, json.loads(base.with_suffix(".fail").read_text(encoding="utf-8"))["reason"]
    with open(base.with_suffix(".rec"), "rb") as f:
        frames = int.from_bytes(f.read(8), "little")
        shutil.copyfileobj(f, shard, COPY_CHUNK)
    return frames, None


@contextlib.contextmanager
def _compressed(raw, compression):
    """`raw`, or for GZIP a gzip stream into it, closed at the end (no name or time in its
    header, so the same records give the same bytes; level 6, zlib's default, as TensorFlow's)."""
    if compression != "GZIP":
        yield raw
        return
    with gzip.GzipFile(filename="", mode="wb", compresslevel=6, fileobj=raw, mtime=0) as stream:
        yield stream


class _Job:
    def __init__(self, items, label_map, decode, out, work, prefix, compression, num_shards):
        self.items, self.label_map, self.decode = items, label_map, decode
        self.out, self.work, self.prefix = out, work, prefix
        self.compression, self.num_shards = compression, num_shards
        self.blocks = shard_blocks(len(items), num_shards)

    def marker(self, k):
        return self.work / f"shard-{k:05d}.json"

    def path(self, k):
        """Shard k's file: `shard_name`, or the name its marker records, so that a run resumed from
        one that named GZIP shards `.tfrecord` (before `.tfrecord.gz`) keeps those names and
        leaves no shard twice in the folder."""
        marker = self.marker(k)
        if marker.exists():
            name = json.loads(marker.read_text(encoding="utf-8"))["file"]
            if pathlib.Path(name).name == name:  # a bare name, as written
                return self.out / name
        return self.out / shard_name(self.prefix, k, self.num_shards, self.compression)

    def shard_done(self, k):
        return self.marker(k).exists() and self.path(k).exists()

    def run(self, workers, on_progress, started):
        pending_shards = [k for k in range(self.num_shards) if not self.shard_done(k)]
        resumed = self.num_shards - len(pending_shards)
        if resumed:
            logger.info("Resuming: %d of %d shards already written", resumed, self.num_shards)
        for k in set(range(self.num_shards)) - set(pending_shards):
            self._remove_items(k)  # left behind by a run killed right after writing shard k
        todo = [i for k in pending_shards for i in self._largest_first(k)
                if not self._item_finished(i)]
        counter = Progress(len(self.items) - len(todo), len(self.items), 0, 0, 0, 0.0)
        next_shard = iter(pending_shards)
        shard = next(next_shard, None)
        for index, frames, reason in self._execute(todo, workers):
            counter.converted += reason is None
            counter.failed += reason is not None
            counter.frames += frames
            counter.done += 1
            counter.elapsed_s = time.monotonic() - started
            counter.last_media_id, counter.last_frames = self.items[index].media_id, frames
            if reason is not None:
                logger.warning("Skipped %s: %s", self.items[index].path, reason)
            if on_progress is not None:
                on_progress(dataclasses.replace(counter))
            while shard is not None and self._block_finished(shard):
                self._write_shard(shard)
                shard = next(next_shard, None)
        while shard is not None:  # shards with nothing left to convert
            self._write_shard(shard)
            shard = next(next_shard, None)
        return resumed

    def _execute(self, todo, workers):
        """Yield `_convert_task` results. A worker that dies (a decoder crash) breaks the pool:
        the videos it had in flight are then retried one at a time, and the one that kills its
        worker alone is recorded as failed; the others continue in a new pool."""
        cores = os.cpu_count() or 1
        workers = cores if workers is None else workers
        decode = self.decode
        if workers and not decode.threads:  # automatic: share the cores, never oversubscribe them
            decode = dataclasses.replace(decode, threads=max(1, cores // workers))
        args = collections.deque(
            (i, self.items[i], self.label_map[self.items[i].label], decode, str(self.work))
            for i in todo)
        if workers == 0:
            yield from (_convert_task(*a) for a in args)
            return
        while args:
            suspects = yield from _run_pool(args, workers, self.work)
            for a in suspects:  # alone, so a crash is the suspect's own
                if (yield from _run_pool(collections.deque([a]), 1, self.work)):
                    yield _record_crash(*a)

    def _largest_first(self, k):
        """Block k's item indices, largest video file first (ties in block order): the longest
        conversions start first and the block ends on short ones, so no worker converts a long
        video alone at the end while the others wait (the order of the records is unchanged)."""
        def size(i):
            try:
                return os.path.getsize(self.items[i].path)
            except OSError:  # missing or unreadable: its task fails fast and records why
                return 0
        return sorted(range(*self.blocks[k]), key=lambda i: -size(i))

    def _block_finished(self, k):
        return all(self._item_finished(i) for i in range(*self.blocks[k]))

    def _item_finished(self, i):
        base = self.work / f"{i:08d}"
        return base.with_suffix(".rec").exists() or base.with_suffix(".fail").exists()

    def _write_shard(self, k):
        """Write shard k from its item files, in order; atomically; then its window index
        (uncompressed shards) and its marker."""
        path = self.path(k)
        records, frames, failures = 0, 0, []
        with atomic_file(path) as raw, _compressed(raw, self.compression) as shard:
            for i in range(*self.blocks[k]):
                item_frames, reason = _copy_item(self.work, i, shard)
                if reason is not None:
                    failures.append({"path": self.items[i].path, "media_id": self.items[i].media_id,
                                     "reason": reason})
                    continue
                records, frames = records + 1, frames + item_frames
        if self.compression is None:
            index_lib.write_index(path)
        marker = {"file": path.name, "records": records, "frames": frames,
                  "sha256": sha256_of(path), "bytes": path.stat().st_size, "failures": failures}
        write_atomic(self.marker(k), json.dumps(marker, sort_keys=True).encode("utf-8"))
        self._remove_items(k)
        logger.debug("Wrote %s (%d records, %d frames)", path.name, records, frames)

    def _remove_items(self, k):
        for i in range(*self.blocks[k]):
            for suffix in (".rec", ".fail"):
                (self.work / f"{i:08d}").with_suffix(suffix).unlink(missing_ok=True)

    def finish(self, params):
        """Check kept shards, then write labels.txt, failures.jsonl and manifest.json."""
        shards, failures = [], []
        for k in range(self.num_shards):
            marker = json.loads(self.marker(k).read_text(encoding="utf-8"))
            if sha256_of(self.path(k)) != marker["sha256"]:
                raise RuntimeError(
                    f"Expected {self.path(k)} to match its sha256 {marker['sha256']}. "
                    f"Received: a modified file; delete it and rerun to rewrite it"
                )
            failures.extend(marker.pop("failures"))
            shards.append(marker)
        labels = params["labels"]
        write_atomic(self.out / LABELS, "".join(f"{name}\n" for name in labels).encode("utf-8"))
        write_atomic(self.out / FAILURES, "".join(
            json.dumps(f, ensure_ascii=False, sort_keys=True) + "\n" for f in failures
        ).encode("utf-8"))
        manifest = {
            "modality": self.decode.modality,  # what the records' frames hold (`schema.MODALITY`)
            "params": params,
            "shards": shards,
            "totals": {"videos": len(self.items), "records": sum(s["records"] for s in shards),
                       "failed": len(failures), "frames": sum(s["frames"] for s in shards),
                       "bytes": sum(s["bytes"] for s in shards)},
        }
        write_atomic(self.out / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode("utf-8"))
        return manifest, failures


def _new_pool(workers, work):
    context = multiprocessing.get_context("spawn")  # never fork: the caller may hold TF, threads
    return concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=init_worker,
                                                  initargs=(os.getpid(), str(work)))


def _run_pool(args, workers, work):
    """Run tasks from the deque `args` (at most 2 per worker in flight, so memory stays bounded)
    in workers of the conversion in `work`, and yield their results; returns the tasks in flight
    if a worker died, else []. A task's exception (an `OutputError`) cancels the queued tasks
    and is raised once the running ones have finished."""
    with _new_pool(workers, work) as pool:
        pending = {}
        try:
            while args or pending:
                while args and len(pending) < 2 * workers:
                    a = args.popleft()
                    pending[pool.submit(_convert_task, *a)] = a
                done, _ = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
                for future in done:
                    try:
                        result = future.result()
                    except concurrent.futures.process.BrokenProcessPool:
                        return list(pending.values())
                    del pending[future]
                    yield result
        except BaseException:  # also the consumer stopping (GeneratorExit): queue nothing more
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return []


def _record_crash(index, item, label_index, decode, work):
    reason = "worker process crashed while decoding (e.g. a decoder fault)"
    write_atomic((pathlib.Path(work) / f"{index:08d}").with_suffix(".fail"),
                  json.dumps({"reason": reason}).encode("utf-8"))
    return index, 0, reason
