"""Shared fixtures: the reference P3D checkpoints of ../shared/reference (the one place that knows
where they are), torch for the tests that write torch checkpoints, and small clips.

Something outside the repository that a test needs (the reference folder, torch) is skipped with
the reason on a developer's machine and fails the test under `CI=true`, where it must be there."""
import importlib.util
import os
import pathlib

import numpy as np
import pytest

from needs import missing, require_torch, write_torch_checkpoint

REPO = pathlib.Path(__file__).resolve().parents[1]
REFERENCE_DIR = pathlib.Path(os.environ.get("P3D_REFERENCE_DIR", REPO.parent / "shared" / "reference"))
# Float32 tolerances derived in the reference README (max |logit difference|).
PARITY_TOLERANCE = {63: 2e-4, 199: 5e-3}


def reference_dir():
    """`REFERENCE_DIR` (`../shared/reference`, or `$P3D_REFERENCE_DIR`) when it holds the parity
    fixtures; else the test is skipped (failed under CI=true) naming the path."""
    if not (REFERENCE_DIR / "make_reference_checkpoint.py").exists():
        missing(f"The parity fixtures folder {REFERENCE_DIR}", "it holds the original code's outputs these tests "
                "compare against (set P3D_REFERENCE_DIR to where ../shared/reference is)")
    return REFERENCE_DIR


@pytest.fixture(scope="session")
def reference():
    """The reference folder's `make_reference_checkpoint` module (the original PyTorch graph's
    weights and key layout, as numpy)."""
    script = reference_dir() / "make_reference_checkpoint.py"
    spec = importlib.util.spec_from_file_location("make_reference_checkpoint", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def expected():
    """`expected(depth)`: the original code's outputs on the reference input (an npz)."""
    folder = reference_dir()
    return lambda depth: np.load(folder / f"expected_p3d{depth}_seed0.npz")


@pytest.fixture(scope="session")
def parity_tolerance():
    """Max |logit difference| a correct float32 implementation reaches, by depth."""
    return PARITY_TOLERANCE


@pytest.fixture
def torch():
    return require_torch()


@pytest.fixture(scope="session")
def torch_checkpoint():
    """`write_torch_checkpoint`, for the tests that write the port's checkpoints: a call without
    torch skips the test (fails it under CI=true)."""
    return write_torch_checkpoint


@pytest.fixture
def small_clip():
    return np.random.default_rng(0).normal(size=(2, 16, 32, 32, 3)).astype("float32")
