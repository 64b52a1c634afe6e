"""p3d_keras.core.protowire: the hand-written protobuf wire-format primitives."""
import pytest

from p3d_keras.core import protowire as pw


@pytest.mark.parametrize("value, encoded", [
    (0, b"\x00"), (1, b"\x01"), (127, b"\x7f"), (128, b"\x80\x01"), (300, b"\xac\x02"),
    (2**63, b"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01"), (2**64 - 1, b"\xff" * 9 + b"\x01"),
])
def test_varint_round_trip(value, encoded):
    assert pw.encode_varint(value) == encoded
    assert pw.decode_varint(encoded, 0) == (value, len(encoded))
    assert pw.decode_varint(b"\xff" + encoded + b"\x05", 1) == (value, len(encoded) + 1)


def test_negative_int64_is_ten_bytes():
    encoded = pw.encode_varint(-1)
    assert encoded == b"\xff" * 9 + b"\x01"
    assert pw.signed64(pw.decode_varint(encoded, 0)[0]) == -1
    assert pw.signed64(pw.decode_varint(pw.encode_varint(-(2**63)), 0)[0]) == -(2**63)


def test_out_of_range_varint_rejected():
    with pytest.raises(ValueError, match="int64 or uint64"):
        pw.encode_varint(2**64)
    with pytest.raises(ValueError, match="int64 or uint64"):
        pw.encode_varint(-(2**63) - 1)


@pytest.mark.parametrize("data", [b"", b"\x80", b"\xff\xff", pw.encode_varint(2**63)[:-1]])
def test_truncated_varint_raises(data):
    with pytest.raises(pw.ProtobufDecodeError, match="varint runs past the end"):
        pw.decode_varint(data, 0)


def test_overlong_varint_raises():
    with pytest.raises(pw.ProtobufDecodeError, match="longer than 10 bytes"):
        pw.decode_varint(b"\x80" * 10 + b"\x01", 0)


def test_decode_error_is_a_value_error():
    assert issubclass(pw.ProtobufDecodeError, ValueError)


def test_nested_length_delimited_round_trip():
    inner = pw.length_delimited(1, "name") + pw.field_key(2, pw.VARINT) + pw.encode_varint(300)
    outer = pw.length_delimited(3, inner) + pw.length_delimited(4, b"\x00\x01") + pw.length_delimited(3, b"")
    assert outer[:2] == b"\x1a" + bytes([len(inner)])

    fields = list(pw.iter_fields(outer))
    assert [(f, w) for f, w, _ in fields] == [(3, pw.LENGTH_DELIMITED), (4, pw.LENGTH_DELIMITED),
                                              (3, pw.LENGTH_DELIMITED)]
    assert bytes(fields[0][2]) == inner and bytes(fields[1][2]) == b"\x00\x01" and bytes(fields[2][2]) == b""

    grouped = pw.group_fields(outer)
    assert sorted(grouped) == [3, 4] and len(grouped[3]) == 2
    nested = pw.group_fields(pw.payload(*grouped[3][0]))
    assert bytes(pw.payload(*nested[1][0])) == b"name"
    assert nested[2] == [(pw.VARINT, 300)]


def test_fixed_width_fields():
    data = pw.field_key(1, pw.FIXED32) + b"\x01\x02\x03\x04" + pw.field_key(2, pw.FIXED64) + bytes(range(8))
    assert [(f, w, bytes(v)) for f, w, v in pw.iter_fields(data)] == [
        (1, pw.FIXED32, b"\x01\x02\x03\x04"), (2, pw.FIXED64, bytes(range(8)))]


def test_payload_rejects_non_length_delimited():
    with pytest.raises(pw.ProtobufDecodeError, match="wire type 0"):
        pw.payload(pw.VARINT, 5)


@pytest.mark.parametrize("wire", [3, 4, 6, 7])
def test_unknown_or_group_wire_type_raises(wire):
    with pytest.raises(pw.ProtobufDecodeError, match=f"unsupported wire type {wire} for field 1"):
        list(pw.iter_fields(pw.field_key(1, wire) + b"\x00"))


@pytest.mark.parametrize("data, match", [
    (pw.length_delimited(1, b"abcdef")[:-1], "field 1 runs past the end"),
    (pw.field_key(2, pw.FIXED32) + b"\x00\x00", "field 2 runs past the end"),
    (pw.field_key(3, pw.FIXED64) + b"\x00" * 7, "field 3 runs past the end"),
    (pw.field_key(4, pw.VARINT) + b"\x80", "varint runs past the end"),
    (pw.field_key(5, pw.LENGTH_DELIMITED), "varint runs past the end"),
    (b"\x00\x00", "field number 0"),
])
def test_truncated_or_invalid_message_raises(data, match):
    with pytest.raises(pw.ProtobufDecodeError, match=match):
        list(pw.iter_fields(data))


def test_length_prefix_is_the_head_of_length_delimited():
    payload = b"x" * 300
    assert pw.length_prefix(2, 300) == b"\x12\xac\x02"
    assert pw.length_delimited(2, payload) == pw.length_prefix(2, 300) + payload
    assert pw.length_delimited(1, "ü") == b"\x0a\x02\xc3\xbc"


def test_packed_fields():
    assert pw.packed_varints(1, [3, 300, -1]) == b"\x0a\x0d\x03\xac\x02" + b"\xff" * 9 + b"\x01"
    assert pw.packed_floats(1, [1.0, -2.5]) == b"\x0a\x08\x00\x00\x80\x3f\x00\x00\x20\xc0"
    assert pw.packed_varints(1, []) == b"" and pw.packed_floats(1, []) == b""  # empty: no field at all
    (field, wire, value), = pw.iter_fields(pw.packed_varints(5, [1, 2]))
    assert (field, wire, bytes(value)) == (5, pw.LENGTH_DELIMITED, b"\x01\x02")
