"""The native clip decoder: a TensorFlow op that decodes the same crop of a clip's JPEG frames
straight into the clip, which the readers use instead of TensorFlow's JPEG ops
(`clips.decode_frames`).

With TensorFlow's ops a clip is `tf.io.decode_and_crop_jpeg` per frame, `tf.stack`, then a
`tf.reverse` for the flip: TensorFlow's decoder copies each row of a crop whose x offset is not on
a 16-pixel boundary out of a scratch row, so each clip is copied about three times besides being
decoded. The native op (`clip_decoder.cc`, `P3dDecodeCropClip(contents [T], crop_window [4],
flip, reverse_channels) -> [T, h, w, 3] uint8`) has libjpeg-turbo write each row of the crop in
place in the clip and flips the row while it is in the cache: the same values (checked when the
op is loaded, `verify`), with less CPU per clip (how much: `bench/README.md`).

The native op is compiled on first use (seconds) against the running TensorFlow (`tf.sysconfig`)
and the system's libjpeg-turbo, with `$CXX` (default `c++`), into `$XDG_CACHE_HOME/p3d_keras/`
(default `~/.cache/p3d_keras/`), once per TensorFlow version, compiler and source. It needs a
C++17 compiler, libjpeg-turbo's headers (Debian/Ubuntu: `libjpeg-turbo8-dev` or
`libjpeg62-turbo-dev`; conda: `libjpeg-turbo`) and a writable cache folder (not so with a
read-only home, or `HOME` unset or a file: set `$XDG_CACHE_HOME`). `resolve(decoder)` picks:
`tf`, `native` (an error saying why when the op cannot be built, loaded or verified), or `auto`:
native when it can, else TensorFlow's ops with a warning that says why; `auto` never raises.
"""
import hashlib
import logging
import os
import shlex
import subprocess
import sys
import tempfile
import threading

import numpy as np
import tensorflow as tf

logger = logging.getLogger(__name__)

DECODERS = ("auto", "tf", "native")
SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "clip_decoder.cc")
BUILD_TIMEOUT_S = 300
CACHE_HINT = "set $XDG_CACHE_HOME to a writable folder (the op is built in $XDG_CACHE_HOME/p3d_keras)"

_lock = threading.Lock()
_loaded = {}  # "op" or "error": the outcome of this process's one attempt


class NativeDecoderUnavailable(RuntimeError):
    """The native clip decoder could not be compiled, loaded or verified."""


def ops_dir():
    """Where compiled ops are kept: `$XDG_CACHE_HOME/p3d_keras` (default `~/.cache/p3d_keras`).
    Raises `NativeDecoderUnavailable` when neither `$XDG_CACHE_HOME` nor a home directory is set."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    if cache.startswith("~"):
        raise NativeDecoderUnavailable(f"there is no home directory for its build cache ({cache}: $HOME is unset); "
                                       f"{CACHE_HINT}")
    return os.path.join(cache, "p3d_keras")


def _writable(directory):
    """Create `directory` if needed and check that files can be written in it; raises
    `NativeDecoderUnavailable` naming it and saying how to point the cache elsewhere."""
    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as error:
        raise NativeDecoderUnavailable(f"its build cache {directory} cannot be written ({error.strerror or error}); "
                                       f"{CACHE_HINT}") from error


def build_command(source, output, cxx=None):
    """The compiler command line that builds `source` into the shared library `output`."""
    compiler = shlex.split(cxx or os.environ.get("CXX") or "c++")
    return [*compiler, "-O2", "-shared", "-fPIC", source, "-o", output,
            *tf.sysconfig.get_compile_flags(), *tf.sysconfig.get_link_flags(), "-ljpeg"]


def build(directory=None, cxx=None):
    """Path of the compiled op library, compiling it into `directory` (default `ops_dir()`) if it
    is not there yet. The file name holds a hash of the source, the compiler and TensorFlow's
    version and flags; a library is written under a temporary name and renamed, so concurrent
    builds never load a partial file. Raises `NativeDecoderUnavailable` when the compiler fails
    or cannot run, or the directory cannot be written (naming it)."""
    directory = directory or ops_dir()
    command = build_command(SOURCE, "OUTPUT", cxx)
    with open(SOURCE, "rb") as f:
        key = hashlib.sha256(f.read() + repr((command, tf.__version__, sys.platform)).encode()).hexdigest()[:16]
    library = os.path.join(directory, f"clip_decoder-{key}.so")
    if os.path.exists(library):
        return library
    _writable(directory)
    partial = f"{library}.{os.getpid()}.{threading.get_ident()}.part"
    command[command.index("OUTPUT")] = partial
    logger.info("Compiling the native clip decoder: %s", shlex.join(command))
    try:
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise NativeDecoderUnavailable(f"could not run the C++ compiler {command[0]!r} (set $CXX): {error}") \
                from error
        if done.returncode != 0:
            errors = [line for line in done.stderr.splitlines() if "error" in line.lower()] or done.stderr.splitlines()
            hint = (" (libjpeg-turbo's headers are missing: install libjpeg-turbo8-dev, libjpeg62-turbo-dev or "
                    "conda's libjpeg-turbo)" if "jpeglib.h: No such file" in done.stderr else "")
            raise NativeDecoderUnavailable(f"compiling {SOURCE} failed{hint}: " + " | ".join(errors[:5]))
        os.replace(partial, library)
    finally:
        if os.path.exists(partial):  # what a failed or timed-out build left
            os.remove(partial)
    return library


def _check_frames():
    """Small JPEGs that exercise what the op must get right: 4:2:0 and 4:4:4 chroma, a grayscale
    frame, odd sizes."""
    rng = np.random.default_rng(0)
    smooth = np.cumsum(np.cumsum(rng.integers(-6, 7, (45, 67, 3)), axis=0), axis=1)
    image = tf.constant(np.clip(smooth - smooth.min(), 0, 255).astype(np.uint8))
    return [tf.io.encode_jpeg(image, quality=85), tf.io.encode_jpeg(image, quality=95, chroma_downsampling=False),
            tf.io.encode_jpeg(image[..., :1], format="grayscale", quality=90)]


def verify(op):
    """Raise `NativeDecoderUnavailable` unless `op` decodes crops at aligned and unaligned offsets,
    flipped and with reversed channels, exactly as TensorFlow's decoder does."""
    cases = [([0, 0, 45, 67], False, False), ([3, 5, 40, 41], True, False), ([7, 16, 21, 33], False, True),
             ([1, 29, 44, 38], True, True), ([0, 66, 1, 1], True, False)]  # [y, x, h, w], flip, reverse_channels
    for encoded in _check_frames():
        for box, flip, reverse_channels in cases:
            got = op.p3d_decode_crop_clip([encoded, encoded], box, flip, reverse_channels).numpy()
            frame = tf.io.decode_and_crop_jpeg(encoded, box, channels=3).numpy()
            want = frame[:, ::-1 if flip else 1, ::-1 if reverse_channels else 1]
            if not np.array_equal(got, np.stack([want, want])):
                raise NativeDecoderUnavailable(
                    f"the compiled op decodes differently from tf.io.decode_and_crop_jpeg (crop window {box}, "
                    f"flip={flip}, reverse_channels={reverse_channels}); libjpeg-turbo differs from TensorFlow's")


def native_op():
    """This process's native op module (built, loaded and verified once); raises
    `NativeDecoderUnavailable` (the same error on every later call) when that failed."""
    with _lock:
        if not _loaded:
            try:
                op = tf.load_op_library(build())
                verify(op)
                _loaded["op"] = op
            except NativeDecoderUnavailable as error:
                _loaded["error"] = error
            except tf.errors.OpError as error:
                _loaded["error"] = NativeDecoderUnavailable(f"loading the compiled op failed: {error}")
            except OSError as error:  # e.g. its source missing from the installed package
                _loaded["error"] = NativeDecoderUnavailable(f"building it failed: {error}")
        if "error" in _loaded:
            raise _loaded["error"]
        return _loaded["op"]


def resolve(decoder):
    """The native op module (None for TensorFlow's ops) that `decoder` (`DECODERS`) decodes with."""
    if decoder not in DECODERS:
        raise ValueError(f"Expected decoder to be one of {DECODERS}. Received: decoder={decoder!r}")
    if decoder == "tf":
        return None
    try:
        return native_op()
    except NativeDecoderUnavailable as error:
        if decoder == "native":
            raise NativeDecoderUnavailable(f"decoder='native': {error}; use decoder='tf' or 'auto'") from error
        logger.warning("decoder='auto': decoding with TensorFlow's ops (the same clips, more CPU per clip); "
                       "the native clip decoder is unavailable: %s", error)
        return None
