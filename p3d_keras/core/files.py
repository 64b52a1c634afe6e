"""Small file helpers shared by the weights cache, the TFRecord writer and the window index:
sha256, atomic files, advisory locks that work on POSIX and Windows, and reading a .npz of arrays."""
import contextlib
import hashlib
import os
import pathlib
import uuid
import zipfile

import numpy as np

try:
    import fcntl  # POSIX
except ImportError:  # Windows: byte-range locks (msvcrt), exclusive only
    fcntl = None
    import msvcrt  # Windows

SHARED_LOCKS = fcntl is not None  # whether try_lock(fd, shared=True) is available
_WINDOWS_LOCK_OFFSET = 1 << 40  # the byte Windows locks: past any content, which stays readable


def sha256_of(path, chunk=1 << 20):
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


PARTIAL_MARK = ".part-"  # in the unique temporary names of `atomic_path(..., unique=True)`


@contextlib.contextmanager
def atomic_path(path, *, unique=False, suffix=""):
    """A temporary path beside `path` for the block to write: it replaces `path` once the block
    has finished; if the block raises, `path` is left as it was and the temporary file removed.

    The temporary name is `<name>.tmp<suffix>`, for a writer that holds its folder alone (the
    converter's lock); with `unique`, where several processes may write `path` at once (the
    weights cache), `<name>.part-<pid>-<random><suffix>`, which a later run can recognise
    (`PARTIAL_MARK`) and remove when a killed one left it. `suffix` keeps a name a writer
    insists on (Keras: `.weights.h5`)."""
    path = pathlib.Path(path)
    middle = f"{PARTIAL_MARK}{os.getpid()}-{uuid.uuid4().hex}" if unique else ".tmp"
    tmp = path.with_name(f"{path.name}{middle}{suffix}")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_file(path, *, unique=False):
    """A binary file (`atomic_path`) that replaces `path`, synced, once the block has finished;
    if the block raises, `path` is left as it was and the partial file is removed."""
    with atomic_path(path, unique=unique) as tmp, open(tmp, "wb") as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def write_atomic(path, *chunks):
    """Write the bytes `chunks` to `path` through `atomic_file`: all of them or, if a write
    raises, nothing (`path` keeps its old content)."""
    with atomic_file(path) as f:
        for chunk in chunks:
            f.write(chunk)


def try_lock(fd, shared=False):
    """Take an advisory lock on the open file `fd` without waiting; True if taken, False if another
    process holds a conflicting one. The lock goes with `fd` (closing it releases it) and with the
    process, however it dies. POSIX: `flock`, shared or exclusive. Windows: an exclusive lock of one
    byte far past the file's content; `shared=True` raises ValueError there (see `SHARED_LOCKS`)."""
    if fcntl is not None:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
    if shared:
        raise ValueError("Expected shared=False: this platform has no shared file locks. Received: shared=True")
    os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
    try:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError:
        return False
    return True


def rewrite(fd, data):
    """Replace the whole content of the open file `fd` with `data` (portable: no `pwrite`)."""
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, data)


def read_head(fd, size):
    """The first `size` bytes (at most) of the open file `fd` (portable: no `pread`)."""
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, size)


def read_npz(path):
    """`{name: array}` of the `.npz` file `path`, read without pickles. Raises ValueError naming
    the file for one that is not a zip of arrays (corrupt, truncated, a pickle) or that holds an
    object array (which only a pickle could load)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (ValueError, zipfile.BadZipFile, EOFError, OSError) as error:
        raise ValueError(f"Expected a .npz file of arrays (no pickles). Received: {os.fspath(path)} "
                         f"({type(error).__name__}: {error})") from None
