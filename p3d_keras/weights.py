"""Loading weights into a P3D ResNet: a Keras weights file, an original checkpoint, or a preset.

A preset (`P3DResNet199(weights="kinetics400")`) is resolved in this order:

1. the converted file `p3d_keras_<preset>.weights.h5` in the Keras cache
   (`$KERAS_HOME/models`, default `~/.keras/models`): loaded, no network;
2. else, if the preset has a published URL and sha256: downloaded with `keras.utils.get_file`
   (base URL overridable with `$P3D_KERAS_WEIGHTS_URL` for mirrors), hash-checked, then moved
   into the cache. A failed or mismatching download never leaves a file under the cache name and
   never replaces a good one;
3. else the original checkpoint, found in the cache as `<cache>/<original_file>`: converted once,
   the converted file cached, then loaded.
"""
import logging
import os
import uuid

from p3d_keras.fileutil import sha256_of

log = logging.getLogger(__name__)

KERAS_WEIGHTS_SUFFIXES = (".weights.h5",)
ORIGINAL_SUFFIXES = (".pth", ".pth.tar", ".tar", ".npz", ".caffemodel")
MIRROR_ENV = "P3D_KERAS_WEIGHTS_URL"


def cache_dir():
    """Where converted and original weights are looked for: `$KERAS_HOME/models`."""
    return os.path.join(os.environ.get("KERAS_HOME") or os.path.expanduser("~/.keras"), "models")


def load_weights(model, weights):
    """Load `weights` into `model`: a `.weights.h5` file saved by Keras, or an original
    checkpoint (`.pth`, `.pth.tar`, `.npz`, `.caffemodel`) converted on the fly."""
    path = os.fspath(weights)
    if not os.path.exists(path):
        raise ValueError("weights must be None, a preset name, a Keras weights file (.weights.h5) or an original "
                         f"checkpoint ({', '.join(ORIGINAL_SUFFIXES)}) that exists. Received: weights={weights!r}")
    if path.endswith(KERAS_WEIGHTS_SUFFIXES):
        model.load_weights(path)
        return
    from p3d_keras.convert import load_original_weights  # noqa: PLC0415

    load_original_weights(model, path)


def preset_url(preset):
    """The download URL of a preset's converted file (mirror base URL from the environment)."""
    base = os.environ.get(MIRROR_ENV)
    if base:
        return f"{base.rstrip('/')}/{preset.filename}"
    return preset.url


def fetch_preset(preset, build_full_model):
    """Path of the converted Keras file of `preset`, downloading or converting it if needed.

    `build_full_model()` builds the preset's architecture with its classifier; it is only called
    when an original checkpoint has to be converted.
    """
    cached = os.path.join(cache_dir(), preset.filename)
    if os.path.exists(cached) and (preset.sha256 is None or sha256_of(cached) == preset.sha256):
        return cached
    tried = [f"converted file in the cache: {cached} ({'hash mismatch' if os.path.exists(cached) else 'absent'})"]
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
        return convert_original(preset, original, build_full_model)
    tried.append(f"original checkpoint in the cache: {original} (absent)")
    raise ValueError(
        f"Could not load weights preset {preset.name!r}. Tried:\n  - " + "\n  - ".join(tried) +
        f"\nTo work offline, put the converted file at {cached}, or the original {preset.original_file} "
        f"(published on the {preset.published_at}) at {original}.")


def convert_original(preset, original, build_full_model):
    """Convert an original checkpoint of `preset` once and cache the Keras file; returns its path."""
    model = build_full_model()
    load_weights(model, original)
    cached = os.path.join(cache_dir(), preset.filename)
    os.makedirs(cache_dir(), exist_ok=True)
    partial = f"{cached}.part-{uuid.uuid4().hex}.weights.h5"
    try:
        model.save_weights(partial)
        os.replace(partial, cached)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    log.info("converted %s into %s", original, cached)
    return cached


def _download(url, sha256, cached):
    """`keras.utils.get_file` into a unique partial name, then an atomic rename into the cache."""
    import keras  # noqa: PLC0415

    os.makedirs(os.path.dirname(cached), exist_ok=True)
    partial_name = f"{os.path.basename(cached)}.part-{uuid.uuid4().hex}"
    partial = os.path.join(os.path.dirname(cached), partial_name)
    try:
        got = keras.utils.get_file(partial_name, origin=url, file_hash=sha256, hash_algorithm="sha256",
                                   cache_dir=os.path.dirname(os.path.dirname(cached)), cache_subdir="models")
        os.replace(got, cached)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return cached
