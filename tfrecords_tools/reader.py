"""The `tf.data` clip reader: TFRecord shards of `schema` SequenceExamples -> batches of clips.

The API is two functions: `training_dataset` yields `(clips, labels)`, one random window per video
per epoch; `evaluation_dataset` yields `(clips, labels, video_ids)`, `num_clips` uniform windows x
1 or 3 crops per video. Both decode only the frames of a window (the encoded JPEGs are gathered
first) and only the crop's region of each frame (`clips.decode_frames`).

    from p3d_keras.tfrecords_tools import reader
    train = reader.training_dataset("shards/train", batch_size=8, clip_length=16, crop_size=160)

Pipeline (training), `reads="records"`: shards (`collection.shard_files`) -> parallel interleave
of `TFRecordDataset`s with their CRC32C and length checked (`shards.read_records`) -> parse and
pick a window, keeping only its encoded frames -> shuffle (so the buffer holds windows, not whole
videos) -> parallel decode + crop + flip + normalise -> batch -> prefetch. Every video's whole
record is read for one window.

`reads="windows"`: the shards' window indexes (`index`: each frame's byte offset and length) ->
all videos shuffled in memory -> pick a window and read just its bytes, first to last frame
(`shards.read_window`) -> the same decode + crop + flip + normalise -> batch -> prefetch. The same
clips as `reads="records"` for the same videos and seeds; local uncompressed shards with an index
only. `reads="auto"` (default) is `windows` when the shards and options allow it (`resolve_reads`).
How fast each is: `bench/README.md` (`bench/pipeline_throughput.py`).

Output dtype: by default the readers hand out normalised float32 clips. With
`output_dtype="uint8"` they hand out the decoded frames as they are (RGB, or the two flow
channels, 0-255), 4x fewer bytes and no float work on the CPU, and the model normalises them on
its device: `p3d_keras.core.layers.Normalize(preset)` before the network gives exactly the float32
output (the channel reversal of BGR presets is the reader's, on the uint8 frames, with the flip).
`p3d-train` trains this way.

Errors. A corrupt or truncated shard (`reads="records"`, `shards.read_records`) raises an
`InvalidArgumentError` naming the shard. With `reads="windows"` records are checked when their
shard is indexed; a shard whose size differs from its index's is refused, a read that comes up
short raises an error naming the shard, and each frame read is checked against its CRC32C in the
index. A record the reader cannot use (`reads="records"`: bytes that are not a protocol buffer,
another tool's `tf.train.Example`, no frames, a frame to decode that is not a JPEG or frames of
different sizes: `clips.parse_checked`, `clips.check_frames`) raises an `InvalidArgumentError`
naming the record and its shard ("record 3 of shard=..."), before anything decodes it. With
`skip_corrupt=True` each of these is counted in `dataset.corrupt_records` and skipped instead.

Set `TF_CPU_ALLOCATOR_USE_BFC=true` before TensorFlow starts: with the default allocator every
large batch is freshly `mmap`ed memory that must be paged in again (`bench/README.md`).
"""
import logging
import os

import numpy as np
import tensorflow as tf

from p3d_keras.core.normalization import DEFAULT_NORMALIZATION, MODALITY_CHANNELS, get_normalization

from . import clip_decoder
from . import compression as compression_lib
from . import framing
from . import index as index_lib
from . import sampling
from . import schema
from .clips import (check_frames, crop_windows, decode_frames, finish_clip, mirror_flow, parse_checked,
                    split_channel_order)
from .collection import shard_files
from .shards import (CorruptRecordCounter, check_modality, drop_invalid, enforced, read_records, read_window,
                     read_window_or_raise, record_name, shard_compression)

__all__ = ["training_dataset", "evaluation_dataset"]

logger = logging.getLogger(__name__)

AUTOTUNE = tf.data.AUTOTUNE
CROPS = ("center", "three")
OUTPUT_DTYPES = ("float32", "uint8")
READS = ("auto", "records", "windows")


# --- reads="windows" -------------------------------------------------------------------------

def windows_obstacle(paths, *, compression, skip_corrupt, cycle_length):
    """Why `reads="windows"` cannot read the shards `paths` with these options, or None: it needs
    local, uncompressed shards (indexes are read, and windows read by byte range, with plain file
    I/O) and `google-crc32c` (each frame read is checked against its CRC32C in the index), and it
    cannot honour `cycle_length` (there is no interleave). `skip_corrupt` is honoured: a window
    whose bytes fail their CRC32C is counted and skipped."""
    del skip_corrupt  # honoured by both reads
    if cycle_length is not None or compression not in (compression_lib.AUTO, None, compression_lib.PLAIN):
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
    against its CRC32C in the index (`shards.read_window`): indexing checked that the record's frames
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

    def video_window(video, element_seed):
        shard, number, label, first, count = video
        indices, seed_crop = pick(count, element_seed)
        frames = first + tf.cast(indices, tf.int64)
        starts, sizes = tf.gather(offsets, frames), tf.gather(lengths, frames)
        begin, end = tf.reduce_min(starts), tf.reduce_max(starts + sizes)
        inputs = [shard_paths[shard], begin, end - begin, starts - begin, sizes, tf.gather(crcs, frames), number]
        if counter is None:  # `read_window` raises unless ok
            data, ok = tf.numpy_function(read_window_or_raise, inputs, tf.string, stateful=False), tf.constant(True)
        else:
            data, ok = tf.numpy_function(read_window, [*inputs, True], [tf.string, tf.bool], stateful=False)
            with tf.control_dependencies([counter.variable.assign_add(tf.cast(tf.logical_not(ok), tf.int64))]):
                data, ok = tf.identity(data), tf.ensure_shape(ok, [])
        encoded = tf.strings.substr(tf.ensure_shape(data, []), starts - begin, sizes)
        return tf.ensure_shape(encoded, [clip_length]), label, seed_crop, ok

    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    return tf.data.Dataset.zip(videos, seeds).map(video_window, num_parallel_calls=parallel,
                                                  deterministic=deterministic)


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
        norm = get_normalization(normalization or DEFAULT_NORMALIZATION[modality])
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
    shorter than the window loop their frames. The whole clip gets one crop box and one flip (a
    flipped flow clip has its x motion negated too: `clips.mirror_flow`): a random `crop_size`
    square; or with `multiscale=True` TSN's multi-scale corner crop resized to `crop_size`; or
    with `scale_jitter=(low, high)` a random square of side `crop_size / factor`, factor uniform
    in the range, resized to `crop_size`.

    Args:
        file_pattern: a folder of shards, a glob, a shard file, or a list of these
            (`collection.shard_files`; `gs://` paths with `reads="records"`): shards of `schema`
            SequenceExamples.
        normalization: a `p3d_keras.core.normalization` preset (`caffe`, `imagenet`, `unit`, `flow`);
            defaults to `caffe` for `modality="rgb"` and `flow` for `modality="flow"`. Must be
            None with `output_dtype="uint8"`.
        output_dtype: `float32` (clips normalised on the CPU) or `uint8` (the decoded frames,
            cropped and flipped but not normalised, in their stored channel order, for the model to
            normalise on its device with `p3d_keras.core.layers.Normalize(preset)`: the same values as
            float32 output with that preset, at a lower CPU cost: `bench/README.md`). A clip that is resized (multi-scale or jittered crops,
            frames smaller than the crop) is rounded back to uint8.
        modality: `rgb`, or `flow` (JPEG frames holding the x, y flow in their first two channels,
            as `p3d-tfrecords convert --modality flow` writes them). Shards of the other modality
            are refused (a `ValueError` naming the shard: `shards.check_modality`, which reads
            the first record of each shard; records that do not say are RGB).
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
            videos and seeds (their order, when shuffled, is not); it reads a fraction of the
            bytes (a window's, not a video's). `auto` (default) reads windows when every shard has an
            index and no option needs records (`resolve_reads`), and logs which it reads; adding
            or removing index files therefore changes the order of the batches.
        decoder: `native` decodes each clip with one compiled op (`clip_decoder`: built on first
            use, needs a C++ compiler and libjpeg-turbo's headers; less CPU per clip),
            `tf` with TensorFlow's JPEG ops; the same clips. `auto` (default) is `native` when it
            can be built, else `tf` with a warning saying why.

    Raises:
        ValueError: a bad option, naming it; `file_pattern` naming no shard; shards of another
            `modality`, naming one; `reads="windows"` with shards or options it cannot read
            (`windows_obstacle`). Errors in the shards are
            raised (or counted) when the dataset is iterated: see the module docstring.
    """
    norm = _check_options(batch_size=batch_size, clip_length=clip_length, frame_stride=frame_stride,
                          crop_size=crop_size, modality=modality, normalization=normalization,
                          output_dtype=output_dtype, stride_range=stride_range, scale_jitter=scale_jitter, multiscale=multiscale)
    if deterministic and not isinstance(seed, int):
        raise ValueError(f"Expected an integer seed when deterministic=True. Received: seed={seed!r}")
    if reads not in READS:
        raise ValueError(f"Expected reads to be one of {READS}. Received: reads={reads!r}")
    paths = shard_files(file_pattern, argument="file_pattern")
    if reads == "auto":
        reads = resolve_reads(paths, compression=compression, skip_corrupt=skip_corrupt, cycle_length=cycle_length)
    elif reads == "windows":  # (auto has just checked what it picked)
        obstacle = windows_obstacle(paths, compression=compression, skip_corrupt=skip_corrupt, cycle_length=cycle_length)
        if obstacle:
            raise ValueError("Expected local, uncompressed shards, google-crc32c and cycle_length=None with "
                             f"reads='windows'. Received: {obstacle}; use reads='records'")
    check_modality(paths, modality, compression)
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
        flipped = sampling.flip_decision(seed_flip) if flip else False
        clip = decode_frames(encoded, box, channels, flip=flipped, reverse_channels=bgr, native=native)
        if modality == "flow":
            clip = mirror_flow(clip, flipped)  # a mirrored motion moves the other way
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
    `p3d_keras.jobs.metrics.clip_and_video_hits` or `p3d_keras.jobs.metrics.evaluate_clips`. With `skip_corrupt=True` the
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
    paths = shard_files(file_pattern, argument="file_pattern")
    check_modality(paths, modality, compression)
    records = read_records(paths, compression=compression, deterministic=True, cycle_length=cycle_length,
                           counter=counter, numbered=True)

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
