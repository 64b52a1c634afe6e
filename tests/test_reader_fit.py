"""A tiny P3DResNet trains with `model.fit` on the reader's dataset, on the TF backend (reading whole
records) and the JAX backend (reading windows by byte range)."""
import os
import pathlib
import subprocess
import sys

FIT_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
import keras
from p3d_keras.tfrecords_tools import reader
from p3d_keras.jobs.metrics import evaluate_clips
from test_reader_fit import build_model

shards = {shards!r}
train = reader.training_dataset(shards, batch_size=2, clip_length=16, crop_size=32, deterministic=True, seed=0,
                                reads={reads!r})
model = build_model()
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
history = model.fit(train.repeat(), steps_per_epoch=2, epochs=2, verbose=0, shuffle=False)  # the reader shuffles
evaluation = reader.evaluation_dataset(shards, batch_size=4, clip_length=16, num_clips=2, crop_size=32)
result = evaluate_clips(model, evaluation, k=(1,))
assert result["num_videos"] == 4 and result["num_clips"] == 8, result
print("BACKEND", keras.backend.backend(), "LOSS", history.history["loss"][-1])
"""


def build_model():
    from p3d_keras.applications import P3DResNet
    return P3DResNet(depth=(1, 1, 1, 1), width=8, input_shape=(16, 32, 32, 3), classes=3, weights=None)


def _fit_script(tmp_path, reads):
    from p3d_keras.tfrecords_tools import index
    from shard_fixtures import write_shards
    shards = write_shards(tmp_path, [(20, 0), (12, 1), (16, 2), (5, 1)], num_shards=2, height=36, width=40)
    for shard in shards:
        index.write_index(shard)
    return FIT_SCRIPT.format(tests=str(pathlib.Path(__file__).parent), shards=shards, reads=reads)


def test_fit_tensorflow_backend(tmp_path):
    import keras
    if keras.backend.backend() != "tensorflow":
        import pytest
        pytest.skip("this process runs another Keras backend")
    exec(_fit_script(tmp_path, "records"), {})


def test_fit_jax_backend(tmp_path):
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, "-c", _fit_script(tmp_path, "windows")], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "BACKEND jax" in result.stdout
