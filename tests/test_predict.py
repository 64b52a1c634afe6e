"""Prediction from a video file (`jobs.predict`, `p3d-predict`): a Keras model and a SavedModel agree,
and every kind of bad video is one message naming it, exit 2."""
import numpy as np
import pytest

from p3d_keras.cli import predict as predict_cli
from p3d_keras.jobs import export, predict, synthetic
from p3d_keras.jobs.model_folder import read_model_folder


def test_predict_program(trained, tmp_path, capsys):
    rng = np.random.default_rng(0)
    video = tmp_path / "clip.mp4"
    synthetic.write_video(video, synthetic.render_clip("move_left", rng, frames=24, size=48))
    assert predict_cli.main([str(video), "--model", str(trained / "last"), "--labels",
                         str(trained.parent / "dummy")]) == 2  # a missing labels file is reported
    labels = tmp_path / "labels.txt"
    labels.write_text("jump\nrun\nsit\n")
    assert predict_cli.main([str(video), "--model", str(trained / "last"), "--labels", str(labels),
                         "--top", "3", "--num-clips", "2"]) == 0
    printed = capsys.readouterr().out
    assert "clip.mp4" in printed and all(name in printed for name in ("jump", "run", "sit"))
    model = read_model_folder(trained / "last").model
    saved = export.export_saved_model(model, tmp_path / "serving", labels=["jump", "run", "sit"], top_k=3,
                                      warmup=False)
    frames = predict.read_video(str(video))
    probabilities, top_labels = predict.saved_model_probabilities(frames, saved)
    assert probabilities.shape == (3,) and set(top_labels) == {"jump", "run", "sit"}
    np.testing.assert_allclose(probabilities, predict.video_probabilities(frames, model, num_clips=1), atol=1e-5)
    looped = predict.video_probabilities(frames[:8], model, num_clips=2)  # short videos loop, as in evaluation
    assert looped.shape == (3,) and np.isclose(looped.sum(), 1.0)


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
    ("short", "Expected at least 16 frames for the SavedModel"),
])
def test_predict_reports_a_bad_video_and_exits_2(kind, expected, tiny_classifier, tmp_path, caplog, capsys):
    path = str(bad_video(kind, tmp_path))
    model_file, saved = tiny_classifier
    source = ["--saved-model", saved] if kind == "short" else ["--model", str(model_file)]
    assert predict_cli.main([path, *source]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].startswith("p3d-predict: ") and repr(path) in errors[0]
    assert expected.format(path=path) in errors[0] and "Traceback" not in errors[0]
    if kind == "short":
        assert errors[0].endswith("Received: 8 frames")
    assert capsys.readouterr().out == ""
