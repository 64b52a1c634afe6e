"""The TF Serving export: a tiny model exported once, checked by a fresh process that never imports
p3d_keras, by `saved_model_cli show` and `run`, and against the Keras model with numpy preprocessing;
`serving_encoded` against `serving_default` on the frames its records decode to, and bad requests."""
import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from p3d_keras.applications import P3DResNet
from p3d_keras.cli.export import main
from p3d_keras.jobs.export import METADATA_ASSET, WARMUP_FILE, encode_record, export_saved_model, read_warmup_requests
from p3d_keras.core.normalization import normalize
from p3d_keras.tfrecords_tools import schema

LABELS = ["archery", "bowling", "curling", "diving", "fencing"]
CLIPS = {"long": (2, 20, 50, 70, 3), "exact": (1, 16, 32, 32, 3), "odd": (1, 21, 36, 48, 3)}
# serving_encoded's records, one request: (frames, height, width) each, of different sizes; 10 frames loop.
RECORDS = {"long": (20, 50, 70), "odd": (21, 40, 64), "short": (10, 36, 36)}
OUTPUTS = {"probabilities", "top_k_indices", "top_k_labels", "top_k_scores"}
SAVED_MODEL_CLI = pathlib.Path(sys.executable).with_name("saved_model_cli")

# Runs in a fresh interpreter: TensorFlow and NumPy only.
FRESH_PROCESS = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf

    export_dir, inputs_file, decoded_file, records_file, outputs_file = sys.argv[1:]
    loaded = tf.saved_model.load(export_dir)
    serve, features = loaded.signatures["serving_default"], loaded.signatures["features"]
    out = {"n_variables": np.array(len(loaded.model_variables))}

    def keep(prefix, outputs):
        for name, value in outputs.items():
            value = value.numpy()
            out[f"{prefix}/{name}"] = value.astype("S") if value.dtype == object else value  # strings

    for key, frames in np.load(inputs_file).items():
        keep(key, serve(frames=tf.constant(frames)))
        out[f"{key}/features"] = features(frames=tf.constant(frames))["features"].numpy()
    for key, frames in np.load(decoded_file).items():  # the frames the records decode to, as uint8
        keep(f"decoded/{key}", serve(frames=tf.constant(frames)))
    records = tf.stack(list(tf.data.TFRecordDataset(records_file)))
    keep("encoded", loaded.signatures["serving_encoded"](records=records))
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


def smooth_frames(count, height, width, seed):
    """Frames a camera might give (gradients and a moving square, some noise): JPEG's own kind."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    frames = []
    for i in range(count):
        frame = np.stack([x * 255 // width, y * 255 // height, np.full_like(x, 40 + 8 * i)], -1).astype(float)
        frame[(3 * i) % (height - 8):(3 * i) % (height - 8) + 8, (5 * i) % (width - 8):(5 * i) % (width - 8) + 8] = 240
        frames.append(np.clip(frame + rng.normal(0, 6, frame.shape), 0, 255).astype(np.uint8))
    return np.stack(frames)


def decoded_frames(record):
    """The uint8 frames of a record as TensorFlow's JPEG decoder gives them, in order."""
    _, sequences = tf.io.parse_single_sequence_example(
        record, sequence_features={schema.ENCODED: tf.io.FixedLenSequenceFeature([], tf.string)})
    return np.stack([tf.io.decode_jpeg(jpeg).numpy() for jpeg in sequences[schema.ENCODED]])


@pytest.fixture(scope="module")
def records():
    """`{key: (serialised record, the uint8 frames serving_default gets for it [1, T, H, W, 3])}`:
    the record's decoded frames (a short record's looped to 16, as its window loops)."""
    out = {}
    for seed, (key, (count, height, width)) in enumerate(RECORDS.items()):
        record = encode_record(smooth_frames(count, height, width, seed))
        frames = decoded_frames(record)
        out[key] = record, frames[None, np.arange(max(count, 16)) % count]
    return out


@pytest.fixture(scope="module")
def outside(exported, clips, records, tmp_path_factory):
    """The fresh process and both saved_model_cli calls, run side by side (each imports TensorFlow).

    TF 2.21's `saved_model_cli run --input_exprs` only takes Python literals (`ast.literal_eval`), so
    the uint8 zeros go in through `--inputs` and a .npy file instead of `np.zeros(...)`."""
    work = tmp_path_factory.mktemp("outside")
    np.savez(work / "inputs.npz", **clips)
    np.savez(work / "decoded.npz", **{key: frames for key, (_, frames) in records.items()})
    with tf.io.TFRecordWriter(str(work / "records.tfrecord")) as writer:
        for record, _ in records.values():
            writer.write(record)
    np.save(work / "zeros.npy", np.zeros((1, 16, 40, 40, 3), dtype=np.uint8))
    processes = {
        "fresh": start(sys.executable, "-c", FRESH_PROCESS, exported, str(work / "inputs.npz"),
                       str(work / "decoded.npz"), str(work / "records.tfrecord"), str(work / "outputs.npz")),
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
    """The serving preprocessing by hand: centre window (the evaluation reader's: 21 frames start at
    3), resize short side, centre crop, caffe."""
    start_t = (frames.shape[1] - t + 1) // 2
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


def test_encoded_signature_agrees_with_serving_default_on_the_decoded_frames(outside):
    """One request of three records of different sizes and lengths (21 frames: the window starts
    at 3 both ways; 10 frames: looped) against each record's decoded frames to serving_default."""
    out = outside["fresh"]
    for name in OUTPUTS:
        assert out[f"encoded/{name}"].shape[0] == len(RECORDS)
    for i, key in enumerate(RECORDS):
        np.testing.assert_allclose(out["encoded/probabilities"][i], out[f"decoded/{key}/probabilities"][0],
                                   rtol=0, atol=1e-5)
        for name in ("top_k_indices", "top_k_labels"):
            np.testing.assert_array_equal(out[f"encoded/{name}"][i], out[f"decoded/{key}/{name}"][0])


def test_saved_model_cli(outside):
    rc, shown = outside["show"]
    assert rc == 0, shown
    assert "signature_def['serving_default']" in shown and "signature_def['features']" in shown
    assert "frames" in shown and "DT_UINT8" in shown
    encoded = shown[shown.index("signature_def['serving_encoded']"):]
    assert "inputs['records'] tensor_info:\n        dtype: DT_STRING\n        shape: (-1)" in encoded
    assert "outputs['top_k_labels']" in encoded
    rc, ran = outside["run"]
    assert rc == 0, ran
    for key in ("probabilities", "top_k_indices", "top_k_labels", "top_k_scores"):
        assert key in ran


def test_warmup_requests_replay(exported):
    requests = read_warmup_requests(os.path.join(exported, "assets.extra", "tf_serving_warmup_requests"))
    assert [(name, signature) for name, signature, _ in requests] == [
        ("tiny", "serving_default"), ("tiny", "features"), ("tiny", "serving_encoded")]
    loaded = tf.saved_model.load(exported)
    outputs = {}
    for _, signature, inputs in requests:
        if signature == "serving_encoded":
            assert list(inputs) == ["records"] and inputs["records"].shape == (1,)
            np.testing.assert_array_equal(decoded_frames(inputs["records"][0]), np.zeros((16, 32, 32, 3), np.uint8))
        else:
            assert list(inputs) == ["frames"]
            assert inputs["frames"].dtype == np.uint8 and inputs["frames"].shape == (1, 16, 32, 32, 3)
        outputs[signature] = loaded.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
    assert set(outputs["features"]) == {"features"}
    assert set(outputs["serving_default"]) == set(outputs["serving_encoded"]) == OUTPUTS
    np.testing.assert_allclose(outputs["serving_encoded"]["probabilities"],
                               outputs["serving_default"]["probabilities"], rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def loaded(exported):
    return tf.saved_model.load(exported)


def record_of(jpegs):
    return schema.make_example(encoded_frames=jpegs, timestamps_us=list(range(len(jpegs))), height=32, width=40,
                               frame_rate=25.0, label_index=0, label_string="", media_id="bad")


@pytest.mark.parametrize("case, expected", [
    ("truncated JPEG", "Expected every frame to be a JPEG that decodes. Received: frame 9 of record 1 of the request,"
                       " which libjpeg cannot decode (truncated or corrupt)"),
    ("not a JPEG", "Expected every frame to be a JPEG. Received: frame 11 of record 1 of the request, which does "
                   "not start with a JPEG"),
    ("no frames", "Expected every record to have at least one frame. Received: 0 frames in record 1 of the request"),
    ("a tf.train.Example", "Received: 0 frames in record 1 of the request"),
    ("not a protocol buffer", "Invalid protocol message input, example id: record 1 of the request"),
])
def test_a_bad_encoded_request_is_an_error_naming_the_record_and_frame(loaded, records, case, expected):
    """Record 1 of a request is bad (a frame in its window: 20 frames, the window is 2..17); the
    model then serves a good request."""
    jpegs = [tf.io.encode_jpeg(frame).numpy() for frame in smooth_frames(20, 32, 40, seed=5)]
    bad = {"truncated JPEG": record_of([*jpegs[:9], jpegs[9][:len(jpegs[9]) // 2], *jpegs[10:]]),
           "not a JPEG": record_of([*jpegs[:11], b"\x89PNG\r\n", *jpegs[12:]]),
           "no frames": record_of([]),
           "a tf.train.Example": tf.train.Example().SerializeToString(),
           "not a protocol buffer": b"\xff\xff\xff"}[case]
    serve = loaded.signatures["serving_encoded"]
    good = records["long"][0]
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(expected)):
        serve(records=tf.constant([good, bad]))
    assert serve(records=tf.constant([good]))["probabilities"].shape == (1, 5)


@pytest.mark.parametrize("frames, error, expected", [
    (np.zeros((16, 32, 32, 3), np.uint8), tf.errors.InvalidArgumentError,
     r"Expected frames\[batch, T, H, W, 3\] \(uint8, T >= 16\). Received: frames of shape\] \[16 32 32 3\]"),
    (np.zeros((1, 16, 32, 32, 1), np.uint8), tf.errors.InvalidArgumentError,
     r"Expected frames\[batch, T, H, W, 3\] \(uint8, T >= 16\). Received: frames of shape\] \[1 16 32 32 1\]"),
    (np.zeros((1, 15, 32, 32, 3), np.uint8), tf.errors.InvalidArgumentError,
     r"Expected at least 16 frames in axis 1 of frames\[batch, T, H, W, 3\]. Received: T =\] \[15\]"),
    (np.zeros((1, 16, 32, 32, 3), np.float32), tf.errors.InvalidArgumentError,
     r"expected to be a uint8 tensor but is a float tensor"),
], ids=["rank 4", "1 channel", "15 frames", "float32"])
def test_bad_frames_are_an_error_naming_the_expected_shape(loaded, frames, error, expected):
    serve = loaded.signatures["serving_default"]
    with pytest.raises(error, match=expected):
        serve(frames=tf.constant(frames))
    assert serve(frames=tf.zeros((1, 16, 32, 32, 3), tf.uint8))["probabilities"].shape == (1, 5)


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
