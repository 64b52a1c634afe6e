"""Tiny TFRecord shards of synthetic videos, written through `schema.make_example` (test helper).

Frame `i` of a video has red = `FRAME_STEP * i` everywhere, green rising left to right and blue
rising top to bottom, so tests can read back which frame, and which part of it, a clip holds.
"""
import numpy as np
import tensorflow as tf

from p3d_keras.tfrecords_tools import schema

FRAME_STEP = 8


def frame(index, height, width):
    """The uint8 RGB frame `index` of every synthetic video."""
    red = np.full((height, width), FRAME_STEP * index)
    green = np.broadcast_to(np.linspace(0, 255, width), (height, width))
    blue = np.broadcast_to(np.linspace(0, 255, height)[:, None], (height, width))
    return np.stack([red, green, blue], axis=-1).astype(np.uint8)


def video_example(num_frames, label, media_id, height=32, width=48, modality="rgb"):
    """A serialised SequenceExample of `num_frames` synthetic JPEG frames (saying `modality`)."""
    return record_of_frames(jpeg_frames(num_frames, height, width), label, media_id, height, width, modality)


def write_shards(directory, videos, *, num_shards=1, compression=None, prefix="train", height=32, width=48,
                 modality="rgb"):
    """Write `videos` (a list of `(num_frames, label)`, media ids `v0, v1, ...`) round-robin into
    `<prefix>-0000i-of-0000n.tfrecord[.gz]` shards; returns the shard paths. `modality="flow"`
    marks the records as flow (their frames stay the synthetic ones)."""
    suffix = ".tfrecord.gz" if compression == "GZIP" else ".tfrecord"
    paths = [str(directory / f"{prefix}-{i:05d}-of-{num_shards:05d}{suffix}") for i in range(num_shards)]
    writers = [tf.io.TFRecordWriter(p, options=compression) for p in paths]
    for n, (num_frames, label) in enumerate(videos):
        writers[n % num_shards].write(video_example(num_frames, label, f"v{n}", height, width, modality))
    for w in writers:
        w.close()
    return paths


def frame_indices(clips):
    """The synthetic frame index of each frame of `[..., T, H, W, C]` clips read with
    `normalization="unit"` and no flip (from the mean red value)."""
    return np.rint(clips[..., 0].mean(axis=(-2, -1)) * 255 / FRAME_STEP).astype(int)


def jpeg_frames(num_frames, height=32, width=48):
    """The JPEGs of `num_frames` synthetic frames (`frame`)."""
    return [tf.io.encode_jpeg(frame(i, height, width), quality=95).numpy() for i in range(num_frames)]


def record_of_frames(encoded, label, media_id, height=32, width=48, modality="rgb"):
    """A serialised SequenceExample holding the given encoded frames as they are."""
    return schema.make_example(
        encoded_frames=encoded, timestamps_us=[40_000 * i for i in range(len(encoded))], height=height,
        width=width, frame_rate=25.0, label_index=label, label_string=f"class{label}", media_id=media_id,
        modality=modality,
    )


def write_records(path, records):
    """Write serialised records as they are into the (uncompressed) shard `path`; returns `str(path)`."""
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)
    return str(path)
