"""Read and write Caffe `.caffemodel` weights with the hand-written codec of `p3d_keras.core.protowire`.

No caffe and no protobuf package: a `.caffemodel` is a serialized `caffe.NetParameter`, and the
few fields that carry weights are decoded here by hand. Field numbers follow BVLC/caffe
`src/caffe/proto/caffe.proto`:

    NetParameter       1 name, 100 layer (LayerParameter), 2 layers (V1LayerParameter, legacy)
    LayerParameter     1 name, 2 type (string), 7 blobs
    V1LayerParameter   4 name, 5 type (enum), 6 blobs
    BlobProto          7 shape, 5 data (packed float), 8 double_data (packed double),
                       1 num, 2 channels, 3 height, 4 width (legacy 4-D shape)
    BlobShape          1 dim (repeated int64, packed)

`read_caffemodel` returns `{layer name: [blob, ...]}` as float32 arrays in Caffe's own layout
(O, I, k...; BatchNorm: mean, variance, moving-average factor; Scale: gamma, beta).
`write_caffemodel` is its inverse, for tests and for maintainers who need a fixture.

A file is decoded within the limits of `p3d_keras.weights.untrusted`: its size at most `max_bytes`, at
most `MAX_PROTOBUF_FIELDS` fields decoded in all (of the order of 20 000 for P3D-199; unpacked
repeated floats, which Caffe never writes, cost one field each), and a blob's declared shape must
match its values before it is reshaped.
"""
import math
import os

import numpy as np

from p3d_keras.core.protowire import (  # noqa: F401 (iter_fields and the wire types stay importable from here)
    FIXED32,
    FIXED64,
    LENGTH_DELIMITED,
    VARINT,
    ProtobufDecodeError,
    decode_varint,
    encode_varint,
    group_fields,
    iter_fields,
    length_delimited,
    payload,
    signed64,
)
from p3d_keras.weights.untrusted import MAX_BYTES, MAX_PROTOBUF_FIELDS, CheckpointError, describe, too_large

# caffe.proto field numbers: the one place both the reader and the writer take them from.
NET_NAME, NET_LAYERS_V1, NET_LAYER = 1, 2, 100
LAYER_NAME, LAYER_TYPE, LAYER_BLOBS = 1, 2, 7
V1_LAYER_NAME, V1_LAYER_TYPE, V1_LAYER_BLOBS = 4, 5, 6
BLOB_NUM, BLOB_CHANNELS, BLOB_HEIGHT, BLOB_WIDTH = 1, 2, 3, 4
BLOB_DATA, BLOB_SHAPE, BLOB_DOUBLE_DATA = 5, 7, 8
SHAPE_DIM = 1

# Top-level NetParameter fields and their wire types; anything else is not a NetParameter.
_NET_FIELDS = {NET_NAME: LENGTH_DELIMITED, NET_LAYERS_V1: LENGTH_DELIMITED, 3: LENGTH_DELIMITED,
               4: (VARINT, LENGTH_DELIMITED), 5: VARINT, 6: LENGTH_DELIMITED, 7: VARINT,
               8: LENGTH_DELIMITED, NET_LAYER: LENGTH_DELIMITED}


# ---------------------------------------------------------------------------------------------
# Decoding


class _TooManyFields(ProtobufDecodeError):
    """More fields than `MAX_PROTOBUF_FIELDS`."""


class _FieldBudget:
    """Counts the fields decoded from one file against `MAX_PROTOBUF_FIELDS`, so that no file
    (say, millions of tiny fields) keeps the decoder busy for long."""

    def __init__(self, limit=MAX_PROTOBUF_FIELDS):
        self.left = limit

    def spend(self):
        self.left -= 1
        if self.left < 0:
            raise _TooManyFields(f"more than {MAX_PROTOBUF_FIELDS} protobuf fields and packed integers "
                                      f"(of the order of 20 000 for P3D-199)")

    def fields(self, buf):
        """`iter_fields(buf)`, each field counted."""
        for field in iter_fields(buf):
            self.spend()
            yield field

    def group(self, buf):
        """`group_fields(buf)`, each field counted."""
        fields = {}
        for field, wire, value in self.fields(buf):
            fields.setdefault(field, []).append((wire, value))
        return fields


def _repeated_int64(values, budget):
    """Decode the (packed or unpacked) occurrences of a repeated int64 field."""
    out = []
    for wire, value in values:
        if wire == VARINT:
            out.append(signed64(value))
        elif wire == LENGTH_DELIMITED:
            pos = 0
            while pos < len(value):
                budget.spend()
                item, pos = decode_varint(value, pos)
                out.append(signed64(item))
        else:
            raise ProtobufDecodeError(f"repeated int64 with wire type {wire}")
    return out


def _repeated_real(values, dtype):
    """Decode the (packed or unpacked) occurrences of a repeated float/double field into one
    float32 array (each occurrence's bytes are gathered first, not one array per value)."""
    dtype = np.dtype(dtype)
    scalar_wire = FIXED32 if dtype.itemsize == 4 else FIXED64
    for wire, value in values:
        if wire not in (LENGTH_DELIMITED, scalar_wire) or len(value) % dtype.itemsize:
            raise ProtobufDecodeError(
                f"repeated {dtype.name} field with wire type {wire} and {len(value)} bytes")
    raw = values[0][1] if len(values) == 1 else b"".join(value for _, value in values)
    return np.frombuffer(raw, dtype).astype(np.float32)


def _string(values):
    """The last occurrence of a string field (protobuf's rule for a repeated optional field)."""
    return bytes(payload(*values[-1])).decode("utf-8")


def _last_varint(values):
    """The last occurrence of an int64 field."""
    wire, value = values[-1]
    if wire != VARINT:
        raise ProtobufDecodeError(f"integer field with wire type {wire}")
    return signed64(value)


def decode_blob(buf, budget=None):
    """A `BlobProto` message -> float32 array in its declared shape. `budget` (a `_FieldBudget`)
    counts the fields decoded; ProtobufDecodeError when the shape and the values disagree."""
    budget = _FieldBudget() if budget is None else budget
    fields = budget.group(buf)
    legacy = [BLOB_NUM, BLOB_CHANNELS, BLOB_HEIGHT, BLOB_WIDTH]
    real, itemsize = (BLOB_DOUBLE_DATA, 8) if BLOB_DOUBLE_DATA in fields else (BLOB_DATA, 4)
    values = sum(len(value) for _, value in fields.get(real, [])) // itemsize
    if BLOB_SHAPE in fields:
        shape_fields = budget.group(payload(*fields[BLOB_SHAPE][-1]))
        shape = tuple(_repeated_int64(shape_fields.get(SHAPE_DIM, []), budget))
    elif any(f in fields for f in legacy):
        # Caffe's Blob::FromProto: the legacy dims always make a 4-D blob (unset ones are 0).
        shape = tuple(_last_varint(fields[f]) if f in fields else 0 for f in legacy)
    else:
        shape = (values,)
    if any(d < 0 for d in shape) or math.prod(shape) != values:
        raise ProtobufDecodeError(f"blob shape {describe(shape)} does not match its {values} values")
    return _repeated_real(fields.get(real, []), f"<f{itemsize}").reshape(shape)


def _decode_layer(buf, name_field, blobs_field, budget):
    """A LayerParameter or V1LayerParameter message -> `(name, [blobs])`."""
    fields = budget.group(buf)
    name = _string(fields[name_field]) if name_field in fields else ""
    return name, [decode_blob(payload(wire, value), budget) for wire, value in fields.get(blobs_field, [])]


def _looks_like_net(buf):
    """True when the top level of `buf` is wire-valid, uses only NetParameter's fields with their
    wire types and holds at least one layer; raises `_TooManyFields` past `MAX_PROTOBUF_FIELDS`
    fields. Sub-messages are not decoded."""
    has_layer = False
    try:
        for field, wire, _ in _FieldBudget().fields(buf):
            expected = _NET_FIELDS.get(field)
            if expected is None or wire not in (expected if isinstance(expected, tuple) else (expected,)):
                return False
            has_layer |= field in (NET_LAYER, NET_LAYERS_V1)
    except _TooManyFields:
        raise
    except ProtobufDecodeError:
        return False
    return has_layer


def is_caffemodel(path, max_bytes=MAX_BYTES):
    """Whether the file at `path`, of at most `max_bytes`, parses as a caffe NetParameter with
    layers (see `_looks_like_net`)."""
    if os.path.getsize(path) > max_bytes:
        return False
    with open(path, "rb") as f:
        try:
            return _looks_like_net(f.read())
        except _TooManyFields:
            return False


def read_caffemodel(path, max_bytes=MAX_BYTES):
    """Read a `.caffemodel`: `{layer name: [float32 blob, ...]}`, layers without blobs omitted.

    Both the current `layer` (LayerParameter) and the legacy `layers` (V1LayerParameter) fields
    are read. Blobs keep their stored shape; blobs saved with the legacy num/channels/height/width
    fields are 4-D, as Caffe itself loads them (e.g. an old InnerProduct weight is (1, 1, out, in)).
    The file may take at most `max_bytes` (see `p3d_keras.weights.untrusted`; the weights it holds are
    never larger than the file), and its decoding at most `MAX_PROTOBUF_FIELDS` fields.
    Raises FileNotFoundError for a missing file and CheckpointError (a ValueError) naming the file
    for anything that is not a caffemodel with weights within those limits (garbage, a truncated
    file, duplicate layer names, a blob whose shape and values disagree).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No caffemodel at {path!r}. Expected an existing .caffemodel file.")
    size = os.path.getsize(path)
    if size > max_bytes:
        raise too_large(path, "it holds", size, max_bytes)
    with open(path, "rb") as f:
        buf = f.read()
    layers, budget = {}, _FieldBudget()
    try:
        if not _looks_like_net(buf):
            raise CheckpointError(
                f"{path} is not a Caffe NetParameter (.caffemodel): its bytes do not parse as protobuf with "
                f"'layer' fields, or it is truncated. Received: {len(buf)} bytes starting {bytes(buf[:16])!r}")
        for field, _, value in budget.fields(buf):
            if field == NET_LAYER:
                name, blobs = _decode_layer(value, LAYER_NAME, LAYER_BLOBS, budget)
            elif field == NET_LAYERS_V1:
                name, blobs = _decode_layer(value, V1_LAYER_NAME, V1_LAYER_BLOBS, budget)
            else:
                continue
            if not blobs:
                continue
            if name in layers:
                raise ProtobufDecodeError(f"two layers with blobs are both named {name!r}")
            layers[name] = blobs
    except (ProtobufDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"Corrupt caffemodel {path}: {e}. Expected a valid caffe NetParameter.") from e
    if not layers:
        raise CheckpointError(f"{path} is a NetParameter without any layer weights (blobs). "
                              f"Expected a trained .caffemodel, not a deploy net.")
    return layers


# ---------------------------------------------------------------------------------------------
# Encoding


def encode_blob(array):
    """A float array -> `BlobProto` bytes (BlobShape + packed float32 data)."""
    array = np.asarray(array, dtype="<f4")
    shape = length_delimited(SHAPE_DIM, b"".join(encode_varint(int(d)) for d in array.shape))
    return (length_delimited(BLOB_SHAPE, shape)
            + length_delimited(BLOB_DATA, np.ascontiguousarray(array).tobytes()))


def encode_net(layers, layer_types=None, net_name="P3D"):
    """`{name: [arrays]}` -> serialized `NetParameter` bytes using the `layer` field."""
    layer_types = {} if layer_types is None else dict(layer_types)
    unknown = sorted(set(layer_types) - set(layers))
    if unknown:
        raise ValueError(f"layer_types names layers that are not in `layers`. Expected a subset of "
                         f"{sorted(layers)}. Received: unknown names {unknown}")
    parts = [length_delimited(NET_NAME, net_name.encode("utf-8"))]
    for name, blobs in layers.items():
        layer = length_delimited(LAYER_NAME, name.encode("utf-8"))
        if name in layer_types:
            layer += length_delimited(LAYER_TYPE, layer_types[name].encode("utf-8"))
        layer += b"".join(length_delimited(LAYER_BLOBS, encode_blob(b)) for b in blobs)
        parts.append(length_delimited(NET_LAYER, layer))
    return b"".join(parts)


def write_caffemodel(path, layers, layer_types=None, net_name="P3D"):
    """Write `{layer name: [arrays]}` as a `.caffemodel` (new-style `layer` field, float32 blobs).

    `layer_types` optionally gives each layer's Caffe type string ("Convolution", "BatchNorm",
    "Scale", "InnerProduct", ...); layers it does not name are written without a type. Its names
    must all be in `layers`.
    """
    with open(os.fspath(path), "wb") as f:
        f.write(encode_net(layers, layer_types, net_name))

