"""The 2D-ops form of a P3D ResNet: the same network, weights and outputs, built without any 3D
convolution or pool, for runtimes that lack them (LiteRT builtins, mobile GPU delegates).

`as_2d_ops(model)` rebuilds `model`'s architecture with `P3DResNet(..., ops="2d")` and copies its
weights: (1, k, k) convolutions become Conv2Ds over the frames folded into the batch, (k, 1, 1)
ones Conv2Ds with (k, 1) kernels over a (time, space) reshape, the max pools 2D pools. BatchNorm,
the global pooling and the classifier are the same layers.
"""
import json

import keras

from .p3d_resnet import P3DResNet, copy_weights, p3d_arguments

# Config keys that may differ between the two forms of a layer of the same class.
FORM_KEYS = ("name", "ops", "dtype", "trainable")


def as_2d_ops(model):
    """The 2D-ops form of a P3D ResNet built by `P3DResNet` (any depth, graph, width, `temporal`,
    `include_top`, `pooling`, `include_preprocessing`; a 2D-ops model is rebuilt too).

    Takes a `keras.Model` as `P3DResNet` returns it (or as saved and loaded). Returns a new
    `keras.Model` with the same input `(batch, T, H, W, C)`, dtype and name, the same output, the
    same layer names (each layer's output has the same shape as in `model`), the same weights
    (kernels reshaped, trainable flags kept) and the same dtype policy, whose layers are all 2D:
    its outputs equal `model`'s up to float rounding.

    Raises:
        ValueError: `model` is not a P3D ResNet (no `conv1` layer and P3D bottlenecks), or its
            layers are not those `P3DResNet` builds (naming the first layer that differs).

    Example:
        model = P3DResNet63(weights="kinetics400")
        mobile = as_2d_ops(model)  # no Conv3D / MaxPool3D: LiteRT converts it to builtin ops
    """
    if not isinstance(model, keras.Model):
        raise ValueError(f"Expected a keras.Model built by P3DResNet. Received: model of type {type(model).__name__}")
    arguments = p3d_arguments(model)
    if arguments is None:
        raise ValueError("Expected a P3D ResNet built by P3DResNet (a 'conv1' layer and P3DBottleneck blocks). "
                         f"Received: model={model.name!r} with layers {[layer.name for layer in model.layers][:6]}")
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(model.get_layer("conv1").dtype_policy)
    try:
        source = model.inputs[0]
        clip = keras.Input(source.shape[1:], dtype=source.dtype, name=source.name)
        built = P3DResNet(**{**arguments, "ops": "2d"}, input_tensor=clip)
    finally:
        keras.config.set_dtype_policy(policy)
    converted = keras.Model(clip, built.output, name=built.name)  # one input, not a list of one, as P3DResNet's
    check_same_layers(model, converted)
    copy_weights(model, converted)
    for layer in converted.layers:
        layer.trainable = model.get_layer(layer.name).trainable
    return converted


def check_same_layers(model, rebuilt):
    """Raise ValueError unless `model` has `rebuilt`'s layers, by name and in order, with the same
    configuration wherever the two forms use the same layer class."""
    names = [layer.name for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    expected = [layer.name for layer in rebuilt.layers if not isinstance(layer, keras.layers.InputLayer)]
    if names != expected:
        first = next((i for i, (a, b) in enumerate(zip(names, expected)) if a != b), min(len(names), len(expected)))
        raise ValueError(f"Expected the layers P3DResNet builds for {model.name!r} ({expected[first:first + 3]}... "
                         f"at position {first}). Received: {names[first:first + 3]}")
    for layer in rebuilt.layers[1:]:  # after the input
        source = model.get_layer(layer.name)
        if type(source) is type(layer):
            # as JSON: a loaded model's configs hold lists where a built one's hold tuples
            mine, theirs = (json.loads(json.dumps(l.get_config(), default=str)) for l in (layer, source))
            differ = sorted(k for k in set(mine) | set(theirs)
                            if k not in FORM_KEYS and mine.get(k) != theirs.get(k))
            if differ:
                raise ValueError(f"Expected layer {layer.name!r} as P3DResNet builds it. Received: "
                                 + ", ".join(f"{k}={theirs.get(k)!r} (P3DResNet: {mine.get(k)!r})" for k in differ))
