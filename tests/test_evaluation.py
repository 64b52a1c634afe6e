"""Evaluation (`jobs.evaluation`, `p3d-evaluate`): the report against hand-computed values, the
program's report and picture, and a missing matplotlib."""
import json
import sys

import numpy as np
import pytest

from p3d_keras.cli import evaluate as evaluate_cli
from p3d_keras.jobs import metrics


def test_evaluation_report_against_hand_computed_values():
    scores = np.array([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1],    # video a (label 0): mean [0.4, 0.5, 0.1] -> 1
                       [0.1, 0.2, 0.7], [0.1, 0.1, 0.8],    # video b (label 2): -> 2
                       [0.5, 0.4, 0.1]])                    # video c (label 1): -> 0
    report = metrics.evaluation_report(scores, [0, 0, 2, 2, 1], ["a", "a", "b", "b", "c"], ["x", "y", "z"])
    assert report["clip_hit@1"] == pytest.approx(3 / 5) and report["video_hit@1"] == pytest.approx(1 / 3)
    assert report["confusion_matrix"] == [[0, 1, 0], [1, 0, 0], [0, 0, 1]]
    assert report["per_class_accuracy"]["z"] == {"videos": 1, "accuracy": 1.0}
    assert report["per_class_accuracy"]["x"]["accuracy"] == 0.0


def test_evaluate_program(shards, trained, tmp_path):
    out = tmp_path / "eval"
    assert evaluate_cli.main(["--data", str(shards / "test"), "--out", str(out), "--num-clips", "2",
                            "--model", str(trained / "last")]) == 0
    report = json.load(open(out / "report.json"))
    assert report["num_videos"] == 6 and report["num_clips"] == 12
    assert report["classes"] == ["jump", "run", "sit"]
    assert sum(map(sum, report["confusion_matrix"])) == 6
    assert 0 <= report["video_hit@1"] <= report["video_hit@5"] == 1.0
    assert (out / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluate_without_matplotlib_writes_the_report_and_skips_the_png(shards, tiny_classifier, tmp_path,
                                                                         monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    out = tmp_path / "eval"
    assert evaluate_cli.main(["--data", str(shards / "test"), "--out", str(out), "--num-clips", "1",
                            "--model", str(tiny_classifier[0]), "--normalization", "caffe"]) == 0
    assert json.load(open(out / "report.json"))["num_videos"] == 6
    assert not (out / "confusion_matrix.png").exists()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and r.name.startswith("p3d_keras")]
    assert warnings == [f"{out / 'confusion_matrix.png'} not drawn: matplotlib is not installed "
                        "(pip install 'p3d_keras[plots]')"]
