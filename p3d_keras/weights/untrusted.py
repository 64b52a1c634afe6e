"""What every reader of an original weights file (`pth`, `npz`, `caffemodel`) enforces: the one
error it raises for a file it refuses, and the limits on what a file may declare.

A weights file is data from anywhere. Before anything is allocated, what a file declares (storage
and array sizes, pickle payload lengths, blob shapes) is checked against the file's real size and
against `max_bytes`: by default `MAX_BYTES`, enough for the largest architecture (P3D-199, 66.7 M
parameters) in float64 with slack; a caller may pass a smaller one (`byte_budget(parameters)`).
Pickles are further bounded in size, object count and nesting depth, so that nothing that walks,
hashes or prints their content can take long, and a zip archive's central directory in bytes
(`open_zip`) before zipfile reads it.
"""
import os
import reprlib
import struct
import zipfile

MAX_ITEMSIZE = 8  # bytes per element: float64 / int64 (complex128 counts double against the budget)
MAX_PARAMETERS = 100_000_000  # P3D-199 has 66.7 M; the slack covers larger classifiers
SLACK_BYTES = 16 << 20  # metadata, protobuf overhead, BN counters
MAX_PICKLE_BYTES = 64 << 20  # one pickle (a P3D-199 training checkpoint's is about 1 MB)
MAX_PICKLE_ITEMS = 1_000_000  # opcodes, objects and entries of one pickle (a P3D-199 training checkpoint: 200 000)
MAX_NESTING = 32  # containers inside containers (a torch checkpoint nests about 8 deep)
MAX_PROTOBUF_FIELDS = 1 << 18  # fields decoded from one .caffemodel (of the order of 20 000 for P3D-199)
MAX_ZIP_DIRECTORY_BYTES = 4 << 20  # a zip's central directory (a P3D-199 training checkpoint's: a few hundred KB)


def byte_budget(parameters):
    """The most tensor bytes a file may declare for a model of `parameters` parameters."""
    return MAX_ITEMSIZE * parameters + SLACK_BYTES


MAX_BYTES = byte_budget(MAX_PARAMETERS)


class CheckpointError(ValueError):
    """A weights file that is refused: corrupt, over a limit, or not what it claims to be. The
    message names the file, what was expected and what was received."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint whose pickle asks for something a state dict never needs (a global outside the
    allow-list, an object construction, a change to one of the reader's stand-ins)."""


def too_large(path, what, nbytes, max_bytes):
    """The CheckpointError for a file that declares `nbytes` (`what`: "its 3 arrays declare")."""
    return CheckpointError(
        f"Refusing to load {path}: {what} {nbytes} bytes, more than the {max_bytes} bytes allowed (by default the "
        f"largest P3D network in float64). Expected a P3D checkpoint. Received: {nbytes} bytes")


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother = 3, 60, 60


def describe(value):
    """A short repr of a value read from a file, bounded however large or deep the value is."""
    return _SHORT.repr(value)


_ZIP_END = struct.Struct("<4s4H2LH")  # end of central directory: signature ... directory size, offset
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_END = struct.Struct("<4sQ2H2L4Q")


def _zip_directory_bytes(path):
    """The size a zip archive's end record declares for its central directory (zip64 included), read
    from the file's last 64 KiB; None if no end record is found (zipfile then refuses the file)."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        tail_start = max(0, size - (_ZIP_END.size + 0xFFFF))
        f.seek(tail_start)
        tail = f.read()
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) - at < _ZIP_END.size:
            return None
        directory = _ZIP_END.unpack_from(tail, at)[5]
        locator = at - _ZIP64_LOCATOR.size
        if locator >= 0 and tail[locator:locator + 4] == b"PK\x06\x07":
            end64 = _ZIP64_LOCATOR.unpack_from(tail, locator)[2]
            f.seek(end64)
            record = f.read(_ZIP64_END.size)
            if len(record) == _ZIP64_END.size and record[:4] == b"PK\x06\x06":
                directory = max(directory, _ZIP64_END.unpack(record)[8])
    return directory


def open_zip(path):
    """`zipfile.ZipFile(path)`, after checking that its central directory (which zipfile reads and
    turns into one object per entry) is at most `MAX_ZIP_DIRECTORY_BYTES`."""
    directory = _zip_directory_bytes(path)
    if directory is not None and directory > MAX_ZIP_DIRECTORY_BYTES:
        raise CheckpointError(
            f"Refusing to load {path}: its zip directory declares {directory} bytes of entries, more than the "
            f"{MAX_ZIP_DIRECTORY_BYTES} allowed. Expected a P3D checkpoint (a few thousand entries at most). "
            f"Received: {directory} bytes")
    return zipfile.ZipFile(path)
