"""Read PyTorch checkpoints (`.pth`, `.pth.tar`) and `.npz` weights with NumPy alone.

torch is not needed and no code from the file ever runs: the pickles inside a checkpoint are
read by `_RestrictedUnpickler`, whose allow-list holds only what a state dict is made of, and
tensors come back as NumPy arrays built from the raw storage bytes.

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
import os
import pickle
import re
import struct
import zipfile

import numpy as np

from p3d_keras import caffemodel

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


class UnsafeCheckpointError(ValueError):
    """A checkpoint's pickle references a global that a state dict never needs."""


# ---------------------------------------------------------------------------------------------
# Stand-ins for torch objects. Frozen and slotted, so a pickle's BUILD opcode cannot alter them.


@dataclasses.dataclass(frozen=True, slots=True)
class _StorageType:
    """Stands for a torch storage class (torch.FloatStorage, ...): only its element dtype."""

    dtype: str


@dataclasses.dataclass(frozen=True, slots=True)
class _TorchDtype:
    """Stands for a torch dtype object (torch.float32, ...) found as a plain value."""

    name: str


@dataclasses.dataclass(slots=True)
class _Storage:
    """One serialized storage: `numel` elements of `dtype`; `data` is filled after unpickling."""

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


@dataclasses.dataclass(frozen=True, slots=True)
class _TensorRef:
    """A tensor as pickled: a strided window on a storage, resolved once the bytes are read."""

    storage: _StorageView
    offset: int
    size: tuple
    stride: tuple


@dataclasses.dataclass(frozen=True, slots=True)
class _Rebuild:
    """An allowed torch rebuild function, wrapped so the pickle gets no real function object."""

    fn: object

    def __call__(self, *args):
        return self.fn(*args)


def _rebuild_tensor(storage, storage_offset, size, stride):
    """torch._utils._rebuild_tensor (torch 0.2/0.3)."""
    if not isinstance(storage, _StorageView):
        raise pickle.UnpicklingError(f"a tensor's storage is a {type(storage).__name__}, not a storage")
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
    """(module, name) -> object handed to the pickle. Each entry says why a state dict needs it."""
    allowed = {
        # Module.state_dict() returns an OrderedDict; _rebuild_tensor_v2's backward_hooks is one.
        ("collections", "OrderedDict"): collections.OrderedDict,
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


_ALLOWED_GLOBALS = _allowed_globals()


def _ascii(value):
    """Python 2 pickles store some of torch's internal strings as bytes."""
    return value.decode("ascii") if isinstance(value, bytes) else value


class _RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only `_ALLOWED_GLOBALS` and torch storage persistent ids.

    `storages` collects every storage the pickle refers to, by key.
    """

    def __init__(self, file, path):
        super().__init__(file, encoding="utf-8")  # torch.load's encoding for Python 2 pickles
        self.path = path
        self.storages = {}

    def find_class(self, module, name):
        # Python 2 names (protocol 2 pickles write __builtin__.eval), mapped as pickle itself does.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(
                f"Refusing to load {self.path}: it references {module}.{name}, which a state dict never "
                f"needs. Only tensors, dicts and numbers are allowed. Received: global={module}.{name}"
            ) from None

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or len(pid) not in (5, 6) or _ascii(pid[0]) != "storage":
            kind = _ascii(pid[0]) if isinstance(pid, tuple) and pid else type(pid).__name__
            raise UnsafeCheckpointError(
                f"Refusing to load {self.path}: it holds a pickled {kind!r} object (a whole module or "
                f"another non-tensor object), which a state dict never needs. Received: persistent id {kind!r}")
        storage_type, key, _location, numel = pid[1:5]
        view = pid[5] if len(pid) == 6 else None
        if not isinstance(storage_type, _StorageType) or not _is_count(numel):
            raise pickle.UnpicklingError(f"malformed storage id {pid!r}")
        key = _ascii(key)
        root = self.storages.setdefault(key, _Storage(key, storage_type.dtype, numel))
        if (root.dtype, root.numel) != (storage_type.dtype, numel):
            raise pickle.UnpicklingError(f"storage {key!r} is declared with two different types or sizes")
        if view is None:
            return _StorageView(root, 0, numel)
        _view_key, offset, view_numel = view
        if not (_is_count(offset) and _is_count(view_numel)):
            raise pickle.UnpicklingError(f"malformed storage view {view!r}")
        return _StorageView(root, offset, view_numel)


def _is_count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# ---------------------------------------------------------------------------------------------
# Format detection


def _require_file(path):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No checkpoint at {path!r}. Expected an existing file.")
    return path


def _unknown_format(path, detail):
    return ValueError(
        f"Cannot read {path}: {detail}. Expected one of {list(FORMATS)}: a torch.save file (zip or legacy), "
        f"an .npz of arrays, or a Caffe .caffemodel.")


def _zip_kind(path):
    """'pytorch-zip' or 'npz' for a zip archive; ValueError for any other zip."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except zipfile.BadZipFile as e:
        raise ValueError(f"{path} starts like a zip archive but is truncated or corrupt ({e}). "
                         f"Expected a complete torch.save zip or .npz file.") from e
    if _zip_pickle_name(names):
        return "pytorch-zip"
    if names and all(n.endswith(".npy") for n in names):
        return "npz"
    raise _unknown_format(path, f"a zip archive with neither '<archive>/data.pkl' nor only .npy members "
                                f"(Received: members {names[:5]})")


def _zip_pickle_name(names):
    """The `<archive>/data.pkl` record of a torch zip checkpoint, or None."""
    found = [n for n in names if re.fullmatch(r"[^/]+/data\.pkl", n)]
    return found[0] if len(found) == 1 else None


def _is_legacy_torch(path, head):
    """Whether the file's first pickle is torch's legacy magic number.

    Only pickles of protocol 2 or later are probed (torch writes protocol 2); a first pickle that
    references globals raises UnsafeCheckpointError, as it would run code under `pickle.load`.
    """
    if not head.startswith(b"\x80"):
        return False
    with open(path, "rb") as f:
        try:
            return _RestrictedUnpickler(f, path).load() == LEGACY_MAGIC_NUMBER
        except UnsafeCheckpointError:
            raise
        except Exception:  # not a pickle at all: the caller reports an unknown format
            return False


def sniff_format(path):
    """The format of the file at `path`, by content: one of `FORMATS`.

    "pytorch-zip" is a zip with `<archive>/data.pkl`, "npz" a zip of `.npy` members,
    "pytorch-legacy" a file whose first pickle is torch's legacy magic number, and "caffe" a file
    named `*.caffemodel` or one that parses as a caffe NetParameter with layers. Raises
    FileNotFoundError for a missing file, UnsafeCheckpointError for a plain pickle that references
    globals, and ValueError naming the file for anything else (empty, text, images, a truncated zip).
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
    return ValueError(f"Cannot read {path}: truncated or corrupt {fmt} checkpoint ({type(error).__name__}: "
                      f"{error}). Expected a complete file written by torch.save.")


def _unpickle(file, path, fmt):
    """Load one pickle from `file` with the restricted unpickler; `(object, storages)`."""
    unpickler = _RestrictedUnpickler(file, path)
    try:
        return unpickler.load(), unpickler.storages
    except UnsafeCheckpointError:
        raise
    except Exception as e:  # any failure of a corrupt pickle, re-raised with the file named
        raise _corrupt(path, fmt, e) from e


def _storage_dtype(storage, byteorder="little"):
    dtype = np.dtype(_DTYPES[storage.dtype])
    return dtype.newbyteorder(">") if byteorder == "big" else dtype


def _needed_keys(state):
    """Keys of the storages that the state dict's tensors use (optimizer state is not read)."""
    return {ref.storage.root.key for ref in state.values()}


def _load_zip(path):
    """The state dict of a torch zip checkpoint, its storages' data read."""
    with zipfile.ZipFile(path) as zf:
        pkl = _zip_pickle_name(zf.namelist())
        archive = pkl[: -len("data.pkl")]
        byteorder = "little"
        if archive + "byteorder" in zf.namelist():
            byteorder = zf.read(archive + "byteorder").decode("ascii", "replace")
            if byteorder not in ("little", "big"):
                raise _corrupt(path, "pytorch-zip", ValueError(f"byteorder record {byteorder!r}"))
        with zf.open(pkl) as f:
            obj, storages = _unpickle(f, path, "pytorch-zip")
        state = _select_state_dict(obj, path)
        for key in _needed_keys(state):
            storage, name = storages[key], f"{archive}data/{key}"
            dtype = _storage_dtype(storage, byteorder)
            try:
                info = zf.getinfo(name)
                if info.file_size != storage.numel * dtype.itemsize:
                    raise ValueError(f"record {name} holds {info.file_size} bytes, "
                                     f"not {storage.numel} x {dtype.itemsize}")
                storage.data = np.frombuffer(zf.read(info), dtype)
            except (KeyError, ValueError, zipfile.BadZipFile) as e:
                raise _corrupt(path, "pytorch-zip", e) from e
    return state


def _read_exactly(f, size, path, what):
    data = f.read(size)
    if len(data) != size:
        raise _corrupt(path, "pytorch-legacy", EOFError(f"{what}: {len(data)} of {size} bytes"))
    return data


def _load_legacy(path):
    """The state dict of a legacy torch checkpoint, its storages' data read."""
    file_size = os.path.getsize(path)
    with open(path, "rb") as f:
        header = [_unpickle(f, path, "pytorch-legacy")[0] for _ in range(3)]
        if header[:2] != [LEGACY_MAGIC_NUMBER, LEGACY_PROTOCOL_VERSION]:
            raise _corrupt(path, "pytorch-legacy", ValueError(f"header {header[:2]!r}"))
        obj, storages = _unpickle(f, path, "pytorch-legacy")
        keys, _ = _unpickle(f, path, "pytorch-legacy")
        if not isinstance(keys, list) or sorted(map(_ascii, keys)) != sorted(storages):
            raise _corrupt(path, "pytorch-legacy", ValueError("the storage key list does not match the pickle"))
        state = _select_state_dict(obj, path)
        needed = _needed_keys(state)
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


def _to_numpy(ref, path, name):
    """Copy a tensor's strided window out of its storage, checking it stays inside."""
    view, root = ref.storage, ref.storage.root
    size, stride, offset = ref.size, ref.stride, ref.offset
    if not (len(size) == len(stride) and all(map(_is_count, (*size, *stride, offset)))
            and view.offset + view.numel <= root.numel):
        raise _corrupt(path, "pytorch", ValueError(
            f"tensor {name!r} has size {size}, stride {stride}, offset {offset} in a storage view "
            f"[{view.offset}, +{view.numel}) of {root.numel} elements"))
    dtype = root.data.dtype
    if 0 in size:
        array = np.zeros(size, dtype)
    else:
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= view.numel:
            raise _corrupt(path, "pytorch", ValueError(
                f"tensor {name!r} (size {size}, stride {stride}, offset {offset}) reaches element {last} "
                f"of a {view.numel}-element storage"))
        flat = root.data[view.offset + offset:]
        array = np.lib.stride_tricks.as_strided(
            flat, shape=size, strides=[s * dtype.itemsize for s in stride], writeable=False)
    array = np.array(array, dtype=dtype.newbyteorder("="))
    return _widen_bfloat16(array) if root.dtype == "bfloat16" else array


def _select_state_dict(obj, path):
    """The model state dict inside an unpickled checkpoint (see `STATE_DICT_KEYS`)."""
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a dict. Expected a state dict or a "
                         f"training checkpoint holding one under one of {list(STATE_DICT_KEYS)}.")
    for key in STATE_DICT_KEYS:
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    others = [k for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, _TensorRef))]
    if others or not obj:
        raise ValueError(
            f"{path} has no state dict of tensors. Expected a dict of name -> tensor, or a checkpoint holding "
            f"one under one of {list(STATE_DICT_KEYS)}. Received: {len(obj)} entries, non-tensor ones "
            f"{[str(k) for k in others[:8]]}")
    return obj


def _strip_data_parallel_prefix(state):
    """Drop DataParallel's `module.` when every key has it."""
    if state and all(k.startswith(DATA_PARALLEL_PREFIX) for k in state):
        return {k[len(DATA_PARALLEL_PREFIX):]: v for k, v in state.items()}
    return dict(state)


def _read_npz(path):
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (ValueError, zipfile.BadZipFile, OSError, EOFError) as e:
        raise ValueError(f"Cannot read {path}: corrupt .npz or one holding pickled objects ({e}). "
                         f"Expected an .npz of numeric arrays.") from e


def read_state_dict(path):
    """A model's weights as `{name: np.ndarray}` from a torch checkpoint or an `.npz`.

    Reads both torch.save formats (zip and legacy) without torch and without running code from
    the file; see the module docstring. A training checkpoint's state dict is taken from its
    first key among `STATE_DICT_KEYS` ("state_dict", "model_state_dict", "model"); other entries
    (epoch, arch, best_prec1, optimizer state) are parsed but not returned. Keys lose a `module.`
    prefix when all have it (DataParallel). Tensors keep their dtype, except bfloat16, which comes
    back as float32; every array is a C-contiguous copy.

    Raises FileNotFoundError for a missing file, UnsafeCheckpointError (a ValueError) when the
    pickle references anything outside the allow-list, and ValueError naming the file for other
    formats, truncated or corrupt files, or a checkpoint without a state dict of tensors.
    """
    path = _require_file(path)
    fmt = sniff_format(path)
    if fmt == "caffe":
        raise ValueError(f"{path} is a Caffe model, not a state dict. Expected a torch checkpoint or .npz; "
                         f"read it with p3d_keras.caffemodel.read_caffemodel.")
    if fmt == "npz":
        return _strip_data_parallel_prefix(_read_npz(path))
    state = _load_zip(path) if fmt == "pytorch-zip" else _load_legacy(path)
    return _strip_data_parallel_prefix({k: _to_numpy(v, path, k) for k, v in state.items()})
