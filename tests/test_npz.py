"""p3d_keras.weights.npz, read through `read_state_dict`: numeric arrays only, each member's declared
size checked."""
import io

import numpy as np
import pytest

import checkpoint_fixtures as cf
from p3d_keras.weights.formats import read_state_dict, sniff_format
from p3d_keras.weights.untrusted import CheckpointError


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


@pytest.mark.parametrize("array, received", [(np.array(["a", "b"]), "<U1"), (np.zeros(2, "f4,i4"), "[('f0'")],
                         ids=["strings", "structured"])
def test_npz_of_non_numbers_is_refused(tmp_path, array, received):
    np.savez(tmp_path / "s.npz", w=array)
    with pytest.raises(CheckpointError, match=r"s.npz: member w.npy holds .* Expected an .npz of numeric arrays"):
        read_state_dict(tmp_path / "s.npz")


def test_npz_member_size_must_match_its_header(tmp_path):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (1000,)})
    cf.write_zip(tmp_path / "short.npz", [("w.npy", header.getvalue() + bytes(8))])
    with pytest.raises(CheckpointError, match=r"short.npz: corrupt .npz \(member w.npy declares \(1000,\)"):
        read_state_dict(tmp_path / "short.npz")
