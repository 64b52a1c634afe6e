"""Read an `.npz` of weights (arrays in the PyTorch port's names) with every declared size checked.

`read_npz(path, max_bytes)` returns `{name: array}`; each member's `.npy` header must declare a
numeric dtype and exactly the bytes its record holds, and all members together at most
`max_bytes`, before any array is read. Pickled (object) arrays are refused.
"""
import math
import zipfile

import numpy as np

from p3d_keras.weights.untrusted import CheckpointError, open_zip, too_large


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


def read_npz(path, max_bytes):
    """`{name: array}` from an .npz, each member's declared size checked against its record and
    all together against `max_bytes` before any array is read."""
    try:
        with open_zip(path) as zf:
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
