"""P3D bottleneck blocks, and the input normalisation step, as serializable Keras layers written
with `keras.ops` only.

A P3D block decouples a 3x3x3 convolution into a spatial conv S (1x3x3) and a temporal conv T
(3x1x1) inside a ResNet bottleneck. The reduce (1x1x1), expand (1x1x1), shortcut and residual add
are shared by every kind; the kinds differ only in how S and T are wired (Qiu et al., ICCV 2017):

    h = ReLU(BN(reduce(x)));  s = ReLU(BN(S h))
    A:  u = ReLU(BN(T s))                             (cascaded)
    B:  t = BN(T h), parallel to S; merged below      (parallel)
    C:  t = BN(T s), added back to s; merged below    (cascaded + residual)
    out = ReLU(shortcut(x) + BN(expand(u)))

The authors' Caffe graph and the PyTorch port merge B and C differently (`graph=`, see
`MERGES`). Kind "2D" is ResNet's plain bottleneck (S is 3x3, no T), applied to every time step
when the input is a clip, as in res5.

The same blocks, and the stem and pools, also exist in a 2D-ops form (`ops="2d"`, see `OPS`):
every (1, k, k) convolution is a Conv2D over the frames folded into the batch `(B*T, H, W, C)`,
every (k, 1, 1) convolution a Conv2D with a (k, 1) kernel over a `(B, T, H*W, C)` (time x space)
reshape; `Framewise` applies a 2D layer to every frame, `ClipMaxPooling` computes a 3D max pool
with 2D pools. Kernels differ from the 3D form's by unit axes only (a reshape).

`Normalize` turns uint8 frames (the reader's `output_dtype="uint8"`) into a network's normalised
input on the model's device, with `p3d_keras.core.normalization.normalize`.
"""
import dataclasses

import keras
from keras import layers, ops

from p3d_keras.core import normalization as norm_lib
from p3d_keras.core.checks import check_choice

KINDS = ("A", "B", "C", "2D")
GRAPHS = ("caffe", "pytorch")
# "3d": Conv3D / MaxPooling3D on clips; "2d": the same arithmetic with 2D (and 1D-like (k, 1)) ops only.
OPS = ("3d", "2d")

# Which tensor feeds T: the spatial output s (cascaded) or the reduced input h (parallel).
TEMPORAL_INPUT = {"A": "s", "B": "h", "C": "s"}

# How the spatial output s and the BN'ed temporal output t become u, per graph and kind.
MERGES = {
    "caffe": {
        "A": lambda s, t: ops.relu(t),
        "B": lambda s, t: ops.relu(s + t),
        "C": lambda s, t: ops.relu(0.5 * s + 0.5 * t),
    },
    "pytorch": {
        "A": lambda s, t: ops.relu(t),
        "B": lambda s, t: s + ops.relu(t),
        "C": lambda s, t: s + ops.relu(t),
    },
}

BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9


def kernel_2d(kernel_size):
    """The Conv2D kernel of a factorised 3D kernel: (1, kh, kw) -> (kh, kw) over frames,
    (kt, 1, 1) -> (kt, 1) over a (time, space) reshape. Raises ValueError for a full 3D kernel."""
    kt, kh, kw = kernel_size
    if kt == 1:
        return kh, kw
    if kh == kw == 1:
        return kt, 1
    raise ValueError(f"Expected a (1, kh, kw) or (kt, 1, 1) kernel. Received: kernel_size={tuple(kernel_size)}")


def time_by_space(x, steps):
    """Frames `(B*T, H, W, C)` -> `(B, T, H*W, C)`: a (k, 1) Conv2D or pool on it runs along time."""
    _, h, w, c = x.shape
    return ops.reshape(x, (-1, steps, h * w, c))


def fold_time(x):
    """A clip `(B, T, H, W, C)` -> frames `(B*T, H, W, C)`; the number of time steps T must be static."""
    return ops.reshape(x, (-1,) + tuple(x.shape[2:]))


def unfold_time(x, steps):
    """Frames `(B*T, ...)` -> a clip `(B, T, ...)`."""
    return ops.reshape(x, (-1, steps) + tuple(x.shape[1:]))


def check_static_clip(layer, input_shape):
    """Raise ValueError unless `input_shape` is a clip `(batch, T, H, W, C)` with T, H, W, C fixed."""
    shape = tuple(input_shape)
    if len(shape) != 5 or any(d is None for d in shape[1:]):
        raise ValueError(f"{layer} expects a clip (batch, T, H, W, C) with T, H, W and C fixed. "
                         f"Received: input_shape={shape}")
    return shape


@keras.saving.register_keras_serializable(package="p3d_keras")
class P3DBottleneck(layers.Layer):
    """One P3D bottleneck block (kind A, B or C) or the plain 2D bottleneck (kind "2D").

    Args:
        filters: width of the bottleneck (the block outputs `4 * filters` channels).
        kind: "A", "B", "C" or "2D".
        graph: "caffe" (the authors' released graph) or "pytorch" (the PyTorch port's wiring).
        strides: spatial stride of the first 1x1 conv and of the projection shortcut.
        projection: whether the shortcut is a strided 1x1 conv + BN (the first block of a stage)
            or the identity.
        bn_epsilon, bn_momentum: BatchNormalization settings (the originals use 1e-5, 0.9).
        ops: "3d" (Conv3D sublayers) or "2d" (Conv2D sublayers on the frames folded into the
            batch, the temporal conv with a (3, 1) kernel over a (time, space) reshape): the same
            outputs, kernels reshaped by `kernel_2d`. Kind "2D" is the same in both.

    Input: a clip `(batch, T, H, W, C)`; kind "2D" also takes frames `(batch, H, W, C)`. With
    `ops="2d"` a clip's T, H and W must be fixed.
    Layer names follow Caffe (`branch2a`, `branch2b`, `branch2b_t`, `branch2c`, `branch1`).
    """

    def __init__(self, filters, kind="A", graph="caffe", strides=1, projection=False,
                 bn_epsilon=BN_EPSILON, bn_momentum=BN_MOMENTUM, ops="3d", **kwargs):
        super().__init__(**kwargs)
        check_choice("kind", kind, KINDS)
        check_choice("graph", graph, GRAPHS)
        check_choice("ops", ops, OPS)
        if not isinstance(filters, int) or filters < 1:
            raise ValueError(f"filters must be a positive integer. Received: filters={filters!r}")
        if strides not in (1, 2):
            raise ValueError(f"strides must be 1 or 2. Received: strides={strides!r}")
        if not projection and strides != 1:
            raise ValueError("A strided block needs a projection shortcut. "
                             f"Received: strides={strides}, projection={projection}")
        self.filters = filters
        self.kind = kind
        self.graph = graph
        self.strides = strides
        self.projection = projection
        self.bn_epsilon = bn_epsilon
        self.bn_momentum = bn_momentum
        self.ops = ops
        self._folds_time = kind == "2D" or ops == "2d"  # sublayers see frames (batch * T, H, W, C)

        def conv(n, kernel, name, stride=1):
            if self._folds_time:
                return layers.Conv2D(n, kernel_2d(kernel), strides=stride, padding="same", use_bias=False,
                                     name=name, dtype=self.dtype_policy)
            return layers.Conv3D(n, kernel, strides=(1, stride, stride), padding="same", use_bias=False,
                                 name=name, dtype=self.dtype_policy)

        def bn(name):
            return layers.BatchNormalization(epsilon=bn_epsilon, momentum=bn_momentum, name=name,
                                             dtype=self.dtype_policy)

        self.conv_reduce, self.bn_reduce = conv(filters, (1, 1, 1), "branch2a", strides), bn("bn_branch2a")
        self.conv_spatial, self.bn_spatial = conv(filters, (1, 3, 3), "branch2b"), bn("bn_branch2b")
        if kind != "2D":
            self.conv_temporal, self.bn_temporal = conv(filters, (3, 1, 1), "branch2b_t"), bn("bn_branch2b_t")
        self.conv_expand, self.bn_expand = conv(4 * filters, (1, 1, 1), "branch2c"), bn("bn_branch2c")
        if projection:
            self.conv_shortcut, self.bn_shortcut = conv(4 * filters, (1, 1, 1), "branch1", strides), bn("bn_branch1")

    def build(self, input_shape):
        if len(input_shape) not in ((4, 5) if self.kind == "2D" else (5,)):
            raise ValueError(f"P3DBottleneck(kind={self.kind!r}) expects a clip (batch, T, H, W, C)"
                             f"{' or frames (batch, H, W, C)' if self.kind == '2D' else ''}. "
                             f"Received: input_shape={tuple(input_shape)}")
        if not self.projection and input_shape[-1] != 4 * self.filters:
            raise ValueError(f"An identity shortcut needs {4 * self.filters} input channels (4 * filters). "
                             f"Received: input_shape={tuple(input_shape)}; use projection=True")
        shape = tuple(input_shape)
        if self.ops == "2d" and self.kind != "2D":
            check_static_clip(f"P3DBottleneck(kind={self.kind!r}, ops='2d')", shape)
        if self._folds_time and len(shape) == 5:
            if shape[1] is None:
                raise ValueError("P3DBottleneck(kind='2D') on a clip needs a static number of time steps. "
                                 f"Received: input_shape={shape}")
            self._steps = shape[1]
            shape = (None,) + shape[2:]
        self._build_sublayers(shape)

    def _build_sublayers(self, shape):
        """Build every sublayer from the (frame or clip) input shape, in call order."""
        def run(pairs, shape):
            for conv, bn in pairs:
                conv.build(shape)
                shape = conv.compute_output_shape(shape)
                bn.build(shape)
            return shape

        h = run([(self.conv_reduce, self.bn_reduce)], shape)
        s = run([(self.conv_spatial, self.bn_spatial)], h)
        if self.kind != "2D":
            run([(self.conv_temporal, self.bn_temporal)],
                (None, self._steps, h[1] * h[2], h[3]) if self.ops == "2d" else h)
        run([(self.conv_expand, self.bn_expand)], s)
        if self.projection:
            run([(self.conv_shortcut, self.bn_shortcut)], shape)

    def call(self, x, training=None):
        steps = None
        if self._folds_time and len(x.shape) == 5:  # fold T into the batch
            steps = x.shape[1]
            x = fold_time(x)
        h = ops.relu(self.bn_reduce(self.conv_reduce(x), training=training))
        s = ops.relu(self.bn_spatial(self.conv_spatial(h), training=training))
        if self.kind == "2D":
            u = s
        else:
            t_in = s if TEMPORAL_INPUT[self.kind] == "s" else h
            t = self.bn_temporal(self._temporal(t_in, steps), training=training)
            u = MERGES[self.graph][self.kind](s, t)
        y = self.bn_expand(self.conv_expand(u), training=training)
        shortcut = self.bn_shortcut(self.conv_shortcut(x), training=training) if self.projection else x
        out = ops.relu(shortcut + y)
        return out if steps is None else unfold_time(out, steps)

    def _temporal(self, x, steps):
        """T on a clip (ops="3d"), or on frames through their (time, space) reshape (ops="2d")."""
        if self.ops == "3d":
            return self.conv_temporal(x)
        return ops.reshape(self.conv_temporal(time_by_space(x, steps)), (-1,) + tuple(x.shape[1:3]) + (self.filters,))

    def compute_output_shape(self, input_shape):
        *lead, h, w, _ = input_shape
        down = lambda n: None if n is None else -(-n // self.strides)  # noqa: E731 ('same' padding)
        return tuple(lead) + (down(h), down(w), 4 * self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kind": self.kind, "graph": self.graph,
                "strides": self.strides, "projection": self.projection,
                "bn_epsilon": self.bn_epsilon, "bn_momentum": self.bn_momentum, "ops": self.ops}


@keras.saving.register_keras_serializable(package="p3d_keras")
class Framewise(layers.Wrapper):
    """Apply a 2D layer to every frame of a clip in one call, the frames folded into the batch
    (`TimeDistributed` loops over time steps instead).

    Args:
        layer: a layer taking frames `(batch, H, W, C)`, e.g. `Conv2D` or `ZeroPadding2D`. Its
            weights are this layer's.

    Input: a clip `(batch, T, H, W, C)` with T, H, W, C fixed; output `(batch, T, H', W', C')`.
    """

    def build(self, input_shape):
        shape = check_static_clip(f"Framewise({type(self.layer).__name__})", input_shape)
        if not self.layer.built:
            self.layer.build((None,) + shape[2:])
        self.built = True

    def call(self, clip):
        return unfold_time(self.layer(fold_time(clip)), clip.shape[1])

    def compute_output_shape(self, input_shape):
        frames = self.layer.compute_output_shape((None,) + tuple(input_shape[2:]))
        return tuple(input_shape[:2]) + tuple(frames[1:])


@keras.saving.register_keras_serializable(package="p3d_keras")
class ClipMaxPooling(layers.Layer):
    """`MaxPooling3D(pool_size, strides)` (padding "valid") computed with 2D pools only: a
    (ph, pw) pool on the frames folded into the batch, then a (pt, 1) pool over the (time, space)
    reshape. A max over a box is the max over its time steps of the max over its frame windows,
    so the outputs are the 3D pool's exactly.

    Args:
        pool_size, strides: `(t, h, w)` triples, as for `MaxPooling3D`.

    Input: a clip `(batch, T, H, W, C)` with T, H, W, C fixed.
    """

    def __init__(self, pool_size, strides, **kwargs):
        super().__init__(**kwargs)
        for name, value in (("pool_size", pool_size), ("strides", strides)):
            if len(tuple(value)) != 3 or not all(isinstance(v, int) and v >= 1 for v in value):
                raise ValueError(f"Expected {name} to be three positive ints (t, h, w). Received: {name}={value!r}")
        self.pool_size, self.strides = tuple(pool_size), tuple(strides)

    def build(self, input_shape):
        check_static_clip("ClipMaxPooling", input_shape)
        self.built = True

    def call(self, clip):
        (pt, ph, pw), (st, sh, sw) = self.pool_size, self.strides
        frames = fold_time(clip)
        if (ph, pw, sh, sw) != (1, 1, 1, 1):
            frames = ops.max_pool(frames, (ph, pw), (sh, sw), padding="valid")
        _, h, w, c = frames.shape
        pooled = ops.max_pool(time_by_space(frames, clip.shape[1]), (pt, 1), (st, 1), padding="valid")
        return ops.reshape(pooled, (-1, pooled.shape[1], h, w, c))

    def compute_output_shape(self, input_shape):
        batch, *sizes, channels = input_shape
        return (batch, *((n - p) // s + 1 for n, p, s in zip(sizes, self.pool_size, self.strides)), channels)

    def get_config(self):
        return {**super().get_config(), "pool_size": self.pool_size, "strides": self.strides}


@keras.saving.register_keras_serializable(package="p3d_keras")
class Normalize(layers.Layer):
    """Cast frames (uint8, or any number type holding 0-255) to float32 and normalise them with a
    `p3d_keras.core.normalization` preset: the reader's `output_dtype="uint8"` clips in, exactly the
    reader's float32 clips for that preset out, computed on the model's device.

    The arithmetic is `p3d_keras.core.normalization.normalize` (the presets' one definition), in
    float32; the result is cast to the layer's compute dtype (float16 under `mixed_float16`).

    Args:
        normalization: a preset name: `caffe` (RGB in, BGR minus mean out), `imagenet`, `unit`
            or `flow`.

    Input: `(..., C)` with the preset's C channels (3, or 2 for `flow`), in RGB order.
    """

    def __init__(self, normalization, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(normalization, str):
            raise ValueError(f"Expected normalization to be a preset name, one of {sorted(norm_lib.NORMALIZATIONS)}. "
                             f"Received: normalization={normalization!r}")
        self.normalization = norm_lib.get_normalization(normalization).name
        self.built = True

    def call(self, frames):
        norm = norm_lib.get_normalization(self.normalization)
        if norm.bgr:  # flipped before the cast: on uint8 frames, a full-integer LiteRT form keeps their scale
            frames, norm = norm_lib.reverse_channels(frames), dataclasses.replace(norm, bgr=False)
        return ops.cast(norm_lib.normalize(ops.cast(frames, "float32"), norm), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "normalization": self.normalization}
