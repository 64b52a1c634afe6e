"""p3d_keras.core.files: atomic files, sha256, and the run lock."""
import os
import subprocess
import sys

import pytest

from p3d_keras.core import files


def _open(path):
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)


def test_atomic_file_leaves_the_old_content_when_the_block_raises(tmp_path):
    path = tmp_path / "f.bin"
    files.write_atomic(path, b"old")
    with pytest.raises(RuntimeError), files.atomic_file(path) as f:
        f.write(b"new")
        raise RuntimeError
    assert path.read_bytes() == b"old" and sorted(os.listdir(tmp_path)) == ["f.bin"]


def test_an_exclusive_lock_excludes_every_other_holder_until_closed(tmp_path):
    first, second = _open(tmp_path / "lock"), _open(tmp_path / "lock")
    try:
        assert files.try_lock(first)
        assert not files.try_lock(second)
        if files.SHARED_LOCKS:
            assert not files.try_lock(second, shared=True)
    finally:
        os.close(first)
    assert files.try_lock(second)
    os.close(second)


@pytest.mark.skipif(not files.SHARED_LOCKS, reason="no shared locks on this platform")
def test_shared_locks_coexist_and_exclude_an_exclusive_one(tmp_path):
    a, b, c = (_open(tmp_path / "lock") for _ in range(3))
    assert files.try_lock(a, shared=True) and files.try_lock(b, shared=True)
    assert not files.try_lock(c)
    for fd in (a, b, c):
        os.close(fd)


def test_a_killed_holders_lock_is_free(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import os, sys, time; from p3d_keras.core import files; "
         f"fd = os.open({str(tmp_path / 'lock')!r}, os.O_RDWR | os.O_CREAT); assert files.try_lock(fd); "
         "print('held', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        fd = _open(tmp_path / "lock")
        assert not files.try_lock(fd)
        holder.kill()
        holder.wait(timeout=10)
        assert files.try_lock(fd)
        os.close(fd)
    finally:
        holder.kill()


def test_rewrite_and_read_head(tmp_path):
    fd = _open(tmp_path / "note")
    files.rewrite(fd, b"a much longer first note")
    files.rewrite(fd, b"pid 1")
    assert files.read_head(fd, 100) == b"pid 1" and (tmp_path / "note").read_bytes() == b"pid 1"
    os.close(fd)


def test_atomic_path_unique_names_are_recognisable_and_kept_apart(tmp_path):
    target = tmp_path / "p3d_keras_x.weights.h5"
    with files.atomic_path(target, unique=True, suffix=".weights.h5") as first, \
            files.atomic_path(target, unique=True, suffix=".weights.h5") as second:
        assert first != second and files.PARTIAL_MARK in first.name and first.name.endswith(".weights.h5")
        first.write_bytes(b"one")
        second.write_bytes(b"two")
    assert target.read_bytes() == b"one" and sorted(os.listdir(tmp_path)) == [target.name]  # the last to finish wins
    with pytest.raises(OSError), files.atomic_path(target, unique=True) as partial:
        partial.write_bytes(b"half")
        raise OSError("disk full")
    assert target.read_bytes() == b"one" and sorted(os.listdir(tmp_path)) == [target.name]
