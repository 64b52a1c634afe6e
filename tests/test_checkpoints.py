"""p3d_keras.checkpoints against real torch.save files, both serialization formats."""
import collections
import importlib.util
import os
import pathlib
import pickle
import zipfile

import numpy as np
import pytest

from p3d_keras.caffemodel import write_caffemodel
from p3d_keras.checkpoints import UnsafeCheckpointError, read_state_dict, sniff_format

torch = pytest.importorskip("torch")

REFERENCE_DIR = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "reference"
FORMATS = pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])


def save(obj, path, legacy):
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


def as_numpy(tensor):
    tensor = tensor.detach()
    return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()


def assert_same(loaded, expected):
    assert sorted(loaded) == sorted(expected)
    for key, tensor in expected.items():
        want = as_numpy(tensor)
        assert loaded[key].dtype == want.dtype, key
        assert loaded[key].shape == want.shape, key
        np.testing.assert_array_equal(loaded[key], want, err_msg=key)


def tricky_state_dict():
    """Views with offsets and strides, shared storages, and several dtypes."""
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


@FORMATS
def test_training_checkpoint_matches_torch_load(tmp_path, legacy):
    state = tricky_state_dict()
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
def test_bare_and_other_wrappers(tmp_path, wrapper):
    state = {"fc.weight": torch.randn(4, 2), "fc.bias": torch.randn(4)}
    path = save(state if wrapper is None else {wrapper: state, "epoch": 1}, tmp_path / "w.pth", False)
    assert_same(read_state_dict(path), state)


def test_module_prefix_kept_unless_on_every_key(tmp_path):
    state = {"module.a": torch.ones(1), "b": torch.zeros(1)}
    assert sorted(read_state_dict(save(state, tmp_path / "p.pth", False))) == ["b", "module.a"]


class TorchV02Tensor:
    """Pickles like a torch 0.2/0.3 tensor: torch._utils._rebuild_tensor(storage, offset, size, stride)."""

    def __init__(self, tensor):
        self.tensor = tensor

    def __reduce__(self):
        t = self.tensor
        return torch._utils._rebuild_tensor, (t.storage(), t.storage_offset(),
                                              tuple(t.size()), t.stride())


@FORMATS
@pytest.mark.filterwarnings("ignore:TypedStorage is deprecated")
def test_torch_02_tensor_pickles(tmp_path, legacy):
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    path = save({"state_dict": {"w": TorchV02Tensor(base[1:].t())}}, tmp_path / "old.pth", legacy)
    np.testing.assert_array_equal(read_state_dict(path)["w"], base[1:].t().numpy())


@pytest.fixture(scope="module")
def reference_module():
    script = REFERENCE_DIR / "make_reference_checkpoint.py"
    if not script.is_file():
        pytest.fail(f"The parity fixture is missing: expected {script} (the repository's sibling "
                    f"shared/reference folder).")
    spec = importlib.util.spec_from_file_location("make_reference_checkpoint", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@FORMATS
def test_reference_p3d63_checkpoint_round_trips(tmp_path, reference_module, legacy):
    state = reference_module.build_state_dict(0, depth=63)
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
def test_code_in_a_checkpoint_is_refused_not_run(tmp_path, legacy, payload, refused):
    marker = tmp_path / "pwned"
    path = save({"state_dict": {"w": torch.ones(1)}, "extra": payload(marker)}, tmp_path / "evil.pth", legacy)
    with pytest.raises(UnsafeCheckpointError, match=refused) as info:
        read_state_dict(path)
    assert str(path) in str(info.value)
    assert not marker.exists()


@FORMATS
def test_class_instance_is_refused(tmp_path, legacy):
    path = save({"state_dict": {"w": torch.ones(1)}, "args": PlainObject()}, tmp_path / "obj.pth", legacy)
    with pytest.raises(UnsafeCheckpointError, match="PlainObject"):
        read_state_dict(path)


def test_whole_module_is_refused(tmp_path):
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
        storage = torch.ones(4).storage()
        return torch._utils._rebuild_tensor_v2, (storage, 0, (100,), (1,), False, collections.OrderedDict())


@FORMATS
@pytest.mark.filterwarnings("ignore:TypedStorage is deprecated")
def test_tensor_outside_its_storage_raises(tmp_path, legacy):
    path = save({"w": OutOfBounds()}, tmp_path / "oob.pth", legacy)
    with pytest.raises(ValueError, match="reaches element 99 of a 4-element storage"):
        read_state_dict(path)


def test_checkpoint_without_tensors_raises(tmp_path):
    path = save({"epoch": 3, "arch": "P3D63"}, tmp_path / "meta.pth", False)
    with pytest.raises(ValueError, match="no state dict of tensors.*'epoch'"):
        read_state_dict(path)


# --- npz and format detection ---------------------------------------------------------------


def test_npz_round_trip(tmp_path):
    state = {"module.conv.weight": np.random.default_rng(0).standard_normal((2, 3, 1, 3, 3)).astype("f4"),
             "module.bn.running_var": np.ones(2, "f4")}
    np.savez(tmp_path / "w.npz", **state)
    assert sniff_format(tmp_path / "w.npz") == "npz"
    loaded = read_state_dict(tmp_path / "w.npz")
    assert sorted(loaded) == ["bn.running_var", "conv.weight"]
    np.testing.assert_array_equal(loaded["conv.weight"], state["module.conv.weight"])


def test_npz_with_objects_is_refused(tmp_path):
    np.savez(tmp_path / "obj.npz", a=np.array([{"x": 1}], dtype=object))
    with pytest.raises(ValueError, match="obj.npz"):
        read_state_dict(tmp_path / "obj.npz")


def test_sniff_caffe_by_extension_and_content(tmp_path):
    write_caffemodel(tmp_path / "net.caffemodel", {"conv1": [np.ones((2, 1, 1, 1, 1), "f4")]})
    assert sniff_format(tmp_path / "net.caffemodel") == "caffe"
    os.rename(tmp_path / "net.caffemodel", tmp_path / "net.bin")
    assert sniff_format(tmp_path / "net.bin") == "caffe"
    with pytest.raises(ValueError, match="read_caffemodel"):
        read_state_dict(tmp_path / "net.bin")


@pytest.mark.parametrize("content", [b"", b"epoch 3\nstate_dict: lots of weights\n",
                                     b"\x89PNG\r\n\x1a\n" + bytes(range(64)), pickle.dumps({"a": 1})],
                         ids=["empty", "text", "png", "plain-pickle"])
def test_sniff_rejects_other_files(tmp_path, content):
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"weights\.pth.*Expected one of \['pytorch-zip'"):
        sniff_format(path)
    with pytest.raises(ValueError, match=r"weights\.pth"):
        read_state_dict(path)


def test_sniff_rejects_other_zips(tmp_path):
    with zipfile.ZipFile(tmp_path / "notes.pth", "w") as zf:
        zf.writestr("notes.txt", "hello")
    with pytest.raises(ValueError, match="notes.pth.*neither"):
        sniff_format(tmp_path / "notes.pth")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        read_state_dict(tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        sniff_format(tmp_path / "nope.pth")


def test_truncated_zip_raises(tmp_path):
    path = save({"state_dict": tricky_state_dict()}, tmp_path / "cut.pth", False)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="cut.pth.*truncated or corrupt"):
        sniff_format(path)
    with pytest.raises(ValueError, match="cut.pth.*truncated or corrupt"):
        read_state_dict(path)


@pytest.mark.parametrize("keep", [0.3, 0.9, 0.999])
def test_truncated_legacy_raises(tmp_path, keep):
    path = save({"state_dict": tricky_state_dict()}, tmp_path / "cut.pth", True)
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])
    assert sniff_format(path) == "pytorch-legacy"
    with pytest.raises(ValueError, match="cut.pth: truncated or corrupt pytorch-legacy"):
        read_state_dict(path)
