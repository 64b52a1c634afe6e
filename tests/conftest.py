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


def require_torch():
    """The torch module, for the tests that write checkpoints with torch.save. Without torch such
    a test is skipped, saying why; under CI=true (where the [test] extra installs torch) it fails."""
    try:
        import torch  # noqa: PLC0415 (optional: only tests that write torch checkpoints need it)
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("torch is not installed, but CI=true requires it: this test writes checkpoints with "
                        "torch.save (pip install -e '.[test]')")
        pytest.skip("torch is not installed: this test writes checkpoints with torch.save "
                    "(pip install -e '.[test]' to run it)")
    return torch


@pytest.fixture
def torch():
    return require_torch()


def write_torch_checkpoint(state, path, legacy=False, prefix=""):
    """Write `state` as the 2017-style training checkpoint the port released (needs torch; see
    `require_torch`)."""
    torch = require_torch()
    sd = {prefix + k: torch.from_numpy(v) for k, v in state.items()}
    torch.save({"state_dict": sd, "epoch": 0, "arch": "P3D"}, path, _use_new_zipfile_serialization=not legacy)
    return path


@pytest.fixture
def small_clip():
    return np.random.default_rng(0).normal(size=(2, 16, 32, 32, 3)).astype("float32")
