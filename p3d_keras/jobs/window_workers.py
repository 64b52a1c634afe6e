"""Videos -> `Window`s, decoded ahead of a network: in worker processes (a pipe each, received by a
thread into a bounded queue) or in a thread of this process (`messages`). Free of Keras: the
processes import this module and `jobs.video_windows` only, never TensorFlow.

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
import multiprocessing.connection
import os

from p3d_keras.core.output_folder import init_worker
from p3d_keras.jobs.video_windows import cut_windows, prefetch, video_frames
from p3d_keras.tfrecords_tools import video

log = logging.getLogger(__name__)

WINDOW, DONE, FAILED = "window", "done", "failed"
_START = "start"  # a worker took a video: (START, number, None); not passed on
CRASHED = "worker process crashed while decoding (e.g. a decoder fault)"
_POLL_S = 0.2  # how long the receiving thread waits for a message before it looks again


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
        results.send((_START, task.number, None))
        for message in video_messages(task, geometry, plan, decode):
            results.send(message)
    results.close()


class _Workers:
    """Decoding processes, each sending its messages through a pipe of its own whose only write
    end it holds: a process that dies, even in the middle of a message, is an end of file here,
    never a read that waits forever (a queue shared by all would be)."""

    def __init__(self, context, args):
        self.context, self.args = context, args
        self.pipes = {}  # read end -> [process, number of the video it is decoding, or None]

    def start(self):
        reader, writer = self.context.Pipe(duplex=False)
        process = self.context.Process(target=_worker, args=(os.getpid(), self.args[0], self.args[1], writer,
                                                             *self.args[2:]), name="p3d-decode", daemon=True)
        process.start()
        writer.close()  # the process holds the only write end now
        self.pipes[reader] = [process, None]

    def receive(self, timeout):
        """The messages that arrived within `timeout` seconds; a video whose process died is
        FAILED (CRASHED) and the process replaced."""
        arrived = []
        for reader in multiprocessing.connection.wait(list(self.pipes), timeout):
            entry = self.pipes[reader]
            try:
                kind, number, payload = reader.recv()
            except (EOFError, OSError):  # the process is gone, perhaps in the middle of a message
                del self.pipes[reader]
                reader.close()
                entry[0].join(timeout=10)
                if entry[0].exitcode != 0:
                    log.warning("A decoding process died (exit code %s); starting another", entry[0].exitcode)
                    if entry[1] is not None:
                        arrived.append((FAILED, entry[1], CRASHED))
                    self.start()  # it takes the dead one's place, and its end-of-tasks mark
                continue
            if kind == _START:
                entry[1] = number
                continue
            if kind != WINDOW:
                entry[1] = None
            arrived.append((kind, number, payload))
        return arrived

    def stop(self):
        for process, _ in self.pipes.values():
            process.kill()
        for reader, (process, _) in list(self.pipes.items()):
            process.join()
            reader.close()
        self.pipes.clear()


def _process_messages(tasks, geometry, plan, decode, workers, work, queue_size):
    """The messages of `tasks` from `workers` processes; a thread of this process receives them
    while the caller works, at most `queue_size` ahead."""
    context = multiprocessing.get_context("spawn")  # never fork: the caller holds TensorFlow and threads
    todo = context.Queue()
    for task in tasks:
        todo.put(task)
    for _ in range(workers):
        todo.put(None)
    pool = _Workers(context, (work, todo, geometry, plan, decode))
    for _ in range(min(workers, len(tasks))):
        pool.start()

    def received():
        while pool.pipes:  # each exits after its end-of-tasks mark; the last one ends this
            yield from pool.receive(_POLL_S)

    stream = prefetch(received(), queue_size)
    try:
        yield from stream
    finally:
        stream.close()  # stops the receiving thread before the processes go
        pool.stop()
        todo.cancel_join_thread()
