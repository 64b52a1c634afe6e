"""The window index of a shard: where each frame's JPEG lies in the file, so the training reader can
read only the bytes of a clip's window (`reader.training_dataset(..., reads="windows")`) rather
than the whole record of its video (a window of 16 frames is a fraction of a video's frames).

Each uncompressed shard `NAME.tfrecord` gets an index file `NAME.tfindex` beside it (other names:
`.tfindex` is appended; the format is below): per record its label index and frame count, per
frame its byte offset in the shard, its length and the CRC32C of its bytes, and the shard's size,
so a shard that changed size since it was indexed is refused, and a window whose bytes changed
since (a flipped bit) is caught when read (`reader.index_windows`). 16 bytes per frame.

`p3d-tfrecords convert`, and `p3d-tfrecords beam` writing to a local folder, write the index of
every uncompressed shard they write; `p3d-tfrecords index` (or `write_index`) builds it for any
other shard. Building reads the shard once, checks every record's framing and CRC32C (a corrupt
record is an error naming the shard and the byte), and locates the frames with
`schema.locate_frames`, reading only the records' field headers, then reads each frame once more
for its CRC32C, in chunks: memory does not grow with a record's length. A record without frames,
with a frame that is not a JPEG or with frames of different sizes (`schema.jpeg_size`) is an
error naming the shard and the byte too, so a window read need only check that its bytes are
the ones indexed. GZIP shards (told by their bytes, `compression`) cannot be read by byte range
and are refused. Neither TensorFlow nor NumPy (the converter's processes import neither).
"""
import array
import dataclasses
import operator
import os
import struct
import sys

from p3d_keras.core.files import atomic_file

from . import compression
from . import framing
from . import schema

INDEX_SUFFIX = ".tfindex"
SHARD_SUFFIX = ".tfrecord"
# The file: MAGIC, then HEADER (version, shard bytes, records, frames), then the arrays of
# `ShardIndex` in field order, little-endian, each as `array.array` of its typecode.
MAGIC = b"P3DTFIDX"
FORMAT_VERSION = 2  # 2: each frame's CRC32C
HEADER = struct.Struct("<IQQQ")
_TYPECODES = {"labels": "i", "num_frames": "i", "frame_offsets": "q", "frame_lengths": "i", "frame_crcs": "I"}
_PER_RECORD = ("labels", "num_frames")
_CRC_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class ShardIndex:
    """Record `r` has label `labels[r]` and `num_frames[r]` frames; its frames are the next
    `num_frames[r]` entries of `frame_offsets` (bytes from the start of the shard),
    `frame_lengths` and `frame_crcs` (the CRC32C of the frame's bytes, unmasked), records in
    shard order. The arrays are `array.array`s (int32, int32, int64, int32, uint32)."""
    shard_bytes: int
    labels: array.array
    num_frames: array.array
    frame_offsets: array.array
    frame_lengths: array.array
    frame_crcs: array.array


def index_path(shard):
    """The index file of `shard`: `NAME.tfindex` for `NAME.tfrecord`, else the name + `.tfindex`."""
    shard = os.fspath(shard)
    return (shard[:-len(SHARD_SUFFIX)] if shard.endswith(SHARD_SUFFIX) else shard) + INDEX_SUFFIX


def is_local(path):
    """Whether `path` is a local (or mounted) file rather than a URL (`gs://...`): indexes are
    written and read with plain file I/O."""
    return "://" not in os.fspath(path)


def is_index_file(path):
    return os.fspath(path).endswith(INDEX_SUFFIX)


def build_index(shard):
    """The `ShardIndex` of an uncompressed shard (reads it once, then the records' field headers;
    see the module docstring)."""
    arrays = {name: array.array(code) for name, code in _TYPECODES.items()}
    with open(shard, "rb") as f:
        if compression.detect(f.read(framing.HEADER_BYTES)) == compression.GZIP:
            raise ValueError("Expected an uncompressed shard (a window index locates frames by byte). "
                             f"Received: a GZIP-compressed shard={os.fspath(shard)}")
        f.seek(0)
        for start, length in framing.read_frames(f, shard):
            try:
                label, frames = schema.locate_frames(f, start, start + length)
                crcs = _check_frames(f, frames)
            except ValueError as error:
                raise ValueError(f"{error} (record at byte {start - framing.HEADER_BYTES} of "
                                 f"shard={os.fspath(shard)})") from error
            arrays["labels"].append(label)
            arrays["num_frames"].append(len(frames))
            arrays["frame_offsets"].extend(offset for offset, _ in frames)
            arrays["frame_lengths"].extend(size for _, size in frames)
            arrays["frame_crcs"].extend(crcs)
        f.seek(0, os.SEEK_END)
        shard_bytes = f.tell()
    return ShardIndex(shard_bytes=shard_bytes, **arrays)


def _check_frames(f, frames):
    """The CRC32C of each frame `(offset, length)` of a record in the binary file `f`, reading each
    once, in chunks; raises a `ValueError` unless the record has frames and they are JPEGs of one
    size (`schema.jpeg_size` of a frame's first chunk), so a window read need check only that its
    bytes are still the ones indexed (their CRC32C). The reader's `check_frames` makes the same
    checks on whole records, in TensorFlow."""
    if not frames:
        raise ValueError("Expected every record to have at least one frame. Received: 0 frames")
    crcs, first_size = [], None
    for number, (offset, length) in enumerate(frames):
        f.seek(offset)
        head = f.read(min(length, _CRC_CHUNK))
        size = schema.jpeg_size(head)
        if size is None:
            raise ValueError(f"Expected every frame to be a JPEG. Received: frame {number}, which does not start "
                             "with a JPEG's bytes FF D8 FF and a frame header")
        first_size = first_size or size
        if size != first_size:
            raise ValueError("Expected the frames of a record to be of one size. Received: frame 0 of "
                             f"{first_size[0]}x{first_size[1]} and frame {number} of {size[0]}x{size[1]}")
        crcs.append(_file_crc32c(f, length - len(head), framing.crc32c().value(head)))
    return crcs


def _file_crc32c(f, length, value):
    """`value` (a CRC32C) extended by the next `length` bytes of the binary file `f`, read in chunks."""
    crc32c = framing.crc32c()
    while length:
        chunk = f.read(min(length, _CRC_CHUNK))
        if not chunk:
            raise ValueError(f"Expected {length} more bytes at byte {f.tell()}. Received: none")
        value, length = crc32c.extend(value, chunk), length - len(chunk)
    return value


def write_index(shard):
    """Build the index of `shard` and write it (atomically) to `index_path(shard)`; returns it."""
    index = build_index(shard)
    with atomic_file(index_path(shard)) as f:
        f.write(MAGIC + HEADER.pack(FORMAT_VERSION, index.shard_bytes, len(index.labels), len(index.frame_offsets)))
        for name in _TYPECODES:
            values = getattr(index, name)
            if sys.byteorder == "big":
                values = array.array(values.typecode, values)
                values.byteswap()
            f.write(values.tobytes())
    return index


def load_index(shard):
    """The `ShardIndex` of `shard`, checked against the shard's current size.

    Raises `FileNotFoundError` without an index file, and a `ValueError` naming the index file
    (and the way to rebuild it) for one that is not an index, of another format version,
    truncated or with bytes after its end, or whose records and frames do not add up or lie
    outside the shard."""
    path = index_path(shard)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Expected the window index {path} of shard={os.fspath(shard)}. Received: no such "
                                f"file; build it with `p3d-tfrecords index {os.fspath(shard)}`")
    with open(path, "rb") as f:
        head = f.read(len(MAGIC) + HEADER.size)
        if not head.startswith(MAGIC) or len(head) < len(MAGIC) + HEADER.size:
            raise ValueError(f"Expected a window index file. Received: {path}, which is not one; rebuild it with "
                             "`p3d-tfrecords index`")
        version, shard_bytes, records, frames = HEADER.unpack_from(head, len(MAGIC))
        if version != FORMAT_VERSION:
            raise ValueError(f"Expected a window index of format version {FORMAT_VERSION}. Received: version "
                             f"{version} in {path}; rebuild it with `p3d-tfrecords index`")
        counts = {name: records if name in _PER_RECORD else frames for name in _TYPECODES}
        sizes = {name: counts[name] * array.array(code).itemsize for name, code in _TYPECODES.items()}
        expected, size = len(head) + sum(sizes.values()), os.fstat(f.fileno()).st_size
        if size != expected:  # checked before reading: a header's counts never make it read more than the file
            raise ValueError(f"Expected a complete window index of {records} records and {frames} frames: "
                             f"{expected} bytes. Received: {path} of {size} bytes (truncated or damaged); rebuild "
                             "it with `p3d-tfrecords index`")
        arrays = {}
        for name, code in _TYPECODES.items():
            arrays[name] = array.array(code)
            arrays[name].frombytes(f.read(sizes[name]))
            if sys.byteorder == "big":
                arrays[name].byteswap()
    _check_consistent(arrays, shard_bytes, path)
    size = os.path.getsize(shard)
    if size != shard_bytes:
        raise ValueError(f"Expected shard={os.fspath(shard)} to be the {shard_bytes} bytes its window index "
                         f"{path} describes. Received: {size} bytes; rebuild the index with `p3d-tfrecords index`")
    return ShardIndex(shard_bytes=shard_bytes, **arrays)


def _check_consistent(arrays, shard_bytes, path):
    """Raise a `ValueError` naming the index file `path` unless each of its records has frames,
    their counts add up to its frames and every frame lies inside the shard's `shard_bytes` bytes."""
    problem = None
    if min(arrays["num_frames"], default=1) < 1:
        problem = "a record without frames"
    elif sum(arrays["num_frames"]) != len(arrays["frame_offsets"]):
        problem = f"frame counts adding up to {sum(arrays['num_frames'])} for {len(arrays['frame_offsets'])} frames"
    elif arrays["frame_offsets"] and (
            min(arrays["frame_offsets"]) < 0 or min(arrays["frame_lengths"]) < 0
            or max(map(operator.add, arrays["frame_offsets"], arrays["frame_lengths"])) > shard_bytes):
        problem = f"frames outside the shard's {shard_bytes} bytes"
    if problem:
        raise ValueError(f"Expected a consistent window index. Received: {path} with {problem}; rebuild it with "
                         "`p3d-tfrecords index`")
