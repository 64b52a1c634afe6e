"""The window index of a shard: where each frame's JPEG lies in the file, so the training reader can
read only the bytes of a clip's window (`reader.training_dataset(..., reads="windows")`) rather
than the whole record of its video, which is ~12x more at UCF101's average of 186 frames.

Each uncompressed shard `NAME.tfrecord` gets an index file `NAME.tfindex` beside it (a NumPy
`.npz`; other names: `NAME.tfindex` is appended): per record its label index and frame count, per
frame its byte offset in the shard and its length, and the shard's size, so a shard that changed
since it was indexed is refused. 12 bytes per frame (~22 MB for UCF101's 9,537 training videos).

`p3d-tfrecords convert` writes the index of every uncompressed shard it writes;
`p3d-tfrecords index` (or `write_index`) builds it for any other shard (`p3d-tfrecords beam`'s
among them). Building reads the shard
once, checks every record's framing and CRC32C (a corrupt record is an error naming the shard and
the byte), and locates the frames with `schema.locate_frames`. GZIP shards cannot be read by
byte range and are refused. No TensorFlow.
"""
import dataclasses
import os
import struct

import numpy as np

from p3d_keras.fileutil import atomic_file

from . import framing
from . import schema

INDEX_SUFFIX = ".tfindex"
SHARD_SUFFIX = ".tfrecord"
FORMAT_VERSION = 1
COMPRESSED_SUFFIXES = (".gz", ".gzip")
GZIP_MAGIC = b"\x1f\x8b"


@dataclasses.dataclass(frozen=True)
class ShardIndex:
    """Record `r` has label `labels[r]` and `num_frames[r]` frames; its frames are the next
    `num_frames[r]` entries of `frame_offsets` (bytes from the start of the shard) and
    `frame_lengths`, records in shard order."""
    shard_bytes: int
    labels: np.ndarray         # int32 [records]
    num_frames: np.ndarray     # int32 [records]
    frame_offsets: np.ndarray  # int64 [frames]
    frame_lengths: np.ndarray  # int32 [frames]


def index_path(shard):
    """The index file of `shard`: `NAME.tfindex` for `NAME.tfrecord`, else the name + `.tfindex`."""
    shard = os.fspath(shard)
    return (shard[:-len(SHARD_SUFFIX)] if shard.endswith(SHARD_SUFFIX) else shard) + INDEX_SUFFIX


def is_index_file(path):
    return os.fspath(path).endswith(INDEX_SUFFIX)


def iter_records(f, shard):
    """`(offset, data)` of each record of the open binary shard `f`, its offset being where its data
    starts; a broken frame (truncated, or a length or data CRC that does not match) raises a
    `ValueError` naming `shard` and the record's byte."""
    crc = framing.crc32c()
    position = 0
    while header := f.read(framing.HEADER_BYTES):
        def broken(what):
            return ValueError(f"Expected intact TFRecord records. Received: {what} in the record at byte "
                              f"{position} of shard={os.fspath(shard)}")
        if len(header) < framing.HEADER_BYTES:
            raise broken("a truncated header")
        (length,), (length_crc,) = struct.unpack("<Q", header[:8]), struct.unpack("<I", header[8:])
        if framing.masked_crc32c(crc.value(header[:8])) != length_crc:
            raise broken("a corrupt length")
        data, footer = f.read(length), f.read(framing.FOOTER_BYTES)
        if len(data) < length or len(footer) < framing.FOOTER_BYTES:
            raise broken("truncated data")
        if framing.masked_crc32c(crc.value(data)) != struct.unpack("<I", footer)[0]:
            raise broken("corrupt data (CRC32C mismatch)")
        yield position + framing.HEADER_BYTES, data
        position += framing.HEADER_BYTES + length + framing.FOOTER_BYTES


def build_index(shard):
    """The `ShardIndex` of an uncompressed shard (reads it once; see the module docstring)."""
    if os.fspath(shard).endswith(COMPRESSED_SUFFIXES):
        raise ValueError("Expected an uncompressed shard (a window index locates frames by byte). "
                         f"Received: shard={os.fspath(shard)}")
    labels, num_frames, offsets, lengths = [], [], [], []
    with open(shard, "rb") as f:
        if f.read(2) == GZIP_MAGIC:
            raise ValueError("Expected an uncompressed shard (a window index locates frames by byte). "
                             f"Received: a GZIP-compressed shard={os.fspath(shard)}")
        f.seek(0)
        for position, data in iter_records(f, shard):
            try:
                label, frames = schema.locate_frames(data)
            except ValueError as error:
                raise ValueError(f"{error} (record at byte {position - framing.HEADER_BYTES} of "
                                 f"shard={os.fspath(shard)})") from error
            labels.append(label)
            num_frames.append(len(frames))
            offsets.extend(position + offset for offset, _ in frames)
            lengths.extend(length for _, length in frames)
        shard_bytes = f.tell()
    return ShardIndex(shard_bytes=shard_bytes, labels=np.asarray(labels, np.int32),
                      num_frames=np.asarray(num_frames, np.int32), frame_offsets=np.asarray(offsets, np.int64),
                      frame_lengths=np.asarray(lengths, np.int32))


def write_index(shard):
    """Build the index of `shard` and write it (atomically) to `index_path(shard)`; returns it."""
    index = build_index(shard)
    with atomic_file(index_path(shard)) as f:
        np.savez(f, version=FORMAT_VERSION, **dataclasses.asdict(index))
    return index


def load_index(shard):
    """The `ShardIndex` of `shard`, checked against the shard's current size."""
    path = index_path(shard)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Expected the window index {path} of shard={os.fspath(shard)}. Received: no such "
                                f"file; build it with `p3d-tfrecords index {os.fspath(shard)}`")
    with np.load(path) as arrays:
        if int(arrays["version"]) != FORMAT_VERSION:
            raise ValueError(f"Expected a window index of format version {FORMAT_VERSION}. Received: version "
                             f"{int(arrays['version'])} in {path}; rebuild it with `p3d-tfrecords index`")
        index = ShardIndex(**{field.name: arrays[field.name] for field in dataclasses.fields(ShardIndex)})
    index = dataclasses.replace(index, shard_bytes=int(index.shard_bytes))
    size = os.path.getsize(shard)
    if size != index.shard_bytes:
        raise ValueError(f"Expected shard={os.fspath(shard)} to be the {index.shard_bytes} bytes its window index "
                         f"{path} describes. Received: {size} bytes; rebuild the index with `p3d-tfrecords index`")
    return index
