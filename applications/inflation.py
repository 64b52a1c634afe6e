"""ImageNet inflation: a P3D ResNet initialised from a 2D ImageNet ResNet (the paper's recipe,
Table 1: ResNet-50 -> P3D-63), as keras.applications builds and trains it.

P3D-63/131/199 have the stage tables of ResNet-50/101/152 ((3, 4, 6, 3), (3, 4, 23, 3),
(3, 8, 36, 3)) and the same layer order in each block (stride on the first 1x1, projection
shortcut on each stage's first block), so every 2D layer has one counterpart:

    keras.applications ResNet          P3D ResNet
    conv1_conv / conv1_bn              conv1 (1x7x7) / bn_conv1
    conv{s}_block{b}_1_conv / _1_bn    res{s}{suffix}/branch2a / bn_branch2a    (1x1x1)
    conv{s}_block{b}_2_conv / _2_bn    res{s}{suffix}/branch2b / bn_branch2b    (1x3x3, S)
    conv{s}_block{b}_3_conv / _3_bn    res{s}{suffix}/branch2c / bn_branch2c    (1x1x1)
    conv{s}_block{b}_0_conv / _0_bn    res{s}{suffix}/branch1 / bn_branch1      (projection)

Each k x k kernel becomes 1 x k x k (the same numbers). Keras' ResNet convolutions have biases and
P3D's have none: a bias b feeds only the BatchNorm after it, BN(z + b) = BN'(z) with
moving_mean' = moving_mean - b. Keras' ResNet BatchNorms use epsilon 1.001e-5 and P3D's 1e-5:
moving_variance' = moving_variance + 1.001e-5 - 1e-5 keeps var + epsilon, so every BN computes
the same function. The classifier is new (the P3D's own initialisation).

The temporal convolutions T (3x1x1, 'same', so zero-padded in time) and the BatchNorm after them
(`temporal_init`):

- "identity" (default): a clip of identical frames gives exactly the 2D ResNet's per-frame
  features (inference mode: BatchNorm on its moving statistics, as `p3d-train`'s partial BN keeps
  every BN but the first). BN_t is the identity (gamma 1, beta 0, mean 0, variance 1 - epsilon) and
  T either the identity kernel (centre tap = I, other taps 0: T s = s on every frame, whatever the
  clip) or zero. In the block, h = ReLU(BN(reduce x)) and s = ReLU(BN(S h)) >= 0, and the 2D
  bottleneck uses u = s before the expand conv; the kind and graph decide which kernel gives u = s
  (`TEMPORAL_KERNEL`):

      kind, graph      u                              kernel    u then
      A, both          ReLU(BN_t(T s))                identity  ReLU(s) = s
      B, caffe         ReLU(s + BN_t(T h))            zero      ReLU(s + 0) = s
      B, pytorch       s + ReLU(BN_t(T h))            zero      s + ReLU(0) = s
      C, caffe         ReLU(0.5 s + 0.5 BN_t(T s))    identity  ReLU(0.5 s + 0.5 s) = s
      C, pytorch       s + ReLU(BN_t(T s))            zero      s + ReLU(0) = s

  So the identity is exact for every kind and graph (no ReLU has to be undone: s is already
  post-ReLU). With zero-padding in time, the identity kernel is exact on the border frames too;
  any kernel that mixes neighbouring frames would not be.
- "gaussian": the paper's: every tap of T drawn from N(0, 0.001^2), BN_t as above. Then T's
  output is ~1e-3 of its input: the B and port-C blocks stay close to their 2D bottleneck, the A
  and Caffe-C blocks do not (u ~ 0 and u ~ s/2; the shortcut still carries x), so the static-clip
  features differ from the 2D ResNet's (training, with BN_t in training mode, scales T up).

The pools: pool1 is a 3x3 stride-2 max pool in both; Keras' ResNet zero-pads one on each side and
rounds down, as the PyTorch port's graph (`graph="pytorch"`), which therefore reproduces the 2D
ResNet exactly on a static clip. The Caffe graph's pool1 windows start one pixel later (pad after
only): its static-clip features equal those of the same 2D ResNet with pool1 padded
((0, 1), (0, 1)) instead (`tests/test_inflation.py` builds that 2D reference from the ResNet's own
layers). The temporal max pools and the time average are the identity on identical frames.
"""
import keras
import numpy as np

from p3d_keras.core.layers import P3DBottleneck

TEMPORAL_INITS = ("identity", "gaussian")
GAUSSIAN_STDDEV = 0.001  # the paper's
# The temporal kernel that makes a block equal its 2D bottleneck, by graph and kind (see above).
TEMPORAL_KERNEL = {
    "caffe": {"A": "identity", "B": "zero", "C": "identity"},
    "pytorch": {"A": "identity", "B": "zero", "C": "zero"},
}
# keras.applications' ImageNet ResNet with the stage table of each P3D depth.
IMAGENET_RESNETS = {63: "ResNet50", 131: "ResNet101", 199: "ResNet152"}
# P3D block sublayer -> Keras ResNet block layer suffix (conv, then its BatchNorm).
BLOCK_LAYERS = {"reduce": "1", "spatial": "2", "expand": "3", "shortcut": "0"}


def imagenet_resnet(depth):
    """keras.applications' ResNet-50/101/152 (for P3D-63/131/199) with its ImageNet weights,
    without its classifier; Keras downloads the weights once and caches them in
    `$KERAS_HOME/models`. Raises ValueError for another `depth`."""
    if depth not in IMAGENET_RESNETS:
        raise ValueError(f"ImageNet inflation needs a P3D of depth {sorted(IMAGENET_RESNETS)} (from "
                         f"{', '.join(IMAGENET_RESNETS.values())}). Received: depth={depth!r}")
    return getattr(keras.applications, IMAGENET_RESNETS[depth])(weights="imagenet", include_top=False)


def inflate_resnet(resnet, p3d, *, temporal_init="identity", seed=None):
    """Set the weights of `p3d` (a 3D-form `P3DResNet`, with or without classifier, any graph,
    `temporal` or not) from the 2D `resnet` (a keras.applications ResNet50/101/152, built, any
    input size, with or without top), in place, as the module docstring describes. The classifier
    of `p3d` is left as it is. `seed` seeds the "gaussian" temporal kernels (None: Keras' global
    seed, see `keras.utils.set_random_seed`).

    Returns `p3d`.

    Raises:
        ValueError: `resnet` is not a keras.applications ResNet, its stage table or widths are not
            those of `p3d` (naming both), `p3d` is not a 3D-form P3D ResNet, or `temporal_init` is
            unknown.

    Example:
        p3d = P3DResNet63(weights=None, classes=101, graph="pytorch")
        inflate_resnet(keras.applications.ResNet50(weights="imagenet", include_top=False), p3d)
    """
    if temporal_init not in TEMPORAL_INITS:
        raise ValueError(f"Expected temporal_init in {TEMPORAL_INITS}. Received: temporal_init={temporal_init!r}")
    source = resnet_layers(resnet)
    blocks = p3d_blocks(p3d)
    expected = tuple(len(stage) for stage in blocks)
    received = tuple(sum(1 for name in source if name.startswith(f"conv{s}_block") and name.endswith("_3_conv"))
                     for s in (2, 3, 4, 5))
    if received != expected:
        raise ValueError(f"Expected a 2D ResNet with the stage table of {p3d.name!r}, {expected} blocks per stage. "
                         f"Received: {resnet.name!r} with {received}")
    set_conv_bn(p3d.get_layer("conv1"), p3d.get_layer("bn_conv1"), source["conv1_conv"], source["conv1_bn"])
    generator = keras.random.SeedGenerator(seed) if seed is not None else None
    for s, stage in enumerate(blocks, start=2):
        for b, block in enumerate(stage, start=1):
            for sublayer, index in BLOCK_LAYERS.items():
                if sublayer == "shortcut" and not block.projection:
                    continue
                name = f"conv{s}_block{b}_{index}"
                if f"{name}_conv" not in source:
                    raise ValueError(f"Expected layer {name}_conv in {resnet.name!r} for block {block.name!r}. "
                                     "Received: a ResNet without it")
                set_conv_bn(getattr(block, f"conv_{sublayer}"), getattr(block, f"bn_{sublayer}"),
                            source[f"{name}_conv"], source[f"{name}_bn"])
            if block.kind != "2D":
                kernel = TEMPORAL_KERNEL[block.graph][block.kind] if temporal_init == "identity" else "gaussian"
                set_temporal(block, kernel, generator)
    return p3d


def resnet_layers(resnet):
    """`resnet`'s layers by name; raises ValueError unless it looks like a keras.applications ResNet."""
    if not isinstance(resnet, keras.Model):
        raise ValueError("Expected a keras.applications ResNet (a keras.Model). "
                         f"Received: resnet of type {type(resnet).__name__}")
    found = {layer.name: layer for layer in resnet.layers}
    if "conv1_conv" not in found or "conv2_block1_1_conv" not in found:
        raise ValueError("Expected a keras.applications ResNet50/101/152 (layers conv1_conv, conv2_block1_1_conv, "
                         f"...). Received: {resnet.name!r} with layers {list(found)[:5]}...")
    return found


def p3d_blocks(p3d):
    """The `P3DBottleneck` blocks of the 3D-form P3D ResNet `p3d`, per stage (res2..res5)."""
    blocks = [layer for layer in getattr(p3d, "layers", ()) if isinstance(layer, P3DBottleneck)]
    if not blocks or not any(layer.name == "conv1" for layer in p3d.layers):
        raise ValueError(f"Expected a P3D ResNet built by P3DResNet. Received: {getattr(p3d, 'name', p3d)!r}")
    if blocks[0].ops != "3d":
        raise ValueError("Expected the 3D form of the P3D ResNet (ops='3d'; copy into the 2D-ops form with "
                         "as_2d_ops). Received: ops='2d'")
    return [[b for b in blocks if b.name.startswith(f"res{s}")] for s in (2, 3, 4, 5)]


def set_conv_bn(conv, bn, source_conv, source_bn):
    """Set the bias-free `conv` and its BatchNorm `bn` to compute what `source_conv` (with bias)
    and `source_bn` compute: the kernel with unit axes added, the bias folded into the moving
    mean, the epsilon difference into the moving variance."""
    kernel, *bias = source_conv.get_weights()
    target = tuple(conv.kernel.shape)
    if [d for d in kernel.shape if d != 1] != [d for d in target if d != 1]:
        raise ValueError(f"Expected {source_conv.name!r} to have a kernel of shape {target} (up to unit axes) for "
                         f"{conv.name!r}. Received: shape {kernel.shape}")
    conv.kernel.assign(kernel.reshape(target))
    gamma, beta, mean, variance = (np.asarray(w, "float64") for w in source_bn.get_weights())
    if bias:
        mean = mean - bias[0]
    variance = variance + source_bn.epsilon - bn.epsilon
    bn.set_weights([gamma, beta, mean, variance])


def set_temporal(block, kernel, generator):
    """Set `block`'s temporal conv to the `kernel` "identity", "zero" or "gaussian" (std
    `GAUSSIAN_STDDEV`, drawn with `generator`) and the BatchNorm after it to the identity."""
    conv, bn = block.conv_temporal, block.bn_temporal
    shape = tuple(conv.kernel.shape)  # (3, 1, 1, filters, filters)
    if kernel == "gaussian":
        conv.kernel.assign(keras.random.normal(shape, stddev=GAUSSIAN_STDDEV, seed=generator))
    else:
        values = np.zeros(shape, "float32")
        if kernel == "identity":
            values[shape[0] // 2, 0, 0] = np.eye(shape[-1], dtype="float32")
        conv.kernel.assign(values)
    filters = shape[-1]
    bn.set_weights([np.ones(filters), np.zeros(filters), np.zeros(filters), np.full(filters, 1.0 - bn.epsilon)])
