"""The `tf.data` clip reader: TFRecord shards of `schema` SequenceExamples -> batches of clips.

`training_dataset` yields `(clips, labels)`, one random window per video per epoch;
`evaluation_dataset` yields `(clips, labels, video_ids)`, `num_clips` uniform windows x 1 or 3
crops per video. Both decode only the frames of a window (the encoded JPEGs are gathered first)
and only the crop's region of each frame: with the native clip decoder (`clip_decoder`, one op
per clip) or TensorFlow's `tf.io.decode_and_crop_jpeg` per frame (`decoder=`), the same values.

Pipeline (training), `reads="records"`: shard names -> parallel interleave of
`TFRecordDataset`s -> parse and pick a window, keeping only its encoded frames -> shuffle (so the
buffer holds windows, not whole videos) -> parallel decode + crop + flip + normalise -> batch ->
prefetch. Every video's whole record is read, CRC-checked and parsed for one window: at UCF101's
mean of 186 frames per video, ~12x the window's bytes.

`reads="windows"`: the shards' window indexes (`index`: each frame's byte offset and length) ->
all videos shuffled in memory -> pick a window and `pread` just its bytes, first to last frame
-> the same decode + crop + flip + normalise -> batch -> prefetch. The same clips as
`reads="records"` for the same videos and seeds; local uncompressed shards with an index only.
`reads="auto"` (default) is `windows` when the shards and options allow it (`resolve_reads`).

Output dtype: by default the readers hand out normalised float32 clips. With
`output_dtype="uint8"` they hand out the decoded frames as they are (RGB, or the two flow
channels, 0-255), 4x fewer bytes and no float work on the CPU, and the model normalises them on
its device: `p3d_keras.core.layers.Normalize(preset)` before the network gives exactly the float32
output (the channel reversal of BGR presets is the layer's, not the reader's). `p3d-train` trains
this way.

Corrupt shards (`reads="records"`): `TFRecordDataset` stops a shard at its first corrupt or truncated record with a
`DataLossError` that does not name the file. The reader therefore reads each shard with errors
ignored and checks, at the shard's end, that the records it read add up to the shard's length
(for GZIP shards: to the uncompressed length in the gzip trailer). A shortfall raises an
`InvalidArgumentError` naming the shard or, with `skip_corrupt=True`, is counted in
`dataset.corrupt_records` and reading goes on with the next shard. With `reads="windows"` records
are checked when their shard is indexed; a shard whose size differs from its index's is refused,
a read that comes up short raises an error naming the shard, and each frame read is checked
against its CRC32C in the index.

Records the reader cannot use. `reads="records"`: bytes that are not a protocol buffer, another
tool's `tf.train.Example` (`schema.parse_record`), no frames, a frame to decode that is not a
JPEG or frames of different sizes (`check_frames`). `reads="windows"`: a frame whose bytes fail
their CRC32C (indexing refused the others: `index`). Each raises an `InvalidArgumentError`
naming the record and its shard ("record 3 of shard=...", `record_name`), before anything
decodes it, or with `skip_corrupt=True` is counted and skipped (`enforced`, `drop_invalid`;
records that are not protocol buffers by `_skip_unparsable`).

Speed (`bench/pipeline_throughput.py`, `bench/README.md`), uint8 output on 2 cores, 186-frame
videos, native decoder: `reads="windows"` 91-94 % of the JPEG-decode limit end to end, 92 % in
the steady state (96-97 % by CPU time per clip), `reads="records"` 66-68 %; float32 output
74-75 % (its cast, normalisation and 4.9 MB per clip of float32 writes). With TensorFlow's ops
(`decoder="tf"`) `reads="windows"` measured 85-87 %: TensorFlow's decoder copies each row of a
crop whose x offset is not a multiple of 16 out of libjpeg's output, then come the clip's stack
and the flip, copies the native op does not make. With `reads="records"` each epoch starts by
filling the shuffle buffer (~0.2-0.7 s at 512 windows). The corrupt-record check of
`reads="records"` runs once per `RECORDS_PER_CHECK` records. BGR presets reverse the channels on
the uint8 frames, with the flip (in the native op's row pass, or one `tf.reverse`).

Set `TF_CPU_ALLOCATOR_USE_BFC=true` before TensorFlow starts. With the default allocator every
large batch (79 MB float32, 20 MB uint8 at 16 x 16 x 160 x 160 x 3) is freshly `mmap`ed memory
that must be paged in again: float32 output then drops from 74 % to 46 % of the limit (uint8
output with `reads="windows"` measured 93 % either way).
"""
import dataclasses
import functools
import logging
import os
import struct

import numpy as np
import tensorflow as tf

from p3d_keras.core import normalization as norm_lib
from p3d_keras.core.normalization import DEFAULT_NORMALIZATION, MODALITY_CHANNELS
from p3d_keras.tfrecords_tools import clip_decoder
from p3d_keras.tfrecords_tools import compression as compression_lib
from p3d_keras.tfrecords_tools import framing
from p3d_keras.tfrecords_tools import index as index_lib
from p3d_keras.tfrecords_tools import sampling
from p3d_keras.tfrecords_tools import schema

logger = logging.getLogger(__name__)

AUTOTUNE = tf.data.AUTOTUNE
CROPS = ("center", "three")
OUTPUT_DTYPES = ("float32", "uint8")
COMPRESSIONS = ("auto", None, "", "GZIP")  # auto: from each shard's bytes (`compression`)
READS = ("auto", "records", "windows")
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


# --- shards ----------------------------------------------------------------------------------

def list_shards(file_pattern):
    """The sorted shard paths matching a glob pattern, a path, or a list of either (window index
    files, `*.tfindex`, excepted)."""
    patterns = [file_pattern] if isinstance(file_pattern, (str, bytes)) else list(file_pattern)
    paths = sorted({path for pattern in patterns for path in tf.io.gfile.glob(pattern)
                    if not index_lib.is_index_file(path)})
    if not paths:
        raise ValueError(f"Expected file_pattern to match at least one shard. "
                         f"Received: file_pattern={file_pattern!r}")
    return paths


def shard_compression(path, compression="auto"):
    """The `TFRecordDataset` compression type of the shard `path` (`GZIP` or `""`), read from its
    first bytes whatever its name (`compression.shard_compression`). `compression` (`COMPRESSIONS`)
    is `auto`, or what the caller expects: a shard that is otherwise raises a `ValueError` naming
    it."""
    if compression not in COMPRESSIONS:
        raise ValueError(f"Expected compression to be one of {COMPRESSIONS}. Received: compression={compression!r}")
    found = compression_lib.shard_compression(path, tf.io.gfile.GFile)
    if compression != "auto" and (compression or "") != found:
        kinds = {"GZIP": "a GZIP-compressed", "": "an uncompressed"}
        raise ValueError(f"Expected {kinds[compression or '']} shard (compression={compression!r}). Received: "
                         f"{kinds[found]} shard={path}; leave compression='auto' to read each shard as its bytes say")
    return found


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


def _read_shard(path, compression, expected, counter):
    """One shard's `(path, record number, serialized)` records, with the end-of-shard length check.

    One pass over the shard, with one function call per `RECORDS_PER_CHECK` records: the records,
    in batches of that many (the last one partial), and an end marker (an empty batch) run
    through a `scan` that adds up their framed lengths (mod 2**32 for GZIP) and, at the end
    marker, checks the total (an assertion naming the shard, or a count with
    `skip_corrupt=True`); `unbatch` then drops the empty marker (kept, as one element, for
    `_skip_unparsable` with a `counter`). A shard stops at its first corrupt record, so the
    records before it are handed out and the end marker then fails the check, whichever batch
    the corrupt record fell in. (Per-record `map`, `filter` and `scan`
    calls cost ~0.05-0.1 core-ms per 250 KB record each: `bench/README.md`.)

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
    """`(shard_path, serialized_example)` from the shards, interleaved across shards in parallel;
    with `numbered=True` `(shard_path, record_number, serialized_example)`, the record's number
    in its shard counting from 0 (for `record_name`)."""
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


# --- windows by byte range (reads="windows") ---------------------------------------------------

def _read_range(path, begin, length):
    """`length` bytes (fewer at the end of the file) of the file `path` from byte `begin`, on a
    handle of this call's own (it runs from several threads at once): `os.pread`, or where there
    is no `pread` (Windows) a seek and a read."""
    with open(os.fsdecode(path), "rb", buffering=0) as f:
        if hasattr(os, "pread"):
            return os.pread(f.fileno(), int(length), int(begin))
        f.seek(int(begin))
        return f.read(int(length))


def _read_window(path, begin, length, starts, sizes, crcs, record, skip_corrupt):
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


def _read_window_or_raise(*args):
    """`_read_window`'s data, raising on a CRC32C mismatch."""
    return _read_window(*args, False)[0]


def windows_obstacle(paths, *, compression, skip_corrupt, cycle_length):
    """Why `reads="windows"` cannot read the shards `paths` with these options, or None: it needs
    local, uncompressed shards (indexes are read, and windows read by byte range, with plain file
    I/O) and `google-crc32c` (each frame read is checked against its CRC32C in the index), and it
    cannot honour `cycle_length` (there is no interleave). `skip_corrupt` is honoured: a window
    whose bytes fail their CRC32C is counted and skipped."""
    del skip_corrupt  # honoured by both reads
    if cycle_length is not None or compression not in ("auto", None, ""):
        return f"cycle_length={cycle_length!r}, compression={compression!r}"
    unreadable = [p for p in paths if not index_lib.is_local(p) or shard_compression(p) == compression_lib.GZIP]
    if unreadable:
        return f"shard={unreadable[0]}, not a local, uncompressed file"
    try:
        framing.crc32c()
    except ImportError:
        return "google-crc32c is not installed (it checks the frames read: pip install 'p3d_keras[video]')"
    return None


def resolve_reads(paths, *, compression, skip_corrupt, cycle_length):
    """What `reads="auto"` reads: `windows` when nothing stands in its way (`windows_obstacle`) and
    every shard has a window index file, else `records`; logs the choice and why. A stale or
    broken index is not a reason to read records: `index.load_index` raises on it when the
    dataset is built."""
    reason = windows_obstacle(paths, compression=compression, skip_corrupt=skip_corrupt, cycle_length=cycle_length)
    if reason is None:
        missing = [p for p in paths if not os.path.exists(index_lib.index_path(p))]
        if not missing:
            logger.info("reads='auto': reading only the windows of %d indexed shards", len(paths))
            return "windows"
        reason = (f"{len(missing)} of {len(paths)} shards have no window index (e.g. {missing[0]}); "
                  "`p3d-tfrecords index` builds them")
    logger.info("reads='auto': reading whole records: %s", reason)
    return "records"


def index_windows(paths, pick, *, clip_length, shuffle, seed, parallel, deterministic, counter=None):
    """`(encoded [clip_length], label, crop seed, ok)` per video of the shards' window indexes
    (`index.load_index`; local, uncompressed shards: `windows_obstacle`), the videos in shard
    order or, with `shuffle`, all of them shuffled anew each epoch; `pick(num_frames,
    element_seed)` gives a video's frame indices and crop seed.

    Each window's frames are read with one `pread` of the bytes from its first to its last frame
    (its frames only, for consecutive frames; the span between them for larger strides; the
    whole video when a short video loops), in a `tf.numpy_function` that checks each frame read
    against its CRC32C in the index (`_read_window`): indexing checked that the record's frames
    are JPEGs of one size (`index`), so these are. A failed check raises an error naming the
    record and its shard or, with a `counter`, is counted and gives `ok=False` (`drop_invalid`
    drops it)."""
    indexes = [index_lib.load_index(path) for path in paths]
    counts = np.concatenate([ix.num_frames for ix in indexes]).astype(np.int32)
    if not len(counts):
        raise ValueError(f"Expected at least one record in the shards. Received: none in {len(paths)} shards "
                         f"(e.g. shard={paths[0]})")
    videos = tf.data.Dataset.from_tensor_slices((
        np.concatenate([np.full(len(ix.num_frames), k, np.int32) for k, ix in enumerate(indexes)]),
        np.concatenate([np.arange(len(ix.num_frames)) for ix in indexes]).astype(np.int64),
        np.concatenate([ix.labels for ix in indexes]).astype(np.int32),
        (np.cumsum(counts, dtype=np.int64) - counts), counts))
    if shuffle:
        videos = videos.shuffle(len(counts), seed=seed, reshuffle_each_iteration=True)
    offsets = tf.constant(np.concatenate([ix.frame_offsets for ix in indexes]), tf.int64)
    lengths = tf.constant(np.concatenate([ix.frame_lengths for ix in indexes]), tf.int64)
    crcs = tf.constant(np.concatenate([ix.frame_crcs for ix in indexes]).astype(np.int64), tf.int64)
    shard_paths = tf.constant(paths)

    def read_window(video, element_seed):
        shard, number, label, first, count = video
        indices, seed_crop = pick(count, element_seed)
        frames = first + tf.cast(indices, tf.int64)
        starts, sizes = tf.gather(offsets, frames), tf.gather(lengths, frames)
        begin, end = tf.reduce_min(starts), tf.reduce_max(starts + sizes)
        inputs = [shard_paths[shard], begin, end - begin, starts - begin, sizes, tf.gather(crcs, frames), number]
        if counter is None:  # `_read_window` raises unless ok
            data, ok = tf.numpy_function(_read_window_or_raise, inputs, tf.string, stateful=False), tf.constant(True)
        else:
            data, ok = tf.numpy_function(_read_window, [*inputs, True], [tf.string, tf.bool], stateful=False)
            with tf.control_dependencies([counter.variable.assign_add(tf.cast(tf.logical_not(ok), tf.int64))]):
                data, ok = tf.identity(data), tf.ensure_shape(ok, [])
        encoded = tf.strings.substr(tf.ensure_shape(data, []), starts - begin, sizes)
        return tf.ensure_shape(encoded, [clip_length]), label, seed_crop, ok

    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    return tf.data.Dataset.zip(videos, seeds).map(read_window, num_parallel_calls=parallel,
                                                  deterministic=deterministic)


# --- one video -------------------------------------------------------------------------------

@functools.cache
def _stand_in_jpeg():
    """A 1x1 JPEG: what `check_frames` reads the size of in place of a frame that is not a JPEG."""
    with tf.init_scope():
        return tf.io.encode_jpeg(tf.zeros([1, 1, 1], tf.uint8)).numpy()


def _no_frames_message(where):
    return tf.strings.join(["Expected every record to have at least one frame. Received: 0 frames in ", where])


def check_frames(encoded, numbers, where):
    """`(ok, message)`: whether the frames `encoded` (`[N]` strings), frames `numbers` (`[N]`) of
    the record named `where` (`record_name`), are JPEGs (they start with `schema.JPEG_SIGNATURE`)
    of one height and width, and a function building the error message naming the first frame
    that is not (`enforce` calls it only then). Only the
    frames that start like a JPEG have their header read (`extract_jpeg_shape`), so other bytes
    fail no op; a frame whose header is damaged past its first bytes fails there, with
    TensorFlow's message (the decoders' business)."""
    is_jpeg = tf.equal(tf.strings.substr(encoded, 0, len(schema.JPEG_SIGNATURE)), schema.JPEG_SIGNATURE)
    readable = tf.where(is_jpeg, encoded, _stand_in_jpeg())
    if encoded.shape[0] is not None:
        shapes = tf.stack([tf.io.extract_jpeg_shape(jpeg)[:2] for jpeg in tf.unstack(readable, encoded.shape[0])])
    else:
        shapes = tf.map_fn(lambda jpeg: tf.io.extract_jpeg_shape(jpeg)[:2], readable,
                           fn_output_signature=tf.TensorSpec([2], tf.int32))
    shapes = tf.reshape(shapes, [-1, 2])
    same = tf.reduce_all(tf.equal(shapes, shapes[:1]), axis=1)
    ok = tf.logical_and(tf.reduce_all(is_jpeg), tf.reduce_all(same))

    def first_false(flags):  # the position of the first false flag (N when none), and its frame number
        position = tf.argmin(tf.concat([tf.cast(flags, tf.int32), [0]], axis=0), output_type=tf.int32)
        return position, tf.strings.as_string(tf.concat([tf.cast(numbers, tf.int64), [-1]], axis=0)[position])

    def size(position):
        height_width = tf.strings.as_string(tf.concat([shapes, [[0, 0]]], axis=0)[position])
        return tf.strings.join([height_width[0], "x", height_width[1]])

    def message():
        _, not_jpeg = first_false(is_jpeg)
        other, other_frame = first_false(same)
        first_frame = tf.strings.as_string(tf.cast(numbers, tf.int64)[:1])
        return tf.where(
            tf.reduce_all(is_jpeg),
            tf.strings.join(["Expected the frames of a record to be of one size. Received: frame ",
                             tf.strings.reduce_join(first_frame), " of ", size(0), " and frame ", other_frame,
                             " of ", size(other), " in ", where]),
            tf.strings.join(["Expected every frame to be a JPEG. Received: frame ", not_jpeg, " of ", where,
                             ", which does not start with a JPEG's bytes FF D8 FF"]))

    return ok, message


def enforced(outputs, ok, message, counter):
    """`outputs + (ok,)` once `enforce(ok, message, counter)` has run (`drop_invalid` drops the
    elements with `ok` false)."""
    with tf.control_dependencies([enforce(ok, message, counter)]):
        return tuple(tf.identity(t) for t in outputs) + (tf.identity(ok),)


def drop_invalid(dataset, counter):
    """`dataset` (elements `(..., ok)`, from `enforced`) without the elements whose `ok` is false:
    only when counting (`skip_corrupt=True`); otherwise `ok` is always true."""
    return dataset if counter is None else dataset.filter(lambda *element: element[-1])


def parse_checked(where, serialized):
    """`(example, ok, message)`: the parsed record `where` (`schema.parse_record`) with
    `num_frames`, whether it is a video of the schema with frames, and a function building the
    error message naming it if not (for `enforce`). A record that is not gives values that fail no op: at least one frame (a stand-in
    JPEG) and zeros."""
    example, missing = schema.parse_record(serialized, where)
    num_frames = tf.shape(example[schema.ENCODED])[0]
    has_frames = num_frames > 0
    example[schema.ENCODED] = tf.cond(has_frames, lambda: example[schema.ENCODED],
                                      lambda: tf.constant([_stand_in_jpeg()]))
    example["num_frames"] = tf.maximum(num_frames, 1)
    ok = tf.logical_and(tf.equal(missing, ""), has_frames)
    return example, ok, lambda: tf.where(tf.equal(missing, ""), _no_frames_message(where),
                                         schema.missing_message(missing, where))


def parse_video(path, serialized):
    """The parsed example (`schema.parse_example`) with `num_frames`; a record that is not a video
    of the schema, or has no frames, raises an error naming its shard."""
    example, ok, message = parse_checked(tf.strings.join(["a record of shard=", path]), serialized)
    with tf.control_dependencies([enforce(ok, message, None)]):
        return {key: tf.identity(value) for key, value in example.items()}


def decode_frames(encoded, box, channels, *, flip=False, reverse_channels=False, native=None):
    """Decode the `box` region of each JPEG in `encoded` (`[N]`) into a `[N, h, w, channels]`
    uint8 tensor (flow frames are stored as JPEGs with x, y in the first two channels), flipped
    left-right where the scalar bool `flip` is true, channels reversed with `reverse_channels`.

    With the `native` op module (`clip_decoder.resolve`) one op decodes every frame straight into
    the result. With TensorFlow's ops (`native=None`) a static N (training clips) is unrolled into
    N independent decode ops, about twice as fast as a `tf.map_fn` loop, and a dynamic N
    (evaluation's unique frames) uses `tf.map_fn`; the frames are then stacked and reversed
    (`sampling.flip_clip`). The same values either way."""
    if native is not None:
        frames = native.p3d_decode_crop_clip(encoded, box, flip, reverse_channels)
    else:
        def decode(jpeg):
            return tf.io.decode_and_crop_jpeg(jpeg, box, channels=3)

        if encoded.shape[0] is not None:
            frames = tf.stack([decode(encoded[i]) for i in range(encoded.shape[0])])
        else:
            frames = tf.map_fn(decode, encoded, fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))
        if flip is not False:
            frames = sampling.flip_clip(frames, flip, reverse_channels)
        elif reverse_channels:
            frames = tf.reverse(frames, axis=[-1])
    frames = frames if channels == 3 else frames[..., :channels]
    return tf.ensure_shape(frames, [None, None, None, channels])


def split_channel_order(normalization):
    """`(bgr, rest)`: whether the preset reverses the channels, and the preset without that step
    (`(False, None)` for `None`, the uint8 output, which keeps the stored channel order).

    The reader reverses the channels itself on the uint8 frames (4x fewer bytes than float32,
    and fused with the training flip into one `tf.reverse`), then normalises with `rest`."""
    if normalization is None:
        return False, None
    norm = norm_lib.get_normalization(normalization)
    return norm.bgr, dataclasses.replace(norm, bgr=False)


def finish_clip(frames, crop_size, normalization):
    """Resize uint8 frames `[N, h, w, C]` to `crop_size` (only if they are not that size already:
    multi-scale or jittered crops, frames smaller than the crop), cast to float32 and normalise.

    With `normalization=None` the frames stay uint8; a resized clip is rounded back to uint8
    (within 0.5 of the float32 resize, which the float32 output normalises unrounded)."""
    same_size = tf.reduce_all(tf.equal(tf.shape(frames)[1:3], crop_size))

    def resize(x):
        return tf.image.resize(x, [crop_size, crop_size], method="bilinear")

    if normalization is None:
        frames = tf.cond(same_size, lambda: frames, lambda: tf.saturate_cast(tf.round(resize(frames)), tf.uint8))
        return tf.ensure_shape(frames, [None, crop_size, crop_size, None])
    frames = tf.cast(frames, tf.float32)
    frames = tf.cond(same_size, lambda: frames, lambda: resize(frames))
    return norm_lib.normalize(tf.ensure_shape(frames, [None, crop_size, crop_size, None]), normalization)


def crop_windows(frames, boxes, region):
    """Cut every box of `boxes` (`[K, 4]`, K static) out of every window of `frames`
    (`[N, T, h, w, C]`, decoded over `region`): `[N * K, T, box_h, box_w, C]`, window-major."""
    relative = boxes - tf.concat([region[:2], [0, 0]], axis=0)
    crops = [frames[:, :, y:y + h, x:x + w] for y, x, h, w in (tf.unstack(b) for b in tf.unstack(relative))]
    stacked = tf.stack(crops, axis=1)
    shape = tf.shape(stacked)
    return tf.reshape(stacked, tf.concat([[-1], shape[2:]], axis=0))


# --- options ---------------------------------------------------------------------------------

def _check_options(*, batch_size, clip_length, frame_stride, crop_size, modality, normalization,
                   output_dtype, stride_range=None, scale_jitter=None, multiscale=False):
    """Raise on a bad option; returns the `Normalization` to apply, or None for uint8 output."""
    for name, value in (("batch_size", batch_size), ("clip_length", clip_length),
                        ("frame_stride", frame_stride), ("crop_size", crop_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"Expected {name} to be a positive integer. Received: {name}={value!r}")
    if modality not in MODALITY_CHANNELS:
        raise ValueError(f"Expected modality to be one of {sorted(MODALITY_CHANNELS)}. Received: modality={modality!r}")
    if output_dtype not in OUTPUT_DTYPES:
        raise ValueError(f"Expected output_dtype to be one of {OUTPUT_DTYPES}. Received: output_dtype={output_dtype!r}")
    if output_dtype == "uint8":
        if normalization is not None:
            raise ValueError("Expected normalization=None with output_dtype='uint8' (uint8 clips are not normalised: "
                             "normalise them in the model, e.g. with p3d_keras.core.layers.Normalize). "
                             f"Received: normalization={normalization!r}")
        norm = None
    else:
        norm = norm_lib.get_normalization(normalization or DEFAULT_NORMALIZATION[modality])
        if norm.channels != MODALITY_CHANNELS[modality]:
            raise ValueError(f"Expected a normalization with {MODALITY_CHANNELS[modality]} channels for "
                             f"modality={modality!r}. Received: normalization={norm.name!r}")
    if stride_range is not None:
        if frame_stride != 1 or len(stride_range) != 2 or not 1 <= stride_range[0] <= stride_range[1]:
            raise ValueError("Expected stride_range=(low, high) with 1 <= low <= high, and frame_stride "
                             f"left at 1. Received: stride_range={stride_range!r}, frame_stride={frame_stride!r}")
    if scale_jitter is not None:
        if multiscale or len(scale_jitter) != 2 or not 0 < scale_jitter[0] <= scale_jitter[1]:
            raise ValueError("Expected scale_jitter=(low, high) with 0 < low <= high, and multiscale=False. "
                             f"Received: scale_jitter={scale_jitter!r}, multiscale={multiscale!r}")
    return norm


def _options(deterministic):
    options = tf.data.Options()
    options.deterministic = deterministic
    return options


# --- training --------------------------------------------------------------------------------

def training_dataset(file_pattern, *, batch_size, clip_length=16, frame_stride=1, stride_range=None,
                     crop_size=160, multiscale=False, flip=True, scale_jitter=None, normalization=None,
                     output_dtype="float32", modality="rgb", shuffle_buffer=512, deterministic=False, seed=None,
                     compression="auto", skip_corrupt=False, drop_remainder=True,
                     num_parallel_calls=None, cycle_length=None, reads="auto", decoder="auto"):
    """Training clips: a `tf.data.Dataset` of `(clips [B, T, S, S, C] float32, labels [B] int32)`
    (`clips` uint8 with `output_dtype="uint8"`).

    Each epoch reads every video once, as one window of `clip_length` frames `frame_stride` apart
    (or a stride drawn per video from `stride_range=(low, high)`) at a random start; videos
    shorter than the window loop their frames. The whole clip gets one crop box and one flip:
    a random `crop_size` square; or with `multiscale=True` TSN's multi-scale corner crop resized
    to `crop_size`; or with `scale_jitter=(low, high)` a random square of side
    `crop_size / factor`, factor uniform in the range, resized to `crop_size`.

    Args:
        file_pattern: a glob, a path, or a list of them (shards of `schema` SequenceExamples).
        normalization: a `p3d_keras.core.normalization` preset (`caffe`, `imagenet`, `unit`, `flow`);
            defaults to `caffe` for `modality="rgb"` and `flow` for `modality="flow"`. Must be
            None with `output_dtype="uint8"`.
        output_dtype: `float32` (clips normalised on the CPU) or `uint8` (the decoded frames,
            cropped and flipped but not normalised, in their stored channel order, for the model to
            normalise on its device with `p3d_keras.core.layers.Normalize(preset)`: the same values as
            float32 output with that preset, at 1.2-2.0x the clips/s of float32 output on the
            CPU: `bench/README.md`). A clip that is resized (multi-scale or jittered crops,
            frames smaller than the crop) is rounded back to uint8.
        modality: `rgb`, or `flow` (JPEG frames holding the x, y flow in their first two channels).
        shuffle_buffer: windows (not whole videos) held for shuffling; 0 disables shuffling. With
            `reads="windows"` any nonzero value shuffles all the videos of the epoch (the index
            is in memory, so no buffer is needed).
        deterministic: with an integer `seed`, the same batches run after run (fixed shard order,
            order-preserving parallelism, stateless random ops seeded per element and epoch).
        compression: `auto` (default: each shard as its bytes say, GZIP or not, whatever its
            name), or `None` / `GZIP` to insist (a shard that is otherwise is an error).
        skip_corrupt: False raises an error naming the shard at a corrupt or truncated record,
            and naming the record and its shard at a record the reader cannot use (see the
            module docstring); True skips the rest of that shard, or that record, and counts it
            in `dataset.corrupt_records.count` (a `CorruptRecordCounter`; None without).
        num_parallel_calls: parallel decode calls; None means AUTOTUNE.
        cycle_length: shards read at once (`reads="records"`); None means min(16, shards).
        reads: `records` streams every shard whole: each video's whole record is read (and its
            CRC checked) to use one window of it. `windows` reads only each window's bytes
            (from its first to its last frame) at the offsets in the shards' window indexes
            (`p3d_keras.tfrecords_tools.index`, written by `p3d-tfrecords convert` or
            `p3d-tfrecords index`): local uncompressed shards only, their records checked when
            indexed and each frame read checked against its CRC32C in the index. The clips are the same for the same
            videos and seeds (their order, when shuffled, is not). At UCF101's 186 frames per video
            it reads ~12x fewer bytes. `auto` (default) reads windows when every shard has an
            index and no option needs records (`resolve_reads`), and logs which it reads; adding
            or removing index files therefore changes the order of the batches.
        decoder: `native` decodes each clip with one compiled op (`clip_decoder`: built on first
            use, needs a C++ compiler and libjpeg-turbo's headers; 8-19 % less CPU per clip),
            `tf` with TensorFlow's JPEG ops; the same clips. `auto` (default) is `native` when it
            can be built, else `tf` with a warning saying why.
    """
    norm = _check_options(batch_size=batch_size, clip_length=clip_length, frame_stride=frame_stride,
                          crop_size=crop_size, modality=modality, normalization=normalization,
                          output_dtype=output_dtype, stride_range=stride_range, scale_jitter=scale_jitter, multiscale=multiscale)
    if deterministic and not isinstance(seed, int):
        raise ValueError(f"Expected an integer seed when deterministic=True. Received: seed={seed!r}")
    if reads not in READS:
        raise ValueError(f"Expected reads to be one of {READS}. Received: reads={reads!r}")
    paths = list_shards(file_pattern)
    if reads == "auto":
        reads = resolve_reads(paths, compression=compression, skip_corrupt=skip_corrupt, cycle_length=cycle_length)
    if reads == "windows":
        obstacle = windows_obstacle(paths, compression=compression, skip_corrupt=skip_corrupt, cycle_length=cycle_length)
        if obstacle:
            raise ValueError("Expected local, uncompressed shards, google-crc32c and cycle_length=None with "
                             f"reads='windows'. Received: {obstacle}; use reads='records'")
    channels = MODALITY_CHANNELS[modality]
    bgr, norm = split_channel_order(norm)
    native = clip_decoder.resolve(decoder)
    parallel = AUTOTUNE if num_parallel_calls is None else num_parallel_calls

    def pick(num_frames, element_seed):
        seed_stride, seed_window, seed_crop = tf.unstack(sampling.split_seed([element_seed, 0], 3))
        stride = frame_stride if stride_range is None else sampling.sample_stride(stride_range, seed_stride)
        return sampling.training_indices(num_frames, clip_length, stride, seed_window), seed_crop

    counter = CorruptRecordCounter() if skip_corrupt else None
    if reads == "windows":
        windows = drop_invalid(index_windows(paths, pick, clip_length=clip_length, shuffle=bool(shuffle_buffer),
                                             seed=seed, parallel=parallel, deterministic=deterministic,
                                             counter=counter), counter)
    else:
        records = read_records(paths, compression=compression, shuffle=True, seed=seed, deterministic=deterministic,
                               cycle_length=cycle_length, counter=counter, numbered=True)
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)

        def pick_window(record, element_seed):
            path, number, serialized = record
            where = record_name(path, number)
            example, ok, message = parse_checked(where, serialized)
            indices, seed_crop = pick(example["num_frames"], element_seed)
            encoded = tf.ensure_shape(tf.gather(example[schema.ENCODED], indices), [clip_length])
            frames_ok, frames_message = check_frames(encoded, indices, where)
            return enforced((encoded, tf.cast(example[schema.LABEL_INDEX], tf.int32), seed_crop),
                            tf.logical_and(ok, frames_ok), lambda: tf.where(ok, frames_message(), message()), counter)

        windows = drop_invalid(tf.data.Dataset.zip(records, seeds).map(
            pick_window, num_parallel_calls=parallel, deterministic=deterministic), counter)
        if shuffle_buffer:
            windows = windows.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)

    def make_clip(encoded, label, clip_seed, ok):  # noqa: ARG001 (ok: checked by drop_invalid)
        seed_box, seed_scale, seed_flip = tf.unstack(sampling.split_seed(clip_seed, 3))
        height, width = tf.unstack(tf.io.extract_jpeg_shape(encoded[0])[:2])
        if multiscale:
            box = sampling.multiscale_crop_box(height, width, seed_box)
        else:
            side = crop_size if scale_jitter is None else sampling.jittered_box_side(crop_size, scale_jitter, seed_scale)
            box = sampling.random_crop_box(height, width, side, side, seed_box)
        clip = decode_frames(encoded, box, channels, flip=sampling.flip_decision(seed_flip) if flip else False,
                             reverse_channels=bgr, native=native)
        clip = finish_clip(clip, crop_size, norm)
        return tf.ensure_shape(clip, [clip_length, crop_size, crop_size, channels]), label

    dataset = (windows.map(make_clip, num_parallel_calls=parallel, deterministic=deterministic)
               .batch(batch_size, drop_remainder=drop_remainder)
               .prefetch(AUTOTUNE)
               .with_options(_options(deterministic)))
    dataset.corrupt_records = counter
    return dataset


# --- evaluation ------------------------------------------------------------------------------

def evaluation_dataset(file_pattern, *, batch_size, clip_length=16, frame_stride=1, num_clips=20,
                       crops="center", crop_size=160, normalization=None, output_dtype="float32",
                       modality="rgb", compression="auto", skip_corrupt=False, num_parallel_calls=None,
                       cycle_length=None, decoder="auto"):
    """Evaluation clips: a `tf.data.Dataset` of `(clips [B, T, S, S, C] float32, labels [B] int32,
    video_ids [B] string)`, in a fixed order (`clips` uint8 with `output_dtype="uint8"`).

    Each video gives `num_clips` windows spaced uniformly over it (the paper uses 20) x one
    centred crop (`crops="center"`) or three crops along the longer side (`crops="three"`),
    window-major. Frames shared by overlapping windows are decoded once. Score the outputs with
    `metrics.clip_and_video_hits` or `metrics.evaluate_clips`. With `skip_corrupt=True` the
    skipped shards and records are counted in `dataset.corrupt_records.count`, as in
    `training_dataset`. Other arguments as in `training_dataset` (it reads whole records).
    """
    norm = _check_options(batch_size=batch_size, clip_length=clip_length, frame_stride=frame_stride,
                          crop_size=crop_size, modality=modality, normalization=normalization,
                          output_dtype=output_dtype)
    if not isinstance(num_clips, int) or num_clips < 1:
        raise ValueError(f"Expected num_clips to be a positive integer. Received: num_clips={num_clips!r}")
    if crops not in CROPS:
        raise ValueError(f"Expected crops to be one of {CROPS}. Received: crops={crops!r}")
    channels = MODALITY_CHANNELS[modality]
    bgr, norm = split_channel_order(norm)
    native = clip_decoder.resolve(decoder)
    counter = CorruptRecordCounter() if skip_corrupt else None
    records = read_records(list_shards(file_pattern), compression=compression, deterministic=True,
                           cycle_length=cycle_length, counter=counter, numbered=True)

    def video_frames(path, number, serialized):
        where = record_name(path, number)
        example, ok, message = parse_checked(where, serialized)
        indices = sampling.evaluation_indices(example["num_frames"], clip_length, frame_stride, num_clips)
        unique, position = tf.unique(tf.reshape(indices, [-1]))
        encoded = tf.gather(example[schema.ENCODED], unique)
        frames_ok, frames_message = check_frames(encoded, unique, where)
        outputs = (encoded, tf.reshape(position, tf.shape(indices)), tf.cast(example[schema.LABEL_INDEX], tf.int32),
                   example[schema.MEDIA_ID])
        return enforced(outputs, tf.logical_and(ok, frames_ok), lambda: tf.where(ok, frames_message(), message()),
                        counter)

    def video_clips(encoded, position, label, media_id, ok):  # noqa: ARG001 (ok: checked by drop_invalid)
        height, width = tf.unstack(tf.io.extract_jpeg_shape(encoded[0])[:2])
        if crops == "center":
            boxes = sampling.center_crop_box(height, width, crop_size)[None]
        else:
            boxes = sampling.three_crop_boxes(height, width, crop_size)
        region = sampling.union_box(boxes)
        frames = decode_frames(encoded, region, channels, reverse_channels=bgr, native=native)
        clips = crop_windows(tf.gather(frames, position), boxes, region)
        shape = tf.shape(clips)
        clips = finish_clip(tf.reshape(clips, tf.concat([[-1], shape[2:]], axis=0)), crop_size, norm)
        clips = tf.reshape(clips, [-1, clip_length, crop_size, crop_size, channels])
        count = tf.shape(clips)[0]
        return clips, tf.fill([count], label), tf.fill([count], media_id)

    parallel = AUTOTUNE if num_parallel_calls is None else num_parallel_calls
    dataset = (drop_invalid(records.map(video_frames, num_parallel_calls=parallel, deterministic=True), counter)
               .map(video_clips, num_parallel_calls=parallel, deterministic=True)
               .unbatch()
               .batch(batch_size)
               .prefetch(AUTOTUNE)
               .with_options(_options(True)))
    dataset.corrupt_records = counter
    return dataset
