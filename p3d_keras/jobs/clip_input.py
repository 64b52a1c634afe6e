"""A video's uint8 frames -> the model's input, as the exported SavedModel does it in its graph: the
centre window of `T_model` frames (the evaluation reader's, one clip per video:
`tfrecords_tools.sampling.evaluation_indices`), a resize of the short side (bilinear, no
antialiasing), a centre crop, then `p3d_keras.core.normalization.normalize` (`jobs.video_inference`
prepares the frames of a Keras network the same way, with PyAV's scaler). The same from serialised
records of the converter's format (`make_record_preprocess`: the SavedModel's `serving_encoded`)."""
import tensorflow as tf

from p3d_keras.core.normalization import normalize
from p3d_keras.tfrecords_tools import sampling
from p3d_keras.tfrecords_tools.clips import centre_clip

# The paper trains on 182x242 frames cropped to 160x160: resize the short side by this ratio.
PAPER_SHORT_SIDE, PAPER_CROP = 182, 160


def default_resize_short_side(crop_size):
    """The short side to resize to before a `crop_size` centre crop: the paper's 182 -> 160 ratio."""
    return round(crop_size * PAPER_SHORT_SIDE / PAPER_CROP)


def resize_short_side_to(frames, short_side):
    """Bilinear resize of float `frames[N, H, W, C]` so that min(H, W) == short_side, aspect kept."""
    shape = tf.shape(frames)
    h, w = tf.cast(shape[1], tf.float64), tf.cast(shape[2], tf.float64)
    scale = short_side / tf.minimum(h, w)
    size = tf.cast(tf.round(tf.stack([h * scale, w * scale])), tf.int32)
    size = tf.maximum(size, short_side)  # the short side is exact, whatever the rounding
    return tf.image.resize(frames, size, method="bilinear", antialias=False)


def centre_crop(frames, height, width):
    """The centre `height x width` window of `frames[N, H, W, C]` (offsets rounded down)."""
    shape = tf.shape(frames)
    top, left = (shape[1] - height) // 2, (shape[2] - width) // 2
    return frames[:, top:top + height, left:left + width, :]


def make_preprocess(model, normalization, resize_short_side):
    """A function from uint8 `frames[B, T, H, W, C]` to the model's normalised float32 input.

    Frames of another rank or channel count fail with an `InvalidArgumentError` "Expected
    frames[batch, T, H, W, 3] (uint8, T >= 16). Received: frames of shape [...]", fewer than
    `T_model` frames with "Expected at least 16 frames in axis 1 of frames[batch, T, H, W, 3].
    Received: T = [15]", before any other op reads them (a function traced with an input
    signature, as the SavedModel's are, is called with any shape of its dtype)."""
    t_model, height, width, channels = model.input_shape[1:]
    expected = f"frames[batch, T, H, W, {channels}]"

    def checked(frames):
        shape = tf.shape(frames)
        padded = tf.concat([shape, tf.zeros([5], tf.int32)], axis=0)  # a lower rank reads zeros
        well_formed = tf.logical_and(tf.equal(tf.size(shape), 5), tf.equal(padded[4], channels))
        rank_check = tf.debugging.Assert(
            well_formed, [f"Expected {expected} (uint8, T >= {t_model}). Received: frames of shape", shape],
            summarize=8)
        with tf.control_dependencies([rank_check]):
            length_check = tf.debugging.Assert(
                padded[1] >= t_model, [f"Expected at least {t_model} frames in axis 1 of {expected}. Received: T =",
                                       padded[1]])
        with tf.control_dependencies([length_check]):
            return tf.identity(frames)

    def preprocess(frames):
        frames = checked(frames)
        batch, t = tf.shape(frames)[0], tf.shape(frames)[1]
        start = sampling.evaluation_indices(t, t_model, 1, 1)[0, 0]
        x = frames[:, start:start + t_model]
        x = tf.reshape(x, tf.concat([[-1], tf.shape(x)[2:]], axis=0))  # [B * T_model, H, W, C]
        x = resize_short_side_to(tf.cast(x, tf.float32), resize_short_side)
        x = centre_crop(x, height, width)
        x = tf.reshape(x, [batch, t_model, height, width, channels])
        return normalize(x, normalization)

    return preprocess


def make_record_preprocess(model, normalization, resize_short_side):
    """A function from serialised records of the converter's format (`[B]` strings, each a
    `tfrecords_tools.schema` SequenceExample of JPEG frames) to the model's normalised float32
    input: each record's centre window decoded (`tfrecords_tools.clips.centre_clip`: a record
    shorter than `T_model` loops), then `make_preprocess`'s resize, crop and normalisation.

    Record `i` is named "record i of the request" in the `InvalidArgumentError` of a record that
    is not a protocol buffer, has no frames, or has a frame in its window that is not a JPEG, not
    of the window's size or does not decode (that one names the frame: "frame 5 of record 1 of
    the request"). Records of different frame sizes may share a batch."""
    t_model, height, width, channels = model.input_shape[1:]
    preprocess = make_preprocess(model, normalization, resize_short_side)

    def one(record):
        serialized, number = record
        where = tf.strings.join(["record ", tf.strings.as_string(number), " of the request"])
        return preprocess(centre_clip(serialized, where, t_model, channels)[None])[0]

    def preprocess_records(records):
        numbers = tf.range(tf.shape(records)[0])
        return tf.map_fn(one, (records, numbers),
                         fn_output_signature=tf.TensorSpec([t_model, height, width, channels], tf.float32))

    return preprocess_records
