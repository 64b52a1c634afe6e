"""Which weights format a file holds, by content, and `read_state_dict`, which reads any of the
state-dict formats (torch zip, torch legacy, .npz) into `{name: np.ndarray}`.

`sniff_format(path)` answers one of `FORMATS`; `read_state_dict(path)` dispatches to
`p3d_keras.weights.pth` (torch files, read without torch) or `p3d_keras.weights.npz`, and refuses
a `.caffemodel` (read by `p3d_keras.weights.caffemodel`).
"""
import os
import zipfile

from p3d_keras.weights import caffemodel
from p3d_keras.weights.npz import read_npz
from p3d_keras.weights.pth import LEGACY_MAGIC_NUMBER, read_torch_file, unpickle, zip_pickle_name
from p3d_keras.weights.untrusted import MAX_BYTES, CheckpointError, UnsafeCheckpointError, describe, open_zip

FORMATS = ("pytorch-zip", "pytorch-legacy", "npz", "caffe")
DATA_PARALLEL_PREFIX = "module."


def _require_file(path):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No checkpoint at {path!r}. Expected an existing file.")
    return path


def _unknown_format(path, detail):
    return CheckpointError(
        f"Cannot read {path}: {detail}. Expected one of {list(FORMATS)}: a torch.save file (zip or legacy), "
        f"an .npz of arrays, or a Caffe .caffemodel.")


def _zip_kind(path):
    """'pytorch-zip' or 'npz' for a zip archive; CheckpointError for any other zip."""
    try:
        with open_zip(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, ValueError, EOFError) as e:
        raise CheckpointError(f"{path} starts like a zip archive but is truncated or corrupt ({e}). "
                              f"Expected a complete torch.save zip or .npz file.") from e
    if zip_pickle_name(names):
        return "pytorch-zip"
    if names and all(n.endswith(".npy") for n in names):
        return "npz"
    raise _unknown_format(path, f"a zip archive with neither '<archive>/data.pkl' nor only .npy members "
                                f"(Received: members {describe(names[:5])})")


def _is_legacy_torch(path, head):
    """Whether the file's first pickle is torch's legacy magic number.

    Only pickles of protocol 2 or later are probed (torch writes protocol 2); a first pickle that
    the scan refuses raises UnsafeCheckpointError, as it would run code under `pickle.load`.
    """
    if not head.startswith(b"\x80"):
        return False
    with open(path, "rb") as f:
        try:
            return unpickle(f, path, "pytorch-legacy")[0] == LEGACY_MAGIC_NUMBER
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


def _strip_data_parallel_prefix(state):
    """Drop DataParallel's `module.` when every key has it."""
    if state and all(k.startswith(DATA_PARALLEL_PREFIX) for k in state):
        return {k[len(DATA_PARALLEL_PREFIX):]: v for k, v in state.items()}
    return dict(state)


def read_state_dict(path, max_bytes=MAX_BYTES):
    """A model's weights as `{name: np.ndarray}` from a torch checkpoint or an `.npz`.

    Reads both torch.save formats (zip and legacy) without torch and without running code from
    the file (see `p3d_keras.weights.pth`). A training checkpoint's state dict is taken from its
    first key among `pth.STATE_DICT_KEYS` ("state_dict", "model_state_dict", "model"); other entries
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
        return _strip_data_parallel_prefix(read_npz(path, max_bytes))
    return _strip_data_parallel_prefix(read_torch_file(path, fmt, max_bytes))
