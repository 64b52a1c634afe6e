"""Videos -> `Window`s, decoded ahead of a network: in worker processes through a bounded queue,
or in a thread of this process (`messages`). Free of Keras: the processes import this module
and `jobs.video_windows` only, never TensorFlow.

Each video gives, in order, `(WINDOW, number, Window)` messages and then one `(DONE, number,
Decoded)` or `(FAILED, number, reason)`; the messages of different videos interleave. A video
that cannot be decoded (unreadable, not a video, zero frames, truncated: `video.VideoError`, or
anything else its decoding raises) is FAILED with the reason, after the windows before the
damage; a worker process that dies while decoding fails its video ("worker process crashed")
and is replaced. Workers die with the main process and hold `core.output_folder`'s workers lock
of the output folder while they live, as the converter's do.
"""
import dataclasses
import logging
import multiprocessing
import os
import queue

from p3d_keras.core.output_folder import init_worker
from p3d_keras.jobs.video_windows import cut_windows, prefetch, video_frames
from p3d_keras.tfrecords_tools import video

log = logging.getLogger(__name__)

WINDOW, DONE, FAILED = "window", "done", "failed"
_START = "start"  # a worker took a video: (START, number, pid); not passed on
CRASHED = "worker process crashed while decoding (e.g. a decoder fault)"
_POLL_S = 0.2  # how often the main process checks its workers while the queue is empty


@dataclasses.dataclass(frozen=True)
class FrameGeometry:
    """What `video_frames` reads of a `ModelMetadata` (which would bring Keras to the workers)."""
    resize_short_side: int
    crop_size: int
    modality: str = "rgb"

    @classmethod
    def of(cls, metadata):
        """The geometry of a `ModelMetadata`."""
        return cls(metadata.resize_short_side, metadata.crop_size, metadata.modality)


@dataclasses.dataclass(frozen=True)
class Task:
    """One video to decode: its `number` in the run, its file and optional segment (seconds)."""
    number: int
    path: str
    start: float | None = None
    end: float | None = None


@dataclasses.dataclass(frozen=True)
class Decoded:
    """What decoding a whole video learnt: the frames decoded, the seconds they cover (from the
    first frame's time to the last frame's end) and the frame rate (the resampling rate, else
    frames per second over those seconds)."""
    frames: int
    seconds: float
    fps: float


def video_messages(task, geometry, plan, decode):
    """The messages of one video (`Task`): its `Window`s (`plan`, a `WindowPlan`), then DONE with
    a `Decoded`, or FAILED with the reason."""
    span = {"frames": 0, "first_us": None, "end_us": 0}

    def counted(frames):
        for frame in frames:
            span["frames"] += 1
            span["first_us"] = frame.time_us if span["first_us"] is None else span["first_us"]
            span["end_us"] = frame.time_us + frame.duration_us
            yield frame

    try:
        frames = video_frames(task.path, geometry, decode, task.start, task.end)
        for window in cut_windows(counted(frames), plan):
            yield WINDOW, task.number, window
    except Exception as error:  # noqa: BLE001 - one bad file must not stop the run
        reason = str(error) if isinstance(error, video.VideoError) else f"{type(error).__name__}: {error}"
        yield FAILED, task.number, reason
        return
    seconds = (span["end_us"] - span["first_us"]) / 1e6
    fps = decode.fps or (span["frames"] / seconds if seconds else 0.0)
    yield DONE, task.number, Decoded(span["frames"], seconds, fps)


def messages(tasks, geometry, plan, decode, *, workers, work, queue_size):
    """The messages of the `Task`s `tasks`, decoded by `workers` processes (spawned; 0: a thread
    of this process) at most `queue_size` messages ahead. `work` is the output folder's work
    folder (`core.output_folder`: the workers hold its workers lock). With `decode.threads` 0,
    each process gets `cores // workers` decoder threads. Closing the generator stops them."""
    if workers == 0:
        return prefetch((m for task in tasks for m in video_messages(task, geometry, plan, decode)), queue_size)
    if not decode.threads:  # automatic: share the cores, never oversubscribe them
        decode = dataclasses.replace(decode, threads=max(1, (os.cpu_count() or 1) // workers))
    return _process_messages(list(tasks), geometry, plan, decode, workers, str(work), queue_size)


def _worker(parent_pid, work, tasks, results, geometry, plan, decode):
    init_worker(parent_pid, work)
    while (task := tasks.get()) is not None:
        results.put((_START, task.number, os.getpid()))
        for message in video_messages(task, geometry, plan, decode):
            results.put(message)


def _process_messages(tasks, geometry, plan, decode, workers, work, queue_size):
    context = multiprocessing.get_context("spawn")  # never fork: the caller holds TensorFlow and threads
    todo, results = context.Queue(), context.Queue(maxsize=queue_size)
    for task in tasks:
        todo.put(task)
    for _ in range(workers):
        todo.put(None)
    processes, current, remaining = {}, {}, {task.number for task in tasks}

    def start():
        process = context.Process(target=_worker, args=(os.getpid(), work, todo, results, geometry, plan, decode),
                                  name="p3d-decode", daemon=True)
        process.start()
        processes[process.pid] = process

    try:
        for _ in range(min(workers, len(tasks))):
            start()
        while remaining:
            try:
                kind, number, payload = results.get(timeout=_POLL_S)
            except queue.Empty:
                for lost in _check_workers(processes, current, start):
                    if lost in remaining:
                        remaining.discard(lost)
                        yield FAILED, lost, CRASHED
                if not processes:  # all gone, some videos taken but never started: theirs too
                    yield from ((FAILED, number, CRASHED) for number in sorted(remaining))
                    return
                continue
            if kind == _START:
                current[payload] = number
                continue
            if kind != WINDOW:
                remaining.discard(number)
            yield kind, number, payload
    finally:
        for process in processes.values():
            process.kill()
            process.join()
        todo.cancel_join_thread()
        results.cancel_join_thread()


def _check_workers(processes, current, start):
    """Forget the worker processes that have exited; for each that died (not exited 0), start
    another one and return the number of the video it was decoding."""
    lost = []
    for pid, process in list(processes.items()):
        if process.exitcode is None:
            continue
        del processes[pid]
        if process.exitcode != 0:
            log.warning("A decoding process died (exit code %s); starting another", process.exitcode)
            if pid in current:
                lost.append(current.pop(pid))
            start()
    return lost
