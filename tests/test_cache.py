"""p3d_keras.weights.cache, through `P3DResNet(weights=<preset>)`: download (local HTTP server),
hash check, the cache, mirrors, offline use, an original mapped once, and `include_top=False`."""
import dataclasses
import functools
import http.server
import os
import socket
import threading
import time

import numpy as np
import pytest

from p3d_keras.applications import PRESETS, P3DResNet, P3DResNet199, p3d_resnet
from p3d_keras.core.files import sha256_of
from p3d_keras.weights import cache, original

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
def original_only(keras_home, tiny_preset, monkeypatch):
    """The tiny preset with no published file and only its original (an .npz) in the cache;
    returns the preset and the network the original holds."""
    preset, _ = tiny_preset
    monkeypatch.setitem(PRESETS, "tiny", dataclasses.replace(preset, url=None, sha256=None))
    source = P3DResNet(**TINY, classes=5, classifier_activation=None)
    keras_home.mkdir(parents=True)
    np.savez(keras_home / "tiny_original.npz", **original.original_tensors(source))
    return preset, source


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


def test_a_truncated_cached_file_is_replaced_by_converting_the_original(keras_home, original_only):
    preset, source = original_only
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


def count_full_builds(monkeypatch):
    """A list that gets one entry per full model built for a preset (`P3DResNet` as `load_preset`'s
    builder calls it, through the module's global name)."""
    builds, real = [], p3d_resnet.P3DResNet

    def spy(*args, **kwargs):
        builds.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(p3d_resnet, "P3DResNet", spy)
    return builds


@pytest.mark.parametrize("mapped", [False, True], ids=["cached", "mapped-from-original"])
def test_include_top_false_builds_the_full_model_at_most_once(keras_home, tiny_preset, monkeypatch, mapped):
    preset, _ = tiny_preset
    source = P3DResNet(**TINY, classes=5, classifier_activation=None)
    if mapped:
        monkeypatch.setitem(PRESETS, "tiny", dataclasses.replace(preset, url=None, sha256=None))
        keras_home.mkdir(parents=True)
        np.savez(keras_home / "tiny_original.npz", **original.original_tensors(source))
    else:
        build()  # downloaded into the cache
        source = build()
    builds = count_full_builds(monkeypatch)
    trunk = P3DResNet(**TINY, weights="tiny", include_top=False, pooling="avg")
    assert len(builds) <= 1
    probe = P3DResNet(**TINY, include_top=False, pooling="avg")
    probe.set_weights([w for layer in source.layers if layer.name != "fc" for w in layer.get_weights()])
    np.testing.assert_allclose(trunk(CLIP), probe(CLIP), atol=1e-5)


def test_include_top_true_maps_an_original_with_one_full_build(original_only, monkeypatch):
    _, source = original_only
    builds = count_full_builds(monkeypatch)
    np.testing.assert_allclose(build()(CLIP), source(CLIP), atol=1e-5)
    assert len(builds) == 1


@pytest.mark.parametrize("kwargs, match", [
    (dict(classes=10), r"weights='tiny' is a classes=5 model .*Received: classes=10"),
    (dict(graph="pytorch"), r"graph='caffe' model. Received: graph='pytorch'"),
])
def test_conflicting_arguments_raise(keras_home, tiny_preset, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build(**kwargs)


def test_missing_everything_says_how_to_work_offline(keras_home):
    with pytest.raises(ValueError) as info:
        P3DResNet199(weights="kinetics400_pytorch")
    message = str(info.value)
    assert "no published URL" in message
    assert str(keras_home / "p3d_rgb_199.checkpoint.pth.tar") in message
    assert str(keras_home / "p3d_keras_kinetics400_pytorch.weights.h5") in message
