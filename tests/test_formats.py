"""p3d_keras.weights.formats: which format a file is (by content), and what `read_state_dict` refuses
before any reader runs: other files, other zips, missing and truncated files."""
import os
import pathlib
import pickle
import zipfile

import numpy as np
import pytest

from p3d_keras.weights.caffemodel import write_caffemodel
from p3d_keras.weights.formats import read_state_dict, sniff_format

DATA = pathlib.Path(__file__).resolve().parent / "data"


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
    path = tmp_path / "cut.pth"
    path.write_bytes((DATA / "tricky_zip.pth").read_bytes())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # cuts the central directory
    with pytest.raises(ValueError, match="cut.pth.*truncated or corrupt"):
        sniff_format(path)
    with pytest.raises(ValueError, match="cut.pth.*truncated or corrupt"):
        read_state_dict(path)


@pytest.mark.parametrize("keep", [0.3, 0.9, 0.999])
def test_truncated_legacy_raises(tmp_path, keep):
    path = tmp_path / "cut.pth"
    data = (DATA / "tricky_legacy.pth").read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    assert sniff_format(path) == "pytorch-legacy"
    with pytest.raises(ValueError, match="cut.pth: truncated or corrupt pytorch-legacy"):
        read_state_dict(path)
