"""Temporal windows, crop boxes and flips for video clips: pure TensorFlow functions, no files.

Everything here is graph-safe (usable inside `tf.data`) and, where random, *stateless*: it takes
a `seed` of shape `[2]` and returns the same answer for the same seed, which is what makes the
reader's `deterministic=True` reproducible run after run.

Conventions:
- A temporal window is a vector of frame indices. Windows longer than the video *loop*: index `i`
  reads frame `i mod num_frames`, so a 5-frame video read as an 8-frame clip gives frames
  0 1 2 3 4 0 1 2.
- A crop box is an int32 vector `[offset_y, offset_x, height, width]`, the layout of
  `tf.io.decode_and_crop_jpeg`'s `crop_window`. Boxes never leave the frame: a box larger than
  the frame is shrunk to it (the caller resizes the crop to the output size).
"""
import tensorflow as tf

# TSN's multi-scale crop: box sides are these fractions of the frame's shorter side.
TSN_SCALES = (1.0, 0.875, 0.75, 0.66)
# TSN's 13 "more fix crop" positions, as (x, y) in quarters of the free space.
TSN_POSITIONS = ((0, 0), (4, 0), (0, 4), (4, 4), (2, 2),
                 (0, 2), (4, 2), (2, 4), (2, 0), (1, 1), (3, 1), (1, 3), (3, 3))


def split_seed(seed, num):
    """`num` independent `[2]` seeds from one `[2]` seed (a `[num, 2]` tensor)."""
    return tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=num)


def window_span(clip_length, stride):
    """How many consecutive frames a window of `clip_length` frames `stride` apart covers."""
    return (clip_length - 1) * stride + 1


def window_indices(start, clip_length, stride, num_frames):
    """Frame indices `start, start + stride, ...` (`clip_length` of them), looped over
    `num_frames`."""
    steps = tf.range(clip_length, dtype=tf.int32) * tf.cast(stride, tf.int32)
    return tf.math.floormod(tf.cast(start, tf.int32) + steps, tf.cast(num_frames, tf.int32))


def _max_start(num_frames, clip_length, stride):
    span = window_span(clip_length, tf.cast(stride, tf.int32))
    return tf.maximum(tf.cast(num_frames, tf.int32) - span, 0)


def sample_stride(stride_range, seed):
    """A stride drawn uniformly from the inclusive range `stride_range = (low, high)`."""
    low, high = stride_range
    return tf.random.stateless_uniform([], seed, minval=low, maxval=high + 1, dtype=tf.int32)


def training_indices(num_frames, clip_length, stride, seed):
    """One random window: a uniform random start, then `clip_length` frames `stride` apart.

    Videos shorter than the window start at 0 and loop."""
    max_start = _max_start(num_frames, clip_length, stride)
    start = tf.random.stateless_uniform([], seed, minval=0, maxval=max_start + 1, dtype=tf.int32)
    return window_indices(start, clip_length, stride, num_frames)


def evaluation_indices(num_frames, clip_length, stride, num_clips):
    """`num_clips` windows spaced uniformly over the video, as a `[num_clips, clip_length]` tensor.

    The possible starts `0 .. num_frames - span` are cut into `num_clips` equal segments and each
    window starts in the middle of its segment (one clip is the centre window). Videos shorter
    than the window give `num_clips` copies of the looped window starting at 0."""
    positions = tf.cast(_max_start(num_frames, clip_length, stride) + 1, tf.float32)
    middles = (tf.range(num_clips, dtype=tf.float32) + 0.5) / num_clips
    starts = tf.cast(tf.floor(middles * positions), tf.int32)
    return tf.vectorized_map(lambda s: window_indices(s, clip_length, stride, num_frames), starts)


def _box(offset_y, offset_x, height, width):
    return tf.cast(tf.stack([offset_y, offset_x, height, width]), tf.int32)


def _fit(size, limit):
    return tf.minimum(tf.cast(size, tf.int32), tf.cast(limit, tf.int32))


def center_crop_box(height, width, size):
    """The centred `size x size` box (shrunk to the frame if the frame is smaller)."""
    box_h, box_w = _fit(size, height), _fit(size, width)
    return _box((height - box_h) // 2, (width - box_w) // 2, box_h, box_w)


def three_crop_boxes(height, width, size):
    """Three `size x size` boxes along the frame's longer side (start, centre, end), `[3, 4]`."""
    box_h, box_w = _fit(size, height), _fit(size, width)
    free_y, free_x = height - box_h, width - box_w
    along_x = free_x >= free_y
    boxes = []
    for fraction in (0, 1, 2):  # halves of the free space along the longer side
        offset_y = tf.where(along_x, free_y // 2, free_y * fraction // 2)
        offset_x = tf.where(along_x, free_x * fraction // 2, free_x // 2)
        boxes.append(_box(offset_y, offset_x, box_h, box_w))
    return tf.stack(boxes)


def union_box(boxes):
    """The smallest box containing every box of a `[N, 4]` tensor."""
    top, left = tf.reduce_min(boxes[:, 0]), tf.reduce_min(boxes[:, 1])
    bottom = tf.reduce_max(boxes[:, 0] + boxes[:, 2])
    right = tf.reduce_max(boxes[:, 1] + boxes[:, 3])
    return _box(top, left, bottom - top, right - left)


def random_crop_box(height, width, box_height, box_width, seed):
    """A `box_height x box_width` box at a uniform random position (shrunk to the frame)."""
    box_h, box_w = _fit(box_height, height), _fit(box_width, width)
    seed_y, seed_x = tf.unstack(split_seed(seed, 2))
    offset_y = tf.random.stateless_uniform([], seed_y, maxval=height - box_h + 1, dtype=tf.int32)
    offset_x = tf.random.stateless_uniform([], seed_x, maxval=width - box_w + 1, dtype=tf.int32)
    return _box(offset_y, offset_x, box_h, box_w)


def jittered_box_side(crop_size, scale_range, seed):
    """Scale jitter as a box side: the frame is treated as rescaled by a factor drawn uniformly
    from `scale_range = (low, high)` before a `crop_size` crop, which is the same as cropping a
    `crop_size / factor` box and resizing it to `crop_size`."""
    low, high = scale_range
    factor = tf.random.stateless_uniform([], seed, minval=low, maxval=high)
    return tf.cast(tf.round(crop_size / factor), tf.int32)


def multiscale_crop_box(height, width, seed, scales=TSN_SCALES, max_distort=1):
    """TSN's multi-scale corner crop: box height and width are fractions `scales` of the shorter
    side (their scale indices differ by at most `max_distort`), placed at one of 13 fixed
    positions (corners, centre, edge middles, quarter points). Resize the crop afterwards."""
    base = tf.cast(tf.minimum(height, width), tf.float32)
    pairs = [(i, j) for i in range(len(scales)) for j in range(len(scales)) if abs(i - j) <= max_distort]
    sides = tf.cast(base * tf.constant(scales, tf.float32), tf.int32)
    seed_pair, seed_position = tf.unstack(split_seed(seed, 2))
    pair = tf.constant(pairs, tf.int32)[
        tf.random.stateless_uniform([], seed_pair, maxval=len(pairs), dtype=tf.int32)]
    box_h, box_w = sides[pair[0]], sides[pair[1]]
    positions = tf.constant(TSN_POSITIONS, tf.int32)
    position = positions[tf.random.stateless_uniform([], seed_position, maxval=len(TSN_POSITIONS),
                                                     dtype=tf.int32)]
    offset_x = (width - box_w) // 4 * position[0]
    offset_y = (height - box_h) // 4 * position[1]
    return _box(offset_y, offset_x, box_h, box_w)


def _reverse_width(clip):
    """`clip[..., ::-1, :]` as a `tf.reverse` of a 3-D `[-1, W, C]` view, which TensorFlow (Eigen)
    reverses faster than the same axis of the 4-D clip."""
    shape = tf.shape(clip)
    flat = tf.reshape(clip, tf.concat([[-1], shape[-2:]], axis=0))
    return tf.ensure_shape(tf.reshape(tf.reverse(flat, axis=[1]), shape), clip.shape)


def flip_decision(seed):
    """The clip's flip: a scalar bool tensor, true with probability 1/2 (stateless in `seed`)."""
    return tf.random.stateless_uniform([], seed) < 0.5


def flip_clip(clip, flip, reverse_channels=False):
    """Flip a whole clip `[T, H, W, C]` left-right where the scalar bool tensor `flip` is true.

    With `reverse_channels=True` the channel axis is reversed too (RGB -> BGR), flipped or not,
    in the same `tf.reverse`: on a uint8 clip, reversing the width and channel axes together is
    faster than reversing the width alone."""
    if reverse_channels:
        return tf.cond(flip, lambda: tf.reverse(clip, axis=[-2, -1]), lambda: tf.reverse(clip, axis=[-1]))
    return tf.cond(flip, lambda: _reverse_width(clip), lambda: clip)
