"""Map original P3D checkpoints (the PyTorch port's state dicts, the authors' .caffemodel files)
onto Keras P3D ResNets (`load_original_weights`; `p3d-convert-weights` saves the result).

Both sources are first read into one flat form, `{name: array}` with the port's suffixes
(`.weight`, `.bias`, `.running_mean`, `.running_var`) in torch's O, I, k... layout; the only
difference between them is how a Keras layer's name becomes a checkpoint name (`NAMINGS`).
"""
import logging
import os

import numpy as np
from keras import layers

from p3d_keras.core.layers import P3DBottleneck
from p3d_keras.weights.caffemodel import read_caffemodel
from p3d_keras.weights.formats import read_state_dict, sniff_format
from p3d_keras.weights.untrusted import MAX_BYTES, CheckpointError

log = logging.getLogger(__name__)

# Sub-layer attribute of a P3DBottleneck -> (port conv, port bn, Caffe branch).
BLOCK_PARTS = {
    "reduce": ("conv1", "bn1", "branch2a"),
    "spatial": ("conv2", "bn2", "branch2b"),
    "temporal": ("conv3", "bn3", "branch2b_t"),
    "expand": ("conv4", "bn4", "branch2c"),
    "shortcut": ("downsample.0", "downsample.1", "branch1"),
}
PORT_2D_SPATIAL = ("conv_normal", "bn_normal")  # the port names res5's 3x3 conv differently
BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var")  # gamma, beta, mean, variance
CAFFE_BN_BLOBS = 4  # scale, shift, mean, variance
IGNORED_SUFFIXES = ("num_batches_tracked",)


def _port_names(model):
    """Keras layer -> checkpoint prefix, in the PyTorch port's names."""
    names = {"conv1": "conv1_custom", "bn_conv1": "bn1", "fc": "fc"}
    for block, stage, index in _blocks(model):
        prefix = f"layer{stage - 1}.{index}"
        for part, (conv, bn, _) in _parts(block):
            if part == "spatial" and block.kind == "2D":
                conv, bn = PORT_2D_SPATIAL
            names[f"{block.name}/{part}/conv"] = f"{prefix}.{conv}"
            names[f"{block.name}/{part}/bn"] = f"{prefix}.{bn}"
    return names


def _caffe_names(model, fc_name):
    """Keras layer -> checkpoint prefix, in the authors' Caffe layer names."""
    names = {"conv1": "conv1", "bn_conv1": "bn_conv1", "fc": fc_name}
    for block, _, _ in _blocks(model):
        for part, (_, _, branch) in _parts(block):
            names[f"{block.name}/{part}/conv"] = f"{block.name}_{branch}"
            names[f"{block.name}/{part}/bn"] = f"bn{block.name[len('res'):]}_{branch}"
    return names


def checkpoint_names(model, naming, caffe_fc="fc_kinetics"):
    """Keras-side key (`"conv1"`, `"res3b1/temporal/bn"`, `"fc"`, ...) -> the checkpoint layer
    name under `naming` ("pytorch": the port's state-dict prefixes; "caffe": the authors' layer
    names, with the classifier called `caffe_fc`)."""
    if naming == "caffe":
        return _caffe_names(model, caffe_fc)
    if naming == "pytorch":
        return _port_names(model)
    raise ValueError(f"Unknown checkpoint naming. Expected 'pytorch' or 'caffe'. Received: naming={naming!r}")


def _blocks(model):
    """(block, stage number 2..5, index within the stage) for every P3DBottleneck of `model`."""
    counts = {}
    for layer in model.layers:
        if isinstance(layer, P3DBottleneck):
            stage = int(layer.name[len("res")])
            counts[stage] = counts.get(stage, -1) + 1
            yield layer, stage, counts[stage]


def _parts(block):
    """(part, names) of the BLOCK_PARTS a block has (no temporal conv in 2D blocks, no shortcut
    conv in identity blocks)."""
    return [(part, names) for part, names in BLOCK_PARTS.items() if hasattr(block, f"conv_{part}")]


def _keras_layers(model):
    """Keras-side key -> (conv / bn / dense layer) for every layer that holds weights."""
    found = {}
    for layer in model.layers:
        if isinstance(layer, P3DBottleneck):
            for part, _ in _parts(layer):
                found[f"{layer.name}/{part}/conv"] = getattr(layer, f"conv_{part}")
                found[f"{layer.name}/{part}/bn"] = getattr(layer, f"bn_{part}")
        elif layer.name in ("conv1", "bn_conv1", "fc"):
            found[layer.name] = layer
    return found


def _variables(layer, prefix):
    """(checkpoint name, Keras variable) pairs of one conv, BN or dense layer."""
    if isinstance(layer, layers.BatchNormalization):
        variables = (layer.gamma, layer.beta, layer.moving_mean, layer.moving_variance)
        return [(f"{prefix}.{s}", v) for s, v in zip(BN_SUFFIXES, variables)]
    if isinstance(layer, layers.Dense):
        return [(f"{prefix}.weight", layer.kernel), (f"{prefix}.bias", layer.bias)]
    return [(f"{prefix}.weight", layer.kernel)]


def to_keras_layout(array):
    """torch / Caffe layout (O, I, k...) -> Keras (k..., I, O); dense (O, I) -> (I, O)."""
    if array.ndim >= 3:
        return np.transpose(array, tuple(range(2, array.ndim)) + (1, 0))
    return array.T if array.ndim == 2 else array


def to_original_layout(array):
    """The inverse of `to_keras_layout`: Keras (k..., I, O) -> (O, I, k...); dense (I, O) -> (O, I)."""
    if array.ndim >= 3:
        return np.transpose(array, (array.ndim - 1, array.ndim - 2) + tuple(range(array.ndim - 2)))
    return array.T if array.ndim == 2 else array


def original_tensors(model, naming="pytorch", caffe_fc="fc_kinetics"):
    """`model`'s weights as a flat original checkpoint (the inverse of `assign_original`)."""
    names = checkpoint_names(model, naming, caffe_fc)
    return {name: to_original_layout(np.asarray(variable.numpy()))
            for key, layer in _keras_layers(model).items() for name, variable in _variables(layer, names[key])}


def caffe_to_flat(blobs_by_layer, source="caffemodel"):
    """`{caffe layer: [blobs]}` -> the flat `{name.weight: array, ...}` form (BN: 4 blobs).
    Raises CheckpointError naming `source` for a layer with another number of blobs."""
    flat = {}
    for name, blobs in blobs_by_layer.items():
        if len(blobs) == CAFFE_BN_BLOBS:
            flat.update({f"{name}.{s}": b.reshape(-1) for s, b in zip(BN_SUFFIXES, blobs)})
        elif len(blobs) in (1, 2):
            flat[f"{name}.weight"] = blobs[0]
            if len(blobs) == 2:
                flat[f"{name}.bias"] = blobs[1].reshape(-1)
        else:
            raise CheckpointError(f"{source}: Caffe layer {name!r} has {len(blobs)} blobs. Expected 1 or 2 (conv, "
                                  f"fc) or {CAFFE_BN_BLOBS} (BN: scale, shift, mean, variance)")
    return flat


def read_original(path, max_bytes=MAX_BYTES):
    """Read an original checkpoint. Returns `(naming, tensors)`: naming is "pytorch" or "caffe".
    The file may declare at most `max_bytes` of tensors; everything the readers refuse raises
    CheckpointError naming the file (see `p3d_keras.weights.formats.read_state_dict`)."""
    if sniff_format(path) == "caffe":
        return "caffe", caffe_to_flat(read_caffemodel(path, max_bytes), source=os.fspath(path))
    return "pytorch", read_state_dict(path, max_bytes)


def _keras_values(targets, tensors, source):
    """`[(variable, value)]`: each tensor in Keras layout and its variable's dtype. Raises
    CheckpointError naming `source` and every tensor that is not real numbers."""
    dtypes = {name: np.asarray(tensors[name]).dtype for name, _ in targets}
    bad = [f"{name}: {dtype}" for name, dtype in dtypes.items() if dtype.kind not in "biuf"]
    if bad:
        raise CheckpointError(f"{source} holds tensors that are not real numbers. Expected float, integer or bool "
                              f"arrays. Received: {', '.join(bad[:12])}{' ...' if len(bad) > 12 else ''}")
    return [(variable, to_keras_layout(np.asarray(tensors[name])).astype(variable.dtype))
            for name, variable in targets]


def assign_original(model, tensors, naming, source="checkpoint"):
    """Set `model`'s weights from flat original tensors, all or nothing: raises ValueError listing
    every missing, unexpected or mis-shaped tensor, or CheckpointError for a tensor that is not
    real numbers, before changing anything."""
    fc_layers = sorted({k.rsplit(".", 1)[0] for k in tensors if k.startswith("fc")})
    names = checkpoint_names(model, naming, fc_layers[0] if len(fc_layers) == 1 else "fc_kinetics")
    fc_prefix = names.pop("fc")
    keras_layers = _keras_layers(model)
    targets = [pair for key, layer in keras_layers.items()
               for pair in _variables(layer, names.get(key, fc_prefix))]
    expected = {name for name, _ in targets}
    ignored = {k for k in tensors if k.endswith(IGNORED_SUFFIXES)}
    if "fc" not in keras_layers:  # include_top=False: the classifier is not needed
        ignored |= {k for k in tensors if k.startswith(fc_prefix + ".")}
    missing = sorted(expected - set(tensors))
    unexpected = sorted(set(tensors) - expected - ignored)
    misshaped = []
    for name, variable in targets:
        if name in tensors and to_keras_layout(tensors[name]).shape != tuple(variable.shape):
            misshaped.append(f"{name}: {tuple(tensors[name].shape)} in the file, i.e. "
                             f"{to_keras_layout(tensors[name]).shape} in Keras layout, but the model has "
                             f"{tuple(variable.shape)}")
    if missing or unexpected or misshaped:
        raise ValueError(_mismatch_message(model, source, naming, missing, unexpected, misshaped))
    for variable, value in _keras_values(targets, tensors, source):
        variable.assign(value)
    log.info("loaded %d tensors from %s into %s", len(targets), source, model.name)


def _mismatch_message(model, source, naming, missing, unexpected, misshaped, shown=12):
    def listing(title, items):
        more = f" ... and {len(items) - shown} more" if len(items) > shown else ""
        return f"\n  {title} ({len(items)}): {', '.join(items[:shown])}{more}" if items else ""

    return (f"{source} does not fit {model.name} (read with {naming} names). Expected exactly the model's "
            f"tensors.{listing('missing', missing)}{listing('unexpected', unexpected)}"
            f"{listing('mis-shaped', misshaped)}\n  Check depth, modality (rgb: 3 input channels, flow: 2) "
            "and classes against the checkpoint.")


def load_original_weights(model, path):
    """Load an original checkpoint (`.pth`, `.pth.tar`, `.npz`, `.caffemodel`) into `model`,
    all or nothing (see `assign_original`). The file is read within `MAX_BYTES` (the largest
    architecture), not the model's size, so that a checkpoint of a larger network is reported
    tensor by tensor."""
    naming, tensors = read_original(path)
    assign_original(model, tensors, naming, source=os.fspath(path))
