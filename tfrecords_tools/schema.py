"""The TFRecord schema: one `tf.train.SequenceExample` per video (or segment), in MediaPipe
MediaSequence keys, so TF Model Garden's video reader can read our shards too.

The writer's `make_example` and the reader's `parse_example` both live here, so the keys cannot
drift apart.
"""
import tensorflow as tf

# Context (one value per video).
LABEL_INDEX = "clip/label/index"          # int64
LABEL_STRING = "clip/label/string"        # bytes
MEDIA_ID = "clip/media_id"                # bytes
CLIP_START = "clip/start/timestamp"       # int64, microseconds into the source file
CLIP_END = "clip/end/timestamp"           # int64, microseconds into the source file
HEIGHT = "image/height"                   # int64
WIDTH = "image/width"                     # int64
FRAME_RATE = "image/frame_rate"           # float
FORMAT = "image/format"                   # bytes, e.g. b"JPEG"
# Feature lists (one value per frame).
ENCODED = "image/encoded"                 # bytes: one JPEG per frame
TIMESTAMP = "image/timestamp"             # int64, microseconds from the clip start


def _int64(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))


def _bytes(values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


def _float(values):
    return tf.train.Feature(float_list=tf.train.FloatList(value=list(values)))


def make_example(*, encoded_frames, timestamps_us, height, width, frame_rate, label_index,
                 label_string, media_id, start_us=0, end_us=None, image_format="JPEG"):
    """A serialisable `tf.train.SequenceExample` for one video or segment."""
    if len(encoded_frames) != len(timestamps_us):
        raise ValueError(
            f"encoded_frames and timestamps_us must have the same length. "
            f"Received: {len(encoded_frames)} frames and {len(timestamps_us)} timestamps"
        )
    if end_us is None:
        end_us = start_us + (int(timestamps_us[-1]) if len(timestamps_us) else 0)
    context = tf.train.Features(feature={
        LABEL_INDEX: _int64([int(label_index)]),
        LABEL_STRING: _bytes([label_string.encode("utf-8")]),
        MEDIA_ID: _bytes([media_id.encode("utf-8")]),
        CLIP_START: _int64([int(start_us)]),
        CLIP_END: _int64([int(end_us)]),
        HEIGHT: _int64([int(height)]),
        WIDTH: _int64([int(width)]),
        FRAME_RATE: _float([float(frame_rate)]),
        FORMAT: _bytes([image_format.encode("ascii")]),
    })
    example = tf.train.SequenceExample(context=context)
    # Filled in place: building Feature messages first and then the list copies every frame
    # twice more, which for a long video costs several times its JPEG bytes in memory.
    encoded = example.feature_lists.feature_list[ENCODED].feature
    for frame in encoded_frames:
        encoded.add().bytes_list.value.append(frame)
    timestamps = example.feature_lists.feature_list[TIMESTAMP].feature
    for t in timestamps_us:
        timestamps.add().int64_list.value.append(int(t))
    return example


CONTEXT_SPEC = {
    LABEL_INDEX: tf.io.FixedLenFeature([], tf.int64),
    LABEL_STRING: tf.io.FixedLenFeature([], tf.string),
    MEDIA_ID: tf.io.FixedLenFeature([], tf.string),
    CLIP_START: tf.io.FixedLenFeature([], tf.int64, default_value=0),
    CLIP_END: tf.io.FixedLenFeature([], tf.int64, default_value=0),
    HEIGHT: tf.io.FixedLenFeature([], tf.int64),
    WIDTH: tf.io.FixedLenFeature([], tf.int64),
    FRAME_RATE: tf.io.FixedLenFeature([], tf.float32),
    FORMAT: tf.io.FixedLenFeature([], tf.string, default_value="JPEG"),
}
SEQUENCE_SPEC = {
    ENCODED: tf.io.FixedLenSequenceFeature([], tf.string),
    TIMESTAMP: tf.io.FixedLenSequenceFeature([], tf.int64),
}


def parse_example(serialized):
    """Parse one serialised SequenceExample into a flat dict keyed by the constants above
    (`ENCODED` is a 1-D string tensor of JPEGs, `TIMESTAMP` a 1-D int64 tensor). Graph-safe."""
    context, sequences = tf.io.parse_single_sequence_example(
        serialized, context_features=CONTEXT_SPEC, sequence_features=SEQUENCE_SPEC
    )
    return {**context, **sequences}
