"""Read PyTorch checkpoints (`.pth`, `.pth.tar`) with NumPy alone: `read_torch_file`.

torch is not needed and no code from the file ever runs: each pickle inside a checkpoint is first
scanned opcode by opcode (`p3d_keras.weights.pickle_scan`: allowed opcodes, declared lengths, object
count, nesting; limits in `p3d_keras.weights.untrusted`), then read from memory by `_RestrictedUnpickler`, whose
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
import collections
import dataclasses
import io
import math
import os
import pickle
import re
import struct
import zipfile

import numpy as np

from p3d_keras.weights.pickle_scan import ORDERED_DICT, BoundedReader, PickleTooLong, Refused, python3_name, scan_pickle
from p3d_keras.weights.untrusted import (
    MAX_BYTES,
    MAX_PICKLE_BYTES,
    CheckpointError,
    UnsafeCheckpointError,
    describe,
    open_zip,
    too_large,
)

# torch/serialization.py: MAGIC_NUMBER and PROTOCOL_VERSION of the legacy format.
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

# Keys under which training checkpoints keep the model's state dict, tried in this order.
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")

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
    raise Refused(f"its pickle tries to modify the reader's stand-in for a torch object "
                  f"({type(self).__name__.lstrip('_')}), which a state dict never does")


def _stand_in(cls):
    """`cls` as a frozen, slotted dataclass whose instances refuse `__setstate__` (a pickle's BUILD)."""
    cls.__setstate__ = _refuse_setstate  # set first: the dataclass keeps a __setstate__ the class defines
    return dataclasses.dataclass(frozen=True, slots=True)(cls)


@_stand_in
class _StorageType:
    """Stands for a torch storage class (torch.FloatStorage, ...): only its element dtype."""

    dtype: str


@_stand_in
class _TorchDtype:
    """Stands for a torch dtype object (torch.float32, ...) found as a plain value."""

    name: str


@dataclasses.dataclass(slots=True)
class _Storage:
    """One serialized storage: `numel` elements of `dtype`; `data` is filled after unpickling.
    Never handed to the pickle itself (only `_StorageView`s are)."""

    key: str
    dtype: str
    numel: int
    data: np.ndarray = None


@_stand_in
class _StorageView:
    """Elements `[offset, offset + numel)` of a storage (legacy views; offset 0 otherwise)."""

    root: _Storage
    offset: int
    numel: int


@_stand_in
class _TensorRef:
    """A tensor as pickled: a strided window on a storage, resolved once the bytes are read."""

    storage: _StorageView
    offset: int
    size: tuple
    stride: tuple


@_stand_in
class _Rebuild:
    """An allowed torch rebuild function, wrapped so the pickle gets no real function object."""

    fn: object

    def __call__(self, *args):
        return self.fn(*args)


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


def _allowed_globals():
    """(module, name) -> object handed to the pickle, made afresh for each load. Each entry says
    why a state dict needs it."""
    allowed = {
        # Module.state_dict() returns an OrderedDict; _rebuild_tensor_v2's backward_hooks is one.
        ORDERED_DICT: collections.OrderedDict,
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


def _ascii(value):
    """Python 2 pickles store some of torch's internal strings as bytes."""
    return value.decode("ascii") if isinstance(value, bytes) else value


def _is_text(value):
    return isinstance(value, str) or (isinstance(value, bytes) and value.isascii())


class _RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only `_allowed_globals()` and torch storage persistent ids.

    `storages` collects every storage the pickle refers to, by key. Used only on a pickle that
    `scan_pickle` has accepted.
    """

    def __init__(self, file):
        super().__init__(file, encoding="utf-8")  # torch.load's encoding for Python 2 pickles
        self.allowed = _allowed_globals()
        self.storages = {}

    def find_class(self, module, name):
        module, name = python3_name(module, name)
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise Refused(f"it references {module}.{name}, which a state dict never needs. Only tensors, "
                          f"dicts and numbers are allowed. Received: global={module}.{name}") from None

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or len(pid) not in (5, 6) or _ascii(pid[0]) != "storage":
            kind = describe(_ascii(pid[0]) if isinstance(pid, tuple) and pid else type(pid).__name__)
            raise Refused(f"it holds a pickled {kind} object (a whole module or another non-tensor object), "
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


def zip_pickle_name(names):
    """The `<archive>/data.pkl` record of a torch zip checkpoint, or None."""
    found = [n for n in names if re.fullmatch(r"[^/]+/data\.pkl", n)]
    return found[0] if len(found) == 1 else None


def _corrupt(path, fmt, error):
    return CheckpointError(f"Cannot read {path}: truncated or corrupt {fmt} checkpoint ({type(error).__name__}: "
                           f"{error}). Expected a complete file written by torch.save.")


def unpickle(f, path, fmt):
    """Scan, then load, the pickle at the position of the binary file `f` with the restricted
    unpickler; `(object, storages)`, with `f` left just after the pickle."""
    start = f.tell()
    try:
        length = scan_pickle(BoundedReader(f, MAX_PICKLE_BYTES))
        f.seek(start)
        unpickler = _RestrictedUnpickler(io.BytesIO(f.read(length)))
        return unpickler.load(), unpickler.storages
    except Refused as e:
        raise UnsafeCheckpointError(f"Refusing to load {path}: {e}") from None
    except PickleTooLong as e:
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
    with open_zip(path) as zf:
        pkl = zip_pickle_name(zf.namelist())
        archive = pkl[: -len("data.pkl")]
        byteorder = "little"
        if archive + "byteorder" in zf.namelist():
            with zf.open(archive + "byteorder") as f:
                byteorder = f.read(16).decode("ascii", "replace")
            if byteorder not in ("little", "big"):
                raise _corrupt(path, "pytorch-zip", ValueError(f"byteorder record {describe(byteorder)}"))
        with zf.open(pkl) as f:
            obj, storages = unpickle(f, path, "pytorch-zip")
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
        header = [unpickle(f, path, "pytorch-legacy")[0] for _ in range(3)]
        if not (type(header[0]) is int and type(header[1]) is int  # noqa: E721 (no bool, no subclass)
                and header[:2] == [LEGACY_MAGIC_NUMBER, LEGACY_PROTOCOL_VERSION]):
            raise _corrupt(path, "pytorch-legacy", ValueError(f"header {describe(header[:2])}"))
        obj, storages = unpickle(f, path, "pytorch-legacy")
        keys, _ = unpickle(f, path, "pytorch-legacy")
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


def read_torch_file(path, fmt, max_bytes=MAX_BYTES):
    """The state dict of the torch.save file at `path` as `{name: np.ndarray}`, keys as saved.

    `fmt` is "pytorch-zip" or "pytorch-legacy" (see `p3d_keras.weights.formats.sniff_format`). The
    storages read, and separately the arrays returned, may each take at most `max_bytes`. Raises
    UnsafeCheckpointError for a refused pickle and CheckpointError naming the file for a corrupt
    or oversized one, or one without a state dict of tensors.
    """
    state = _load_zip(path, max_bytes) if fmt == "pytorch-zip" else _load_legacy(path, max_bytes)
    sizes = {name: _tensor_nbytes(ref, path, name) for name, ref in state.items()}
    if sum(sizes.values()) > max_bytes:
        raise too_large(path, f"its {len(sizes)} tensors (views of shared or strided storage) take",
                        sum(sizes.values()), max_bytes)
    return {name: _to_numpy(ref) for name, ref in state.items()}
