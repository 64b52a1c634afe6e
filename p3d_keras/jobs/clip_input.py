"""A video's uint8 frames -> the model's input, as the exported SavedModel does it in its graph: the
centre window of `T_model` frames, a resize of the short side (bilinear, no antialiasing), a centre
crop, then `p3d_keras.core.normalization.normalize` (`jobs.video_inference` prepares the frames of
a Keras network the same way, with PyAV's scaler)."""
import tensorflow as tf

from p3d_keras.core.normalization import normalize

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
    """A function from uint8 `frames[B, T, H, W, C]` to the model's normalised float32 input."""
    t_model, height, width, channels = model.input_shape[1:]

    def preprocess(frames):
        tf.debugging.assert_greater_equal(
            tf.shape(frames)[1], t_model,
            message=f"Expected at least {t_model} frames in axis 1 of frames[batch, T, H, W, {channels}]. "
                    "Received: T = x below")
        batch, t = tf.shape(frames)[0], tf.shape(frames)[1]
        start = (t - t_model) // 2
        x = frames[:, start:start + t_model]
        x = tf.reshape(x, tf.concat([[-1], tf.shape(x)[2:]], axis=0))  # [B * T_model, H, W, C]
        x = resize_short_side_to(tf.cast(x, tf.float32), resize_short_side)
        x = centre_crop(x, height, width)
        x = tf.reshape(x, [batch, t_model, height, width, channels])
        return normalize(x, normalization)

    return preprocess
