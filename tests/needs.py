"""What a test needs from outside the repository, in one place: on a developer's machine a test
without it is skipped with the reason; under `CI=true`, where it must be there, the test fails."""
import os

import pytest


def missing(what, why):
    """Skip the test saying what is missing and why it is needed; fail it under CI=true."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is missing, but CI=true requires it: {why}")
    pytest.skip(f"{what} is missing: {why}")


def require_torch():
    """The torch module, for the tests that write checkpoints with torch.save. Without torch such
    a test is skipped, saying why; under CI=true (where the [test] extra installs torch) it fails."""
    try:
        import torch  # noqa: PLC0415 (optional: only tests that write torch checkpoints need it)
    except ImportError:
        missing("torch", "this test writes checkpoints with torch.save (pip install -e '.[test]')")
    return torch


def write_torch_checkpoint(state, path, legacy=False, prefix=""):
    """Write `state` as the 2017-style training checkpoint the port released (needs torch; see
    `require_torch`)."""
    torch = require_torch()
    sd = {prefix + k: torch.from_numpy(v) for k, v in state.items()}
    torch.save({"state_dict": sd, "epoch": 0, "arch": "P3D"}, path, _use_new_zipfile_serialization=not legacy)
    return path
