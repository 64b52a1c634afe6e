"""Read and write Caffe `.caffemodel` weights with a minimal protobuf wire-format codec.

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
"""
import os

import numpy as np

# Wire types (protobuf encoding spec).
VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5

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


class ProtobufDecodeError(ValueError):
    """Bytes that are not valid protobuf wire format (the caller adds the file name)."""


# ---------------------------------------------------------------------------------------------
# Wire format: decoding


def _read_varint(buf, pos):
    """Decode the varint at `buf[pos]`; return `(value, next_pos)`."""
    value, shift = 0, 0
    while True:
        if pos >= len(buf):
            raise ProtobufDecodeError(f"varint runs past the end of the data at byte {pos}")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift >= 70:
            raise ProtobufDecodeError(f"varint longer than 10 bytes ending at byte {pos}")


def iter_fields(buf):
    """Yield `(field_number, wire_type, value)` for each field of the message in `buf`.

    `value` is an int for varints, a memoryview of the payload for length-delimited fields, and
    the raw little-endian bytes (a memoryview) for 32- and 64-bit fields. Groups are rejected:
    caffe.proto has none.
    """
    buf = memoryview(buf)
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _read_varint(buf, pos)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise ProtobufDecodeError(f"field number 0 at byte {pos}")
        if wire == VARINT:
            value, pos = _read_varint(buf, pos)
        elif wire in (FIXED64, FIXED32):
            size = 8 if wire == FIXED64 else 4
            value, pos = buf[pos:pos + size], pos + size
        elif wire == LENGTH_DELIMITED:
            size, pos = _read_varint(buf, pos)
            value, pos = buf[pos:pos + size], pos + size
        else:
            raise ProtobufDecodeError(f"unsupported wire type {wire} for field {field} at byte {pos}")
        if pos > end:
            raise ProtobufDecodeError(f"field {field} runs past the end of the data ({pos} > {end} bytes)")
        yield field, wire, value


def _signed64(value):
    """Two's complement reinterpretation of a varint as int64."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _repeated_int64(values):
    """Decode the (packed or unpacked) occurrences of a repeated int64 field."""
    out = []
    for wire, value in values:
        if wire == VARINT:
            out.append(_signed64(value))
        elif wire == LENGTH_DELIMITED:
            pos = 0
            while pos < len(value):
                item, pos = _read_varint(value, pos)
                out.append(_signed64(item))
        else:
            raise ProtobufDecodeError(f"repeated int64 with wire type {wire}")
    return out


def _repeated_real(values, dtype):
    """Decode the (packed or unpacked) occurrences of a repeated float/double field."""
    dtype = np.dtype(dtype)
    scalar_wire = FIXED32 if dtype.itemsize == 4 else FIXED64
    parts = []
    for wire, value in values:
        if wire not in (LENGTH_DELIMITED, scalar_wire) or len(value) % dtype.itemsize:
            raise ProtobufDecodeError(
                f"repeated {dtype.name} field with wire type {wire} and {len(value)} bytes")
        parts.append(np.frombuffer(value, dtype))
    return np.concatenate(parts) if parts else np.zeros((0,), dtype)


def _group(buf):
    """`{field: [(wire_type, value), ...]}` for the message in `buf`, in order of appearance."""
    fields = {}
    for field, wire, value in iter_fields(buf):
        fields.setdefault(field, []).append((wire, value))
    return fields


def _payload(wire, value):
    """The bytes of a string or message field; any other wire type is an error."""
    if wire != LENGTH_DELIMITED:
        raise ProtobufDecodeError(f"string or message field with wire type {wire}")
    return value


def _string(values):
    """The last occurrence of a string field (protobuf's rule for a repeated optional field)."""
    return bytes(_payload(*values[-1])).decode("utf-8")


def _last_varint(values):
    """The last occurrence of an int64 field."""
    wire, value = values[-1]
    if wire != VARINT:
        raise ProtobufDecodeError(f"integer field with wire type {wire}")
    return _signed64(value)


def decode_blob(buf):
    """A `BlobProto` message -> float32 array in its declared shape."""
    fields = _group(buf)
    if BLOB_DOUBLE_DATA in fields:
        data = _repeated_real(fields[BLOB_DOUBLE_DATA], "<f8").astype(np.float32)
    else:
        data = _repeated_real(fields.get(BLOB_DATA, []), "<f4").astype(np.float32)
    legacy = [BLOB_NUM, BLOB_CHANNELS, BLOB_HEIGHT, BLOB_WIDTH]
    if BLOB_SHAPE in fields:
        shape_fields = _group(_payload(*fields[BLOB_SHAPE][-1]))
        shape = tuple(_repeated_int64(shape_fields.get(SHAPE_DIM, [])))
    elif any(f in fields for f in legacy):
        # Caffe's Blob::FromProto: the legacy dims always make a 4-D blob (unset ones are 0).
        shape = tuple(_last_varint(fields[f]) if f in fields else 0 for f in legacy)
    else:
        shape = (data.size,)
    if any(d < 0 for d in shape) or int(np.prod(shape, dtype=np.int64)) != data.size:
        raise ProtobufDecodeError(f"blob shape {shape} does not match its {data.size} values")
    return data.reshape(shape)


def _decode_layer(buf, name_field, blobs_field):
    """A LayerParameter or V1LayerParameter message -> `(name, [blobs])`."""
    fields = _group(buf)
    name = _string(fields[name_field]) if name_field in fields else ""
    return name, [decode_blob(_payload(wire, value)) for wire, value in fields.get(blobs_field, [])]


def _looks_like_net(buf):
    """True when the top level of `buf` is wire-valid, uses only NetParameter's fields with their
    wire types, and holds at least one layer. Sub-messages are not decoded."""
    has_layer = False
    try:
        for field, wire, _ in iter_fields(buf):
            expected = _NET_FIELDS.get(field)
            if expected is None or wire not in (expected if isinstance(expected, tuple) else (expected,)):
                return False
            has_layer |= field in (NET_LAYER, NET_LAYERS_V1)
    except ProtobufDecodeError:
        return False
    return has_layer


def is_caffemodel(path):
    """Whether the file at `path` parses as a caffe NetParameter with layers (see `_looks_like_net`)."""
    with open(path, "rb") as f:
        return _looks_like_net(f.read())


def read_caffemodel(path):
    """Read a `.caffemodel`: `{layer name: [float32 blob, ...]}`, layers without blobs omitted.

    Both the current `layer` (LayerParameter) and the legacy `layers` (V1LayerParameter) fields
    are read. Blobs keep their stored shape; blobs saved with the legacy num/channels/height/width
    fields are 4-D, as Caffe itself loads them (e.g. an old InnerProduct weight is (1, 1, out, in)).
    Raises FileNotFoundError for a missing file and ValueError naming the file for anything that
    is not a caffemodel with weights (garbage, a truncated file, duplicate layer names).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No caffemodel at {path!r}. Expected an existing .caffemodel file.")
    with open(path, "rb") as f:
        buf = f.read()
    if not _looks_like_net(buf):
        raise ValueError(
            f"{path} is not a Caffe NetParameter (.caffemodel): its bytes do not parse as protobuf with "
            f"'layer' fields, or it is truncated. Received: {len(buf)} bytes starting {bytes(buf[:16])!r}")
    layers = {}
    try:
        for field, _, value in iter_fields(buf):
            if field == NET_LAYER:
                name, blobs = _decode_layer(value, LAYER_NAME, LAYER_BLOBS)
            elif field == NET_LAYERS_V1:
                name, blobs = _decode_layer(value, V1_LAYER_NAME, V1_LAYER_BLOBS)
            else:
                continue
            if not blobs:
                continue
            if name in layers:
                raise ProtobufDecodeError(f"two layers with blobs are both named {name!r}")
            layers[name] = blobs
    except (ProtobufDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"Corrupt caffemodel {path}: {e}. Expected a valid caffe NetParameter.") from e
    if not layers:
        raise ValueError(f"{path} is a NetParameter without any layer weights (blobs). "
                         f"Expected a trained .caffemodel, not a deploy net.")
    return layers


# ---------------------------------------------------------------------------------------------
# Wire format: encoding


def _varint(value):
    """Encode a non-negative int, or an int64 negative as protobuf does (ten bytes)."""
    if value < 0:
        value += 1 << 64  # int64 negatives are ten-byte varints
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _key(field, wire):
    """A field's tag: number and wire type."""
    return _varint(field << 3 | wire)


def _length_delimited(field, payload):
    """A string, bytes or sub-message field."""
    return _key(field, LENGTH_DELIMITED) + _varint(len(payload)) + payload


def encode_blob(array):
    """A float array -> `BlobProto` bytes (BlobShape + packed float32 data)."""
    array = np.asarray(array, dtype="<f4")
    shape = _length_delimited(SHAPE_DIM, b"".join(_varint(int(d)) for d in array.shape))
    return (_length_delimited(BLOB_SHAPE, shape)
            + _length_delimited(BLOB_DATA, np.ascontiguousarray(array).tobytes()))


def encode_net(layers, layer_types=None, net_name="P3D"):
    """`{name: [arrays]}` -> serialized `NetParameter` bytes using the `layer` field."""
    layer_types = {} if layer_types is None else dict(layer_types)
    unknown = sorted(set(layer_types) - set(layers))
    if unknown:
        raise ValueError(f"layer_types names layers that are not in `layers`. Expected a subset of "
                         f"{sorted(layers)}. Received: unknown names {unknown}")
    parts = [_length_delimited(NET_NAME, net_name.encode("utf-8"))]
    for name, blobs in layers.items():
        layer = _length_delimited(LAYER_NAME, name.encode("utf-8"))
        if name in layer_types:
            layer += _length_delimited(LAYER_TYPE, layer_types[name].encode("utf-8"))
        layer += b"".join(_length_delimited(LAYER_BLOBS, encode_blob(b)) for b in blobs)
        parts.append(_length_delimited(NET_LAYER, layer))
    return b"".join(parts)


def write_caffemodel(path, layers, layer_types=None, net_name="P3D"):
    """Write `{layer name: [arrays]}` as a `.caffemodel` (new-style `layer` field, float32 blobs).

    `layer_types` optionally gives each layer's Caffe type string ("Convolution", "BatchNorm",
    "Scale", "InnerProduct", ...); layers it does not name are written without a type. Its names
    must all be in `layers`.
    """
    with open(os.fspath(path), "wb") as f:
        f.write(encode_net(layers, layer_types, net_name))

