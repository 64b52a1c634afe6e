"""Read PyTorch checkpoints (`.pth`, `.pth.tar`) and `.npz` weights with NumPy alone.

torch is not needed and no code from the file ever runs: each pickle inside a checkpoint is first
scanned opcode by opcode (`_PickleScan`: allowed opcodes, declared lengths, object count, nesting;
limits in `p3d_keras.weights.untrusted`), then read from memory by `_RestrictedUnpickler`, whose
allow-list (made afresh for each load) holds only what a state dict is made of, and tensors come
back as NumPy arrays built from the raw storage bytes once their sizes are checked.

Both of torch's serialization formats are read (see torch/serialization.py):

* zip (torch >= 1.6): `<archive>/data.pkl` is the object pickle, each tensor storage is the raw
  record `<archive>/data/<key>`, and `<archive>/byteorder` says "little" or "big".
* legacy (torch < 1.6, and `_use_new_zipfile_serialization=False`): a sequence of pickles in one
  file -- magic number, protocol version, sys_info, the object pickle, the list of storage keys
  -- then, for each key in that order, an 8-byte little-endian element count and the storage's
  little-endian bytes.

In both, a storage is a persistent id `('storage', storage_type, key, location, numel[,
view_metadata])` and a tensor is `torch._utils._rebuild_tensor_v2(storage, storage_offset, size,
stride, requires_grad, backward_hooks[, metadata])` (torch 0.2/0.3: `_rebuild_tensor(storage,
storage_offset, size, stride)`).
"""
import _compat_pickle
import collections
import dataclasses
import io
import math
import os
import pickle
import pickletools
import re
import struct
import zipfile

import numpy as np

from p3d_keras.weights import caffemodel
from p3d_keras.weights.untrusted import (  # noqa: F401 (both errors stay importable from here)
    MAX_BYTES,
    MAX_NESTING,
    MAX_PICKLE_BYTES,
    MAX_PICKLE_ITEMS,
    MAX_ZIP_DIRECTORY_BYTES,
    CheckpointError,
    UnsafeCheckpointError,
    describe,
    too_large,
)

FORMATS = ("pytorch-zip", "pytorch-legacy", "npz", "caffe")

# torch/serialization.py: MAGIC_NUMBER and PROTOCOL_VERSION of the legacy format.
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

# Keys under which training checkpoints keep the model's state dict, tried in this order.
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")
DATA_PARALLEL_PREFIX = "module."

# torch dtype name -> on-disk element type (little-endian). bfloat16 has no NumPy dtype: its raw
# 16 bits are read as uint16 and widened to float32 (`_widen_bfloat16`).
_DTYPES = {
    "float64": "<f8", "float32": "<f4", "float16": "<f2", "bfloat16": "<u2",
    "complex128": "<c16", "complex64": "<c8",
    "int64": "<i8", "int32": "<i4", "int16": "<i2", "int8": "i1", "uint8": "u1", "bool": "?",
}
# torch storage class name -> torch dtype name. UntypedStorage is bytes.
_STORAGE_DTYPES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "ComplexDoubleStorage": "complex128",
    "ComplexFloatStorage": "complex64", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool",
    "UntypedStorage": "uint8",
}


# ---------------------------------------------------------------------------------------------
# Stand-ins for torch objects. Each load makes its own (`_allowed_globals`), and they are frozen,
# slotted and refuse `__setstate__`, so nothing a pickle does (BUILD included) outlives its load.


def _refuse_setstate(self, state):
    raise _Refused(f"its pickle tries to modify the reader's stand-in for a torch object "
                   f"({type(self).__name__.lstrip('_')}), which a state dict never does")


@dataclasses.dataclass(frozen=True, slots=True)
class _StorageType:
    """Stands for a torch storage class (torch.FloatStorage, ...): only its element dtype."""

    dtype: str
    __setstate__ = _refuse_setstate


@dataclasses.dataclass(frozen=True, slots=True)
class _TorchDtype:
    """Stands for a torch dtype object (torch.float32, ...) found as a plain value."""

    name: str
    __setstate__ = _refuse_setstate


@dataclasses.dataclass(slots=True)
class _Storage:
    """One serialized storage: `numel` elements of `dtype`; `data` is filled after unpickling.
    Never handed to the pickle itself (only `_StorageView`s are)."""

    key: str
    dtype: str
    numel: int
    data: np.ndarray = None


@dataclasses.dataclass(frozen=True, slots=True)
class _StorageView:
    """Elements `[offset, offset + numel)` of a storage (legacy views; offset 0 otherwise)."""

    root: _Storage
    offset: int
    numel: int
    __setstate__ = _refuse_setstate


@dataclasses.dataclass(frozen=True, slots=True)
class _TensorRef:
    """A tensor as pickled: a strided window on a storage, resolved once the bytes are read."""

    storage: _StorageView
    offset: int
    size: tuple
    stride: tuple
    __setstate__ = _refuse_setstate


@dataclasses.dataclass(frozen=True, slots=True)
class _Rebuild:
    """An allowed torch rebuild function, wrapped so the pickle gets no real function object."""

    fn: object
    __setstate__ = _refuse_setstate

    def __call__(self, *args):
        return self.fn(*args)


class _Refused(Exception):
    """Raised inside a load for content that is refused as unsafe; `_unpickle` adds the file."""


def _rebuild_tensor(storage, storage_offset, size, stride):
    """torch._utils._rebuild_tensor (torch 0.2/0.3)."""
    if not isinstance(storage, _StorageView):
        raise pickle.UnpicklingError(f"a tensor's storage is a {type(storage).__name__}, not a storage")
    if not (isinstance(size, (tuple, list)) and isinstance(stride, (tuple, list))):
        raise pickle.UnpicklingError(f"a tensor's size and stride are a {type(size).__name__} and a "
                                     f"{type(stride).__name__}, not tuples")
    return _TensorRef(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    """torch._utils._rebuild_tensor_v2 (torch >= 0.4); autograd flags and metadata are dropped."""
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=True, backward_hooks=None):
    """torch._utils._rebuild_parameter: an nn.Parameter is its tensor."""
    if not isinstance(data, _TensorRef):
        raise pickle.UnpicklingError(f"a parameter wraps a {type(data).__name__}, not a tensor")
    return data


_ORDERED_DICT = ("collections", "OrderedDict")


def _allowed_globals():
    """(module, name) -> object handed to the pickle, made afresh for each load. Each entry says
    why a state dict needs it."""
    allowed = {
        # Module.state_dict() returns an OrderedDict; _rebuild_tensor_v2's backward_hooks is one.
        _ORDERED_DICT: collections.OrderedDict,
        # How torch >= 0.4 pickles every tensor.
        ("torch._utils", "_rebuild_tensor_v2"): _Rebuild(_rebuild_tensor_v2),
        # How torch 0.2/0.3 (the 2017 P3D checkpoints) pickle every tensor.
        ("torch._utils", "_rebuild_tensor"): _Rebuild(_rebuild_tensor),
        # nn.Parameter values: state_dict(keep_vars=True) and optimizer param lists.
        ("torch._utils", "_rebuild_parameter"): _Rebuild(_rebuild_parameter),
    }
    # Storage classes are named inside each storage's persistent id; GPU-saved legacy files name
    # torch.cuda.FloatStorage and the like.
    for name, dtype in _STORAGE_DTYPES.items():
        for module in ("torch", "torch.cuda", "torch.storage"):
            allowed[(module, name)] = _StorageType(dtype)
    # dtype objects (torch.float32, ...) appear as plain values in some checkpoints' metadata.
    for name in _DTYPES:
        allowed[("torch", name)] = _TorchDtype(name)
    return allowed


def _python3_name(module, name):
    """Python 2 names (protocol 2 pickles write __builtin__.eval), mapped as pickle itself does."""
    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def _ascii(value):
    """Python 2 pickles store some of torch's internal strings as bytes."""
    return value.decode("ascii") if isinstance(value, bytes) else value


def _is_text(value):
    return isinstance(value, str) or (isinstance(value, bytes) and value.isascii())


class _RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only `_allowed_globals()` and torch storage persistent ids.

    `storages` collects every storage the pickle refers to, by key. Used only on a pickle that
    `_scan_pickle` has accepted.
    """

    def __init__(self, file):
        super().__init__(file, encoding="utf-8")  # torch.load's encoding for Python 2 pickles
        self.allowed = _allowed_globals()
        self.storages = {}

    def find_class(self, module, name):
        module, name = _python3_name(module, name)
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise _Refused(f"it references {module}.{name}, which a state dict never needs. Only tensors, "
                           f"dicts and numbers are allowed. Received: global={module}.{name}") from None

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or len(pid) not in (5, 6) or _ascii(pid[0]) != "storage":
            kind = describe(_ascii(pid[0]) if isinstance(pid, tuple) and pid else type(pid).__name__)
            raise _Refused(f"it holds a pickled {kind} object (a whole module or another non-tensor object), "
                           f"which a state dict never needs. Received: persistent id {kind}")
        storage_type, key, location, numel = pid[1:5]
        view = pid[5] if len(pid) == 6 else None
        if not (isinstance(storage_type, _StorageType) and _is_text(key) and _is_text(location)
                and _is_count(numel)):
            raise pickle.UnpicklingError(f"malformed storage id {describe(pid)}")
        key = _ascii(key)
        root = self.storages.setdefault(key, _Storage(key, storage_type.dtype, numel))
        if (root.dtype, root.numel) != (storage_type.dtype, numel):
            raise pickle.UnpicklingError(f"storage {key!r} is declared with two different types or sizes")
        if view is None:
            return _StorageView(root, 0, numel)
        if not (isinstance(view, tuple) and len(view) == 3 and _is_count(view[1]) and _is_count(view[2])):
            raise pickle.UnpicklingError(f"malformed storage view {describe(view)}")
        return _StorageView(root, view[1], view[2])


def _is_count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# ---------------------------------------------------------------------------------------------
# The pickle scan: every opcode is checked before the pickle is unpickled


class _BoundedReader:
    """A binary file, read from its current position, that refuses to read past `limit` bytes:
    a length a pickle declares is checked before anything is allocated for it."""

    def __init__(self, file, limit):
        self.file, self.left, self.start = file, limit, file.tell()

    def read(self, size):
        if size > self.left:
            raise _PickleTooLong(size)
        data = self.file.read(size)
        self.left -= len(data)
        return data

    def readline(self):
        line = self.file.readline(self.left + 1)
        if len(line) > self.left:
            raise _PickleTooLong(len(line))
        self.left -= len(line)
        return line

    def tell(self):
        return self.file.tell() - self.start


class _PickleTooLong(Exception):
    """A pickle declares a payload or a line beyond `MAX_PICKLE_BYTES`."""


class _Node:
    """One object of a scanned pickle: its kind ("atom", "list", "dict", "set", "tuple",
    "frozenset", "global", "odict" (an OrderedDict), "call", "storage"), the objects it
    holds, and for atoms and globals their value."""

    __slots__ = ("kind", "items", "value")

    def __init__(self, kind, items=(), value=None):
        self.kind, self.items, self.value = kind, list(items), value


_ATOM_OPS = {"NONE", "NEWTRUE", "NEWFALSE", "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4",
             "FLOAT", "BINFLOAT", "STRING", "BINSTRING", "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES",
             "BINBYTES8", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"}
_CONSTRUCTORS = ("INST", "OBJ", "NEWOBJ", "NEWOBJ_EX")  # object construction, refused with the class named
_MAX_INT_BITS = 512  # a state dict's numbers are int64; torch's legacy magic number has 81 bits
_HASHED_KINDS = ("atom",)  # what may be a dict key or a set item: hashing it costs its length


class _PickleScan:
    """Checks one pickle opcode by opcode, without building any of its objects.

    Only the opcodes that a state dict pickle uses are allowed (no object construction by NEWOBJ,
    INST, OBJ or the copyreg extensions); dict keys and set items must be strings or numbers; a
    memo index must be the next free one or an earlier one; APPEND, SETITEM and BUILD must apply to
    a list, a dict and an OrderedDict. Opcodes, objects and container entries together are counted
    against `MAX_PICKLE_ITEMS`, and at STOP the result, walked along every path as printing or
    comparing it would, must stay within `MAX_PICKLE_ITEMS` and `MAX_NESTING`.
    """

    def __init__(self):
        self.stack, self.marks, self.memo, self.count = [], [], {}, 0

    def _spend(self, items):
        self.count += items
        if self.count > MAX_PICKLE_ITEMS:
            raise _Refused(f"its pickle has more than {MAX_PICKLE_ITEMS} opcodes, objects and entries. "
                           f"Expected a state dict (a P3D-199 training checkpoint has about 200 000)")

    def _new(self, kind, items=(), value=None):
        self._spend(1 + len(items))
        return _Node(kind, items, value)

    def _pop_mark(self):
        if not self.marks:
            raise pickle.UnpicklingError("an opcode needs a MARK that is not there")
        mark = self.marks.pop()
        items, self.stack[mark:] = self.stack[mark:], []
        return items

    def _pop(self, n=1):
        floor = self.marks[-1] if self.marks else 0
        if len(self.stack) - n < floor:
            raise pickle.UnpicklingError("the pickle's stack underflows")
        items, self.stack[len(self.stack) - n:] = self.stack[len(self.stack) - n:], []
        return items

    def _add(self, target, kinds, items, hashed=()):
        if target.kind not in kinds:
            raise _Refused(f"its pickle adds entries to a {target.kind}. Expected a {' or '.join(kinds)}")
        if any(item.kind not in _HASHED_KINDS for item in hashed):
            raise _Refused(f"its pickle uses a container as a dict key or set item. Expected strings or numbers")
        self._spend(len(items))
        target.items.extend(items)

    def _reduce(self, func, args):
        if func.kind != "global" or args.kind != "tuple":
            raise _Refused(f"its pickle calls a {func.kind} with a {args.kind}. Expected an allowed "
                           "torch function or OrderedDict called with a tuple")
        if func.value != _ORDERED_DICT:
            return self._new("call", [func, args])
        # Python 2 pickles an OrderedDict as OrderedDict([[key, value], ...]).
        pairs = args.items[0].items if len(args.items) == 1 else []
        if len(args.items) > 1 or (args.items and args.items[0].kind not in ("list", "tuple")) or any(
                pair.kind not in ("list", "tuple") or len(pair.items) != 2 or pair.items[0].kind not in _HASHED_KINDS
                for pair in pairs):
            raise _Refused("its pickle calls OrderedDict with arguments other than key-value pairs "
                           "keyed by strings or numbers")
        return self._new("odict", [args])

    def step(self, name, arg):
        """Apply one opcode; return the pickle's result at STOP, else None."""
        stack = self.stack
        self._spend(1)
        if name in _ATOM_OPS:
            if isinstance(arg, int) and arg.bit_length() > _MAX_INT_BITS:
                raise _Refused(f"its pickle holds an integer of {arg.bit_length()} bits. "
                               f"Expected at most {_MAX_INT_BITS}")
            stack.append(self._new("atom", value=arg))
        elif name in ("PROTO", "FRAME"):
            pass
        elif name in ("EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET", "EMPTY_TUPLE"):
            stack.append(self._new(name[len("EMPTY_"):].lower()))
        elif name == "MARK":
            self.marks.append(len(stack))
        elif name in ("TUPLE", "LIST", "FROZENSET"):
            items = self._pop_mark()
            if name == "FROZENSET" and any(item.kind not in _HASHED_KINDS for item in items):
                raise _Refused("its pickle puts a container in a set. Expected strings or numbers")
            stack.append(self._new(name.lower(), items))
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            stack.append(self._new("tuple", self._pop(int(name[-1]))))
        elif name == "DICT":
            items = self._pop_mark()
            if len(items) % 2 or any(key.kind not in _HASHED_KINDS for key in items[::2]):
                raise _Refused("its pickle makes a dict keyed by containers. Expected strings or numbers")
            stack.append(self._new("dict", items))
        elif name in ("APPEND", "APPENDS"):
            items = self._pop() if name == "APPEND" else self._pop_mark()
            if not stack:
                raise pickle.UnpicklingError(f"{name} without a list")
            self._add(stack[-1], ("list",), items)
        elif name in ("SETITEM", "SETITEMS"):
            items = self._pop(2) if name == "SETITEM" else self._pop_mark()
            if len(items) % 2 or not stack:
                raise pickle.UnpicklingError(f"{name} without a dict or with an odd number of items")
            self._add(stack[-1], ("dict", "odict"), items, hashed=items[::2])
        elif name == "ADDITEMS":
            items = self._pop_mark()
            if not stack:
                raise pickle.UnpicklingError("ADDITEMS without a set")
            self._add(stack[-1], ("set",), items, hashed=items)
        elif name == "POP":
            self._pop() if stack and (not self.marks or self.marks[-1] < len(stack)) else self._pop_mark()
        elif name == "POP_MARK":
            self._pop_mark()
        elif name == "DUP":
            stack.append(self._pop()[0])
            stack.append(stack[-1])
        elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            index = len(self.memo) if name == "MEMOIZE" else arg
            if not 0 <= index <= len(self.memo) or not stack:
                raise _Refused(f"its pickle stores memo entry {index} while it has {len(self.memo)}. "
                               f"Expected the next free entry or an earlier one")
            self.memo[index] = stack[-1]
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            if arg not in self.memo:
                raise pickle.UnpicklingError(f"memo entry {arg} is read before it is written")
            stack.append(self.memo[arg])
            self._spend(1)
        elif name in ("GLOBAL", "STACK_GLOBAL"):
            if name == "GLOBAL":
                module, _, attr = arg.partition(" ")
            else:
                module, attr = (node.value for node in self._pop(2))
                if not (isinstance(module, str) and isinstance(attr, str)):
                    raise pickle.UnpicklingError("STACK_GLOBAL needs two strings")
            stack.append(self._new("global", value=_python3_name(module, attr)))
        elif name == "REDUCE":
            func, args = self._pop(2)
            stack.append(self._reduce(func, args))
        elif name == "BUILD":
            (state,) = self._pop()
            if not stack or stack[-1].kind != "odict":
                raise _Refused(f"its pickle sets the state of a {stack[-1].kind if stack else 'nothing'}. "
                               f"Expected only OrderedDicts' attributes")
            self._add(stack[-1], ("odict",), [state])
        elif name == "BINPERSID":
            stack.append(self._new("storage", self._pop()))
        elif name == "STOP":
            (result,) = self._pop()
            _check_walk(result)
            return result
        elif name in _CONSTRUCTORS:
            cls = self._constructed_class(name, arg)
            raise _Refused(f"it constructs a {cls} object (pickle opcode {name}), which a state dict never needs. "
                           f"Only tensors, dicts and numbers are allowed. Received: global={cls}")
        else:  # PERSID, EXT1/2/4, BYTEARRAY8, NEXT_BUFFER, READONLY_BUFFER
            raise _Refused(f"its pickle uses the {name} opcode, which a torch state dict never needs. "
                           f"Received: opcode {name}")
        return None

    def _constructed_class(self, name, arg):
        """The class an object-constructing opcode names, as `module.name`, for the message."""
        if name == "INST":
            return ".".join(_python3_name(*arg.split(" ", 1)))
        position = {"NEWOBJ": -2, "NEWOBJ_EX": -3}.get(name, self.marks[-1] if self.marks else -1)
        try:
            node = self.stack[position]
        except IndexError:
            return "<unknown>"
        return ".".join(node.value) if node.kind == "global" else f"<{node.kind}>"


def _check_walk(root):
    """Refuse a pickle result that is recursive, nests deeper than `MAX_NESTING`, or holds more
    than `MAX_PICKLE_ITEMS` objects when every path to a shared object is counted (as printing,
    hashing or comparing it would)."""
    size, depth, open_nodes, todo = {}, {}, set(), [(root, False)]
    while todo:
        node, children_done = todo.pop()
        key = id(node)
        if children_done:
            open_nodes.discard(key)
            size[key] = 1 + sum(size[id(child)] for child in node.items)
            depth[key] = 1 + max((depth[id(child)] for child in node.items), default=0)
            if size[key] > MAX_PICKLE_ITEMS:
                raise _Refused(f"its pickle's objects, counted along every path, exceed {MAX_PICKLE_ITEMS} "
                               f"(shared containers that multiply). Expected a state dict")
            if depth[key] > MAX_NESTING:
                raise _Refused(f"its pickle nests containers more than {MAX_NESTING} deep. "
                               f"Expected a state dict (about 8 deep)")
        elif key not in size:
            if key in open_nodes:
                raise _Refused("its pickle holds a container that contains itself. Expected a state dict")
            open_nodes.add(key)
            todo.append((node, True))
            todo.extend((child, False) for child in node.items if id(child) not in size)


def _scan_pickle(reader):
    """The length in bytes of the pickle that `reader` (a `_BoundedReader`) starts with, once
    `_PickleScan` has accepted every opcode."""
    scan = _PickleScan()
    for opcode, arg, _ in pickletools.genops(reader):
        if scan.step(opcode.name, arg) is not None:
            return reader.tell()
    raise pickle.UnpicklingError("the pickle ends without STOP")


# ---------------------------------------------------------------------------------------------
# Format detection


def _require_file(path):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No checkpoint at {path!r}. Expected an existing file.")
    return path


def _unknown_format(path, detail):
    return CheckpointError(
        f"Cannot read {path}: {detail}. Expected one of {list(FORMATS)}: a torch.save file (zip or legacy), "
        f"an .npz of arrays, or a Caffe .caffemodel.")


_ZIP_END = struct.Struct("<4s4H2LH")  # end of central directory: signature ... directory size, offset
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_END = struct.Struct("<4sQ2H2L4Q")


def _zip_directory_bytes(path):
    """The size a zip archive's end record declares for its central directory (zip64 included), read
    from the file's last 64 KiB; None if no end record is found (zipfile then refuses the file)."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        tail_start = max(0, size - (_ZIP_END.size + 0xFFFF))
        f.seek(tail_start)
        tail = f.read()
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) - at < _ZIP_END.size:
            return None
        directory = _ZIP_END.unpack_from(tail, at)[5]
        locator = at - _ZIP64_LOCATOR.size
        if locator >= 0 and tail[locator:locator + 4] == b"PK\x06\x07":
            end64 = _ZIP64_LOCATOR.unpack_from(tail, locator)[2]
            f.seek(end64)
            record = f.read(_ZIP64_END.size)
            if len(record) == _ZIP64_END.size and record[:4] == b"PK\x06\x06":
                directory = max(directory, _ZIP64_END.unpack(record)[8])
    return directory


def _open_zip(path):
    """`zipfile.ZipFile(path)`, after checking that its central directory (which zipfile reads and
    turns into one object per entry) is at most `MAX_ZIP_DIRECTORY_BYTES`."""
    directory = _zip_directory_bytes(path)
    if directory is not None and directory > MAX_ZIP_DIRECTORY_BYTES:
        raise CheckpointError(
            f"Refusing to load {path}: its zip directory declares {directory} bytes of entries, more than the "
            f"{MAX_ZIP_DIRECTORY_BYTES} allowed. Expected a P3D checkpoint (a few thousand entries at most). "
            f"Received: {directory} bytes")
    return zipfile.ZipFile(path)


def _zip_kind(path):
    """'pytorch-zip' or 'npz' for a zip archive; CheckpointError for any other zip."""
    try:
        with _open_zip(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, ValueError, EOFError) as e:
        raise CheckpointError(f"{path} starts like a zip archive but is truncated or corrupt ({e}). "
                              f"Expected a complete torch.save zip or .npz file.") from e
    if _zip_pickle_name(names):
        return "pytorch-zip"
    if names and all(n.endswith(".npy") for n in names):
        return "npz"
    raise _unknown_format(path, f"a zip archive with neither '<archive>/data.pkl' nor only .npy members "
                                f"(Received: members {describe(names[:5])})")


def _zip_pickle_name(names):
    """The `<archive>/data.pkl` record of a torch zip checkpoint, or None."""
    found = [n for n in names if re.fullmatch(r"[^/]+/data\.pkl", n)]
    return found[0] if len(found) == 1 else None


def _is_legacy_torch(path, head):
    """Whether the file's first pickle is torch's legacy magic number.

    Only pickles of protocol 2 or later are probed (torch writes protocol 2); a first pickle that
    the scan refuses raises UnsafeCheckpointError, as it would run code under `pickle.load`.
    """
    if not head.startswith(b"\x80"):
        return False
    with open(path, "rb") as f:
        try:
            return _unpickle(f, path, "pytorch-legacy")[0] == LEGACY_MAGIC_NUMBER
        except UnsafeCheckpointError:
            raise
        except CheckpointError:  # not a pickle at all: the caller reports an unknown format
            return False


def sniff_format(path):
    """The format of the file at `path`, by content: one of `FORMATS`.

    "pytorch-zip" is a zip with `<archive>/data.pkl`, "npz" a zip of `.npy` members,
    "pytorch-legacy" a file whose first pickle is torch's legacy magic number, and "caffe" a file
    named `*.caffemodel` or one that parses as a caffe NetParameter with layers. Raises
    FileNotFoundError for a missing file, UnsafeCheckpointError for a plain pickle that is refused
    (see `read_state_dict`), and CheckpointError naming the file for anything else (empty, text,
    images, a truncated zip).
    """
    path = _require_file(path)
    with open(path, "rb") as f:
        head = f.read(8)
    if not head:
        raise _unknown_format(path, "the file is empty")
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return _zip_kind(path)
    if _is_legacy_torch(path, head):
        return "pytorch-legacy"
    if path.endswith(".caffemodel") or caffemodel.is_caffemodel(path):
        return "caffe"
    raise _unknown_format(path, f"its content is not a known weights format (Received: first bytes {head!r})")


# ---------------------------------------------------------------------------------------------
# Reading


def _corrupt(path, fmt, error):
    return CheckpointError(f"Cannot read {path}: truncated or corrupt {fmt} checkpoint ({type(error).__name__}: "
                           f"{error}). Expected a complete file written by torch.save.")


def _unpickle(f, path, fmt):
    """Scan, then load, the pickle at the position of the binary file `f` with the restricted
    unpickler; `(object, storages)`, with `f` left just after the pickle."""
    start = f.tell()
    try:
        length = _scan_pickle(_BoundedReader(f, MAX_PICKLE_BYTES))
        f.seek(start)
        unpickler = _RestrictedUnpickler(io.BytesIO(f.read(length)))
        return unpickler.load(), unpickler.storages
    except _Refused as e:
        raise UnsafeCheckpointError(f"Refusing to load {path}: {e}") from None
    except _PickleTooLong as e:
        raise CheckpointError(
            f"Refusing to load {path}: its pickle declares {e} bytes, past the {MAX_PICKLE_BYTES} bytes a pickle "
            f"may take (a state dict's takes about 1 MB). Expected a torch.save file") from None
    except Exception as e:  # any failure of a corrupt pickle, re-raised with the file named
        raise _corrupt(path, fmt, e) from e


def _storage_dtype(storage, byteorder="little"):
    dtype = np.dtype(_DTYPES[storage.dtype])
    return dtype.newbyteorder(">") if byteorder == "big" else dtype


def _needed_storages(state, storages, path, max_bytes, byteorder="little"):
    """`[(storage, dtype, nbytes)]` for the storages that the state dict's tensors use (optimizer
    state is not read), refused before anything is read when together they exceed `max_bytes`."""
    needed = [storages[key] for key in dict.fromkeys(ref.storage.root.key for ref in state.values())]
    sized = [(s, _storage_dtype(s, byteorder), s.numel * _storage_dtype(s).itemsize) for s in needed]
    total = sum(nbytes for _, _, nbytes in sized)
    if total > max_bytes:
        raise too_large(path, f"its {len(sized)} tensor storages declare", total, max_bytes)
    return sized


def _load_zip(path, max_bytes):
    """The state dict of a torch zip checkpoint, its storages' data read."""
    with _open_zip(path) as zf:
        pkl = _zip_pickle_name(zf.namelist())
        archive = pkl[: -len("data.pkl")]
        byteorder = "little"
        if archive + "byteorder" in zf.namelist():
            with zf.open(archive + "byteorder") as f:
                byteorder = f.read(16).decode("ascii", "replace")
            if byteorder not in ("little", "big"):
                raise _corrupt(path, "pytorch-zip", ValueError(f"byteorder record {describe(byteorder)}"))
        with zf.open(pkl) as f:
            obj, storages = _unpickle(f, path, "pytorch-zip")
        state = _select_state_dict(obj, path)
        needed = _needed_storages(state, storages, path, max_bytes, byteorder)
        try:
            infos = [zf.getinfo(f"{archive}data/{storage.key}") for storage, _, _ in needed]
            for info, (storage, _, nbytes) in zip(infos, needed):
                if info.file_size != nbytes:
                    raise ValueError(f"record {info.filename} holds {info.file_size} bytes, not {storage.numel} "
                                     f"x {nbytes // max(storage.numel, 1)}")
            for info, (storage, dtype, nbytes) in zip(infos, needed):
                with zf.open(info) as f:
                    storage.data = np.frombuffer(f.read(nbytes), dtype)
        except (KeyError, ValueError, zipfile.BadZipFile, EOFError) as e:
            raise _corrupt(path, "pytorch-zip", e) from e
    return state


def _read_exactly(f, size, path, what):
    data = f.read(size)
    if len(data) != size:
        raise _corrupt(path, "pytorch-legacy", EOFError(f"{what}: {len(data)} of {size} bytes"))
    return data


def _load_legacy(path, max_bytes):
    """The state dict of a legacy torch checkpoint, its storages' data read."""
    file_size = os.path.getsize(path)
    with open(path, "rb") as f:
        header = [_unpickle(f, path, "pytorch-legacy")[0] for _ in range(3)]
        if not (type(header[0]) is int and type(header[1]) is int  # noqa: E721 (no bool, no subclass)
                and header[:2] == [LEGACY_MAGIC_NUMBER, LEGACY_PROTOCOL_VERSION]):
            raise _corrupt(path, "pytorch-legacy", ValueError(f"header {describe(header[:2])}"))
        obj, storages = _unpickle(f, path, "pytorch-legacy")
        keys, _ = _unpickle(f, path, "pytorch-legacy")
        if not (isinstance(keys, list) and all(map(_is_text, keys))
                and sorted(map(_ascii, keys)) == sorted(storages)):
            raise _corrupt(path, "pytorch-legacy", ValueError("the storage key list does not match the pickle"))
        state = _select_state_dict(obj, path)
        needed = {storage.key for storage, _, _ in _needed_storages(state, storages, path, max_bytes)}
        for key in map(_ascii, keys):  # storages follow in this order; others are skipped
            storage = storages[key]
            dtype = _storage_dtype(storage)
            (numel,) = struct.unpack("<q", _read_exactly(f, 8, path, f"size of storage {key}"))
            nbytes = numel * dtype.itemsize
            if numel != storage.numel or f.tell() + nbytes > file_size:
                raise _corrupt(path, "pytorch-legacy", EOFError(
                    f"storage {key} declares {numel} elements ({storage.numel} in the pickle); "
                    f"{file_size - f.tell()} bytes remain"))
            if key in needed:
                storage.data = np.frombuffer(_read_exactly(f, nbytes, path, f"storage {key}"), dtype)
            else:
                f.seek(nbytes, os.SEEK_CUR)
    return state


def _widen_bfloat16(raw):
    """bfloat16 bit patterns (uint16) -> float32: they are the high half of a float32."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


def _tensor_nbytes(ref, path, name):
    """The bytes of the array that tensor `name` becomes, once its window is checked to be well
    formed and inside its storage."""
    view, root = ref.storage, ref.storage.root
    size, stride, offset = ref.size, ref.stride, ref.offset
    if not (len(size) == len(stride) and all(map(_is_count, (*size, *stride, offset)))
            and max(size, default=0) <= MAX_BYTES and view.offset + view.numel <= root.numel):
        raise _corrupt(path, "pytorch", ValueError(
            f"tensor {describe(name)} has size {describe(size)}, stride {describe(stride)}, offset "
            f"{describe(offset)} in a storage view [{view.offset}, +{view.numel}) of {root.numel} elements"))
    numel = math.prod(size)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if numel and last >= view.numel:
        raise _corrupt(path, "pytorch", ValueError(
            f"tensor {describe(name)} (size {size}, stride {stride}, offset {offset}) reaches element {last} "
            f"of a {view.numel}-element storage"))
    return numel * np.dtype(_DTYPES[root.dtype]).itemsize


def _to_numpy(ref):
    """Copy a tensor's strided window out of its storage (checked by `_tensor_nbytes`)."""
    root = ref.storage.root
    dtype = root.data.dtype
    if 0 in ref.size:
        array = np.zeros(ref.size, dtype)
    else:
        flat = root.data[ref.storage.offset + ref.offset:]
        strides = [s * dtype.itemsize if n > 1 else 0 for n, s in zip(ref.size, ref.stride)]
        array = np.lib.stride_tricks.as_strided(flat, shape=ref.size, strides=strides, writeable=False)
    array = np.array(array, dtype=dtype.newbyteorder("="))
    return _widen_bfloat16(array) if root.dtype == "bfloat16" else array


def _select_state_dict(obj, path):
    """The model state dict inside an unpickled checkpoint (see `STATE_DICT_KEYS`)."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a dict. Expected a state dict or a "
                              f"training checkpoint holding one under one of {list(STATE_DICT_KEYS)}.")
    for key in STATE_DICT_KEYS:
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    others = [k for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, _TensorRef))]
    if others or not obj:
        raise CheckpointError(
            f"{path} has no state dict of tensors. Expected a dict of name -> tensor, or a checkpoint holding "
            f"one under one of {list(STATE_DICT_KEYS)}. Received: {len(obj)} entries, non-tensor ones "
            f"{[describe(k) for k in others[:8]]}")
    return obj


def _strip_data_parallel_prefix(state):
    """Drop DataParallel's `module.` when every key has it."""
    if state and all(k.startswith(DATA_PARALLEL_PREFIX) for k in state):
        return {k[len(DATA_PARALLEL_PREFIX):]: v for k, v in state.items()}
    return dict(state)


def _npy_header(f, name, path):
    """`(shape, dtype, header bytes)` of the .npy member `f`, whose dtype must be numeric."""
    version = np.lib.format.read_magic(f)
    if version not in ((1, 0), (2, 0)):
        raise ValueError(f"member {name} is .npy format version {version}")
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _fortran, dtype = read_header(f)
    if dtype.kind not in "biufc" or dtype.hasobject:
        raise CheckpointError(f"Cannot read {path}: member {name} holds {dtype} values. Expected an .npz of "
                              f"numeric arrays. Received: dtype={dtype}")
    return shape, dtype, f.tell()


def _read_npz(path, max_bytes):
    """`{name: array}` from an .npz, each member's declared size checked against its record and
    all together against `max_bytes` before any array is read."""
    try:
        with _open_zip(path) as zf:
            infos = zf.infolist()
            names = [info.filename[: -len(".npy")] for info in infos]
            if len(set(names)) != len(names):
                raise ValueError("two members have the same name")
            headers = []
            for info in infos:
                with zf.open(info) as f:
                    shape, dtype, offset = _npy_header(f, info.filename, path)
                nbytes = math.prod(shape) * dtype.itemsize
                if offset + nbytes != info.file_size:
                    raise ValueError(f"member {info.filename} declares {shape} x {dtype} but holds "
                                     f"{info.file_size - offset} bytes of data")
                headers.append(nbytes)
            if sum(headers) > max_bytes:
                raise too_large(path, f"its {len(infos)} arrays declare", sum(headers), max_bytes)
            arrays = {}
            for name, info in zip(names, infos):
                with zf.open(info) as f:
                    arrays[name] = np.lib.format.read_array(f, allow_pickle=False)
            return arrays
    except CheckpointError:
        raise
    except (ValueError, zipfile.BadZipFile, OSError, EOFError) as e:
        raise CheckpointError(f"Cannot read {path}: corrupt .npz ({e}). Expected an .npz of numeric "
                              f"arrays.") from e


def read_state_dict(path, max_bytes=MAX_BYTES):
    """A model's weights as `{name: np.ndarray}` from a torch checkpoint or an `.npz`.

    Reads both torch.save formats (zip and legacy) without torch and without running code from
    the file; see the module docstring. A training checkpoint's state dict is taken from its
    first key among `STATE_DICT_KEYS` ("state_dict", "model_state_dict", "model"); other entries
    (epoch, arch, best_prec1, optimizer state) are parsed but not returned. Keys lose a `module.`
    prefix when all have it (DataParallel). Tensors keep their dtype, except bfloat16, which comes
    back as float32; every array is a C-contiguous copy.

    Nothing in the file can change the process or a later load, and what it declares is checked
    before it is allocated: the storages (or .npz arrays) read, and separately the arrays returned,
    may each take at most `max_bytes` (see `p3d_keras.weights.untrusted`); a pickle at most
    `MAX_PICKLE_BYTES`, `MAX_PICKLE_ITEMS` objects and `MAX_NESTING` levels.

    Raises FileNotFoundError for a missing file, and CheckpointError (a ValueError) naming the
    file for everything it refuses: UnsafeCheckpointError when the pickle asks for anything a state
    dict never needs, CheckpointError for other formats, truncated or corrupt files, sizes over
    the limits, or a checkpoint without a state dict of tensors.
    """
    path = _require_file(path)
    fmt = sniff_format(path)
    if fmt == "caffe":
        raise CheckpointError(f"{path} is a Caffe model, not a state dict. Expected a torch checkpoint or .npz; "
                              f"read it with p3d_keras.weights.caffemodel.read_caffemodel.")
    if fmt == "npz":
        return _strip_data_parallel_prefix(_read_npz(path, max_bytes))
    state = _load_zip(path, max_bytes) if fmt == "pytorch-zip" else _load_legacy(path, max_bytes)
    sizes = {name: _tensor_nbytes(ref, path, name) for name, ref in state.items()}
    if sum(sizes.values()) > max_bytes:
        raise too_large(path, f"its {len(sizes)} tensors (views of shared or strided storage) take",
                         sum(sizes.values()), max_bytes)
    return _strip_data_parallel_prefix({name: _to_numpy(ref) for name, ref in state.items()})
