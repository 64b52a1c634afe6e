"""The TF Serving export: a tiny model exported once, checked by a fresh process that never imports
p3d_keras, by `saved_model_cli show` and `run`, and against the Keras model with numpy preprocessing."""
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from p3d_keras.applications import P3DResNet
from p3d_keras.cli.export import main
from p3d_keras.jobs.export import METADATA_ASSET, WARMUP_FILE, export_saved_model, read_warmup_requests
from p3d_keras.core.normalization import normalize

LABELS = ["archery", "bowling", "curling", "diving", "fencing"]
CLIPS = {"long": (2, 20, 50, 70, 3), "exact": (1, 16, 32, 32, 3)}
SAVED_MODEL_CLI = pathlib.Path(sys.executable).with_name("saved_model_cli")

# Runs in a fresh interpreter: TensorFlow and NumPy only.
FRESH_PROCESS = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf

    export_dir, inputs_file, outputs_file = sys.argv[1:]
    loaded = tf.saved_model.load(export_dir)
    serve, features = loaded.signatures["serving_default"], loaded.signatures["features"]
    out = {"n_variables": np.array(len(loaded.model_variables))}
    for key, frames in np.load(inputs_file).items():
        for name, value in serve(frames=tf.constant(frames)).items():
            value = value.numpy()
            out[f"{key}/{name}"] = value.astype("S") if value.dtype == object else value  # strings
        out[f"{key}/features"] = features(frames=tf.constant(frames))["features"].numpy()
    try:
        serve(frames=tf.zeros((1, 15, 40, 40, 3), tf.uint8))
        out["short_error"] = np.array("")
    except tf.errors.InvalidArgumentError as e:
        out["short_error"] = np.array(e.message)
    assert "p3d_keras" not in sys.modules, "the SavedModel pulled in p3d_keras"
    out["p3d_keras_imported"] = np.array("p3d_keras" in sys.modules)
    np.savez(outputs_file, **out)
""")


def start(*cmd):
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process):
    output, _ = process.communicate(timeout=300)
    return process.returncode, output


@pytest.fixture(scope="module")
def model():
    return P3DResNet(depth=(1, 1, 1, 1), width=4, input_shape=(16, 32, 32, 3), classes=5)


@pytest.fixture(scope="module")
def clips():
    rng = np.random.default_rng(0)
    return {key: rng.integers(0, 256, size=shape, dtype=np.uint8) for key, shape in CLIPS.items()}


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    return export_saved_model(model, tmp_path_factory.mktemp("serving"), name="tiny", labels=LABELS)


@pytest.fixture(scope="module")
def outside(exported, clips, tmp_path_factory):
    """The fresh process and both saved_model_cli calls, run side by side (each imports TensorFlow).

    TF 2.21's `saved_model_cli run --input_exprs` only takes Python literals (`ast.literal_eval`), so
    the uint8 zeros go in through `--inputs` and a .npy file instead of `np.zeros(...)`."""
    work = tmp_path_factory.mktemp("outside")
    np.savez(work / "inputs.npz", **clips)
    np.save(work / "zeros.npy", np.zeros((1, 16, 40, 40, 3), dtype=np.uint8))
    processes = {
        "fresh": start(sys.executable, "-c", FRESH_PROCESS, exported, str(work / "inputs.npz"),
                       str(work / "outputs.npz")),
        "show": start(str(SAVED_MODEL_CLI), "show", "--dir", exported, "--all"),
        "run": start(str(SAVED_MODEL_CLI), "run", "--dir", exported, "--tag_set", "serve",
                     "--signature_def", "serving_default",
                     "--inputs", f"frames={work / 'zeros.npy'}"),
    }
    results = {key: finish(p) for key, p in processes.items()}
    rc, output = results.pop("fresh")
    assert rc == 0, output
    return dict(results, fresh=dict(np.load(work / "outputs.npz")))


def reference_input(frames, t=16, crop=32, short_side=36):
    """The serving preprocessing by hand: centre window, resize short side, centre crop, caffe."""
    start_t = (frames.shape[1] - t) // 2
    x = frames[:, start_t:start_t + t].astype("float32")
    h, w = x.shape[2:4]
    size = [round(h * short_side / min(h, w)), round(w * short_side / min(h, w))]
    x = tf.image.resize(x.reshape(-1, h, w, 3), size, method="bilinear", antialias=False).numpy()
    top, left = (size[0] - crop) // 2, (size[1] - crop) // 2
    x = x[:, top:top + crop, left:left + crop].reshape(frames.shape[0], t, crop, crop, 3)
    return normalize(x, "caffe")


@pytest.mark.parametrize("key", sorted(CLIPS))
def test_fresh_process_serving_default(outside, model, clips, key):
    out = outside["fresh"]
    assert not out["p3d_keras_imported"]
    assert out["n_variables"] == len(model.variables)
    batch = CLIPS[key][0]
    probabilities = out[f"{key}/probabilities"]
    assert probabilities.dtype == np.float32 and probabilities.shape == (batch, 5)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)
    expected = model.predict(reference_input(clips[key]), verbose=0)
    np.testing.assert_allclose(probabilities, expected, atol=1e-4)

    indices, scores = out[f"{key}/top_k_indices"], out[f"{key}/top_k_scores"]
    assert indices.dtype == np.int32 and indices.shape == (batch, 5)
    assert scores.dtype == np.float32 and scores.shape == (batch, 5)
    np.testing.assert_array_equal(scores, np.take_along_axis(probabilities, indices, -1))
    assert np.all(np.diff(scores, axis=-1) <= 0)
    labels = out[f"{key}/top_k_labels"]
    assert labels.dtype.kind == "S" and labels.shape == (batch, 5)
    assert [[s.decode() for s in row] for row in labels] == [[LABELS[i] for i in row] for row in indices]


def test_features_signature_is_pool5(outside, model, clips):
    truncated = keras.Model(model.input, model.get_layer("pool5").output)
    features = outside["fresh"]["long/features"]
    assert features.dtype == np.float32 and features.shape == (2, 4 * 8 * 4)  # 4x expansion of 8 * width
    np.testing.assert_allclose(features, truncated.predict(reference_input(clips["long"]), verbose=0), atol=1e-4)


def test_too_few_frames_is_a_clear_error(outside):
    assert "Expected at least 16 frames" in outside["fresh"]["short_error"].item()


def test_saved_model_cli(outside):
    rc, shown = outside["show"]
    assert rc == 0, shown
    assert "signature_def['serving_default']" in shown and "signature_def['features']" in shown
    assert "frames" in shown and "DT_UINT8" in shown
    rc, ran = outside["run"]
    assert rc == 0, ran
    for key in ("probabilities", "top_k_indices", "top_k_labels", "top_k_scores"):
        assert key in ran


def test_warmup_requests_replay(exported):
    requests = read_warmup_requests(os.path.join(exported, "assets.extra", "tf_serving_warmup_requests"))
    assert [(name, signature) for name, signature, _ in requests] == [("tiny", "serving_default"),
                                                                      ("tiny", "features")]
    loaded = tf.saved_model.load(exported)
    for _, signature, inputs in requests:
        assert inputs["frames"].dtype == np.uint8 and inputs["frames"].shape == (1, 16, 32, 32, 3)
        out = loaded.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
        assert set(out) == ({"features"} if signature == "features" else
                            {"probabilities", "top_k_indices", "top_k_labels", "top_k_scores"})


def test_bad_arguments_raise_before_export(model, exported, tmp_path):
    base = pathlib.Path(exported).parents[1]
    with pytest.raises(ValueError, match=r"Expected a new version directory. Received: version=1"):
        export_saved_model(model, base, name="tiny", version=1)
    with pytest.raises(ValueError, match=r"Expected one label per class \(5\). Received: len\(labels\)=2"):
        export_saved_model(model, tmp_path, labels=["a", "b"])
    with pytest.raises(ValueError, match=r"Received: top_k=6"):
        export_saved_model(model, tmp_path, top_k=6)
    with pytest.raises(ValueError, match=r"Received: resize_short_side=30"):
        export_saved_model(model, tmp_path, resize_short_side=30)
    assert not any(tmp_path.iterdir())


def test_main_exports_the_next_version(model, exported, tmp_path):
    """`p3d-export` on a .keras file, into the base of the fixture export (version 1): version 2."""
    model.save(tmp_path / "tiny.keras")
    (tmp_path / "labels.txt").write_text("\n".join(LABELS) + "\n")
    base = pathlib.Path(exported).parents[1]
    assert main(["--model", str(tmp_path / "tiny.keras"), "--base-dir", str(base), "--name", "tiny",
                 "--labels", str(tmp_path / "labels.txt"), "--top-k", "3", "--no-warmup"]) == 0
    assert sorted(p.name for p in (base / "tiny").iterdir()) == ["1", "2"]
    assert (base / "tiny" / "2" / "saved_model.pb").exists()
    assert not (base / "tiny" / "2" / WARMUP_FILE).exists()  # --no-warmup
    exported = json.loads((base / "tiny" / "2" / METADATA_ASSET).read_text())  # what the model is, beside it
    assert exported["class_names"] == list(LABELS) and exported["normalization"] == "caffe"


def test_main_unknown_preset(tmp_path, caplog):
    assert main(["--weights", "no-such-preset", "--depth", "63", "--base-dir", str(tmp_path)]) == 2
    assert "Unknown weights. Expected one of" in caplog.text and "Received: weights='no-such-preset'" in caplog.text
    assert not any(tmp_path.iterdir())


def test_a_model_with_fewer_than_5_classes_exports_with_the_default_top_k(tmp_path):
    """`--top-k` defaults to min(5, classes): a 3-class model exports and serves its top 3."""
    P3DResNet(depth=(1, 1, 1, 1), width=4, input_shape=(16, 32, 32, 3), classes=3).save(tmp_path / "three.keras")
    assert main(["--model", str(tmp_path / "three.keras"), "--base-dir", str(tmp_path / "base"), "--no-warmup"]) == 0
    serve = tf.saved_model.load(str(tmp_path / "base" / "p3d" / "1")).signatures["serving_default"]
    out = serve(frames=tf.zeros((2, 16, 40, 40, 3), tf.uint8))
    assert out["top_k_indices"].shape == (2, 3) and out["top_k_labels"].shape == (2, 3)
    assert sorted(out["top_k_indices"].numpy()[0]) == [0, 1, 2]
    assert [b.decode() for b in out["top_k_labels"].numpy()[0]] == [str(i) for i in out["top_k_indices"].numpy()[0]]
