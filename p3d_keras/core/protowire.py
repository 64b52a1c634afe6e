"""The protobuf wire format, by hand: the primitives `caffemodel`, `export` and the TFRecord schema
build their messages on.

No protobuf package is needed. Encoding: `encode_varint`, `field_key`, `length_prefix` (the tag
and length of a field whose payload is written separately, e.g. streamed from a file),
`length_delimited`, `packed_varints`, `packed_floats`. Fields written in ascending field-number
order, and map entries sorted by key, give the bytes of protobuf's deterministic serialisation.
Decoding: `decode_varint`, `iter_fields` (varint, fixed64, length-delimited and fixed32 fields;
groups are rejected), `iter_file_fields` (the same over a range of a file, headers only),
`group_fields`, `payload`, `signed64`. Anything that is not valid wire format (a truncated varint
or field, a varint over ten bytes, field number 0, an unknown or group wire type) raises
`ProtobufDecodeError`, a `ValueError`.
"""
import struct

# Wire types (protobuf encoding spec). 3 and 4 are the deprecated group markers.
VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5

_MAX_VARINT_BYTES = 10


class ProtobufDecodeError(ValueError):
    """Bytes that are not valid protobuf wire format (the caller adds the file name)."""


# ---------------------------------------------------------------------------------------------
# Encoding


def encode_varint(value):
    """Encode an int in [-2**63, 2**64) as a varint; negatives as int64 does (ten bytes)."""
    if not -(1 << 63) <= value < 1 << 64:
        raise ValueError(f"Expected an int64 or uint64 value. Received: {value}")
    if value < 0:
        value += 1 << 64  # int64 negatives are ten-byte varints
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def field_key(field, wire):
    """A field's tag: number and wire type."""
    return encode_varint(field << 3 | wire)


def length_prefix(field, size):
    """The tag and length of a length-delimited field whose `size`-byte payload follows."""
    return field_key(field, LENGTH_DELIMITED) + encode_varint(size)


def length_delimited(field, payload):
    """A string, bytes or sub-message field; a `str` payload is written as UTF-8."""
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    return length_prefix(field, len(payload)) + bytes(payload)


def packed_varints(field, values):
    """A packed repeated int64 (or other varint) field; nothing at all when `values` is empty."""
    values = list(values)
    return length_delimited(field, b"".join(encode_varint(v) for v in values)) if values else b""


def packed_floats(field, values):
    """A packed repeated float (32-bit) field; nothing at all when `values` is empty."""
    values = list(values)
    return length_delimited(field, struct.pack(f"<{len(values)}f", *values)) if values else b""


# ---------------------------------------------------------------------------------------------
# Decoding


def decode_varint(buf, pos):
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
        if shift >= 7 * _MAX_VARINT_BYTES:
            raise ProtobufDecodeError(f"varint longer than {_MAX_VARINT_BYTES} bytes ending at byte {pos}")


def iter_fields(buf):
    """Yield `(field_number, wire_type, value)` for each field of the message in `buf`.

    `value` is an int for varints, a memoryview of the payload for length-delimited fields, and
    the raw little-endian bytes (a memoryview) for 32- and 64-bit fields. Groups are rejected.
    """
    buf = memoryview(buf)
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = decode_varint(buf, pos)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise ProtobufDecodeError(f"field number 0 at byte {pos}")
        if wire == VARINT:
            value, pos = decode_varint(buf, pos)
        elif wire in (FIXED64, FIXED32):
            size = 8 if wire == FIXED64 else 4
            value, pos = buf[pos:pos + size], pos + size
        elif wire == LENGTH_DELIMITED:
            size, pos = decode_varint(buf, pos)
            value, pos = buf[pos:pos + size], pos + size
        else:
            raise ProtobufDecodeError(f"unsupported wire type {wire} for field {field} at byte {pos}")
        if pos > end:
            raise ProtobufDecodeError(f"field {field} runs past the end of the data ({pos} > {end} bytes)")
        yield field, wire, value


def iter_file_fields(f, start, end):
    """Yield `(field_number, wire_type, value, payload_offset)` for each field of the message at
    bytes `[start, end)` of the seekable binary file `f`, reading only the fields' headers: `value`
    is an int for varints, the raw bytes for 32- and 64-bit fields, and for length-delimited
    fields the payload's length (the payload, at `payload_offset`, is not read). So a message
    larger than memory can be walked field by field; errors as in `iter_fields`."""
    pos = start
    while pos < end:
        f.seek(pos)
        head = f.read(2 * _MAX_VARINT_BYTES)
        key, used = decode_varint(head, 0)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise ProtobufDecodeError(f"field number 0 at byte {pos}")
        if wire == VARINT:
            payload = pos + used
            value, used = decode_varint(head, used)
            pos += used
        elif wire in (FIXED64, FIXED32):
            size = 8 if wire == FIXED64 else 4
            value, payload, pos = head[used:used + size], pos + used, pos + used + size
        elif wire == LENGTH_DELIMITED:
            value, used = decode_varint(head, used)
            payload, pos = pos + used, pos + used + value
        else:
            raise ProtobufDecodeError(f"unsupported wire type {wire} for field {field} at byte {pos}")
        if pos > end:
            raise ProtobufDecodeError(f"field {field} runs past the end of the message ({pos} > {end})")
        yield field, wire, value, payload


def group_fields(buf):
    """`{field: [(wire_type, value), ...]}` for the message in `buf`, in order of appearance."""
    fields = {}
    for field, wire, value in iter_fields(buf):
        fields.setdefault(field, []).append((wire, value))
    return fields


def payload(wire, value):
    """The bytes (a memoryview) of a string or message field; any other wire type is an error."""
    if wire != LENGTH_DELIMITED:
        raise ProtobufDecodeError(f"string or message field with wire type {wire}")
    return value


def signed64(value):
    """Two's complement reinterpretation of a varint as int64."""
    return value - (1 << 64) if value >= 1 << 63 else value
