"""The layer and small-model tests again, on Keras' JAX backend (a backend is fixed per process)."""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_layers_and_small_models_on_jax():
    pytest.importorskip("jax")
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    tests = ["tests/test_layers.py", "tests/test_p3d_resnet.py", "-m", "not slow",
             "-k", "not bad_arguments_raise and not layer_names and not input_tensor"]
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "jax" in subprocess.run(
        [sys.executable, "-c", "import keras; print(keras.backend.backend())"], env=env, capture_output=True,
        text=True).stdout
