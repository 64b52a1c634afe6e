"""Reading TFRecord shards: each shard's compression, its records read with their CRC32C and the
shard's length checked (`read_records`), and byte ranges of local shards (`read_window`, for
`reads="windows"`); a failed check raises an error naming the shard or record, or is counted
(`CorruptRecordCounter`, `skip_corrupt=True`). The shards themselves are found by
`collection.shard_files`.

A corrupt or truncated record: `TFRecordDataset` stops a shard at its first one with a
`DataLossError` that does not name the file. `read_records` therefore reads each shard with errors
ignored and checks, at the shard's end, that the records it read add up to the shard's length
(for GZIP shards: to the uncompressed length in the gzip trailer). A shortfall raises an
`InvalidArgumentError` naming the shard or, with a counter, is counted and reading goes on with
the next shard. With a counter, records whose bytes are not a protocol buffer are counted and
skipped too (`_skip_unparsable`). The check runs once per `RECORDS_PER_CHECK` records.
"""
import gzip
import json
import os
import struct

import numpy as np
import tensorflow as tf

from . import collection
from . import compression as compression_lib
from . import framing
from . import schema

__all__ = ["CorruptRecordCounter", "RECORDS_PER_CHECK", "check_modality", "count_records", "drop_invalid", "enforce",
           "enforced", "expected_record_bytes", "read_records", "read_window", "read_window_or_raise", "record_name",
           "shard_compression", "shard_modality"]

AUTOTUNE = tf.data.AUTOTUNE
# Records per call of the corrupt-record check (`_read_shard`): fewer calls, but this many records
# of each shard being read are held at once (x cycle_length shards).
RECORDS_PER_CHECK = 4


class CorruptRecordCounter:
    """How many corrupt records the reader skipped (`skip_corrupt=True`), `dataset.corrupt_records`.

    A shard read that stops early at a corrupt or truncated record counts once (the records after
    it in that shard are not read), and so does each record that is not a video of the schema
    (another tool's `tf.train.Example`, frames that are not JPEGs or not of one size) and each
    window whose bytes fail their CRC32C (`reads="windows"`); a shard or record counts again each
    epoch it is read."""

    def __init__(self):
        self.variable = tf.Variable(0, dtype=tf.int64, trainable=False, name="corrupt_records")

    @property
    def count(self):
        return int(self.variable.numpy())

    def reset(self):
        self.variable.assign(0)


def shard_compression(path, compression="auto"):
    """The `TFRecordDataset` compression type of the shard `path` (`GZIP` or `""`), read from its
    first bytes whatever its name, through `tf.io.gfile` (so `gs://` paths work):
    `compression.shard_compression`. `compression` (`compression.READER_COMPRESSIONS`) is `auto`,
    or what the caller expects: a shard that is otherwise raises a `ValueError` naming it."""
    return compression_lib.shard_compression(path, compression, tf.io.gfile.GFile)


def expected_record_bytes(path, compression):
    """The bytes of framed records a shard should yield: its length, or for GZIP the
    uncompressed length mod 2**32 from the gzip trailer (-1 if the file is too short to have one)."""
    length = tf.io.gfile.stat(path).length
    if compression != "GZIP":
        return length
    if length < 4:
        return -1
    with tf.io.gfile.GFile(path, "rb") as f:
        f.seek(length - 4)
        return struct.unpack("<I", f.read(4))[0]


def _read_shard(path, compression, expected, counter):
    """One shard's `(path, record number, serialized)` records, with the end-of-shard length check.

    One pass over the shard, with one function call per `RECORDS_PER_CHECK` records: the records,
    in batches of that many (the last one partial), and an end marker (an empty batch) run
    through a `scan` that adds up their framed lengths (mod 2**32 for GZIP) and, at the end
    marker, checks the total (an assertion naming the shard, or a count with
    `skip_corrupt=True`); `unbatch` then drops the empty marker (kept, as one element, for
    `_skip_unparsable` with a `counter`). A shard stops at its first corrupt record, so the
    records before it are handed out and the end marker then fails the check, whichever batch
    the corrupt record fell in. (Batches rather than per-record `map`, `filter` and `scan`
    calls: their cost per record is in `bench/README.md`.)

    With a `counter` (`skip_corrupt=True`) the records whose bytes are not a protocol buffer are
    also skipped and counted, here, before they reach the reader's parse (which would raise):
    `_skip_unparsable`."""
    records = (tf.data.TFRecordDataset(path, compression_type=compression).ignore_errors()
               .batch(RECORDS_PER_CHECK))
    marked = records.concatenate(tf.data.Dataset.from_tensors(tf.constant([], tf.string)))
    message = tf.strings.join([
        "Expected every TFRecord shard to read to its end. Received: a corrupt or truncated "
        "record in shard=", path])
    modulus = tf.where(tf.equal(compression, "GZIP"), tf.constant(2 ** 32, tf.int64), tf.constant(2 ** 62, tf.int64))

    def account(state, chunk):
        total, count = state
        total = tf.math.floormod(
            total + tf.reduce_sum(tf.cast(tf.strings.length(chunk) + framing.FRAMING_BYTES, tf.int64)), modulus)
        ok = tf.logical_or(tf.size(chunk) > 0, tf.equal(total, expected))
        size = tf.size(chunk, out_type=tf.int64)
        numbers = count + tf.range(size)
        with tf.control_dependencies([enforce(ok, message, counter)]):
            if counter is None:
                return (total, count + size), (tf.fill(tf.shape(chunk), path), numbers, tf.identity(chunk))
            end = tf.fill([tf.cast(tf.equal(size, 0), tf.int32)], True)  # [True] at the end marker, else []
            return (total, count + size), (
                tf.fill([tf.size(numbers) + tf.size(end)], path),
                tf.concat([numbers, tf.fill(tf.shape(end), count)], 0),
                tf.concat([chunk, tf.fill(tf.shape(end), "")], 0),
                tf.concat([tf.zeros(tf.shape(chunk), tf.bool), end], 0))

    numbered = marked.scan((tf.constant(0, tf.int64), tf.constant(0, tf.int64)), account).unbatch()
    return numbered if counter is None else _skip_unparsable(numbered, counter)


def _skip_unparsable(numbered, counter):
    """`(path, number, serialized)` of a shard's records `(path, number, serialized, end)`
    (`_read_shard`'s, in shard order, then an end marker numbered with the shard's record count)
    without those whose bytes the parser rejects, each counted in `counter`: the records are
    parsed (`schema.parse_record`; the reader parses them again), the errors ignored, and a
    `scan` counts the gaps the dropped records leave in the numbers, up to the end marker."""
    def parsed(path, number, serialized, end):  # `missing` is handed on: a control dependency alone is pruned
        missing = tf.cond(end, lambda: tf.constant(""),
                          lambda: schema.parse_record(serialized, record_name(path, number))[1])
        return path, number, serialized, end, missing

    def count_gaps(expected, record):
        path, number, serialized, end, missing = record
        with tf.control_dependencies([counter.variable.assign_add(number - expected)]):
            return number + 1, (path, tf.identity(number), serialized, end, missing)

    return (numbered.map(parsed).ignore_errors()
            .scan(tf.constant(0, tf.int64), count_gaps)
            .filter(lambda path, number, serialized, end, missing: tf.logical_not(end))
            .map(lambda path, number, serialized, end, missing: (path, number, serialized)))


def read_records(paths, *, compression="auto", shuffle=False, seed=None, deterministic=True,
                 cycle_length=None, counter=None, numbered=False):
    """A `tf.data.Dataset` of `(shard_path, serialized_example)` from the shard files `paths`
    (`collection.shard_files`), interleaved across `cycle_length` shards (None: up to 16) in
    parallel, each shard read as `compression` says (`shard_compression`), in shard order or, with
    `shuffle`, shards shuffled each epoch. With `numbered=True` the elements are
    `(shard_path, record_number, serialized_example)`, the record's number in its shard counting
    from 0 (for `record_name`).

    Raises a `ValueError` naming a shard whose compression is not `compression`. When iterated, a
    corrupt or truncated record raises an `InvalidArgumentError` naming its shard; with a
    `counter` (`CorruptRecordCounter`) it is counted instead, the rest of that shard skipped, and
    records that are not protocol buffers are counted and skipped too.

        for path, serialized in read_records(shard_files("shards/train")): ...
    """
    compressions = [shard_compression(p, compression) for p in paths]
    expected = [expected_record_bytes(p, c) for p, c in zip(paths, compressions)]
    shards = tf.data.Dataset.from_tensor_slices(
        (paths, compressions, tf.constant(expected, tf.int64)))
    if shuffle:
        shards = shards.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    records = shards.interleave(
        lambda p, c, e: _read_shard(p, c, e, counter),
        cycle_length=min(len(paths), cycle_length or 16),
        num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    return records if numbered else records.map(lambda path, number, serialized: (path, serialized))


# --- byte ranges (reads="windows") ----------------------------------------------------------

def _read_range(path, begin, length):
    """`length` bytes (fewer at the end of the file) of the file `path` from byte `begin`, on a
    handle of this call's own (it runs from several threads at once): `os.pread`, or where there
    is no `pread` (Windows) a seek and a read."""
    with open(os.fsdecode(path), "rb", buffering=0) as f:
        if hasattr(os, "pread"):
            return os.pread(f.fileno(), int(length), int(begin))
        f.seek(int(begin))
        return f.read(int(length))


def read_window(path, begin, length, starts, sizes, crcs, record, skip_corrupt):
    """`(data, ok)`: the `length` bytes of the shard `path` from byte `begin` (runs in a
    `tf.numpy_function`), and whether each frame in them (`starts` from `begin`, `sizes` bytes)
    has the CRC32C `crcs` of the shard's window index. A short read (the shard changed since it
    was indexed) raises a `ValueError` naming the shard; so does a CRC32C mismatch (naming the
    record and the frame's byte), or with `skip_corrupt` it gives `ok=False`."""
    path = os.fsdecode(path)
    data = _read_range(path, begin, length)
    if len(data) != length:
        raise ValueError(f"Expected {length} bytes at byte {begin} of shard={path}. Received: {len(data)}; the "
                         "shard changed since it was indexed: rebuild its index with `p3d-tfrecords index`")
    crc32c = framing.crc32c()
    for start, size, crc in zip(starts.tolist(), sizes.tolist(), crcs.tolist()):
        if crc32c.value(data[start:start + size]) != crc:
            if skip_corrupt:
                return data, np.bool_(False)
            raise ValueError(f"Expected the frames read to have the CRC32C of the window index. Received: a "
                             f"mismatch in the frame at byte {begin + start} of record {record} of shard={path}: "
                             "the shard is corrupt (`p3d-tfrecords index` checks every record's CRC32C)")
    return data, np.bool_(True)


def read_window_or_raise(*args):
    """`read_window`'s data, raising on a CRC32C mismatch."""
    return read_window(*args, False)[0]


# --- raise or count -------------------------------------------------------------------------

def enforce(ok, message, counter):
    """The op that enforces the scalar bool `ok`: an assertion raising an `InvalidArgumentError`
    with `message` (a string tensor, or a function of no arguments that builds it, called only
    when `ok` is false) when `counter` is None, else the count of a failure in the
    `CorruptRecordCounter` (the caller then drops the element)."""
    if counter is not None:
        return counter.variable.assign_add(tf.cast(tf.logical_not(ok), tf.int64))
    if not callable(message):
        return tf.debugging.Assert(ok, [message])

    def fail():
        with tf.control_dependencies([tf.debugging.Assert(False, [message()])]):
            return tf.constant(False)

    return tf.cond(ok, lambda: tf.constant(True), fail)


def record_name(path, number):
    """"record N of shard=PATH" (string tensors), the name errors give a record."""
    return tf.strings.join(["record ", tf.strings.as_string(number), " of shard=", path])


def enforced(outputs, ok, message, counter):
    """`outputs + (ok,)` once `enforce(ok, message, counter)` has run (`drop_invalid` drops the
    elements with `ok` false)."""
    with tf.control_dependencies([enforce(ok, message, counter)]):
        return tuple(tf.identity(t) for t in outputs) + (tf.identity(ok),)


def drop_invalid(dataset, counter):
    """`dataset` (elements `(..., ok)`, from `enforced`) without the elements whose `ok` is false:
    only when counting (`skip_corrupt=True`); otherwise `ok` is always true."""
    return dataset if counter is None else dataset.filter(lambda *element: element[-1])


def count_records(path):
    """Number of records (videos) in the shards of `path`: from the converter's manifest when
    present, else by counting records (each shard read as its bytes say, GZIP or not)."""
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    manifest = os.path.join(folder, collection.MANIFEST)
    if os.path.isdir(path) and os.path.exists(manifest):
        with open(manifest, encoding="utf-8") as f:
            return int(json.load(f)["totals"]["records"])
    return int(read_records(collection.shard_files(path)).reduce(0, lambda n, _: n + 1))


# --- modality -------------------------------------------------------------------------------

def shard_modality(path, compression="auto"):
    """What the records of the shard `path` hold, `rgb` or `flow` (`schema.MODALITY` of its first
    record: the converter writes one modality per folder; a record without it is RGB), or None
    for a shard without a readable first record (empty, or corrupt: the reader reports it when it
    gets there). Reads the first record's framing header and context only, through
    `tf.io.gfile` (so `gs://` paths work), GZIP or not as its bytes say (`shard_compression`)."""
    with tf.io.gfile.GFile(path, "rb") as raw:
        f = gzip.GzipFile(fileobj=raw, mode="rb") if shard_compression(path, compression) == "GZIP" else raw
        try:
            header = f.read(framing.HEADER_BYTES)
            if len(header) < framing.HEADER_BYTES:
                return None
            end = framing.HEADER_BYTES + struct.unpack("<Q", header[:8])[0]
            return schema.record_modality(f, framing.HEADER_BYTES, end)
        except (ValueError, EOFError, OSError, tf.errors.OpError):  # also gzip's BadGzipFile
            return None


def check_modality(paths, modality, compression="auto"):
    """Raise a `ValueError` naming the first of the shards `paths` whose records are not of
    `modality` (`shard_modality`): RGB records for a flow model or flow records for an RGB one."""
    for path in paths:
        found = shard_modality(path, compression)
        if found is not None and found != modality:
            hint = " (convert the videos with `p3d-tfrecords convert --modality flow`)" if modality == "flow" else ""
            raise ValueError(f"Expected {modality} records for modality={modality!r}{hint}. Received: {found} records "
                             f"in shard={path} ({schema.MODALITY!r} of its first record)")
