"""Late fusion (`jobs.fusion`, `p3d-fuse`) and the scores `p3d-evaluate` keeps: fused hit rates
against hand-computed numbers, clip fusion, mismatched streams, weights, the programs end to end."""
import json

import numpy as np
import pytest

from p3d_keras.cli import evaluate as evaluate_cli
from p3d_keras.cli import fuse as fuse_cli
from p3d_keras.jobs import fusion

CLASSES = ["jump", "run", "sit"]
# Video scores: RGB gets 1/3 right (v1), flow 2/3 (v2, v3); fused 1:1.5 all three, 1:2 loses v1.
RGB = {"v1": [0.7, 0.2, 0.1], "v2": [0.6, 0.3, 0.1], "v3": [0.2, 0.5, 0.3]}
FLOW = {"v1": [0.3, 0.6, 0.1], "v2": [0.1, 0.8, 0.1], "v3": [0.1, 0.2, 0.7]}
LABELS = {"v1": 0, "v2": 1, "v3": 2}


def stream(scores, source, *, ids=None, classes=CLASSES, labels=LABELS):
    ids = list(scores) if ids is None else ids
    return fusion.Scores(list(classes), np.array(ids), np.array([labels[i] for i in ids]),
                         np.array([scores[i] for i in ids], "float32"), source=source)


def test_fusion_against_hand_computed_numbers():
    rgb, flow = stream(RGB, "rgb"), stream(FLOW, "flow", ids=["v3", "v1", "v2"])  # another order: aligned by id
    fused, report = fusion.fuse([rgb, flow], [1, 1.5])
    assert fused.video_ids.tolist() == ["v1", "v2", "v3"]
    # (rgb + 1.5 flow) / 2.5: v1 (1.15, 1.1, 0.25) / 2.5, v2 (0.75, 1.5, 0.25) / 2.5, v3 (0.35, 0.8, 1.35) / 2.5
    np.testing.assert_allclose(fused.video_scores, [[0.46, 0.44, 0.10], [0.30, 0.60, 0.10], [0.14, 0.32, 0.54]],
                               atol=1e-6)
    assert report["video_hit@1"] == 1.0 and report["video_hit@5"] == 1.0 and report["num_videos"] == 3
    assert report["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    assert report["streams"] == [{"source": "rgb", "weight": 1.0}, {"source": "flow", "weight": 1.5}]
    assert "clip_hit@1" not in report and "no clip scores" in report["clip_fusion"]

    _, report = fusion.fuse([rgb, flow], [1, 2])  # v1: (1.3, 1.4, 0.3) / 3 -> run
    assert report["video_hit@1"] == pytest.approx(2 / 3)
    assert report["confusion_matrix"] == [[0, 1, 0], [0, 1, 0], [0, 0, 1]]
    assert report["per_class_accuracy"]["jump"] == {"videos": 1, "accuracy": 0.0}
    _, alone = fusion.fuse([rgb, rgb])  # a stream fused with itself is itself
    assert alone["video_hit@1"] == pytest.approx(1 / 3)


def with_clips(scores, source, clips):
    """`scores` with two clips per video: `clips[id]` or twice the video's score."""
    rows = [(clips.get(i, [s, s]), i) for i, s in scores.items()]
    clip_scores = np.array([c for pair, _ in rows for c in pair], "float32")
    ids = np.array([i for _, i in rows for _ in range(2)])
    return fusion.Scores.from_clips(clip_scores, [LABELS[i] for i in ids], ids, CLASSES, keep_clips=True,
                                    source=source)


def test_clip_fusion_pairs_the_clips_of_each_video():
    rgb = with_clips(RGB, "rgb", {"v1": [[0.9, 0.0, 0.1], [0.5, 0.4, 0.1]]})  # mean: RGB's v1
    flow = with_clips(FLOW, "flow", {})
    np.testing.assert_allclose(rgb.video_scores[0], RGB["v1"], atol=1e-6)
    fused, report = fusion.fuse([rgb, flow], [1, 1.5])
    # v1's clips: (1.35, 0.9, 0.25) / 2.5 -> jump (hit), (0.95, 1.3, 0.25) / 2.5 -> run (miss); v2, v3 hit twice
    assert report["clip_hit@1"] == pytest.approx(5 / 6) and report["num_clips"] == 6
    assert report["video_hit@1"] == 1.0 and "clip_fusion" not in report
    np.testing.assert_allclose(fused.video_scores[0], [0.46, 0.44, 0.10], atol=1e-6)
    assert fused.clip_scores.shape == (6, 3)

    three = fusion.Scores.from_clips(np.tile(flow.clip_scores[:1], (3, 1)), [0, 0, 0], ["v1"] * 3, CLASSES,
                                     keep_clips=True)
    uneven = fusion.Scores(CLASSES, flow.video_ids, flow.video_labels, flow.video_scores,
                           np.concatenate([three.clip_scores, flow.clip_scores[2:]]),
                           np.concatenate([three.clip_labels, flow.clip_labels[2:]]),
                           np.concatenate([three.clip_video_ids, flow.clip_video_ids[2:]]), source="uneven")
    _, report = fusion.fuse([rgb, uneven])
    assert report["clip_fusion"] == "the streams have different numbers of clips per video"
    assert report["num_videos"] == 3 and "clip_hit@1" not in report


def test_mismatched_videos_classes_and_labels_are_errors_naming_them():
    rgb = stream(RGB, "rgb_eval/")
    flow = stream({"v1": FLOW["v1"], "v2": FLOW["v2"], "v9": [0.1, 0.1, 0.8]}, "flow_eval/", labels={**LABELS, "v9": 2})
    with pytest.raises(ValueError, match=r"1 videos of rgb_eval/ missing from flow_eval/: \['v3'\]; "
                                         r"1 videos of flow_eval/ missing from rgb_eval/: \['v9'\]"):
        fusion.fuse([rgb, flow])
    renamed = stream(FLOW, "flow_eval/", classes=["jump", "walk", "sit"])
    with pytest.raises(ValueError, match=r"class 1: 'run' in rgb_eval/, 'walk' in flow_eval/"):
        fusion.fuse([rgb, renamed])
    fewer = fusion.Scores(["jump", "run"], np.array(["v1"]), np.array([0]), np.zeros((1, 2)), source="two/")
    with pytest.raises(ValueError, match="3 classes in rgb_eval/, 2 in two/"):
        fusion.fuse([rgb, fewer])
    relabelled = stream(FLOW, "flow_eval/", labels={**LABELS, "v2": 0})
    with pytest.raises(ValueError, match=r"source='flow_eval/', videos_labelled_otherwise=\['v2'\]"):
        fusion.fuse([rgb, relabelled])


def test_weights_and_stream_counts():
    rgb, flow = stream(RGB, "rgb"), stream(FLOW, "flow")
    for weights in ([1], [1, 2, 3], [1, 0], [1, float("nan")], [-1, 2]):
        with pytest.raises(ValueError, match="2 positive fusion weights, one per stream"):
            fusion.fuse([rgb, flow], weights)
    with pytest.raises(ValueError, match="at least two streams"):
        fusion.fuse([rgb])
    assert fuse_cli.fusion_weights("1,1.5") == [1.0, 1.5]
    for text in ("1,x", "1,,2", "0,1", "1,-2", "inf,1"):
        with pytest.raises(SystemExit) as error:
            fuse_cli.main(["a", "b", "--out", "o", "--fusion-weights", text])
        assert error.value.code == 2


def test_fuse_program_end_to_end(tmp_path, caplog):
    folders = []
    for name, scores in (("rgb_eval", RGB), ("flow_eval", FLOW)):
        (tmp_path / name).mkdir()
        fusion.write_scores(tmp_path / name / fusion.SCORES, stream(scores, name))
        folders.append(str(tmp_path / name))
    out = tmp_path / "fused"
    assert fuse_cli.main([*folders, "--fusion-weights", "1,1.5", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["video_hit@1"] == 1.0 and report["classes"] == CLASSES
    assert [s["weight"] for s in report["streams"]] == [1.0, 1.5]
    assert (out / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    again = fusion.read_scores(out)  # a fused folder is an evaluation folder: fused again, with RGB
    np.testing.assert_allclose(again.video_scores[0], [0.46, 0.44, 0.10], atol=1e-6)
    assert fuse_cli.main([str(out), folders[0], "--out", str(tmp_path / "twice")]) == 0

    assert fuse_cli.main([folders[0], str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2
    assert "p3d-fuse: Expected an evaluation folder with scores.npz" in caplog.text


def test_evaluate_keeps_scores_that_fuse(shards, tiny_classifier, tmp_path):
    """p3d-evaluate's scores.npz: one row of softmax scores per video (and per clip with --clip-scores);
    a folder fused with itself gives its own report."""
    out = tmp_path / "eval"
    assert evaluate_cli.main(["--data", str(shards / "test"), "--out", str(out), "--num-clips", "2", "--clip-scores",
                              "--model", str(tiny_classifier[0]), "--normalization", "caffe"]) == 0
    scores = fusion.read_scores(out)
    assert scores.class_names == CLASSES and len(scores.video_ids) == 6 and scores.clip_scores.shape == (12, 3)
    np.testing.assert_allclose(scores.video_scores.sum(axis=1), 1.0, atol=1e-5)
    report = json.loads((out / "report.json").read_text())
    fused = fusion.fuse_folders([out, out], weights=[1, 3], out=tmp_path / "fused")
    for key in ("clip_hit@1", "video_hit@1", "video_hit@5", "confusion_matrix", "num_clips"):
        assert fused[key] == report[key], key


@pytest.mark.parametrize("content", ["pickle", "not_zip", "truncated"])
def test_unreadable_scores_files_are_errors_naming_them(tmp_path, content):
    path = tmp_path / "scores.npz"
    if content == "pickle":  # object arrays need allow_pickle, which a scores file never needs
        np.savez(path, class_names=np.array(["a", "b"], dtype=object), video_ids=np.array(["x"], dtype=object),
                 video_labels=np.array([0]), video_scores=np.zeros((1, 2), "float32"))
    else:
        np.savez(path, class_names=np.array(["a", "b"]), video_ids=np.array(["x"]), video_labels=np.array([0]),
                 video_scores=np.zeros((1, 2), "float32"))
        data = path.read_bytes()
        path.write_bytes(b"\x80\x04garbage" if content == "not_zip" else data[:len(data) // 2])
    with pytest.raises(ValueError, match=f"Expected a .npz file of arrays.*{path}"):
        fusion.read_scores(path)
    assert fuse_cli.main([str(path), str(path), "--out", str(tmp_path / "fused")]) == 2


@pytest.mark.parametrize("change, match", [
    (dict(clip_scores=np.eye(2, dtype="float32")), "all of .*clip_scores.*or none"),
    (dict(video_ids=np.array(["x", "x"])), "each video once"),
    (dict(video_labels=np.array([0, 7])), "video labels below 2"),
])
def test_inconsistent_scores_files_are_errors_naming_them(tmp_path, change, match):
    path = tmp_path / "scores.npz"
    arrays = dict(class_names=np.array(["a", "b"]), video_ids=np.array(["x", "y"]), video_labels=np.array([0, 1]),
                  video_scores=np.eye(2, dtype="float32"))
    np.savez(path, **{**arrays, **change})
    with pytest.raises(ValueError, match=f"{match}.*{path}"):
        fusion.read_scores(path)
