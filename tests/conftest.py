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
from p3d_keras.applications import P3DResNet
from p3d_keras.cli import train as train_cli
from p3d_keras.jobs import export
from p3d_keras.tfrecords_tools import index
from program_fixtures import MODEL_ARGS
from shard_fixtures import write_shards

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


# The programs' tiny data and models, shared by test_training, test_evaluation, test_features, test_predict.


@pytest.fixture(scope="session")
def shards(tmp_path_factory):
    """Train and test shard folders (converter layout: shards, their window indexes, labels.txt) of 3 classes."""
    root = tmp_path_factory.mktemp("programs")
    for split, n in (("train", 12), ("test", 6)):
        folder = root / split
        folder.mkdir()
        for shard in write_shards(folder, [(20 + i, i % 3) for i in range(n)], num_shards=2, prefix=split,
                                  height=36, width=40):
            index.write_index(shard)
        (folder / "labels.txt").write_text("jump\nrun\nsit\n")
    return root


@pytest.fixture(scope="session")
def trained(shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    code = train_cli.main(["--train", str(shards / "train"), "--val", str(shards / "test"), "--out", str(out),
                          "--epochs", "2", "--batch-size", "4", "--lr", "0.01", "--seed", "1", "--verbose", "0",
                          "--reads", "windows", *MODEL_ARGS])
    assert code == 0
    return out


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory):
    """An untrained 3-class tiny network: its .keras file and its SavedModel export."""
    root = tmp_path_factory.mktemp("tiny_classifier")
    model = P3DResNet((1, 1, 1, 1), width=4, input_shape=(16, 32, 32, 3), classes=3)
    model.save(root / "tiny.keras")
    saved = export.export_saved_model(model, root / "serving", labels=["jump", "run", "sit"], top_k=3,
                                      warmup=False)
    return root / "tiny.keras", saved
