"""p3d_keras.weights.hub (and p3d_keras.jobs.hub's upload half) against a local stand-in for the Hugging Face Hub (127.0.0.1): handles,
`load_model("hf://...")` downloaded, cached and reloaded offline in fresh processes, an unknown
revision, tampered weights, a missing huggingface_hub; the upload's local half and `p3d-publish --dry-run`."""
import hashlib
import http.server
import json
import os
import pathlib
import re
import subprocess
import sys
import threading
import urllib.parse

import numpy as np
import pytest

from p3d_keras.applications import P3DResNet
from p3d_keras.cli import publish
from p3d_keras.core.files import sha256_of
from p3d_keras.jobs import hub as publishing
from p3d_keras.jobs import model_folder
from p3d_keras.weights import hub

REPO_ID = "someone/tiny-p3d"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
TAG = "v1"
CLIP = np.random.default_rng(0).uniform(0, 255, size=(1, 16, 32, 32, 3)).astype("float32")


class HubHandler(http.server.BaseHTTPRequestHandler):
    """The Hub's download endpoints that `huggingface_hub.snapshot_download` calls, for the
    repositories in `repos`: `{repo_id: (refs {name: commit}, {commit: {file: bytes}})}`.

        GET /api/models/{repo_id}/revision/{revision}       repo info: sha, siblings
        GET /api/models/{repo_id}/tree/{commit}             the file list
        HEAD, GET /{repo_id}/resolve/{revision}/{file}      the file, ETag and X-Repo-Commit
    """

    repos = {}
    requests = []

    def log_message(self, *args):
        pass

    def commit(self, repo_id, revision):
        refs, commits = self.repos[repo_id]
        return refs.get(revision, revision if revision in commits else None)

    def reply(self, status, body=b"", headers=(), *, send_body=True):
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def error(self, code, status=404, send_body=True):
        self.reply(status, json.dumps({"error": code}).encode(), [("X-Error-Code", code),
                                                                   ("Content-Type", "application/json")],
                   send_body=send_body)

    def route(self, send_body):
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        self.requests.append((self.command, path))
        api = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(revision|tree)/([^/]+)", path)
        resolve = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        repo_id = (api or resolve or [None, None])[1]
        if repo_id not in self.repos:
            return self.error("RepoNotFound", 401, send_body)
        revision = (api or resolve)[3 if api else 2]
        commit = self.commit(repo_id, revision)
        if commit is None:
            return self.error("RevisionNotFound", 404, send_body)
        files = self.repos[repo_id][1][commit]
        json_type = [("Content-Type", "application/json")]
        if api and api[2] == "revision":
            body = {"id": repo_id, "modelId": repo_id, "sha": commit, "private": False,
                    "siblings": [{"rfilename": name} for name in sorted(files)]}
            return self.reply(200, json.dumps(body).encode(), json_type, send_body=send_body)
        if api:
            body = [{"type": "file", "path": name, "size": len(data), "oid": git_blob_id(data)}
                    for name, data in sorted(files.items())]
            return self.reply(200, json.dumps(body).encode(), json_type, send_body=send_body)
        name = resolve[3]
        if name not in files:
            return self.error("EntryNotFound", 404, send_body)
        self.reply(200, files[name], [("ETag", f'"{git_blob_id(files[name])}"'), ("X-Repo-Commit", commit),
                                      ("Content-Type", "application/octet-stream")], send_body=send_body)

    def do_GET(self):
        self.route(True)

    def do_HEAD(self):
        self.route(False)


def git_blob_id(data):
    """The Git blob id of `data` (the Hub's ETag for a small file)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@pytest.fixture
def hub_server():
    """The stand-in hub on 127.0.0.1; yields (its URL, stop())."""
    HubHandler.repos, HubHandler.requests = {}, []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HubHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    stopped = []

    def stop():
        if not stopped:
            httpd.shutdown()
            httpd.server_close()
            stopped.append(True)

    yield f"http://127.0.0.1:{httpd.server_address[1]}", stop
    stop()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny model folder (imagenet normalisation, three named classes) and its outputs on CLIP."""
    model = P3DResNet((1, 1, 1, 1), width=4, input_shape=(16, 32, 32, 3), classes=3)
    path = model_folder.save_model_folder(tmp_path_factory.mktemp("hub") / "tiny", model, normalization="imagenet",
                                          class_names=["a", "b", "c"])
    return pathlib.Path(path), model(CLIP).numpy()


def publish_on(repos, folder, files=None):
    """Put the model folder's files (or `files`) in `repos` at COMMIT, with refs main and TAG."""
    files = files or {name: (folder / name).read_bytes() for name in (model_folder.MODEL_FILE,
                                                                       model_folder.METADATA_FILE)}
    repos[REPO_ID] = ({"main": COMMIT, TAG: COMMIT}, {COMMIT: files})


LOAD = """
import json, sys
import p3d_keras
import numpy as np
try:
    p3d = p3d_keras.load_model(sys.argv[1])
except ValueError as e:
    print(json.dumps({"error": str(e), "type": type(e).__name__}))
    sys.exit(0)
clip = np.random.default_rng(0).uniform(0, 255, size=(1, 16, 32, 32, 3)).astype("float32")
print(json.dumps({"outputs": p3d.model(clip).numpy().tolist(), "path": p3d.path,
                  "normalization": p3d.metadata.normalization, "class_names": p3d.metadata.class_names,
                  "keras_imported_before": "keras" in sys.modules}))
"""


WEIGHTS = """
import json, sys
import numpy as np
from p3d_keras.applications import P3DResNet
try:
    model = P3DResNet((1, 1, 1, 1), width=4, input_shape=(16, 32, 32, 3), classes=3, weights=sys.argv[1])
except ValueError as e:
    print(json.dumps({"error": str(e), "type": type(e).__name__}))
    sys.exit(0)
clip = np.random.default_rng(0).uniform(0, 255, size=(1, 16, 32, 32, 3)).astype("float32")
print(json.dumps({"outputs": model(clip).numpy().tolist()}))
"""


def load_in_process(handle, tmp_path, endpoint, offline=False, script=LOAD):
    """`p3d_keras.load_model(handle)` in a fresh process whose hub is `endpoint` and whose cache is
    in `tmp_path`; returns its JSON report (`outputs`, ..., or `error`)."""
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path / "hf_home"),
           "HF_HUB_CACHE": str(tmp_path / "hf_cache"), "HF_HUB_OFFLINE": "1" if offline else "0",
           "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("HF_TOKEN", None)
    done = subprocess.run([sys.executable, "-c", script, handle], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_parse_handle():
    assert hub.parse_handle("hf://owner/name") == ("owner/name", None)
    assert hub.parse_handle("hf://owner/name@v1.0") == ("owner/name", "v1.0")
    assert hub.parse_handle(f"hf://owner/name@{COMMIT}") == ("owner/name", COMMIT)
    for bad in ("owner/name", "hf://name", "hf://owner/name@", "hf://a/b/c", "hf:///name", "hf://owner/ name"):
        with pytest.raises(hub.HubError, match=re.escape(repr(bad))):
            hub.parse_handle(bad)


def test_download_then_offline_reload_from_the_cache(folder, hub_server, tmp_path):
    path, outputs = folder
    endpoint, stop = hub_server
    publish_on(HubHandler.repos, path)
    first = load_in_process(f"hf://{REPO_ID}@{TAG}", tmp_path, endpoint)
    np.testing.assert_allclose(first["outputs"], outputs, rtol=1e-5, atol=1e-6)
    assert first["normalization"] == "imagenet" and first["class_names"] == ["a", "b", "c"]
    assert pathlib.Path(first["path"]).is_relative_to(tmp_path / "hf_cache")
    assert ("GET", f"/api/models/{REPO_ID}/revision/{TAG}") in HubHandler.requests
    stop()
    again = load_in_process(f"hf://{REPO_ID}@{TAG}", tmp_path, endpoint, offline=True)
    assert again["outputs"] == first["outputs"] and again["path"] == first["path"]
    # Offline, a revision never downloaded is an error naming the handle.
    missing = load_in_process(f"hf://{REPO_ID}@v2", tmp_path, endpoint, offline=True)
    assert missing["type"] == "HubError" and f"hf://{REPO_ID}@v2" in missing["error"]
    assert "HF_HUB_OFFLINE" in missing["error"]


def test_a_handle_as_weights_of_a_builder(folder, hub_server, tmp_path):
    """`P3DResNet(weights="hf://...")`: the folder's network file, downloaded, checked, loaded."""
    path, outputs = folder
    endpoint, _ = hub_server
    publish_on(HubHandler.repos, path)
    built = load_in_process(f"hf://{REPO_ID}@{TAG}", tmp_path, endpoint, script=WEIGHTS)
    np.testing.assert_allclose(built["outputs"], outputs, rtol=1e-5, atol=1e-6)
    files = {name: (path / name).read_bytes() for name in (model_folder.MODEL_FILE, model_folder.METADATA_FILE)}
    files[model_folder.MODEL_FILE] += b"tampered"
    publish_on(HubHandler.repos, path, files)
    tampered = load_in_process(f"hf://{REPO_ID}@{TAG}", tmp_path / "other_cache", endpoint, script=WEIGHTS)
    assert tampered["type"] == "HubError" and "Expected sha256" in tampered["error"]


def test_unknown_revision_and_repository_name_the_handle(folder, hub_server, tmp_path):
    endpoint, _ = hub_server
    publish_on(HubHandler.repos, folder[0])
    unknown = load_in_process(f"hf://{REPO_ID}@nope", tmp_path, endpoint)
    assert unknown["type"] == "HubError"
    assert unknown["error"].startswith(f"hf://{REPO_ID}@nope: Expected a revision of {REPO_ID}")
    assert "revision='nope'" in unknown["error"]
    other = load_in_process("hf://someone/else", tmp_path, endpoint)
    assert other["type"] == "HubError" and other["error"].startswith("hf://someone/else: Expected an existing model")
    assert not list((tmp_path / "hf_cache").glob("**/snapshots/*/*"))  # nothing downloaded


def test_a_revision_without_a_model_folder_names_the_handle(folder, hub_server, tmp_path):
    endpoint, _ = hub_server
    publish_on(HubHandler.repos, folder[0], {"README.md": b"nothing here"})
    empty = load_in_process(f"hf://{REPO_ID}@{TAG}", tmp_path, endpoint)
    assert empty["type"] == "HubError"
    assert empty["error"] == (f"hf://{REPO_ID}@{TAG}: Expected a P3D model folder ({model_folder.MODEL_FILE} and "
                              f"{model_folder.METADATA_FILE}) at the top of {REPO_ID}. Received: a revision holding "
                              "neither")


def test_tampered_weights_are_refused_after_download(folder, hub_server, tmp_path):
    path, _ = folder
    endpoint, _ = hub_server
    weights = bytearray((path / model_folder.MODEL_FILE).read_bytes())
    weights[len(weights) // 2] ^= 0xFF
    publish_on(HubHandler.repos, path, {model_folder.MODEL_FILE: bytes(weights),
                                         model_folder.METADATA_FILE: (path / model_folder.METADATA_FILE).read_bytes()})
    tampered = load_in_process(f"hf://{REPO_ID}", tmp_path, endpoint)
    assert tampered["type"] == "ModelFolderError"
    expected = json.loads((path / model_folder.METADATA_FILE).read_text())["weights_sha256"]
    assert model_folder.MODEL_FILE in tampered["error"] and f"Expected sha256 {expected}" in tampered["error"]
    assert f"Received: a file with sha256 {hashlib.sha256(weights).hexdigest()}" in tampered["error"]


def test_a_missing_huggingface_hub_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails as if not installed
    with pytest.raises(hub.HubError, match=re.escape("hf://a/b: Expected huggingface_hub (install the extra: "
                                                     "pip install 'p3d_keras[hub]')")):
        hub.fetch_model_folder("hf://a/b")


def test_prepare_upload_checks_the_folder_and_lists_its_files(folder, tmp_path):
    path, _ = folder
    assert publishing.prepare_upload(str(path)) == [str(path / model_folder.MODEL_FILE),
                                             str(path / model_folder.METADATA_FILE)]
    (tmp_path / "empty").mkdir()
    with pytest.raises(model_folder.ModelFolderError, match=re.escape(str(tmp_path / "empty"))):
        publishing.prepare_upload(str(tmp_path / "empty"))


def test_publish_dry_run_prints_the_files_and_sha256(folder, capsys, tmp_path):
    path, _ = folder
    assert publish.main([str(path), REPO_ID, "--revision", TAG, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert str(path / model_folder.MODEL_FILE) in out and str(path / model_folder.METADATA_FILE) in out
    assert f"sha256 {sha256_of(path / model_folder.MODEL_FILE)}" in out
    assert f"{REPO_ID}@{TAG}" in out
    assert publish.main([str(tmp_path / "nothing"), REPO_ID, "--dry-run"]) == 2
