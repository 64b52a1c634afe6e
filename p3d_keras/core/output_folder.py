"""A folder that one run writes at a time (the TFRecord converter's, the video feature
extractor's): its lock, the worker processes that die with their run, and output-side errors.

- two runs never write into one folder: a run holds an exclusive lock (`files.try_lock`) on
  `<folder>/.work/lock` (which names it) from start to end, and the kernel releases it when the
  run dies, so a killed run's lock is never stale (`locked`);
- a worker never outlives its run: it dies with the main process (Linux: PR_SET_PDEATHSIG) and
  holds a shared lock on `.work/workers.lock` while it lives, which a new run waits for before it
  touches `.work/` (`init_worker`, `wait_for_old_workers`; PR_SET_PDEATHSIG is Linux's, shared
  locks are POSIX's: on Windows there is neither, and a rerun right after a kill should wait for
  the old workers to exit);
- a failure of the output side (no space left, quota, a read-only or vanished folder) is not a
  bad input: it stops the run with an `OutputError` (`output_side`).
"""
import contextlib
import ctypes
import datetime
import json
import os
import pathlib
import signal
import socket
import sys
import time

from p3d_keras.core.files import SHARED_LOCKS, read_head, rewrite, try_lock, write_atomic

WORK_DIR = ".work"  # a run's own files in its output folder
LOCK = "lock"  # in .work: flock'ed by the running job, holds its pid, host and start time
WORKERS_LOCK = "workers.lock"  # in .work: flock'ed (shared) by each living worker process
WORKERS_EXIT_S = 60  # how long a run waits for the workers of a killed run to be gone
_HOLDER_BYTES = 4096  # the most read of a lock file's holder description


class OutputError(Exception):
    """A run stopped because of its output side, not an input: the output folder cannot be
    written (no space left, quota, read-only, vanished) or another run holds it. No input is
    marked failed because of it; rerunning the same command resumes."""


@contextlib.contextmanager
def output_side(out, what="conversion"):
    """Turn an OSError inside into an `OutputError` naming the job `what`: inside are only the
    output side's file operations (an input video's errors reach here as `VideoError`s or failure
    records)."""
    try:
        yield
    except OSError as error:
        raise OutputError(
            f"Expected to write the {what}'s files in {out}. Received: {error}. The run stopped "
            f"without marking any video failed for it; fix the cause (e.g. free disk space) and "
            f"rerun the same command to resume"
        ) from error


@contextlib.contextmanager
def locked(work, what="conversion"):
    """Hold an exclusive flock on `work/LOCK` for the job `what` during the block, with this run's pid, host and start
    time written in it; then wait (at most `WORKERS_EXIT_S`) for the worker processes of an
    earlier, killed run to be gone. Raises `OutputError` naming the holder when another run
    holds it. The kernel releases the lock when its holder dies, however it dies."""
    fd = os.open(work / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not try_lock(fd):
            holder = read_head(fd, _HOLDER_BYTES).decode("utf-8", "replace").strip()
            raise OutputError(
                f"Expected no other {what} running on {work.parent}. Received: it is locked by "
                f"{holder or 'a run that is starting'} ({work / LOCK}); wait for that run to end or stop it"
            ) from None
        started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        rewrite(fd, f"pid {os.getpid()} on host {socket.gethostname()} since {started}\n".encode())
        wait_for_old_workers(work)
        yield
    finally:
        os.close(fd)  # releases the lock


def wait_for_old_workers(work):
    """Return once no worker process holds `work/WORKERS_LOCK` (those of a killed run die with
    it, at once on Linux); raise `OutputError` if some still do after `WORKERS_EXIT_S`. Without
    shared locks (Windows) workers hold no lock, and there is nothing to wait for."""
    if not SHARED_LOCKS:
        return
    fd = os.open(work / WORKERS_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + WORKERS_EXIT_S
        while True:
            if try_lock(fd):
                return
            if time.monotonic() > deadline:
                raise OutputError(
                    f"Expected the worker processes of an earlier run on {work.parent} to have exited. "
                    f"Received: some still hold {work / WORKERS_LOCK} after {WORKERS_EXIT_S}s; stop "
                    f"them (e.g. `fuser {work / WORKERS_LOCK}`) and rerun")
            time.sleep(0.05)
    finally:
        os.close(fd)  # this run's workers take it shared


_worker_lock_fd = None  # a worker's open, shared-locked WORKERS_LOCK: closed when the process ends


def init_worker(parent_pid, work):
    """Pool initializer: die with the main process `parent_pid` (Linux: PR_SET_PDEATHSIG; exit
    now if it is already gone), and hold a shared lock on `work/WORKERS_LOCK` for life (where
    there are shared locks: not on Windows)."""
    global _worker_lock_fd
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(1)
    if SHARED_LOCKS:
        _worker_lock_fd = os.open(pathlib.Path(work) / WORKERS_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        while not try_lock(_worker_lock_fd, shared=True):  # a starting run's check holds it for an instant
            time.sleep(0.01)


def check_or_write_settings(path, settings, folder):
    """Fix the settings of the output folder `folder` at its first run: write the JSON-ready dict
    `settings` to `path` (atomically), or, when an earlier run wrote it, raise ValueError naming
    `folder` and the keys that differ (a rerun must not mix outputs made another way into it)."""
    path = pathlib.Path(path)
    if path.exists():
        previous, settings = json.loads(path.read_text(encoding="utf-8")), json.loads(json.dumps(settings))
        if previous != settings:
            changed = sorted(k for k in {*previous, *settings} if previous.get(k) != settings.get(k))
            raise ValueError(f"Expected the same inputs and parameters as the earlier run in {folder} (or an empty "
                             f"output dir). Received: changed {changed}")
        return
    write_atomic(path, json.dumps(settings, indent=1, sort_keys=True).encode("utf-8"))
