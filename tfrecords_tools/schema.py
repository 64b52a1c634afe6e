"""The TFRecord schema: one `tf.train.SequenceExample` per video (or segment), in MediaPipe
MediaSequence keys, so TF Model Garden's video reader can read our shards too.

The keys, the writer's encoding (`make_example`, and its streaming parts `encode_context`,
`encode_frame`, `record_parts`) and the reader's `parse_record` / `parse_example` all live here, so they cannot
drift apart. The encoding is written with `p3d_keras.core.protowire`, without TensorFlow (converter
workers never import it): it gives the bytes of
`tf.train.SequenceExample(...).SerializeToString(deterministic=True)`. Only the parsers need
TensorFlow, and import it when called.
"""
import struct

from p3d_keras.core import protowire as pw

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
MODALITY = "clip/modality"                # bytes: b"rgb" or b"flow" (`MODALITIES`); absent (older records): rgb
MODALITIES = ("rgb", "flow")  # what a record's frames hold: RGB, or TV-L1 flow x, y (`flow`)
DEFAULT_MODALITY = "rgb"  # a record without `MODALITY` (written before flow records existed)
# The context features a record must have one value of (`parse_record`); the others have defaults.
REQUIRED = (LABEL_INDEX, LABEL_STRING, MEDIA_ID, HEIGHT, WIDTH, FRAME_RATE)
# Feature lists (one value per frame).
ENCODED = "image/encoded"                 # bytes: one JPEG per frame
TIMESTAMP = "image/timestamp"             # int64, microseconds from the clip start

JPEG_SIGNATURE = b"\xff\xd8\xff"  # a JPEG's start-of-image marker and the next marker's first byte
_JPEG_START_OF_FRAME = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # SOF0-15 (less DHT, JPG, DAC)
_JPEG_STANDALONE = frozenset([0x01, *range(0xD0, 0xD8)])  # markers without a length: TEM, RST0-7

# Field numbers of tensorflow/core/example/{example,feature}.proto.
_CONTEXT, _FEATURE_LISTS = 1, 2           # SequenceExample
_MAP = 1                                  # Features.feature, FeatureLists.feature_list
_MAP_KEY, _MAP_VALUE = 1, 2               # a map entry
_BYTES_LIST, _FLOAT_LIST, _INT64_LIST = 1, 2, 3  # Feature's oneof
_VALUE = 1                                # {Bytes,Float,Int64}List.value, FeatureList.feature


def _bytes_feature(value):
    return pw.length_delimited(_BYTES_LIST, pw.length_delimited(_VALUE, value))


def _int64_feature(value):
    return pw.length_delimited(_INT64_LIST, pw.packed_varints(_VALUE, [int(value)]))


def _float_feature(value):
    return pw.length_delimited(_FLOAT_LIST, pw.packed_floats(_VALUE, [float(value)]))


def _map_entry(key, value):
    """One entry of a `map<string, message>` field (deterministic order is the caller's: by key)."""
    entry = pw.length_delimited(_MAP_KEY, key) + pw.length_delimited(_MAP_VALUE, value)
    return pw.length_delimited(_MAP, entry)


def encode_context(*, height, width, frame_rate, label_index, label_string, media_id, start_us,
                   end_us, image_format="JPEG", modality=DEFAULT_MODALITY):
    """The serialised context `Features` message of one record (`modality`: one of `MODALITIES`)."""
    if modality not in MODALITIES:
        raise ValueError(f"Expected modality in {MODALITIES}. Received: modality={modality!r}")
    features = {
        LABEL_INDEX: _int64_feature(label_index),
        LABEL_STRING: _bytes_feature(label_string.encode("utf-8")),
        MEDIA_ID: _bytes_feature(media_id.encode("utf-8")),
        CLIP_START: _int64_feature(start_us),
        CLIP_END: _int64_feature(end_us),
        HEIGHT: _int64_feature(height),
        WIDTH: _int64_feature(width),
        FRAME_RATE: _float_feature(frame_rate),
        FORMAT: _bytes_feature(image_format.encode("ascii")),
        MODALITY: _bytes_feature(modality.encode("ascii")),
    }
    return b"".join(_map_entry(key, features[key]) for key in sorted(features))


def encode_frame(jpeg):
    """One frame of the `ENCODED` feature list, as it appears in the record: the concatenated
    `encode_frame` of a clip's frames is that list's payload (see `record_parts`)."""
    return pw.length_delimited(_VALUE, _bytes_feature(jpeg))


def record_parts(context, frames_size, timestamps_us):
    """`(head, tail)`: a serialised SequenceExample is `head`, then the `frames_size` bytes of the
    concatenated `encode_frame` of its frames, then `tail`; so the frames can be streamed (e.g.
    copied from a file) rather than held in memory. `context` is `encode_context`'s bytes."""
    timestamps = b"".join(pw.length_delimited(_VALUE, _int64_feature(t)) for t in timestamps_us)
    lists = {ENCODED: None, TIMESTAMP: timestamps}  # None: the streamed payload
    before, after, streamed_size = [], [], None
    for key in sorted(lists):
        if lists[key] is None:
            opening = pw.length_delimited(_MAP_KEY, key) + pw.length_prefix(_MAP_VALUE, frames_size)
            before.append(pw.length_prefix(_MAP, len(opening) + frames_size) + opening)
            streamed_size = frames_size
        else:
            (before if streamed_size is None else after).append(_map_entry(key, lists[key]))
    before, after = b"".join(before), b"".join(after)
    head = (pw.length_delimited(_CONTEXT, context)
            + pw.length_prefix(_FEATURE_LISTS, len(before) + frames_size + len(after)) + before)
    return head, after


def make_example(*, encoded_frames, timestamps_us, height, width, frame_rate, label_index,
                 label_string, media_id, start_us=0, end_us=None, image_format="JPEG", modality=DEFAULT_MODALITY):
    """The serialised SequenceExample (bytes) of one video or segment, built in memory."""
    if len(encoded_frames) != len(timestamps_us):
        raise ValueError(
            f"encoded_frames and timestamps_us must have the same length. "
            f"Received: {len(encoded_frames)} frames and {len(timestamps_us)} timestamps"
        )
    if end_us is None:
        end_us = start_us + (int(timestamps_us[-1]) if len(timestamps_us) else 0)
    context = encode_context(height=height, width=width, frame_rate=frame_rate, label_index=label_index,
                             label_string=label_string, media_id=media_id, start_us=start_us,
                             end_us=end_us, image_format=image_format, modality=modality)
    frames = b"".join(encode_frame(frame) for frame in encoded_frames)
    head, tail = record_parts(context, len(frames), timestamps_us)
    return head + frames + tail


def jpeg_size(head):
    """`(height, width)` from the start-of-frame marker of the JPEG whose first bytes are `head`,
    or None when `head` does not start with `JPEG_SIGNATURE` or its markers up to the first scan
    hold no start-of-frame (the values `tf.io.extract_jpeg_shape` reads, without TensorFlow)."""
    if not head.startswith(JPEG_SIGNATURE):
        return None
    position = 2
    while position + 4 <= len(head) and head[position] == 0xFF:
        marker = head[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
        elif marker in _JPEG_STANDALONE:
            position += 2
        elif marker in _JPEG_START_OF_FRAME:
            # length (2 bytes), sample precision (1), height (2), width (2)
            return struct.unpack_from(">HH", head, position + 5) if position + 9 <= len(head) else None
        elif marker in (0xD9, 0xDA):  # end of image, start of scan: no frame header before them
            return None
        else:
            position += 2 + struct.unpack_from(">H", head, position + 2)[0]
    return None


def locate_frames(f, start, end):
    """Where the frames of the serialised SequenceExample at bytes `[start, end)` of the seekable
    binary file `f` lie, without TensorFlow and reading little more than the fields' headers:
    `(label_index, [(offset, length), ...])`, the file offsets and lengths of its `ENCODED` JPEGs
    in frame order (for the window index, `index`). A record that is not a SequenceExample with
    one JPEG per frame and a `LABEL_INDEX` raises a `ValueError`."""
    label, frames = None, []
    for field, wire, size, at in pw.iter_file_fields(f, start, end):
        if field == _CONTEXT and wire == pw.LENGTH_DELIMITED:
            for key, feature_at, feature_size in _file_map_entries(f, at, at + size):
                if key == LABEL_INDEX:
                    f.seek(feature_at)
                    label = _single_int64(f.read(feature_size))
        elif field == _FEATURE_LISTS and wire == pw.LENGTH_DELIMITED:
            for key, list_at, list_size in _file_map_entries(f, at, at + size):
                if key == ENCODED:
                    frames.extend(_file_bytes_values(f, list_at, list_at + list_size))
    if label is None:
        raise ValueError(f"Expected a SequenceExample with the context feature {LABEL_INDEX!r}. Received: none")
    return label, frames


def record_modality(f, start, end):
    """The `MODALITY` of the serialised SequenceExample at bytes `[start, end)` of the seekable
    binary file `f` (`DEFAULT_MODALITY` when it has none), reading only the context: the fields
    before it and its entries' headers (the converter writes the context first, so the frames are
    never read). Raises a `ValueError` for bytes that are not such a record or a `MODALITY` that
    is not one string."""
    for field, wire, size, at in pw.iter_file_fields(f, start, end):
        if field == _CONTEXT and wire == pw.LENGTH_DELIMITED:
            for key, feature_at, feature_size in _file_map_entries(f, at, at + size):
                if key == MODALITY:
                    f.seek(feature_at)
                    return _single_bytes(f.read(feature_size)).decode("utf-8", "replace")
            break
    return DEFAULT_MODALITY


def _single_bytes(feature):
    """The one value of a `BytesList` `Feature`."""
    values = [bytes(pw.payload(value_wire, value))
              for field, wire, bytes_list in pw.iter_fields(feature) if field == _BYTES_LIST
              for value_field, value_wire, value in pw.iter_fields(pw.payload(wire, bytes_list))
              if value_field == _VALUE]
    if len(values) != 1:
        raise ValueError(f"Expected one bytes value in {MODALITY!r}. Received: {len(values)}")
    return values[0]


def _file_map_entries(f, start, end):
    """`(key, value_offset, value_length)` of each entry of the `map<string, message>` field of the
    message at `[start, end)` of `f`."""
    for field, wire, size, at in pw.iter_file_fields(f, start, end):
        if field != _MAP or wire != pw.LENGTH_DELIMITED:
            continue
        key, value_at, value_size = None, at, 0
        for entry_field, entry_wire, entry_size, entry_at in pw.iter_file_fields(f, at, at + size):
            if entry_field == _MAP_KEY and entry_wire == pw.LENGTH_DELIMITED:
                f.seek(entry_at)
                key = f.read(entry_size).decode("utf-8")
            elif entry_field == _MAP_VALUE and entry_wire == pw.LENGTH_DELIMITED:
                value_at, value_size = entry_at, entry_size
        yield key, value_at, value_size


def _single_int64(feature):
    """The one value of an `Int64List` `Feature` (packed or not)."""
    values = []
    for field, wire, int64_list in pw.iter_fields(feature):
        if field != _INT64_LIST:
            continue
        for f, w, v in pw.iter_fields(pw.payload(wire, int64_list)):
            if f == _VALUE and w == pw.VARINT:
                values.append(pw.signed64(v))
            elif f == _VALUE:
                packed, pos = pw.payload(w, v), 0
                while pos < len(packed):
                    value, pos = pw.decode_varint(packed, pos)
                    values.append(pw.signed64(value))
    if len(values) != 1:
        raise ValueError(f"Expected one int64 value in {LABEL_INDEX!r}. Received: {values}")
    return values[0]


def _file_bytes_values(f, start, end):
    """`(offset, length)` of the one `BytesList` value of each `Feature` of the `FeatureList` at
    `[start, end)` of `f`."""
    spans = []
    for field, wire, size, at in pw.iter_file_fields(f, start, end):
        if field != _VALUE or wire != pw.LENGTH_DELIMITED:
            continue
        values = [(value_at, value_size)
                  for list_field, list_wire, list_size, list_at in pw.iter_file_fields(f, at, at + size)
                  if list_field == _BYTES_LIST and list_wire == pw.LENGTH_DELIMITED
                  for value_field, value_wire, value_size, value_at in pw.iter_file_fields(f, list_at, list_at + list_size)
                  if value_field == _VALUE and value_wire == pw.LENGTH_DELIMITED]
        if len(values) != 1:
            raise ValueError(f"Expected one JPEG per frame in {ENCODED!r}. Received: {len(values)} in frame {len(spans)}")
        spans.append(values[0])
    return spans


def parse_record(serialized, name=None):
    """Parse one serialised SequenceExample without failing on a well-formed record of another
    schema: `(example, missing)`, `example` a flat dict keyed by the constants above (`ENCODED` a
    1-D string tensor of JPEGs, `TIMESTAMP` a 1-D int64 tensor, both empty when absent) and
    `missing` the first of `REQUIRED` the record lacks (or has more than one value of), `""` if
    none; a missing feature's value is its type's zero. Bytes that are not a protocol buffer raise
    an `InvalidArgumentError` naming `name` (a string tensor, e.g. "record 3 of shard=..."), as
    does a feature of another type. Graph-safe."""
    import tensorflow as tf  # here, not at the top: the converter's workers never import TF

    required = dict(zip(REQUIRED, (tf.int64, tf.string, tf.string, tf.int64, tf.int64, tf.float32)))
    context_spec = {key: tf.io.VarLenFeature(dtype) for key, dtype in required.items()}
    context_spec.update({
        CLIP_START: tf.io.FixedLenFeature([], tf.int64, default_value=0),
        CLIP_END: tf.io.FixedLenFeature([], tf.int64, default_value=0),
        FORMAT: tf.io.FixedLenFeature([], tf.string, default_value="JPEG"),
        MODALITY: tf.io.FixedLenFeature([], tf.string, default_value=DEFAULT_MODALITY),
    })
    sequence_spec = {
        ENCODED: tf.io.FixedLenSequenceFeature([], tf.string, allow_missing=True),
        TIMESTAMP: tf.io.FixedLenSequenceFeature([], tf.int64, allow_missing=True),
    }
    context, sequences = tf.io.parse_single_sequence_example(
        serialized, context_features=context_spec, sequence_features=sequence_spec, example_name=name)
    missing = tf.constant("")
    for key, dtype in reversed(required.items()):
        values = context[key].values
        missing = tf.where(tf.equal(tf.size(values), 1), missing, key)
        context[key] = tf.concat([values, tf.zeros([1], dtype)], axis=0)[0]
    return {**context, **sequences}, missing


def parse_example(serialized, name=None):
    """Parse one serialised SequenceExample into a flat dict keyed by the constants above
    (`ENCODED` is a 1-D string tensor of JPEGs, `TIMESTAMP` a 1-D int64 tensor). A record without
    one value of each of `REQUIRED` (e.g. another tool's `tf.train.Example`) or that is not a
    protocol buffer raises an `InvalidArgumentError` naming `name` (a string tensor). Graph-safe."""
    import tensorflow as tf  # here, not at the top: the converter's workers never import TF

    example, missing = parse_record(serialized, name)
    with tf.control_dependencies([tf.debugging.Assert(tf.equal(missing, ""), [missing_message(missing, name)])]):
        return {key: tf.identity(value) for key, value in example.items()}


def missing_message(missing, name=None):
    """The error message of a record lacking the feature `missing` (`parse_record`), naming `name`."""
    import tensorflow as tf  # here, not at the top: the converter's workers never import TF

    return tf.strings.join([
        f"Expected a SequenceExample with one value of each of the context features {', '.join(REQUIRED)} "
        "(p3d_keras.tfrecords_tools.schema). Received: a record without one ", missing,
        " (e.g. a tf.train.Example from another tool) in ", "a record" if name is None else name])
