"""p3d_keras.weights.pth and pickle_scan, read through `read_state_dict`: torch.save files of both
serialization formats (written by torch where it is installed, else the committed fixtures of
tests/data), and hostile files of every kind (torch, .npz and .caffemodel)."""
import collections
import io
import json
import os
import pathlib
import pickle
import subprocess
import sys

import numpy as np
import pytest

import checkpoint_fixtures as cf
from needs import require_torch
from p3d_keras.weights import caffemodel, pth
from p3d_keras.weights.formats import read_state_dict, sniff_format
from p3d_keras.weights.pickle_scan import Refused
from p3d_keras.weights.untrusted import CheckpointError, UnsafeCheckpointError

DATA = pathlib.Path(__file__).resolve().parent / "data"
FORMATS = pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])


def save(obj, path, legacy):
    require_torch().save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


def as_numpy(tensor):
    torch = require_torch()
    tensor = tensor.detach()
    return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()


def assert_same(loaded, expected):
    assert sorted(loaded) == sorted(expected)
    for key, tensor in expected.items():
        want = tensor if isinstance(tensor, np.ndarray) else as_numpy(tensor)
        assert loaded[key].dtype == want.dtype, key
        assert loaded[key].shape == want.shape, key
        np.testing.assert_array_equal(loaded[key], want, err_msg=key)


def tricky_state_dict(torch):
    """Views with offsets and strides, shared storages, and several dtypes."""
    torch.manual_seed(0)
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    return collections.OrderedDict([
        ("conv.weight", torch.randn(2, 3, 1, 3, 3)),
        ("transposed", base.t()),  # non-contiguous, shares base's storage
        ("slice", base[1:, 2:5]),  # offset 8, strides (6, 1)
        ("step", base[::2, ::3]),
        ("double", torch.randn(3, dtype=torch.float64)),
        ("long", torch.arange(-3, 4, dtype=torch.int64)),
        ("half", torch.randn(5).half()),
        ("bf16", torch.randn(2, 2).to(torch.bfloat16)),
        ("mask", torch.tensor([True, False, True])),
        ("bytes", torch.arange(7, dtype=torch.uint8)),
        ("scalar", torch.tensor(2.5)),
        ("empty", torch.zeros(0, 3)),
        ("param", torch.nn.Parameter(torch.ones(2))),
    ])


def write_committed_fixtures(torch, folder=DATA):
    """Write tests/data/tricky_{zip,legacy}.pth and their expected arrays (run by hand with torch:
    `python tests/test_pth.py`)."""
    state = tricky_state_dict(torch)
    for legacy in (False, True):
        save({"state_dict": state, "epoch": 1}, folder / f"tricky_{'legacy' if legacy else 'zip'}.pth", legacy)
    np.savez(folder / "tricky_expected.npz", **{k: as_numpy(v) for k, v in state.items()})


@FORMATS
def test_committed_torch_files_read_without_torch(legacy):
    path = DATA / f"tricky_{'legacy' if legacy else 'zip'}.pth"
    assert sniff_format(path) == ("pytorch-legacy" if legacy else "pytorch-zip")
    assert_same(read_state_dict(path), dict(np.load(DATA / "tricky_expected.npz")))


@FORMATS
def test_committed_torch_files_are_what_torch_loads(torch, legacy):
    loaded = torch.load(DATA / f"tricky_{'legacy' if legacy else 'zip'}.pth", weights_only=True)["state_dict"]
    assert_same({k: as_numpy(v) for k, v in loaded.items()}, dict(np.load(DATA / "tricky_expected.npz")))


@FORMATS
def test_torch_free_writer_round_trips(tmp_path, legacy):
    assert_same(read_state_dict(cf.write_clean(tmp_path / "clean.pth", legacy)), cf.clean_state())


@FORMATS
def test_training_checkpoint_matches_torch_load(torch, tmp_path, legacy):
    state = tricky_state_dict(torch)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.ones(3))], lr=0.1, momentum=0.9)
    optimizer.zero_grad()
    checkpoint = {"state_dict": collections.OrderedDict(("module." + k, v) for k, v in state.items()),
                  "epoch": 3, "arch": "P3D63", "best_prec1": torch.tensor(71.5),
                  "optimizer": optimizer.state_dict()}
    path = save(checkpoint, tmp_path / "ckpt.pth.tar", legacy)
    assert sniff_format(path) == ("pytorch-legacy" if legacy else "pytorch-zip")
    expected = torch.load(path, weights_only=False)["state_dict"]
    assert_same(read_state_dict(path), {k[len("module."):]: v for k, v in expected.items()})


@pytest.mark.parametrize("wrapper", [None, "model_state_dict", "model"])
def test_bare_and_other_wrappers(torch, tmp_path, wrapper):
    state = {"fc.weight": torch.randn(4, 2), "fc.bias": torch.randn(4)}
    path = save(state if wrapper is None else {wrapper: state, "epoch": 1}, tmp_path / "w.pth", False)
    assert_same(read_state_dict(path), state)


def test_module_prefix_kept_unless_on_every_key(torch, tmp_path):
    state = {"module.a": torch.ones(1), "b": torch.zeros(1)}
    assert sorted(read_state_dict(save(state, tmp_path / "p.pth", False))) == ["b", "module.a"]


class TorchV02Tensor:
    """Pickles like a torch 0.2/0.3 tensor: torch._utils._rebuild_tensor(storage, offset, size, stride)."""

    def __init__(self, tensor):
        self.tensor = tensor

    def __reduce__(self):
        t = self.tensor
        return require_torch()._utils._rebuild_tensor, (t.storage(), t.storage_offset(),
                                                        tuple(t.size()), t.stride())


@FORMATS
@pytest.mark.filterwarnings("ignore:TypedStorage is deprecated")
def test_torch_02_tensor_pickles(torch, tmp_path, legacy):
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    path = save({"state_dict": {"w": TorchV02Tensor(base[1:].t())}}, tmp_path / "old.pth", legacy)
    np.testing.assert_array_equal(read_state_dict(path)["w"], base[1:].t().numpy())


@FORMATS
def test_reference_p3d63_checkpoint_round_trips(torch, tmp_path, reference, legacy):
    state = reference.build_state_dict(0, depth=63)
    checkpoint = {"state_dict": {"module." + k: torch.from_numpy(v) for k, v in state.items()},
                  "epoch": 0, "arch": "P3D63"}
    loaded = read_state_dict(save(checkpoint, tmp_path / "p3d63.pth.tar", legacy))
    assert sorted(loaded) == sorted(state)
    for key, value in state.items():
        assert loaded[key].dtype == np.float32 and loaded[key].shape == value.shape, key
        np.testing.assert_array_equal(loaded[key], value, err_msg=key)


# --- refusing code ------------------------------------------------------------------------------


class RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class RunsEval:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return eval, (f"open({str(self.marker)!r}, 'w').close()",)


class PlainObject:
    pass


@FORMATS
@pytest.mark.parametrize("payload, refused", [(RunsShell, "system"), (RunsEval, "builtins.eval")])
def test_code_in_a_checkpoint_is_refused_not_run(torch, tmp_path, legacy, payload, refused):
    marker = tmp_path / "pwned"
    path = save({"state_dict": {"w": torch.ones(1)}, "extra": payload(marker)}, tmp_path / "evil.pth", legacy)
    with pytest.raises(UnsafeCheckpointError, match=refused) as info:
        read_state_dict(path)
    assert str(path) in str(info.value)
    assert not marker.exists()


@FORMATS
def test_class_instance_is_refused(torch, tmp_path, legacy):
    path = save({"state_dict": {"w": torch.ones(1)}, "args": PlainObject()}, tmp_path / "obj.pth", legacy)
    with pytest.raises(UnsafeCheckpointError, match="PlainObject"):
        read_state_dict(path)


def test_whole_module_is_refused(torch, tmp_path):
    path = save(torch.nn.Linear(2, 2), tmp_path / "module.pth", False)
    with pytest.raises(UnsafeCheckpointError, match="torch.nn"):
        read_state_dict(path)


def test_plain_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "plain.pth"
    path.write_bytes(pickle.dumps(RunsShell(marker)))
    with pytest.raises(UnsafeCheckpointError, match="system"):
        read_state_dict(path)
    assert not marker.exists()


class OutOfBounds:
    """A tensor whose declared size reaches past its storage."""

    def __reduce__(self):
        torch = require_torch()
        storage = torch.ones(4).storage()
        return torch._utils._rebuild_tensor_v2, (storage, 0, (100,), (1,), False, collections.OrderedDict())


@FORMATS
@pytest.mark.filterwarnings("ignore:TypedStorage is deprecated")
def test_tensor_outside_its_storage_raises(torch, tmp_path, legacy):
    path = save({"w": OutOfBounds()}, tmp_path / "oob.pth", legacy)
    with pytest.raises(ValueError, match="reaches element 99 of a 4-element storage"):
        read_state_dict(path)


def test_checkpoint_without_tensors_raises(torch, tmp_path):
    path = save({"epoch": 3, "arch": "P3D63"}, tmp_path / "meta.pth", False)
    with pytest.raises(ValueError, match="no state dict of tensors.*'epoch'"):
        read_state_dict(path)


# --- hostile files: refused with one error naming the file, changing nothing, within limits -------

# Run in a subprocess without TensorFlow: read each hostile file (CheckpointError expected, its
# message and the seconds it took are reported), then, in the same process, the clean file.
READER = r"""
import json, resource, sys, time
import numpy as np
from p3d_keras.weights import caffemodel
from p3d_keras.weights.formats import read_state_dict
from p3d_keras.weights.untrusted import CheckpointError

def read(path):
    return caffemodel.read_caffemodel(path) if path.endswith(".caffemodel") else read_state_dict(path)

spec = json.loads(sys.argv[1])
if spec["limit"]:
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + spec["limit"], vm + spec["limit"]))
report = []
for i, path in enumerate(spec["hostile"]):
    start = time.monotonic()
    try:
        read(path)
        outcome = ["accepted", ""]
    except CheckpointError as e:
        outcome = ["refused", str(e)]
    except BaseException as e:
        outcome = [type(e).__name__, str(e)[:300]]
    report.append(outcome + [time.monotonic() - start])
    if spec["clean"]:
        np.savez(f"{spec['out']}_{i}.npz", **read(spec["clean"]))
if spec["clean"] and not spec["hostile"]:
    np.savez(f"{spec['out']}_fresh.npz", **read(spec["clean"]))
print(json.dumps(report))
"""
MEMORY_LIMIT = 1 << 30  # address space allowed over what the reader's process has after its imports


def read_in_subprocess(hostile, clean=None, out=None, limit=MEMORY_LIMIT, timeout=60):
    spec = dict(hostile=[str(p) for p in hostile], clean=clean and str(clean), out=out and str(out), limit=limit)
    done = subprocess.run([sys.executable, "-c", READER, json.dumps(spec)], capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def assert_refused(outcome, path, fragment, seconds=5):
    status, message, elapsed = outcome
    assert status == "refused", f"{path}: {status}: {message}"
    assert str(path) in message and fragment in message, message
    assert "MemoryError" not in message and elapsed < seconds, (message, elapsed)


@pytest.mark.parametrize("case", cf.MEMORY_BOMBS)
def test_memory_bombs_are_refused_under_a_memory_limit(tmp_path, case):
    build, fragment = cf.HOSTILE[case]
    path = build(str(tmp_path))
    (outcome,) = read_in_subprocess([path])
    assert_refused(outcome, path, fragment)


@pytest.mark.parametrize("case", cf.TIME_BOMBS)
def test_nesting_and_size_bombs_are_refused_in_bounded_time(tmp_path, case):
    build, fragment = cf.HOSTILE[case]
    path = build(str(tmp_path))
    (outcome,) = read_in_subprocess([path], timeout=10)
    assert_refused(outcome, path, fragment)


@FORMATS
def test_a_clean_file_after_each_hostile_one_loads_as_in_a_fresh_process(tmp_path, legacy):
    clean = cf.write_clean(tmp_path / "clean.pth", legacy)
    hostile = [build(str(tmp_path)) for build, _ in cf.HOSTILE.values()]
    read_in_subprocess([], clean, tmp_path / "loaded")
    fresh = dict(np.load(tmp_path / "loaded_fresh.npz"))
    assert_same(fresh, cf.clean_state())
    report = read_in_subprocess(hostile, clean, tmp_path / "loaded", timeout=120)
    for i, (path, (_, fragment), outcome) in enumerate(zip(hostile, cf.HOSTILE.values(), report)):
        assert_refused(outcome, path, fragment)
        assert_same(dict(np.load(tmp_path / f"loaded_{i}.npz")), fresh)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("case", sorted(set(cf.HOSTILE) - set(cf.MEMORY_BOMBS) - set(cf.TIME_BOMBS)))
def test_hostile_files_are_refused_in_process_and_change_nothing(tmp_path, case):
    build, fragment = cf.HOSTILE[case]
    path = build(str(tmp_path))
    reader = caffemodel.read_caffemodel if path.endswith(".caffemodel") else read_state_dict
    with pytest.raises(CheckpointError, match=fragment) as info:
        reader(path)
    assert path in str(info.value)
    assert not (tmp_path / "pwned").exists()
    for legacy in (False, True):
        assert_same(read_state_dict(cf.write_clean(tmp_path / "clean.pth", legacy)), cf.clean_state())


@pytest.mark.parametrize("target, state", [
    (cf.op_global("torch", "FloatStorage"), cf.op_tuple(cf.op_str("int64"))),
    (cf.op_global("torch._utils", "_rebuild_tensor_v2"),
     cf.op_tuple(cf.op_global("torch._utils", "_rebuild_parameter"))),
    (cf.op_global("torch", "float32"), cf.op_tuple(cf.op_str("float64"))),
], ids=["storage-type", "rebuild", "dtype"])
def test_stand_ins_refuse_changes_even_past_the_scan(tmp_path, target, state):
    """The scan refuses BUILD on a global first; the stand-ins refuse it too, and each load has its own."""
    unpickler = pth._RestrictedUnpickler(io.BytesIO(b"\x80\x02" + target + state + b"b."))
    with pytest.raises(Refused, match="modify the reader's stand-in"):
        unpickler.load()
    assert pth._allowed_globals() == pth._RestrictedUnpickler(io.BytesIO(b"")).allowed
    assert unpickler.allowed is not pth._RestrictedUnpickler(io.BytesIO(b"")).allowed
    assert_same(read_state_dict(cf.write_clean(tmp_path / "clean.pth")), cf.clean_state())


@pytest.mark.parametrize("size, stride, offset", [((0, 1 << 63), (1, 1), 0), ((2,), (-1,), 0), ((1 << 40,), (0,), 0),
                                                  ((2, 2), (1,), 0), ((1,), (1,), 1 << 70)],
                         ids=["empty-huge-dim", "negative-stride", "huge-dim", "rank-mismatch", "huge-offset"])
def test_malformed_tensor_windows_are_refused(tmp_path, size, stride, offset):
    pickled = cf.dict_op({"w": cf.tensor_op("0", 1, size, stride, offset)})
    path = cf.write_torch_zip(tmp_path / "window.pth", pickled, {"0": bytes(4)})
    with pytest.raises(CheckpointError, match=r"window.pth.*tensor 'w'"):
        read_state_dict(path)


def test_a_stride_of_a_length_1_dimension_does_not_matter(tmp_path):
    pickled = cf.dict_op({"w": cf.tensor_op("0", 2, (2, 1), (1, 1 << 62))})
    path = cf.write_torch_zip(tmp_path / "w.pth", pickled, {"0": np.array([3, 4], "<f4").tobytes()})
    np.testing.assert_array_equal(read_state_dict(path)["w"], [[3], [4]])


def test_a_budget_smaller_than_the_file_is_refused(tmp_path):
    path = cf.write_clean(tmp_path / "clean.pth")
    with pytest.raises(CheckpointError, match=r"clean.pth: its 2 tensor storages declare 88 bytes, more than the 80"):
        read_state_dict(path, max_bytes=80)
    np.savez(tmp_path / "w.npz", a=np.zeros(30, "f4"))
    with pytest.raises(CheckpointError, match=r"w.npz: its 1 arrays declare 120 bytes, more than the 100"):
        read_state_dict(tmp_path / "w.npz", max_bytes=100)


@pytest.mark.parametrize("zip64", [False, True], ids=["zip", "zip64"])
def test_a_huge_zip_directory_is_refused_before_zipfile_reads_it(tmp_path, zip64):
    # 200 000 real central-directory entries (11 MB), which zipfile would turn into 200 000 objects
    local = b"PK\x03\x04" + bytes(22) + (4).to_bytes(2, "little") + bytes(2) + b"a.pt"
    entry = b"PK\x01\x02" + bytes(24) + (4).to_bytes(2, "little") + bytes(14) + b"a.pt"
    directory = entry * 200_000
    end = b"PK\x05\x06" + bytes(6) + (0xFFFF).to_bytes(2, "little") + len(directory).to_bytes(4, "little") + bytes(6)
    if zip64:  # a zip64 end record declaring the size, the classic record saying "see zip64"
        end64 = b"PK\x06\x06" + (44).to_bytes(8, "little") + bytes(20) + (200_000).to_bytes(8, "little") * 2 \
            + len(directory).to_bytes(8, "little") + bytes(8)
        locator = b"PK\x06\x07" + bytes(4) + (len(local) + len(directory)).to_bytes(8, "little") \
            + (1).to_bytes(4, "little")
        end = end64 + locator + end[:12] + b"\xff" * 4 + end[16:]
    (tmp_path / "many.pth").write_bytes(local + directory + end)
    with pytest.raises(CheckpointError, match=r"many.pth: its zip directory declares \d+ bytes of entries, more than"):
        read_state_dict(tmp_path / "many.pth")


if __name__ == "__main__":
    write_committed_fixtures(require_torch())
