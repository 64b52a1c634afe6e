"""Checkpoint files written byte by byte, without torch: clean ones in torch's two formats, and
hostile ones (code, changes to the reader, memory, time and nesting bombs) for the reader's tests.

`HOSTILE` maps a case name to `(builder, what the refusal message says)`; a builder takes a
folder and returns the path of the file it wrote. `MEMORY_BOMBS` and `TIME_BOMBS` name the cases
that must be read in a subprocess (under a memory limit, or with a timeout).
"""
import os
import pickle
import struct
import zipfile
import zlib

import numpy as np

from p3d_keras.weights import pth
from p3d_keras.weights.caffemodel import encode_net
from p3d_keras.core.protowire import length_delimited, packed_varints

GB2 = 2 << 30  # what each memory bomb claims or expands to


# --- pickle opcodes (protocol 2 and 4) -----------------------------------------------------------


def op_global(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def op_str(text):
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def op_int(value):
    data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(data)]) + data  # LONG1


def op_tuple(*items):
    return b"(" + b"".join(items) + b"t"


def op_ordered_dict():
    return op_global("collections", "OrderedDict") + b")R"


def tensor_op(key, numel, size, stride, offset=0, storage="FloatStorage"):
    """`torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`."""
    pid = op_tuple(op_str("storage"), op_global("torch", storage), op_str(key), op_str("cpu"), op_int(numel))
    args = op_tuple(pid + b"Q", op_int(offset), op_tuple(*map(op_int, size)), op_tuple(*map(op_int, stride)),
                    b"\x89", op_ordered_dict())
    return op_global("torch._utils", "_rebuild_tensor_v2") + args + b"R"


def dict_op(entries, extra=b""):
    """A protocol-2 pickle of `{name: value}` (`entries` maps names to pickled values), with
    `extra` (pickled key, value pairs) added."""
    items = b"".join(op_str(name) + value for name, value in entries.items())
    return b"\x80\x02}(" + items + extra + b"u."


# --- containers ----------------------------------------------------------------------------------


def _zip_member(name, data, size=None, crc=None, deflated=False, offset=0):
    """(local header + data, central directory entry) of one zip member; `data` is written as
    is (already deflated when `deflated`), `size` and `crc` describe the uncompressed content."""
    size = len(data) if size is None else size
    crc = zlib.crc32(data) if crc is None else crc
    method = zipfile.ZIP_DEFLATED if deflated else zipfile.ZIP_STORED
    name = name.encode()
    local = struct.pack(zipfile.structFileHeader, zipfile.stringFileHeader, 20, 0, 0, method, 0, 0x21,
                        crc, len(data), size, len(name), 0) + name + data
    central = struct.pack(zipfile.structCentralDir, zipfile.stringCentralDir, 20, 3, 20, 0, 0, method, 0, 0x21,
                          crc, len(data), size, len(name), 0, 0, 0, 0, 0o644 << 16, offset) + name
    return local, central


def write_zip(path, members):
    """A zip of `members`: `(name, bytes)` stored, or `(name, (deflated, size, crc))`."""
    locals_, centrals, offset = [], [], 0
    for name, data in members:
        if isinstance(data, tuple):
            local, central = _zip_member(name, data[0], data[1], data[2], deflated=True, offset=offset)
        else:
            local, central = _zip_member(name, data, offset=offset)
        locals_.append(local)
        centrals.append(central)
        offset += len(local)
    directory = b"".join(centrals)
    end = struct.pack(zipfile.structEndArchive, zipfile.stringEndArchive, 0, 0, len(members), len(members),
                      len(directory), offset, 0)
    with open(path, "wb") as f:
        f.write(b"".join(locals_) + directory + end)
    return path


def zeros_deflated(prefix, zeros):
    """`(deflate stream, size, crc)` of `prefix` followed by `zeros` zero bytes (a multiple of
    16 MiB), made by repeating one compressed 16 MiB block: megabytes that expand to gigabytes."""
    chunk = 16 << 20
    assert zeros % chunk == 0
    head = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = head.compress(prefix) + head.flush(zlib.Z_FULL_FLUSH)
    block = zlib.compressobj(9, zlib.DEFLATED, -15)
    compressed = block.compress(bytes(chunk)) + block.flush(zlib.Z_FULL_FLUSH)
    tail = zlib.compressobj(9, zlib.DEFLATED, -15)
    crc, zero_chunk = zlib.crc32(prefix), bytes(chunk)
    for _ in range(zeros // chunk):
        crc = zlib.crc32(zero_chunk, crc)
    return first + compressed * (zeros // chunk) + tail.flush(), len(prefix) + zeros, crc


def write_torch_zip(path, pickled, storages, byteorder=b"little"):
    """A torch zip checkpoint: `pickled` as `archive/data.pkl`, `storages` maps keys to bytes."""
    members = [("archive/data.pkl", pickled), ("archive/byteorder", byteorder)]
    members += [(f"archive/data/{key}", data) for key, data in storages.items()]
    return write_zip(path, members)


def write_torch_legacy(path, pickled, storages, header=None):
    """A legacy torch checkpoint: magic number, protocol, sys_info, `pickled`, the storage keys,
    then each storage (`storages` maps keys to `(numel, bytes)`)."""
    header = header or [pickle.dumps(pth.LEGACY_MAGIC_NUMBER, 2),
                        pickle.dumps(pth.LEGACY_PROTOCOL_VERSION, 2),
                        pickle.dumps({"protocol_version": 1001, "little_endian": True}, 2)]
    body = b"".join(struct.pack("<q", numel) + data for numel, data in storages.values())
    with open(path, "wb") as f:
        f.write(b"".join(header) + pickled + pickle.dumps(list(storages), 2) + body)
    return path


# --- a clean checkpoint --------------------------------------------------------------------------


def clean_state():
    """What `write_clean` stores: a conv weight, a transposed view and a float64 vector."""
    base = np.arange(12, dtype="<f4")
    return {"conv.weight": base.reshape(2, 3, 1, 1, 2), "transposed": base.reshape(3, 4).T.copy(),
            "double": np.linspace(-1, 1, 5)}


def write_clean(path, legacy=False):
    """`clean_state()` as a torch checkpoint (zip, or legacy), written without torch."""
    pickled = dict_op({"conv.weight": tensor_op("0", 12, (2, 3, 1, 1, 2), (6, 2, 2, 2, 1)),
                       "transposed": tensor_op("0", 12, (4, 3), (1, 4)),
                       "double": tensor_op("1", 5, (5,), (1,), storage="DoubleStorage")})
    base, double = np.arange(12, dtype="<f4").tobytes(), np.linspace(-1, 1, 5).astype("<f8").tobytes()
    if legacy:
        return write_torch_legacy(path, pickled, {"0": (12, base), "1": (5, double)})
    return write_torch_zip(path, pickled, {"0": base, "1": double})


# --- hostile files -------------------------------------------------------------------------------


def _one_tensor(extra):
    """A valid one-tensor state dict pickle with `extra` key/value pairs added."""
    return dict_op({"w": tensor_op("0", 1, (1,), (1,))}, extra)


def _zip_with(folder, name, extra):
    return write_torch_zip(os.path.join(folder, name), _one_tensor(extra), {"0": bytes(4)})


def mutates_storage_type(folder):
    """BUILD on torch.FloatStorage: the old reader's shared stand-in became int64 for good."""
    build = op_global("torch", "FloatStorage") + op_tuple(op_str("int64")) + b"b"
    return _zip_with(folder, "storage_type.pth", op_str("meta") + build)


def mutates_rebuild(folder):
    """BUILD on _rebuild_tensor_v2: the old reader's shared stand-in then called another function."""
    build = (op_global("torch._utils", "_rebuild_tensor_v2")
             + op_tuple(op_global("torch._utils", "_rebuild_parameter")) + b"b")
    return _zip_with(folder, "rebuild.pth", op_str("meta") + build)


def mutates_dtype(folder):
    build = op_global("torch", "float32") + op_tuple(op_str("float64")) + b"b"
    return _zip_with(folder, "dtype.pth", op_str("meta") + build)


def runs_shell(folder):
    marker = os.path.join(folder, "pwned")
    call = op_global("os", "system") + op_tuple(op_str(f"touch {marker}")) + b"R"
    return _zip_with(folder, "shell.pth", op_str("meta") + call)


def zip_storage_bomb(folder):
    """A storage declared 2 GB whose deflated zip record really expands to 2 GB."""
    numel = GB2 // 4
    path = os.path.join(folder, "storage_bomb.pth")
    members = [("archive/data.pkl", dict_op({"w": tensor_op("0", numel, (numel,), (1,))})),
               ("archive/byteorder", b"little"), ("archive/data/0", zeros_deflated(b"", GB2))]
    return write_zip(path, members)


def stride_zero_bomb(folder):
    """One float viewed with stride 0 as a 65536 x 32768 tensor (8 GB once copied)."""
    pickled = dict_op({"w": tensor_op("0", 1, (65536, 32768), (0, 0))})
    return write_torch_zip(os.path.join(folder, "stride0.pth"), pickled, {"0": bytes(4)})


def _counted(opcode, length_format, claimed):
    return opcode + struct.pack(length_format, claimed) + b"tiny"


PICKLE_BOMBS = {  # opcode + a declared length of 2 GB, followed by four bytes
    "binbytes": _counted(b"B", "<I", GB2 - 1),
    "binbytes8": _counted(b"\x8e", "<Q", GB2),
    "binunicode": _counted(b"X", "<I", GB2 - 1),
    "binunicode8": _counted(b"\x8d", "<Q", GB2),
    "long4": _counted(b"\x8b", "<i", GB2 - 1),
}


def pickle_bomb(kind, legacy):
    def build(folder):
        extra = op_str("meta") + PICKLE_BOMBS[kind]
        path = os.path.join(folder, f"{kind}_{'legacy' if legacy else 'zip'}.pth")
        pickled = _one_tensor(extra)
        if legacy:
            return write_torch_legacy(path, pickled, {"0": (1, bytes(4))})
        return write_torch_zip(path, pickled, {"0": bytes(4)})
    return build


def npz_bomb(folder):
    """An .npz whose member declares 2 GB of float32 and whose deflated record expands to it."""
    header = np.lib.format.header_data_from_array_1_0(np.zeros(0, "<f4"))
    header["shape"] = (GB2 // 4,)
    raw = bytearray()
    np.lib.format.write_array_header_1_0(_Sink(raw), header)
    prefix = bytes(raw)
    return write_zip(os.path.join(folder, "bomb.npz"), [("w.npy", zeros_deflated(prefix, GB2))])


class _Sink:
    def __init__(self, buffer):
        self.buffer = buffer

    def write(self, data):
        self.buffer += data


def caffe_unpacked_bomb(folder):
    """12 M floats, each its own unpacked field (60 MB): the old reader kept objects per value (3 GB)."""
    count = 12_000_000
    records = np.zeros(count, dtype=[("tag", "u1"), ("value", "<f4")])
    records["tag"] = 0x2D  # field 5 (data), wire type 5 (fixed32)
    blob = length_delimited(7, packed_varints(1, [count])) + records.tobytes()
    layer = length_delimited(1, b"conv1") + length_delimited(7, blob)
    path = os.path.join(folder, "unpacked.caffemodel")
    with open(path, "wb") as f:
        f.write(length_delimited(1, b"P3D") + length_delimited(100, layer))
    return path


def caffe_huge_shape(folder):
    """A blob declared 2**32 x 2**32 with no values (the product wraps to 0 in int64)."""
    blob = length_delimited(7, packed_varints(1, [1 << 32, 1 << 32]))
    layer = length_delimited(1, b"conv1") + length_delimited(7, blob)
    path = os.path.join(folder, "shape.caffemodel")
    with open(path, "wb") as f:
        f.write(length_delimited(1, b"P3D") + length_delimited(100, layer))
    return path


def _dag(levels, container=b"\x86"):
    """A tuple (TUPLE2) or list of two references to the level below, `levels` deep, built
    with the memo: a few bytes per level, 2**levels leaves when walked."""
    out = b")\x94"
    for level in range(levels):
        out += b"0h" + bytes([level]) + b"h" + bytes([level]) + container + b"\x94"  # POP the level below
    return out


def hash_bomb(folder):
    """A dict key that is a 100-level tuple DAG: hashing it never ends."""
    return _zip_with(folder, "hash.pth", _dag(100) + op_int(1))


def repr_bomb(folder):
    """A storage key that is a 100-level tuple DAG, as printed in the old reader's error."""
    pid = op_tuple(op_str("storage"), op_global("torch", "FloatStorage"), _dag(100), op_str("cpu"), op_int(1))
    pickled = dict_op({"w": op_global("torch._utils", "_rebuild_tensor_v2")
                       + op_tuple(pid + b"Q", op_int(0), op_tuple(op_int(1)), op_tuple(op_int(1))) + b"R"})
    return write_torch_zip(os.path.join(folder, "repr.pth"), pickled, {"0": bytes(4)})


def nesting_bomb(folder):
    """A legacy file whose protocol-version pickle is a list 200 000 deep."""
    depth = 200_000
    nested = b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."
    header = [pickle.dumps(pth.LEGACY_MAGIC_NUMBER, 2), nested, pickle.dumps({}, 2)]
    return write_torch_legacy(os.path.join(folder, "deep.pth"), _one_tensor(b""), {"0": (1, bytes(4))},
                              header=header)


def width_bomb(folder):
    """3 M references to one string in one list: 3 MB of pickle, 3 M entries."""
    wide = b"]" + op_str("x") + b"\x940(" + b"h\x00" * 3_000_000 + b"e"
    return _zip_with(folder, "wide.pth", op_str("meta") + wide)


def memo_bomb(folder):
    """A memo index of 2**32 - 1: the C unpickler grows its memo table to match."""
    return _zip_with(folder, "memo.pth", op_str("meta") + b"N" + b"r\xff\xff\xff\xff")


HOSTILE = {
    "mutate-storage-type": (mutates_storage_type, "sets the state of a global"),
    "mutate-rebuild": (mutates_rebuild, "sets the state of a global"),
    "mutate-dtype": (mutates_dtype, "sets the state of a global"),
    "os-system": (runs_shell, "references os.system"),
    "zip-storage-2gb": (zip_storage_bomb, "storages declare 2147483648 bytes"),
    "stride-0-view": (stride_zero_bomb, "take 8589934592 bytes"),
    **{f"{kind}-{fmt}": (pickle_bomb(kind, fmt == "legacy"), "past the 67108864 bytes a pickle may take")
       for kind in PICKLE_BOMBS for fmt in ("zip", "legacy")},
    "npz-2gb": (npz_bomb, "arrays declare 2147483648 bytes"),
    "caffe-unpacked": (caffe_unpacked_bomb, "more than 262144 protobuf fields"),
    "caffe-huge-shape": (caffe_huge_shape, "does not match its 0 values"),
    "hash-bomb": (hash_bomb, "container as a dict key"),
    "repr-bomb": (repr_bomb, "counted along every path, exceed"),
    "nesting-bomb": (nesting_bomb, "nests containers more than 32 deep"),
    "width-bomb": (width_bomb, "more than 1000000 opcodes, objects and entries"),
    "memo-bomb": (memo_bomb, "memo entry 4294967295"),
}
MEMORY_BOMBS = ["zip-storage-2gb", "stride-0-view", "npz-2gb", "caffe-unpacked", "memo-bomb",
                *(f"{kind}-{fmt}" for kind in PICKLE_BOMBS for fmt in ("zip", "legacy"))]
TIME_BOMBS = ["hash-bomb", "repr-bomb", "nesting-bomb", "width-bomb"]
