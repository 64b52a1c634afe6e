"""Loading weights into a P3D ResNet: a Keras weights file, an original checkpoint, or a preset.

A preset (`P3DResNet199(weights="kinetics400")`) is resolved in this order:

1. the Keras weights file `p3d_keras_<preset>.weights.h5` in the Keras cache
   (`$KERAS_HOME/models`, default `~/.keras/models`): loaded, no network. Without a published
   sha256 the file is only checked to be a complete HDF5 file; a truncated or foreign file is
   reported (naming it) and replaced by a download or by mapping the original when either is possible;
2. else, if the preset has a published URL and sha256: downloaded (base URL overridable with
   `$P3D_KERAS_WEIGHTS_URL` for mirrors; a server silent for `$P3D_KERAS_DOWNLOAD_TIMEOUT` seconds,
   default 60, fails the download), hash-checked, then moved into the cache. A failed or
   mismatching download never leaves a file under the cache name and never replaces a good one;
   the partial files of killed downloads are removed by the next download or mapping;
3. else the original checkpoint, found in the cache as `<cache>/<original_file>`: loaded into the
   full model once (`map_original_once`), saved into the cache as the Keras weights file, then loaded.

A cache that cannot be written (read-only, or `$KERAS_HOME` under a file) is reported with the
folder and how to move it (`KERAS_HOME`) before anything is downloaded.
"""
import glob
import hashlib
import logging
import os
import tempfile
import time
import urllib.error
import urllib.request

import h5py

from p3d_keras.core.files import PARTIAL_MARK, atomic_file, atomic_path, sha256_of
from p3d_keras.weights import hub
from p3d_keras.weights.original import load_original_weights

log = logging.getLogger(__name__)

KERAS_WEIGHTS_SUFFIXES = (".weights.h5",)
ORIGINAL_SUFFIXES = (".pth", ".pth.tar", ".tar", ".npz", ".caffemodel")
MIRROR_ENV = "P3D_KERAS_WEIGHTS_URL"
TIMEOUT_ENV = "P3D_KERAS_DOWNLOAD_TIMEOUT"
DEFAULT_TIMEOUT_S = 60.0
STALE_PARTIAL_S = 600.0  # a partial untouched this long (and longer than the timeout) was left by a killed run
CHUNK = 1 << 20


def cache_dir():
    """Where Keras weights files and original checkpoints are looked for: `$KERAS_HOME/models`."""
    return os.path.join(os.environ.get("KERAS_HOME") or os.path.expanduser("~/.keras"), "models")


def writable_cache_dir():
    """`cache_dir()`, created if needed; raises ValueError naming it (and `KERAS_HOME`) if a file
    cannot be created in it. Tried by creating one, since permission bits do not stop root."""
    folder = cache_dir()
    try:
        os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".p3d_keras-write-test-", dir=folder)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise ValueError(
            f"Expected a writable weights cache. Received: {folder!r}, which cannot be written "
            f"({e.strerror or e}). Set KERAS_HOME to a writable folder (the cache is $KERAS_HOME/models), or "
            "pass weights=<a local .weights.h5 file>.") from e
    return folder


def download_timeout():
    """Seconds a download may go without receiving data: `$P3D_KERAS_DOWNLOAD_TIMEOUT`, default 60."""
    text = os.environ.get(TIMEOUT_ENV)
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0 < value < float("inf"):
        raise ValueError(f"Expected ${TIMEOUT_ENV} to be a positive number of seconds. Received: {text!r}")
    return value


def load_weights(model, weights):
    """Load `weights` into `model`: a `.weights.h5` file saved by Keras, an original checkpoint
    (`.pth`, `.pth.tar`, `.npz`, `.caffemodel`) mapped onto the model's layers, or the network of
    the model folder an `hf://owner/name[@revision]` handle names (`hub`: downloaded or cached, its
    sha256 checked). Raises ValueError naming `weights` when the file does not exist."""
    if isinstance(weights, str) and weights.startswith(hub.HANDLE_PREFIX):
        model.load_weights(hub.model_file(hub.fetch_model_folder(weights)))
        return
    path = os.fspath(weights)
    if not os.path.exists(path):
        raise ValueError("weights must be None, a preset name, a Keras weights file (.weights.h5) or an original "
                         f"checkpoint ({', '.join(ORIGINAL_SUFFIXES)}) that exists. Received: weights={weights!r}")
    if path.endswith(KERAS_WEIGHTS_SUFFIXES):
        model.load_weights(path)
        return
    load_original_weights(model, path)


def preset_url(preset):
    """The download URL of a preset's Keras weights file (mirror base URL from the environment)."""
    base = os.environ.get(MIRROR_ENV)
    if base:
        return f"{base.rstrip('/')}/{preset.filename}"
    return preset.url


def unreadable_reason(path):
    """None if `path` opens as a complete HDF5 file, else why not (h5py's words)."""
    try:
        with h5py.File(path, "r"):
            return None
    except OSError as e:
        return str(e)


def cached_file_state(cached, sha256):
    """`None` if the Keras weights file at `cached` can be used, else what is wrong with it."""
    if not os.path.exists(cached):
        return "absent"
    if sha256 is not None:
        return None if sha256_of(cached) == sha256 else "hash mismatch"
    reason = unreadable_reason(cached)
    if reason is None:
        return None
    return (f"unreadable, truncated or not a Keras weights file ({reason}): delete {cached} and download or "
            "convert it again")


def fetch_preset(preset, build_full_model):
    """Path of the Keras weights file of `preset` in the cache, downloading it or mapping it from
    the original checkpoint if needed (see the module docstring for the order).

    `build_full_model()` builds the preset's architecture with its classifier; it is only called
    (once) when an original checkpoint has to be mapped. Raises ValueError listing everything tried
    and where to put a file to work offline; also when the cache cannot be written.
    """
    cached = os.path.join(cache_dir(), preset.filename)
    state = cached_file_state(cached, preset.sha256)
    if state is None:
        return cached
    tried = [f"converted file in the cache: {cached} ({state})"]
    writable_cache_dir()
    url = preset_url(preset)
    if url and preset.sha256:
        try:
            return _download(url, preset.sha256, cached)
        except Exception as e:  # noqa: BLE001 (reported below with everything else that was tried)
            tried.append(f"download {url} (expected sha256 {preset.sha256}): {e}")
    else:
        tried.append(f"download: no published URL and sha256 for this preset (a mirror can be set with ${MIRROR_ENV})")
    original = os.path.join(cache_dir(), preset.original_file)
    if os.path.exists(original):
        return map_original_once(preset, original, build_full_model)
    tried.append(f"original checkpoint in the cache: {original} (absent)")
    raise ValueError(
        f"Could not load weights preset {preset.name!r}. Tried:\n  - " + "\n  - ".join(tried) +
        f"\nTo work offline, put the converted file at {cached}, or the original {preset.original_file} "
        f"(published on the {preset.published_at}) at {original}, or pass weights=<a local .weights.h5 file>.")


def map_original_once(preset, original, build_full_model):
    """Load the original checkpoint of `preset` (the file `original`) into `build_full_model()`
    and save it as the preset's Keras weights file in the cache, atomically; returns its path.
    Raises what `load_weights` raises for a file that does not fit."""
    model = build_full_model()
    load_weights(model, original)
    cached = os.path.join(writable_cache_dir(), preset.filename)
    remove_stale_partials(os.path.dirname(cached))
    with atomic_path(cached, unique=True, suffix=".weights.h5") as partial:
        model.save_weights(partial)
    log.info("mapped %s into %s", original, cached)
    return cached


def remove_stale_partials(folder, now=None):
    """Remove the partial files (`p3d_keras_*.part-*`) of downloads or mappings that were killed:
    those not written for `STALE_PARTIAL_S` seconds (and for at least twice the download timeout, so
    a live download, which writes at least once per timeout, is never taken). Returns their paths."""
    now = time.time() if now is None else now
    stale_after = max(STALE_PARTIAL_S, 2 * download_timeout())
    removed = []
    for path in glob.glob(os.path.join(glob.escape(folder), f"p3d_keras_*{PARTIAL_MARK}*")):
        try:
            if now - os.path.getmtime(path) > stale_after:
                os.remove(path)
                removed.append(path)
        except FileNotFoundError:  # removed meanwhile by its own run or another cleaner
            continue
    if removed:
        log.info("removed %d partial file(s) of interrupted downloads from %s", len(removed), folder)
    return removed


def _download(url, sha256, cached):
    """Stream `url` into a unique partial file beside `cached`, check its sha256, then rename it
    atomically into place. Any read that waits longer than `download_timeout()` raises."""
    timeout = download_timeout()
    remove_stale_partials(os.path.dirname(cached))
    digest = hashlib.sha256()
    with atomic_file(cached, unique=True) as f:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                for block in iter(lambda: response.read(CHUNK), b""):  # a short body raises IncompleteRead
                    f.write(block)
                    digest.update(block)
        except (TimeoutError, urllib.error.URLError) as e:
            if not isinstance(getattr(e, "reason", e), TimeoutError):
                raise
            raise TimeoutError(f"no data from {url} for {timeout:g} s (the server stalled; set "
                               f"${TIMEOUT_ENV} to wait longer)") from e
        if digest.hexdigest() != sha256:
            raise ValueError(f"sha256 mismatch: got {digest.hexdigest()}")
    return cached
