"""One video's clip, in TensorFlow ops: check a record's frames (`parse_checked`, `check_frames`),
decode the crop's region of each JPEG (`decode_frames`: the native `clip_decoder` op or
`tf.io.decode_and_crop_jpeg`, the same values), cut the evaluation crops out of it
(`crop_windows`), resize, cast and normalise it (`split_channel_order`, `finish_clip`). A serialised
record's whole centre window, decoded or an error naming the frame (`centre_clip`), is what the exported
SavedModel's `serving_encoded` signature reads.

The checks return `(ok, message)` rather than raising, so that the dataset builders can raise or
count (`shards.enforce`, `skip_corrupt=True`); the values of a record that fails them fail no op.
"""
import dataclasses
import functools

import tensorflow as tf

from p3d_keras.core import normalization as norm_lib

from . import sampling
from . import schema
from .shards import enforce

__all__ = ["centre_clip", "check_frames", "crop_windows", "decode_frames", "finish_clip", "mirror_flow",
           "parse_checked", "split_channel_order"]


@functools.cache
def _stand_in_jpeg():
    """A 1x1 JPEG: what `check_frames` reads the size of in place of a frame that is not a JPEG."""
    with tf.init_scope():
        return tf.io.encode_jpeg(tf.zeros([1, 1, 1], tf.uint8)).numpy()


def no_frames_message(where):
    """The error message of the record `where` (a string tensor) without frames."""
    return tf.strings.join(["Expected every record to have at least one frame. Received: 0 frames in ", where])


# The most pixels a stored frame may have (a 4096x4096 frame; 4K video is 3840x2160): a small
# JPEG can claim a huge size, and a clip of such frames would take gigabytes to decode.
MAX_FRAME_PIXELS = 4096 * 4096


def check_frames(encoded, numbers, where):
    """`(ok, message)`: whether the frames `encoded` (`[N]` strings), frames `numbers` (`[N]`) of
    the record named `where` (`record_name`), are JPEGs (they start with `schema.JPEG_SIGNATURE`)
    of one height and width, of at most `MAX_FRAME_PIXELS`, and a function building the error
    message naming the first frame that is not (`enforce` calls it only then). Only the
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
    small = tf.cast(shapes[:, 0], tf.int64) * tf.cast(shapes[:, 1], tf.int64) <= MAX_FRAME_PIXELS
    ok = tf.reduce_all(tf.stack([tf.reduce_all(is_jpeg), tf.reduce_all(same), tf.reduce_all(small)]))

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
        large, large_frame = first_false(small)
        return tf.where(
            tf.reduce_all(is_jpeg),
            tf.where(tf.reduce_all(same),
                     tf.strings.join([f"Expected frames of at most {MAX_FRAME_PIXELS} pixels (4096x4096). Received: "
                                      "frame ", large_frame, " of ", size(large), " in ", where]),
                     tf.strings.join(["Expected the frames of a record to be of one size. Received: frame ",
                                      tf.strings.reduce_join(first_frame), " of ", size(0), " and frame ",
                                      other_frame, " of ", size(other), " in ", where])),
            tf.strings.join(["Expected every frame to be a JPEG. Received: frame ", not_jpeg, " of ", where,
                             ", which does not start with a JPEG's bytes FF D8 FF"]))

    return ok, message


def parse_checked(where, serialized):
    """`(example, ok, message)`: the parsed record `where` (`schema.parse_record`) with
    `num_frames`, whether it is a video of the schema with frames, and a function building the
    error message naming it if not (for `enforce`). A record that is not gives values that fail
    no op: at least one frame (a stand-in JPEG) and zeros."""
    example, missing = schema.parse_record(serialized, where)
    num_frames = tf.shape(example[schema.ENCODED])[0]
    has_frames = num_frames > 0
    example[schema.ENCODED] = tf.cond(has_frames, lambda: example[schema.ENCODED],
                                      lambda: tf.constant([_stand_in_jpeg()]))
    example["num_frames"] = tf.maximum(num_frames, 1)
    ok = tf.logical_and(tf.equal(missing, ""), has_frames)
    return example, ok, lambda: tf.where(tf.equal(missing, ""), no_frames_message(where),
                                         schema.missing_message(missing, where))


def decode_frames(encoded, box, channels, *, flip=False, reverse_channels=False, native=None):
    """Decode the `box` region of each JPEG in `encoded` (`[N]`) into a `[N, h, w, channels]`
    uint8 tensor (flow frames are stored as JPEGs with x, y in the first two channels), flipped
    left-right where the scalar bool `flip` is true, channels reversed with `reverse_channels`.

    With the `native` op module (`clip_decoder.resolve`) one op decodes every frame straight into
    the result. With TensorFlow's ops (`native=None`) a static N (training clips) is unrolled into
    N independent decode ops (no loop to run per frame), and a dynamic N
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


def mirror_flow(frames, flip):
    """The stored flow `frames[..., 2]` (uint8) of a clip mirrored left-right where the scalar
    bool `flip` is true: the x motion reverses, stored x becoming `255 - x` (exactly the negated
    flow of `flow.to_uint8`'s mapping), as TSN's flip of flow images does; y is unchanged."""
    def mirrored():
        return tf.concat([255 - frames[..., :1], frames[..., 1:]], axis=-1)

    return tf.cond(flip, mirrored, lambda: frames) if flip is not False else frames


def decode_whole_frames(encoded, numbers, where, channels):
    """`(frames, ok, message)`: the JPEGs `encoded` (`[N]`, frames `numbers` of the record named
    `where`, of one size: `check_frames`) decoded whole into `[N, h, w, channels]` uint8, whether
    every one decoded, and a function building the error message naming the first that did not
    (`enforce` calls it only then). A frame libjpeg cannot decode (truncated, a bad marker) fails
    no op here: it is dropped by `tf.data`'s `ignore_errors`, so its position is known (frames
    then holds fewer than N frames). TensorFlow's own ops only."""
    count = tf.shape(encoded)[0]
    height_width = tf.io.extract_jpeg_shape(encoded[0])[:2]
    positions = tf.range(count)
    decoded = (tf.data.Dataset.from_tensor_slices((positions, encoded))
               .map(lambda i, jpeg: (i, tf.io.decode_jpeg(jpeg, channels=3)))
               .ignore_errors()
               .batch(tf.cast(count, tf.int64)))
    none = tf.data.Dataset.from_tensors((positions[:0], tf.zeros(tf.concat([[0], height_width, [3]], 0), tf.uint8)))
    kept, frames = decoded.concatenate(none).take(1).get_single_element()  # `none` when no frame decoded
    ok = tf.equal(tf.size(kept), count)

    def message():
        matches = tf.cast(tf.equal(kept, positions[:tf.size(kept)]), tf.int32)
        failed = tf.argmin(tf.concat([matches, [0]], axis=0), output_type=tf.int32)
        return tf.strings.join(["Expected every frame to be a JPEG that decodes. Received: frame ",
                                tf.strings.as_string(tf.cast(numbers, tf.int64)[failed]), " of ", where,
                                ", which libjpeg cannot decode (truncated or corrupt)"])

    frames = frames if channels == 3 else frames[..., :channels]
    return tf.ensure_shape(frames, [None, None, None, channels]), ok, message


def centre_clip(serialized, where, clip_length, channels):
    """The decoded uint8 frames `[clip_length, h, w, channels]` of the centre window of one
    serialised `schema` record: the window `p3d-evaluate` reads with one clip per video
    (`sampling.evaluation_indices`; a record shorter than `clip_length` loops), in the stored
    channel order (the first `channels` of each JPEG's three).

    Only the feature list `schema.ENCODED` is read: a record needs none of the context features
    the converter writes. Only the window's frames are checked and decoded. Raises an
    `InvalidArgumentError` naming `where` (a string tensor, e.g. "record 2 of the request") for
    bytes that are not a protocol buffer and for a record without frames, and naming the frame
    too ("frame 5 of record 2 of the request") for a frame of the window that is not a JPEG, is
    of another size than the window's first, or does not decode. Graph-safe, with TensorFlow's
    own ops only (never `clip_decoder`): a SavedModel holding it loads without p3d_keras."""
    example, _ = schema.parse_record(serialized, where)
    encoded = example[schema.ENCODED]
    count = tf.shape(encoded)[0]
    with tf.control_dependencies([enforce(count > 0, lambda: no_frames_message(where), None)]):
        numbers = sampling.evaluation_indices(count, clip_length, 1, 1)[0]
    encoded = tf.gather(encoded, numbers)
    ok, message = check_frames(encoded, numbers, where)
    with tf.control_dependencies([enforce(ok, message, None)]):
        frames, ok, message = decode_whole_frames(tf.identity(encoded), numbers, where, channels)
    with tf.control_dependencies([enforce(ok, message, None)]):
        return tf.ensure_shape(tf.identity(frames), [clip_length, None, None, channels])


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
