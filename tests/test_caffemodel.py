"""p3d_keras.weights.caffemodel: round trips, and cross-checks against the protobuf package."""
import time

import numpy as np
import pytest

from p3d_keras.weights.caffemodel import encode_net, is_caffemodel, read_caffemodel, write_caffemodel
from p3d_keras.core.protowire import field_key, length_delimited, packed_varints
from p3d_keras.weights.untrusted import MAX_PROTOBUF_FIELDS, CheckpointError


def p3d_like_layers(seed=0):
    """A stem conv (5-D), its BatchNorm + Scale blobs, a temporal conv and a classifier."""
    rng = np.random.default_rng(seed)
    f32 = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    return {
        "conv1": [f32(64, 3, 1, 7, 7)],
        "bn_conv1": [f32(64), np.abs(f32(64)), np.ones(1, np.float32)],
        "scale_conv1": [f32(64), f32(64)],
        "res2a_branch2b_t": [f32(8, 8, 3, 1, 1)],
        "bn_4blob": [f32(8), f32(8), f32(8), f32(8)],
        "fc_kinetics": [f32(400, 2048), f32(400)],
    }


TYPES = {"conv1": "Convolution", "bn_conv1": "BatchNorm", "scale_conv1": "Scale",
         "res2a_branch2b_t": "Convolution", "bn_4blob": "BN", "fc_kinetics": "InnerProduct"}


def assert_layers_equal(loaded, expected):
    assert list(loaded) == list(expected)
    for name, blobs in expected.items():
        assert len(loaded[name]) == len(blobs), name
        for got, want in zip(loaded[name], blobs):
            assert got.dtype == np.float32 and got.shape == want.shape, name
            np.testing.assert_array_equal(got, want, err_msg=name)


def test_round_trip(tmp_path):
    layers = p3d_like_layers()
    write_caffemodel(tmp_path / "p3d.caffemodel", layers, TYPES)
    assert_layers_equal(read_caffemodel(tmp_path / "p3d.caffemodel"), layers)


def test_layer_types_must_name_known_layers():
    with pytest.raises(ValueError, match=r"Received: unknown names \['conv9'\]"):
        encode_net({"conv1": [np.ones(1, "f4")]}, {"conv9": "Convolution"})


# --- cross-checks with the protobuf package and a schema built from caffe.proto's field numbers


def caffe_schema(packed_dims=True):
    """Message classes for the subset of caffe.proto this module reads and writes."""
    descriptor_pb2 = pytest.importorskip("google.protobuf.descriptor_pb2")
    from google.protobuf import descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name=f"caffe_subset_{packed_dims}.proto", package="caffe",
                                               syntax="proto2")

    def message(name, *fields):
        msg = proto.message_type.add(name=name)
        for field_name, number, kind, label, type_name, packed in fields:
            f = msg.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                f.type_name = ".caffe." + type_name
            if packed:
                f.options.packed = True

    opt, rep = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    message("BlobShape", ("dim", 1, F.TYPE_INT64, rep, None, packed_dims))
    message("BlobProto", ("shape", 7, F.TYPE_MESSAGE, opt, "BlobShape", False),
            ("data", 5, F.TYPE_FLOAT, rep, None, True), ("double_data", 8, F.TYPE_DOUBLE, rep, None, True),
            ("num", 1, F.TYPE_INT64, opt, None, False), ("channels", 2, F.TYPE_INT64, opt, None, False),
            ("height", 3, F.TYPE_INT64, opt, None, False), ("width", 4, F.TYPE_INT64, opt, None, False))
    message("LayerParameter", ("name", 1, F.TYPE_STRING, opt, None, False),
            ("type", 2, F.TYPE_STRING, opt, None, False), ("blobs", 7, F.TYPE_MESSAGE, rep, "BlobProto", False))
    message("V1LayerParameter", ("name", 4, F.TYPE_STRING, opt, None, False),
            ("type", 5, F.TYPE_INT32, opt, None, False), ("blobs", 6, F.TYPE_MESSAGE, rep, "BlobProto", False))
    message("NetParameter", ("name", 1, F.TYPE_STRING, opt, None, False),
            ("layer", 100, F.TYPE_MESSAGE, rep, "LayerParameter", False),
            ("layers", 2, F.TYPE_MESSAGE, rep, "V1LayerParameter", False))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("caffe.NetParameter"))


def test_written_bytes_parse_with_protobuf():
    layers = p3d_like_layers()
    net = caffe_schema()()
    net.ParseFromString(encode_net(layers, TYPES, net_name="P3D199"))
    assert net.name == "P3D199"
    assert [layer.name for layer in net.layer] == list(layers)
    assert [layer.type for layer in net.layer] == [TYPES[name] for name in layers]
    for layer in net.layer:
        for blob, want in zip(layer.blobs, layers[layer.name], strict=True):
            assert tuple(blob.shape.dim) == want.shape
            np.testing.assert_array_equal(np.array(blob.data, np.float32), want.ravel())


@pytest.mark.parametrize("packed_dims", [True, False], ids=["packed-dims", "unpacked-dims"])
def test_reads_what_protobuf_writes(tmp_path, packed_dims):
    net = caffe_schema(packed_dims)(name="P3D")
    weight = np.arange(2 * 3 * 1 * 3 * 3, dtype=np.float32).reshape(2, 3, 1, 3, 3)
    conv = net.layer.add(name="conv1", type="Convolution")
    conv.blobs.add(data=weight.ravel()).shape.dim.extend(weight.shape)
    net.layer.add(name="relu1", type="ReLU")  # no blobs: omitted
    bn = net.layer.add(name="bn_conv1", type="BatchNorm")
    for value in range(4):
        bn.blobs.add(data=[value] * 2).shape.dim.append(2)
    fc = net.layer.add(name="fc_double", type="InnerProduct")
    fc.blobs.add(double_data=[0.5, -1.25, 3.0]).shape.dim.append(3)
    (tmp_path / "pb.caffemodel").write_bytes(net.SerializeToString())
    loaded = read_caffemodel(tmp_path / "pb.caffemodel")
    assert_layers_equal(loaded, {
        "conv1": [weight],
        "bn_conv1": [np.full(2, v, np.float32) for v in range(4)],
        "fc_double": [np.array([0.5, -1.25, 3.0], np.float32)],
    })


def test_reads_legacy_v1_layers_and_4d_shapes(tmp_path):
    net = caffe_schema()(name="old")
    weight = np.arange(6, dtype=np.float32)
    layer = net.layers.add(name="fc8", type=14)  # V1 enum INNER_PRODUCT
    layer.blobs.add(num=1, channels=1, height=2, width=3, data=weight)
    layer.blobs.add(width=2, data=[1.0, 2.0])  # unset legacy dims are 0 in Caffe, but here so is the count
    (tmp_path / "v1.caffemodel").write_bytes(net.SerializeToString())
    with pytest.raises(ValueError, match="v1.caffemodel.*shape \\(0, 0, 0, 2\\) does not match its 2 values"):
        read_caffemodel(tmp_path / "v1.caffemodel")
    del layer.blobs[1]
    layer.blobs.add(num=1, channels=1, height=1, width=2, data=[1.0, 2.0])
    (tmp_path / "v1.caffemodel").write_bytes(net.SerializeToString())
    assert_layers_equal(read_caffemodel(tmp_path / "v1.caffemodel"),
                        {"fc8": [weight.reshape(1, 1, 2, 3), np.array([[[[1.0, 2.0]]]], np.float32)]})


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize("content", [b"", b"name: 'P3D'\nlayer { name: 'conv1' }\n", b"\x89PNG\r\n\x1a\n\0\0"],
                         ids=["empty", "prototxt", "png"])
def test_non_caffemodel_raises(tmp_path, content):
    path = tmp_path / "deploy.caffemodel"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"deploy\.caffemodel is not a Caffe NetParameter"):
        read_caffemodel(path)


def test_truncated_caffemodel_raises(tmp_path):
    data = encode_net(p3d_like_layers())
    (tmp_path / "cut.caffemodel").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.caffemodel"):
        read_caffemodel(tmp_path / "cut.caffemodel")


def test_net_without_weights_raises(tmp_path):
    write_caffemodel(tmp_path / "deploy.caffemodel", {"relu1": [], "pool1": []})
    with pytest.raises(CheckpointError, match="without any layer weights"):
        read_caffemodel(tmp_path / "deploy.caffemodel")


def test_duplicate_layer_names_raise(tmp_path):
    one = encode_net({"conv1": [np.ones(2, "f4")]})
    (tmp_path / "dup.caffemodel").write_bytes(one + one)  # concatenated messages merge their layers
    with pytest.raises(CheckpointError, match="dup.caffemodel.*both named 'conv1'"):
        read_caffemodel(tmp_path / "dup.caffemodel")


def test_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.caffemodel"):
        read_caffemodel(tmp_path / "nope.caffemodel")


def unpacked_blob(values, shape):
    """A BlobProto whose floats are each their own fixed32 field (valid protobuf; Caffe packs them)."""
    data = b"".join(field_key(5, 5) + np.float32(v).tobytes() for v in values)
    return length_delimited(7, packed_varints(1, shape)) + data


def net_of(blob, extra=b""):
    layer = length_delimited(1, b"conv1") + length_delimited(7, blob)
    return length_delimited(1, b"P3D") + extra + length_delimited(100, layer)


def test_unpacked_floats_are_read(tmp_path):
    (tmp_path / "u.caffemodel").write_bytes(net_of(unpacked_blob(range(6), [2, 3])))
    assert_layers_equal(read_caffemodel(tmp_path / "u.caffemodel"),
                        {"conv1": [np.arange(6, dtype=np.float32).reshape(2, 3)]})


@pytest.mark.parametrize("where", ["unpacked-values", "top-level", "packed-dims"])
def test_field_count_is_bounded(tmp_path, where):
    n = MAX_PROTOBUF_FIELDS + 1
    if where == "unpacked-values":
        data = net_of(unpacked_blob(np.zeros(n), [n]))
    elif where == "top-level":  # force_backward (field 5) over and over
        data = net_of(unpacked_blob([1.0], [1]), extra=(field_key(5, 0) + b"\x01") * n)
    else:
        dims = length_delimited(7, packed_varints(1, [1] * n))
        data = net_of(dims + length_delimited(5, np.zeros(1, "f4").tobytes()))
    (tmp_path / "many.caffemodel").write_bytes(data)
    start = time.monotonic()
    with pytest.raises(CheckpointError, match=rf"many.caffemodel.*more than {MAX_PROTOBUF_FIELDS} protobuf fields"):
        read_caffemodel(tmp_path / "many.caffemodel")
    assert time.monotonic() - start < 5


def test_file_over_the_byte_budget_is_refused(tmp_path):
    write_caffemodel(tmp_path / "net.caffemodel", p3d_like_layers())
    size = (tmp_path / "net.caffemodel").stat().st_size
    with pytest.raises(CheckpointError, match=rf"net.caffemodel: it holds {size} bytes, more than the 1000 bytes"):
        read_caffemodel(tmp_path / "net.caffemodel", max_bytes=1000)
    assert not is_caffemodel(tmp_path / "net.caffemodel", max_bytes=1000)
    assert is_caffemodel(tmp_path / "net.caffemodel")


@pytest.mark.parametrize("shape, values", [([1 << 32, 1 << 32], 0), ([-1, 2], 2), ([1 << 62, 4], 0)])
def test_blob_shape_must_match_its_values_exactly(tmp_path, shape, values):
    blob = length_delimited(7, packed_varints(1, shape)) + length_delimited(5, np.zeros(values, "f4").tobytes())
    (tmp_path / "shape.caffemodel").write_bytes(net_of(blob))
    with pytest.raises(CheckpointError, match=rf"shape.caffemodel.*does not match its {values} values"):
        read_caffemodel(tmp_path / "shape.caffemodel")
