"""Shared fixtures: the reference P3D checkpoints of ../shared/reference, and small clips."""
import importlib.util
import os
import pathlib

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
REFERENCE_DIR = pathlib.Path(os.environ.get("P3D_REFERENCE_DIR", REPO.parent / "shared" / "reference"))
# Float32 tolerances derived in the reference README (max |logit difference|).
PARITY_TOLERANCE = {63: 2e-4, 199: 5e-3}


def load_reference_module():
    script = REFERENCE_DIR / "make_reference_checkpoint.py"
    if not script.exists():
        raise FileNotFoundError(f"The parity fixtures are missing: expected {script} (set P3D_REFERENCE_DIR)")
    spec = importlib.util.spec_from_file_location("make_reference_checkpoint", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def reference():
    return load_reference_module()


@pytest.fixture(scope="session")
def expected():
    return lambda depth: np.load(REFERENCE_DIR / f"expected_p3d{depth}_seed0.npz")


def write_torch_checkpoint(state, path, legacy=False, prefix=""):
    """Write `state` as the 2017-style training checkpoint the port released (needs torch)."""
    import torch  # noqa: PLC0415

    sd = {prefix + k: torch.from_numpy(v) for k, v in state.items()}
    torch.save({"state_dict": sd, "epoch": 0, "arch": "P3D"}, path, _use_new_zipfile_serialization=not legacy)
    return path


@pytest.fixture
def small_clip():
    return np.random.default_rng(0).normal(size=(2, 16, 32, 32, 3)).astype("float32")
