"""Weight presets: download (local HTTP server), hash check, cache, mirrors, offline use, the
Caffe converter, preprocess_input and decode_predictions."""
import dataclasses
import functools
import http.server
import os
import socket
import threading
import time

import numpy as np
import pytest

from conftest import PARITY_TOLERANCE
from p3d_keras.cli import convert_weights
from p3d_keras.weights import original
from p3d_keras.weights import cache
from p3d_keras.applications import (PRESETS, P3DResNet, P3DResNet199, decode_predictions, get_preset,
                                    preprocess_input)
from p3d_keras.weights.caffemodel import write_caffemodel
from p3d_keras.core.files import sha256_of

TINY = dict(depth=(1, 1, 1, 1), width=4, input_shape=(16, 32, 32, 3))
CLIP = np.random.default_rng(0).normal(size=(1, 16, 32, 32, 3)).astype("float32")


class Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; `/truncated/<file>` announces the full length but sends half;
    `/stall/<file>` sends the headers and half the body, then stalls until `release` is set."""

    release = threading.Event()

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path.startswith(("/truncated/", "/stall/")):
            data = open(os.path.join(self.directory, self.path.split("/")[-1]), "rb").read()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            if self.path.startswith("/stall/"):
                self.release.wait(60)
            return
        super().do_GET()


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    Handler.release.clear()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    Handler.release.set()
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.delenv(cache.MIRROR_ENV, raising=False)
    return tmp_path / "keras_home" / "models"


@pytest.fixture
def tiny_preset(server, monkeypatch):
    """A preset of a tiny architecture whose converted file is published on the local server."""
    root, base = server
    source = P3DResNet(**TINY, classes=5, classifier_activation=None)
    preset = dataclasses.replace(PRESETS["kinetics400"], name="tiny", depth=TINY["depth"], width=4, classes=5,
                                 original_file="tiny_original.npz", input_shape=TINY["input_shape"])
    source.save_weights(root / preset.filename)
    preset = dataclasses.replace(preset, url=f"{base}/{preset.filename}", sha256=sha256_of(root / preset.filename))
    monkeypatch.setitem(PRESETS, "tiny", preset)
    return preset, source(CLIP)


@pytest.fixture
def silent_server():
    """A TCP server that accepts connections and never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    held, stop = [], threading.Event()

    def accept():
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    listener.close()
    for connection in held:
        connection.close()


def build(**kw):
    return P3DResNet(**TINY, weights="tiny", classifier_activation=None, **kw)


def build_within(seconds, **kw):
    """`build(**kw)` in a thread; returns (model or None, error or None, elapsed s); a build still
    running after `seconds` fails the test instead of hanging it."""
    result = {}

    def target():
        try:
            result["model"] = build(**kw)
        except Exception as e:  # noqa: BLE001 (handed to the test)
            result["error"] = e

    start = time.monotonic()
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"the download was still running after {seconds} s"
    return result.get("model"), result.get("error"), time.monotonic() - start


def test_download_hash_check_cache_then_offline(keras_home, tiny_preset, monkeypatch):
    preset, expected = tiny_preset
    np.testing.assert_allclose(build()(CLIP), expected, atol=1e-6)
    assert sorted(os.listdir(keras_home)) == [preset.filename]
    monkeypatch.setitem(PRESETS, "tiny", dataclasses.replace(preset, url="http://127.0.0.1:9/gone"))
    np.testing.assert_allclose(build()(CLIP), expected, atol=1e-6)  # from the cache, no network


def test_wrong_hash_leaves_nothing_in_the_cache(keras_home, tiny_preset, monkeypatch):
    preset, _ = tiny_preset
    monkeypatch.setitem(PRESETS, "tiny", dataclasses.replace(preset, sha256="0" * 64))
    with pytest.raises(ValueError) as info:
        build()
    message = str(info.value)
    assert preset.url in message and "0" * 64 in message
    assert f"put the converted file at {keras_home / preset.filename}" in message
    assert not keras_home.exists() or os.listdir(keras_home) == []


@pytest.mark.parametrize("path", ["missing.weights.h5", "truncated/{}"])
def test_404_and_truncated_download(keras_home, tiny_preset, server, monkeypatch, path):
    preset, _ = tiny_preset
    url = f"{server[1]}/{path.format(preset.filename)}"
    monkeypatch.setitem(PRESETS, "tiny", dataclasses.replace(preset, url=url))
    with pytest.raises(ValueError, match="Could not load weights preset 'tiny'") as info:
        build()
    assert url in str(info.value) and "tiny_original.npz" in str(info.value)
    assert not keras_home.exists() or os.listdir(keras_home) == []


def test_failed_download_keeps_a_good_cached_file(keras_home, tiny_preset, monkeypatch):
    preset, expected = tiny_preset
    build()
    good = (keras_home / preset.filename).read_bytes()
    monkeypatch.setitem(PRESETS, "tiny", dataclasses.replace(preset, url="http://127.0.0.1:9/gone"))
    build()
    assert (keras_home / preset.filename).read_bytes() == good


@pytest.mark.parametrize("where", ["silent", "stall"])
def test_a_stalled_server_fails_the_download_within_the_timeout(keras_home, tiny_preset, server, silent_server,
                                                                 monkeypatch, where):
    preset, _ = tiny_preset
    url = silent_server + "/x.weights.h5" if where == "silent" else f"{server[1]}/stall/{preset.filename}"
    monkeypatch.setitem(PRESETS, "tiny", dataclasses.replace(preset, url=url))
    monkeypatch.setenv(cache.TIMEOUT_ENV, "1")
    model, error, elapsed = build_within(20)
    assert model is None and isinstance(error, ValueError) and elapsed < 10
    message = str(error)
    assert f"no data from {url} for 1 s" in message and cache.TIMEOUT_ENV in message
    assert f"put the converted file at {keras_home / preset.filename}" in message
    assert "pass weights=<a local .weights.h5 file>" in message
    assert os.listdir(keras_home) == []  # the stalled partial was removed


def test_download_timeout_must_be_a_positive_number(monkeypatch):
    for text in ("0", "-1", "soon", "nan", "inf"):
        monkeypatch.setenv(cache.TIMEOUT_ENV, text)
        with pytest.raises(ValueError, match=rf"Expected \$P3D_KERAS_DOWNLOAD_TIMEOUT to be a positive number of "
                                             rf"seconds. Received: '{text}'"):
            cache.download_timeout()
    monkeypatch.setenv(cache.TIMEOUT_ENV, "2.5")
    assert cache.download_timeout() == 2.5


def test_partials_of_killed_downloads_are_removed_by_the_next(keras_home, tiny_preset):
    preset, expected = tiny_preset
    keras_home.mkdir(parents=True)
    old = time.time() - 2 * cache.STALE_PARTIAL_S
    stale = [keras_home / f"{preset.filename}.part-1234-{'a' * 32}",                 # a killed download
             keras_home / f"{preset.filename}.part-{'b' * 32}",                      # the previous naming
             keras_home / f"p3d_keras_other.weights.h5.part-77-{'c' * 32}.weights.h5"]  # a killed conversion
    live = keras_home / f"p3d_keras_other.weights.h5.part-78-{'d' * 32}"  # being written right now
    unrelated = keras_home / "resnet50_weights_tf_dim_ordering_tf_kernels.h5.part"
    for path in stale + [live, unrelated]:
        path.write_bytes(b"partial")
    for path in stale + [unrelated]:
        os.utime(path, (old, old))
    np.testing.assert_allclose(build()(CLIP), expected, atol=1e-6)
    assert sorted(os.listdir(keras_home)) == sorted([preset.filename, live.name, unrelated.name])


@pytest.mark.parametrize("damage", ["truncated", "empty", "text"])
def test_a_damaged_cached_file_without_sha256_is_named(keras_home, tiny_preset, server, monkeypatch, damage):
    preset, _ = tiny_preset
    monkeypatch.setitem(PRESETS, "tiny", dataclasses.replace(preset, url=None, sha256=None))
    good = (server[0] / preset.filename).read_bytes()
    keras_home.mkdir(parents=True)
    cached = keras_home / preset.filename
    cached.write_bytes({"truncated": good[: len(good) // 2], "empty": b"", "text": b"<html>Not found</html>"}[damage])
    with pytest.raises(ValueError) as info:
        build()
    message = str(info.value)
    assert f"converted file in the cache: {cached} (unreadable, truncated or not a Keras weights file" in message
    assert f"delete {cached} and download or convert it again" in message


def test_a_truncated_cached_file_is_replaced_by_converting_the_original(keras_home, tiny_preset, monkeypatch):
    preset, _ = tiny_preset
    monkeypatch.setitem(PRESETS, "tiny", dataclasses.replace(preset, url=None, sha256=None))
    source = P3DResNet(**TINY, classes=5, classifier_activation=None)
    keras_home.mkdir(parents=True)
    np.savez(keras_home / "tiny_original.npz", **original.original_tensors(source))
    (keras_home / preset.filename).write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))  # an HDF5 signature, then nothing
    np.testing.assert_allclose(build()(CLIP), source(CLIP), atol=1e-5)
    assert cache.unreadable_reason(keras_home / preset.filename) is None


def test_an_unwritable_cache_names_the_folder_and_keras_home(tiny_preset, tmp_path, monkeypatch):
    # Beneath a regular file nothing can be created, even by root (chmod does not stop root).
    blocker = tmp_path / "plain_file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("KERAS_HOME", str(blocker / "home"))
    monkeypatch.delenv(cache.MIRROR_ENV, raising=False)
    with pytest.raises(ValueError) as info:
        build()
    message = str(info.value)
    assert f"Received: {str(blocker / 'home' / 'models')!r}, which cannot be written" in message
    assert "Set KERAS_HOME to a writable folder" in message


def test_mirror_environment_variable(keras_home, tiny_preset, server, monkeypatch):
    preset, expected = tiny_preset
    monkeypatch.setitem(PRESETS, "tiny", dataclasses.replace(preset, url="http://127.0.0.1:9/dead/link"))
    monkeypatch.setenv(cache.MIRROR_ENV, server[1] + "/")
    np.testing.assert_allclose(build()(CLIP), expected, atol=1e-6)


def test_original_in_the_cache_is_converted_once(keras_home, tiny_preset, monkeypatch):
    preset, _ = tiny_preset
    monkeypatch.setitem(PRESETS, "tiny", dataclasses.replace(preset, url=None, sha256=None))
    source = P3DResNet(**TINY, classes=5, classifier_activation=None)
    keras_home.mkdir(parents=True)
    state = original.original_tensors(source)
    np.savez(keras_home / "tiny_original.npz", **state)
    np.testing.assert_allclose(build()(CLIP), source(CLIP), atol=1e-5)
    os.remove(keras_home / "tiny_original.npz")
    np.testing.assert_allclose(build()(CLIP), source(CLIP), atol=1e-5)  # the cached conversion


def test_include_top_false_takes_all_but_the_classifier(keras_home, tiny_preset):
    preset, _ = tiny_preset
    full = build()
    trunk = P3DResNet(**TINY, weights="tiny", include_top=False, pooling="avg")
    probe = P3DResNet(**TINY, include_top=False, pooling="avg")
    probe.set_weights([w for layer in full.layers if layer.name not in ("fc",) for w in layer.get_weights()])
    np.testing.assert_allclose(trunk(CLIP), probe(CLIP), atol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    (dict(classes=10), r"weights='tiny' is a classes=5 model .*Received: classes=10"),
    (dict(graph="pytorch"), r"graph='caffe' model. Received: graph='pytorch'"),
])
def test_conflicting_arguments_raise(keras_home, tiny_preset, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build(**kwargs)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"Expected one of \['kinetics400', .*'sports1m'\].*Received: weights='ucf'"):
        P3DResNet199(weights="ucf")
    with pytest.raises(ValueError, match="is a depth=199 model. Received: depth=63"):
        P3DResNet(63, weights="kinetics400")


def test_missing_everything_says_how_to_work_offline(keras_home):
    with pytest.raises(ValueError) as info:
        P3DResNet199(weights="kinetics400_pytorch")
    message = str(info.value)
    assert "no published URL" in message
    assert str(keras_home / "p3d_rgb_199.checkpoint.pth.tar") in message
    assert str(keras_home / "p3d_keras_kinetics400_pytorch.weights.h5") in message


def caffe_blobs(state, model):
    """The port-named reference tensors as Caffe layers with their blobs (BN: scale, shift,
    mean, variance, stored as (1, C) blobs)."""
    original.assign_original(model, state, "pytorch")
    flat = original.original_tensors(model, "caffe")
    layers = {}
    for name, value in flat.items():
        layer = name.rsplit(".", 1)[0]
        is_bn = f"{layer}.running_mean" in flat
        layers.setdefault(layer, []).append(value.reshape(1, -1) if is_bn else value)
    return layers


@pytest.mark.parametrize("depth", [63, pytest.param(199, marks=pytest.mark.slow)])
def test_caffemodel_reproduces_the_caffe_graph(depth, reference, expected, tmp_path):
    model = P3DResNet(depth, classifier_activation=None)
    path = tmp_path / f"p3d{depth}.caffemodel"
    write_caffemodel(path, caffe_blobs(reference.build_state_dict(0, depth=depth), model))
    model = P3DResNet(depth, classifier_activation=None)  # fresh weights: only the file can make it pass
    assert convert_weights.main([str(path), str(tmp_path / "c.weights.h5"), "--depth", str(depth)]) == 0
    model.load_weights(tmp_path / "c.weights.h5")
    logits = model.predict(reference.reference_input(0), verbose=0)
    np.testing.assert_allclose(logits, expected(depth)["logits_caffe"], rtol=0, atol=PARITY_TOLERANCE[depth])


def test_preprocess_input_matches_each_preset():
    frames = np.random.default_rng(1).integers(0, 256, (2, 16, 8, 8, 3), dtype=np.uint8)
    caffe = preprocess_input(frames, preset="kinetics400")
    np.testing.assert_allclose(caffe, frames[..., ::-1].astype("float32") - [104, 117, 123])
    assert caffe.dtype == np.float32
    port = preprocess_input(frames, preset="kinetics400_pytorch")
    np.testing.assert_allclose(port, (frames / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225], atol=1e-5)
    flow = preprocess_input(frames[..., :2], preset="kinetics400_flow")
    np.testing.assert_allclose(flow, frames[..., :2] - 128.0)
    assert preprocess_input(frames, normalization="unit").max() <= 1.0


def test_decode_predictions_names():
    preds = np.zeros((2, 400), "float32")
    preds[0, [0, 399, 161]] = [0.5, 0.3, 0.2]
    preds[1, 208] = 1.0
    top = decode_predictions(preds, top=3)
    assert top[0] == [(0, "abseiling", 0.5), (399, "zumba", pytest.approx(0.3)), (161, "hurling (sport)",
                                                                                  pytest.approx(0.2))]
    assert top[1][0] == (208, "passing American football (in game)", 1.0)
    sports = decode_predictions(np.eye(487, dtype="float32")[[0, 486]], top=1, preset="sports1m")
    assert sports == [[(0, "boomerang", 1.0)], [(486, "model aircraft", 1.0)]]
    with pytest.raises(ValueError, match=r"shape \(samples, 487\).*Received: preds.shape=\(1, 400\)"):
        decode_predictions(preds[:1], preset="sports1m")


def test_preset_table_is_complete():
    assert set(PRESETS) == {"sports1m", "kinetics400", "kinetics400_flow", "kinetics400_pytorch",
                            "kinetics400_flow_pytorch"}
    for preset in PRESETS.values():
        assert preset.graph in ("caffe", "pytorch") and preset.modality in ("rgb", "flow")
        assert preset.input_shape[-1] == (3 if preset.modality == "rgb" else 2)
        assert get_preset(preset.name) is preset
