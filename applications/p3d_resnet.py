"""The P3D ResNet family: one builder and a depth table (Qiu, Yao, Mei, ICCV 2017).

res2-res4 are P3D stages whose blocks cycle A, B, C (numbered continuously across stages);
res5 is a plain 2D ResNet stage applied to each remaining time step. Time is reduced 16x by pool1
and a (2, 1, 1) max pool after res2, res3 and res4; the head averages over time and space.
"""

import functools

import keras
from keras import layers

from p3d_keras.core.checks import check_choice
from p3d_keras.core.layers import (BN_EPSILON, BN_MOMENTUM, GRAPHS, OPS, ClipMaxPooling, Framewise, Normalize,
                                   P3DBottleneck)
from p3d_keras.core.normalization import (DEFAULT_NORMALIZATION, MODALITY_CHANNELS, NORMALIZATIONS,
                                          modality_of_channels)
from p3d_keras.weights.cache import fetch_preset, load_weights

from .inflation import IMAGENET_RESNETS, imagenet_resnet, inflate_resnet
from .presets import find_preset

STAGE_BLOCKS = {63: (3, 4, 6, 3), 131: (3, 4, 23, 3), 199: (3, 8, 36, 3)}
POOLINGS = (None, "avg", "max")
GLOBAL_POOLS = {"avg": layers.GlobalAveragePooling3D, "max": layers.GlobalMaxPooling3D}
# pool1 alignment: Caffe rounds up with windows starting at 0 (= pad after, then "valid");
# the PyTorch port pads one on each side and rounds down. Exact with zeros: the input is post-ReLU.
POOL1_PADDING = {"caffe": ((0, 0), (0, 1), (0, 1)), "pytorch": ((0, 0), (1, 1), (1, 1))}
# Max pooling is exact in any precision, and TensorFlow has no float16 MaxPool3D kernel on CPU:
# the pools compute in float32 (a lossless cast) under every mixed-precision policy.
POOL_DTYPE = "float32"
TIME_REDUCTION = 16  # pool1 (2x) and three (2, 1, 1) pools (8x)
MIN_FRAME_SIZE = 32  # five 2x spatial reductions leave at least one position
DEFAULT_FRAMES, DEFAULT_SIZE = 16, 160


def block_suffixes(blocks):
    """Caffe ResNet block names within a stage: a, b, c, ... up to 6 blocks, else a, b1, b2, ..."""
    if blocks <= 6:
        return [chr(ord("a") + i) for i in range(blocks)]
    return ["a"] + [f"b{i}" for i in range(1, blocks)]


def block_kinds(stage_blocks, temporal=True):
    """Per stage, the kind of each block: A/B/C cycling over res2-res4, "2D" for res5."""
    kinds, n = [], 0
    for stage, blocks in enumerate(stage_blocks):
        row = []
        for _ in range(blocks):
            row.append("ABC"[n % 3] if temporal and stage < 3 else "2D")
            n += stage < 3
        kinds.append(row)
    return kinds


def resolve_stage_blocks(depth):
    """`depth` is 63, 131, 199, or a custom tuple of four per-stage block counts."""
    if isinstance(depth, (tuple, list)):
        if len(depth) == 4 and all(isinstance(b, int) and b >= 1 for b in depth):
            return tuple(depth)
    elif depth in STAGE_BLOCKS:
        return STAGE_BLOCKS[depth]
    raise ValueError(f"Invalid depth. Expected one of {sorted(STAGE_BLOCKS)} or a tuple of four positive "
                     f"block counts. Received: depth={depth!r}")


def check_input_shape(shape, channels, modality):
    """Validate a (T, H, W, C) clip shape against the network's rules; returns it as a tuple."""
    shape = tuple(shape)
    rule = (f"Expected (T, H, W, {channels}) for modality={modality!r}, with T a multiple of "
            f"{TIME_REDUCTION} and H, W at least {MIN_FRAME_SIZE}.")
    if len(shape) != 4 or any(d is None for d in shape):
        raise ValueError(f"{rule} Received: input_shape={shape}")
    t, h, w, c = shape
    if t < TIME_REDUCTION or t % TIME_REDUCTION or h < MIN_FRAME_SIZE or w < MIN_FRAME_SIZE or c != channels:
        raise ValueError(f"{rule} Received: input_shape={shape}")
    return shape


ARCHITECTURE_DEFAULTS = dict(classes=400, modality="rgb", graph="caffe", dropout_rate=0.5)


def preset_arguments(weights, include_top, depth, width, **given):
    """The architecture arguments: those given (not None), else the preset's (when `weights`
    names one) or the defaults. Arguments that contradict the preset raise. A `normalization`
    left None stays None without a preset (its default depends on the modality)."""
    preset = find_preset(weights)
    if preset is None:
        return {k: first_given(v, ARCHITECTURE_DEFAULTS.get(k)) for k, v in given.items()}, None
    fixed = dict(depth=depth, width=width, graph=given["graph"], modality=given["modality"],
                 normalization=given.get("normalization"))
    if include_top:
        fixed["classes"] = given["classes"]
    for key, value in fixed.items():
        if value is not None and getattr(preset, key) is not None and value != getattr(preset, key):
            hint = " (with include_top=False any classes work)" if key == "classes" else ""
            raise ValueError(f"weights={weights!r} is a {key}={getattr(preset, key)!r} model{hint}. "
                             f"Received: {key}={value!r}")
    if preset.inflated and not (isinstance(depth, int) and depth in IMAGENET_RESNETS):
        raise ValueError(f"weights={weights!r} is inflated from an ImageNet ResNet: Expected depth in "
                         f"{sorted(IMAGENET_RESNETS)}. Received: depth={depth!r}")
    return {k: first_given(v, getattr(preset, k), ARCHITECTURE_DEFAULTS.get(k)) for k, v in given.items()}, preset


def first_given(*values):
    """The first of `values` that is not None (None if all are)."""
    return next((v for v in values if v is not None), None)


def P3DResNet(depth=199, *, include_top=True, weights=None, input_tensor=None, input_shape=None,
              pooling=None, classes=None, classifier_activation="softmax", modality=None, graph=None,
              dropout_rate=None, width=64, temporal=True, include_preprocessing=False, normalization=None,
              ops="3d", name=None):
    """Builds a P3D ResNet.

    Args:
        depth: 63, 131 or 199 (from ResNet-50/101/152), or four per-stage block counts for a
            small custom network, e.g. `(1, 1, 1, 1)`.
        include_top: whether to end with global average pooling, dropout and the classifier.
        weights: `None` (random initialisation), a preset name (see `PRESETS`; it sets the
            defaults of `classes`, `modality`, `graph` and `dropout_rate`, and conflicting values
            raise), `"imagenet"` (depth 63, 131 or 199 only: the 2D layers from keras.applications'
            ImageNet ResNet-50/101/152, downloaded and cached by Keras, the temporal convs such
            that a clip of identical frames gives the 2D ResNet's features, a new classifier; see
            `applications.inflation`), `"imagenet_gaussian"` (the same, the temporal convs drawn
            from N(0, 0.001^2) as in the paper), a Keras weights file (`.weights.h5`), or an original
            checkpoint (`.pth`, `.pth.tar`, `.npz` in the PyTorch port's names, `.caffemodel`), mapped
            onto the model on load.
        input_tensor: optional Keras tensor to use as the model input.
        input_shape: `(T, H, W, C)`, default `(16, 160, 160, C)`. T must be a multiple of 16,
            H and W at least 32; C is 3 for RGB and 2 for flow.
        pooling: with `include_top=False`, `None` (the 5-D res5 output), `"avg"` (the 2048-d
            pool5 clip descriptor of the paper) or `"max"`.
        classes: number of classes of the classifier (default 400, or the preset's).
        classifier_activation: activation of the classifier output (`None` for logits);
            computed in float32 under mixed precision.
        modality: `"rgb"` (3 channels, the default) or `"flow"` (2 TV-L1 flow channels).
        graph: `"caffe"` (the authors' released graph, the default) or `"pytorch"` (the PyTorch
            port); weights must be used with the graph they were trained with.
        dropout_rate: dropout before the classifier (default 0.5; the presets use 0.5 Kinetics
            RGB, 0.7 flow, 0.1 Sports-1M).
        width: bottleneck width of res2 (doubling per stage); 64 in the paper.
        temporal: `False` removes every temporal convolution (all blocks become per-frame 2D
            bottlenecks): a 2D control network with the same spatial structure.
        include_preprocessing: `True` makes the model take raw clips: its input is uint8 RGB (or
            flow) frames with values 0-255, and its first layer, `normalize`
            (`p3d_keras.core.layers.Normalize`), applies `normalization`, so that
            `model(clips)` equals the plain model on `preprocess_input(clips, normalization=...)`.
            Float clips holding whole numbers 0-255 give the same outputs; Keras casts any other
            float to uint8 (fractions dropped, values outside 0-255 wrapped), so round and clip
            resized frames first. Every other layer, and so the weights file, is the plain model's.
            `False` (default): the model takes normalised float clips.
        normalization: with `include_preprocessing=True`, the name of the normalisation in
            `p3d_keras.core.normalization.NORMALIZATIONS` (`"caffe"`, `"imagenet"`, `"unit"`,
            `"flow"`); default the preset's when `weights` names one, else the modality's
            (`"caffe"` for RGB, `"flow"` for flow).
        ops: `"3d"` (the default: Conv3D and MaxPooling3D layers) or `"2d"`: the same network
            (same layer names, outputs and weights up to unit axes of the kernels) built from 2D
            ops only, for runtimes without 3D convolutions or pools (LiteRT builtins, mobile GPU
            delegates): (1, k, k) convolutions are Conv2Ds over the frames folded into the batch,
            (k, 1, 1) ones Conv2Ds with (k, 1) kernels over a (time, space) reshape, the max
            pools 2D pools (`Framewise`, `ClipMaxPooling`, `P3DBottleneck(ops="2d")`). Weights
            files are read into the 3D form and copied. See also `as_2d_ops`.
        name: model name, default `"p3d_resnet<depth>"`.

    Returns:
        A `keras.Model`.

    Raises:
        ValueError: an argument outside its choices, an input shape the network cannot take,
            arguments that contradict the preset named by `weights` (`normalization` included), a
            `normalization` without `include_preprocessing=True` or for another number of channels,
            a `weights` that is neither a preset nor an existing file, or a weights file that does
            not fit the network (naming the file). CheckpointError (a ValueError) for an original
            file that is refused.

    Example:
        model = P3DResNet(199, weights="kinetics400", include_top=False, pooling="avg")
        features = model.predict(preprocess_input(clips))  # clips: (N, 16, 160, 160, 3), 0-255
        raw = P3DResNet(199, weights="kinetics400", include_preprocessing=True)
        probs = raw.predict(clips)  # uint8 clips, normalised by the model ("caffe": BGR minus mean)
    """
    stage_blocks = resolve_stage_blocks(depth)
    check_choice("ops", ops, OPS)
    if normalization is not None:
        check_choice("normalization", normalization, tuple(NORMALIZATIONS))
        if not include_preprocessing:
            raise ValueError("normalization is the model's own preprocessing: it needs include_preprocessing=True "
                             "(else normalise the clips with preprocess_input). "
                             f"Received: normalization={normalization!r}, include_preprocessing=False")
    args, preset = preset_arguments(weights, include_top, depth, width, classes=classes, modality=modality,
                                    graph=graph, dropout_rate=dropout_rate, normalization=normalization)
    classes, modality, graph, dropout_rate = args["classes"], args["modality"], args["graph"], args["dropout_rate"]
    check_choice("modality", modality, tuple(MODALITY_CHANNELS))
    check_choice("graph", graph, GRAPHS)
    check_choice("pooling", pooling, POOLINGS)
    channels = MODALITY_CHANNELS[modality]
    normalization_name = args["normalization"] or DEFAULT_NORMALIZATION[modality]
    if include_preprocessing and NORMALIZATIONS[normalization_name].channels != channels:
        raise ValueError(f"normalization={normalization_name!r} is for {NORMALIZATIONS[normalization_name].channels} "
                         f"channels; modality={modality!r} has {channels}. "
                         f"Received: normalization={normalization_name!r}, modality={modality!r}")
    if include_top and (not isinstance(classes, int) or classes < 1):
        raise ValueError(f"classes must be a positive integer with include_top=True. Received: classes={classes!r}")
    if input_tensor is not None:
        shape = check_input_shape(keras.ops.shape(input_tensor)[1:], channels, modality)
        inputs = input_tensor
    else:
        shape = check_input_shape(input_shape or (DEFAULT_FRAMES, DEFAULT_SIZE, DEFAULT_SIZE, channels),
                                  channels, modality)
        inputs = keras.Input(shape, dtype="uint8" if include_preprocessing else None, name="clip")
    bn = dict(epsilon=BN_EPSILON, momentum=BN_MOMENTUM)

    x = Normalize(normalization_name, name="normalize")(inputs) if include_preprocessing else inputs
    x = clip_padding((0, 3, 3), ops, name="conv1_pad")(x)
    if ops == "3d":
        x = layers.Conv3D(width, (1, 7, 7), strides=(1, 2, 2), use_bias=False, name="conv1")(x)
    else:
        x = Framewise(layers.Conv2D(width, (7, 7), strides=2, use_bias=False, name="conv1"), name="conv1")(x)
    x = layers.BatchNormalization(**bn, name="bn_conv1")(x)
    x = layers.Activation("relu", name="conv1_relu")(x)
    x = clip_padding(POOL1_PADDING[graph], ops, name="pool1_pad")(x)
    x = clip_max_pooling((2, 3, 3), (2, 2, 2), ops, name="pool1")(x)
    kinds = block_kinds(stage_blocks, temporal)
    for stage, blocks in enumerate(stage_blocks):
        for b, suffix in enumerate(block_suffixes(blocks)):
            x = P3DBottleneck(width * 2 ** stage, kinds[stage][b], graph, strides=2 if b == 0 and stage else 1,
                              projection=b == 0, ops=ops, name=f"res{stage + 2}{suffix}")(x)
        if stage < 3:
            x = clip_max_pooling((2, 1, 1), (2, 1, 1), ops, name=f"pool{stage + 2}")(x)

    if include_top:
        x = GLOBAL_POOLS["avg"](name="pool5")(x)
        if dropout_rate:
            x = layers.Dropout(dropout_rate, name="dropout")(x)
        x = layers.Dense(classes, name="fc")(x)
        x = layers.Activation(classifier_activation, dtype="float32", name="predictions")(x)
    elif pooling is not None:
        x = GLOBAL_POOLS[pooling](name="pool5")(x)

    if input_tensor is not None:
        inputs = keras.utils.get_source_inputs(input_tensor)
    default_name = f"p3d_resnet{depth}" if isinstance(depth, int) else "p3d_resnet"
    model = keras.Model(inputs, x, name=name or default_name)
    if ops == "2d" and weights is not None:  # files hold the 3D form's weights: read them there, then copy
        copy_weights(P3DResNet(depth, include_top=include_top, weights=weights, input_shape=shape, pooling=pooling,
                               classes=classes, classifier_activation=classifier_activation, modality=modality,
                               graph=graph, dropout_rate=dropout_rate, width=width, temporal=temporal,
                               include_preprocessing=include_preprocessing, normalization=normalization), model)
    elif preset is not None and preset.inflated:
        inflate_resnet(imagenet_resnet(depth), model, temporal_init=preset.temporal_init)
    elif preset is not None:
        load_preset(model, preset, lambda: P3DResNet(
            depth, weights=None, input_shape=shape, classes=preset.classes, classifier_activation=None,
            modality=modality, graph=graph, dropout_rate=dropout_rate, width=width))
    elif weights is not None:
        load_weights(model, weights)
    return model


def load_preset(model, preset, build_full_model):
    """Load the Keras weights file of `preset` into `model` (fetched, or mapped from the original
    file, by `p3d_keras.weights.cache.fetch_preset`).

    `build_full_model()` builds the preset's architecture with its classifier. It is called at
    most once: to map an original file, and for a `model` without the classifier, which takes every
    layer but the classifier from that full model (by layer name).
    """
    full_model = functools.cache(build_full_model)
    path = fetch_preset(preset, full_model)
    if any(layer.name == "fc" for layer in model.layers):
        model.load_weights(path)
        return
    full = full_model()
    full.load_weights(path)
    copy_weights(full, model)


def clip_padding(padding, ops, name):
    """`ZeroPadding3D(padding)`; for ops="2d" the same on each frame (`padding` pads no time steps)."""
    if ops == "3d":
        return layers.ZeroPadding3D(padding, name=name)
    return Framewise(layers.ZeroPadding2D(padding[1:], name=name), name=name)


def clip_max_pooling(pool_size, strides, ops, name):
    """`MaxPooling3D(pool_size, strides)`, or for ops="2d" the same with 2D pools (`ClipMaxPooling`),
    computed in `POOL_DTYPE`."""
    pool = layers.MaxPooling3D if ops == "3d" else ClipMaxPooling
    return pool(pool_size, strides=strides, dtype=POOL_DTYPE, name=name)


def copy_weights(source, target, skip=()):
    """Copy the weights of every layer of `target` (except those named in `skip`) from the layer of
    the same name in `source`: e.g. a preset's trunk into a network with another classifier, or the
    3D form's weights into the 2D-ops form (`ops="2d"`), whose kernels differ by unit axes only and
    are reshaped. Raises ValueError naming the layer when a weight differs otherwise."""
    for layer in target.layers:
        if layer.weights and layer.name not in skip:
            values = source.get_layer(layer.name).get_weights()
            if len(values) != len(layer.weights):
                raise ValueError(f"Layer {layer.name!r}: Expected {len(layer.weights)} weights. "
                                 f"Received: {len(values)} from {source.name!r}")
            layer.set_weights([fit_unit_axes(value, variable.shape, f"{layer.name}/{variable.name}")
                               for value, variable in zip(values, layer.weights)])


def fit_unit_axes(value, shape, name):
    """`value` reshaped to `shape` when the two differ by unit axes only (a (1, k, k, i, o) kernel and
    a (k, k, i, o) one hold the same numbers in the same order); raises ValueError otherwise."""
    shape = tuple(shape)
    if value.shape == shape:
        return value
    if [d for d in value.shape if d != 1] != [d for d in shape if d != 1]:
        raise ValueError(f"Weight {name!r}: Expected shape {shape} (up to unit axes). Received: shape {value.shape}")
    return value.reshape(shape)


def p3d_arguments(model):
    """The `P3DResNet` arguments (all but `weights` and `input_tensor`) that build `model`'s
    architecture again, read from its layers; None when `model` is not a P3D ResNet (no `conv1`
    and no `P3DBottleneck` blocks). `dropout_rate` is 0.0 without a dropout layer, `classes`
    None without a classifier; the classifier's activation comes back by name ("linear" for
    logits)."""
    blocks = [layer for layer in model.layers if isinstance(layer, P3DBottleneck)]
    found = {layer.name: layer for layer in model.layers}
    if not blocks or "conv1" not in found or len(model.inputs) != 1:
        return None
    shape = tuple(model.inputs[0].shape)
    counts = tuple(sum(layer.name.startswith(f"res{stage}") for layer in blocks) for stage in (2, 3, 4, 5))
    top = "fc" in found
    pool5 = None if top else found.get("pool5")
    normalize = found.get("normalize")
    return dict(
        depth=next((d for d, table in STAGE_BLOCKS.items() if table == counts), counts),
        width=blocks[0].filters, graph=blocks[0].graph, modality=modality_of_channels(shape[-1]),
        temporal=any(layer.kind != "2D" for layer in blocks), classes=found["fc"].units if top else None,
        dropout_rate=float(found["dropout"].rate) if "dropout" in found else 0.0, include_top=top,
        pooling=next((k for k, pool in GLOBAL_POOLS.items() if type(pool5) is pool), None),
        classifier_activation=found["predictions"].get_config()["activation"] if "predictions" in found else None,
        include_preprocessing=normalize is not None, normalization=normalize and normalize.normalization,
        input_shape=shape[1:], ops=blocks[0].ops, name=model.name)


FAMILY_DOC = """P3D ResNet-{depth} (from ResNet-{resnet} with {temporal} temporal convs).

Takes the arguments of `P3DResNet` except `depth`, `width` and `temporal`, all by keyword, and
returns `P3DResNet({depth}, ...)`, a `keras.Model`; see `P3DResNet` for their meaning, defaults
and the ValueErrors they raise.

With `include_preprocessing=True` the model takes uint8 clips (0-255, RGB or flow) and
normalises them itself (`normalization`, default the preset's); see `P3DResNet`.

Example:
    model = P3DResNet{depth}(weights=None, input_shape=(16, 160, 160, 3), classes=10)
    raw = P3DResNet{depth}(weights=None, classes=10, include_preprocessing=True, normalization="imagenet")
"""


def P3DResNet63(*, include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
                classes=None, classifier_activation="softmax", modality=None, graph=None, dropout_rate=None,
                include_preprocessing=False, normalization=None, ops="3d", name=None):
    return P3DResNet(63, include_top=include_top, weights=weights, input_tensor=input_tensor,
                     input_shape=input_shape, pooling=pooling, classes=classes,
                     classifier_activation=classifier_activation, modality=modality, graph=graph,
                     dropout_rate=dropout_rate, include_preprocessing=include_preprocessing,
                     normalization=normalization, ops=ops, name=name)


def P3DResNet131(*, include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
                 classes=None, classifier_activation="softmax", modality=None, graph=None, dropout_rate=None,
                 include_preprocessing=False, normalization=None, ops="3d", name=None):
    return P3DResNet(131, include_top=include_top, weights=weights, input_tensor=input_tensor,
                     input_shape=input_shape, pooling=pooling, classes=classes,
                     classifier_activation=classifier_activation, modality=modality, graph=graph,
                     dropout_rate=dropout_rate, include_preprocessing=include_preprocessing,
                     normalization=normalization, ops=ops, name=name)


def P3DResNet199(*, include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
                 classes=None, classifier_activation="softmax", modality=None, graph=None, dropout_rate=None,
                 include_preprocessing=False, normalization=None, ops="3d", name=None):
    return P3DResNet(199, include_top=include_top, weights=weights, input_tensor=input_tensor,
                     input_shape=input_shape, pooling=pooling, classes=classes,
                     classifier_activation=classifier_activation, modality=modality, graph=graph,
                     dropout_rate=dropout_rate, include_preprocessing=include_preprocessing,
                     normalization=normalization, ops=ops, name=name)


P3DResNet63.__doc__ = FAMILY_DOC.format(depth=63, resnet=50, temporal=13)
P3DResNet131.__doc__ = FAMILY_DOC.format(depth=131, resnet=101, temporal=30)
P3DResNet199.__doc__ = FAMILY_DOC.format(depth=199, resnet=152, temporal=47)
