"""Small file helpers shared by the weights cache, the TFRecord writer and the window index."""
import contextlib
import hashlib
import os
import pathlib


def sha256_of(path, chunk=1 << 20):
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_file(path):
    """A binary file that replaces `path`, synced, once the block has finished; if the block
    raises, `path` is left as it was and the partial file is removed."""
    path = pathlib.Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def write_atomic(path, *chunks):
    with atomic_file(path) as f:
        for chunk in chunks:
            f.write(chunk)
