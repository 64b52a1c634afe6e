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

`Normalize` turns uint8 frames (the reader's `output_dtype="uint8"`) into a network's normalised
input on the model's device, with `p3d_keras.core.normalization.normalize`.
"""
import keras
from keras import layers, ops

from p3d_keras.core import normalization as norm_lib
from p3d_keras.core.checks import check_choice

KINDS = ("A", "B", "C", "2D")
GRAPHS = ("caffe", "pytorch")

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

    Input: a clip `(batch, T, H, W, C)`; kind "2D" also takes frames `(batch, H, W, C)`.
    Layer names follow Caffe (`branch2a`, `branch2b`, `branch2b_t`, `branch2c`, `branch1`).
    """

    def __init__(self, filters, kind="A", graph="caffe", strides=1, projection=False,
                 bn_epsilon=BN_EPSILON, bn_momentum=BN_MOMENTUM, **kwargs):
        super().__init__(**kwargs)
        check_choice("kind", kind, KINDS)
        check_choice("graph", graph, GRAPHS)
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

        def conv(n, kernel, name, stride=1):
            if kind == "2D":
                return layers.Conv2D(n, kernel[1:], strides=stride, padding="same", use_bias=False,
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
        if self.kind == "2D" and len(shape) == 5:
            if shape[1] is None:
                raise ValueError("P3DBottleneck(kind='2D') on a clip needs a static number of time steps. "
                                 f"Received: input_shape={shape}")
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
            run([(self.conv_temporal, self.bn_temporal)], h)
        run([(self.conv_expand, self.bn_expand)], s)
        if self.projection:
            run([(self.conv_shortcut, self.bn_shortcut)], shape)

    def call(self, x, training=None):
        steps = None
        if self.kind == "2D" and len(x.shape) == 5:  # per time step: fold T into the batch
            steps = x.shape[1]
            x = ops.reshape(x, (-1,) + tuple(x.shape[2:]))
        h = ops.relu(self.bn_reduce(self.conv_reduce(x), training=training))
        s = ops.relu(self.bn_spatial(self.conv_spatial(h), training=training))
        if self.kind == "2D":
            u = s
        else:
            t_in = s if TEMPORAL_INPUT[self.kind] == "s" else h
            t = self.bn_temporal(self.conv_temporal(t_in), training=training)
            u = MERGES[self.graph][self.kind](s, t)
        y = self.bn_expand(self.conv_expand(u), training=training)
        shortcut = self.bn_shortcut(self.conv_shortcut(x), training=training) if self.projection else x
        out = ops.relu(shortcut + y)
        if steps is not None:
            out = ops.reshape(out, (-1, steps) + tuple(out.shape[1:]))
        return out

    def compute_output_shape(self, input_shape):
        *lead, h, w, _ = input_shape
        down = lambda n: None if n is None else -(-n // self.strides)  # noqa: E731 ('same' padding)
        return tuple(lead) + (down(h), down(w), 4 * self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kind": self.kind, "graph": self.graph,
                "strides": self.strides, "projection": self.projection,
                "bn_epsilon": self.bn_epsilon, "bn_momentum": self.bn_momentum}


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
        return ops.cast(norm_lib.normalize(ops.cast(frames, "float32"), self.normalization), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "normalization": self.normalization}
