"""Transfer evaluation (`jobs.transfer`, `p3d-transfer`): the linear SVM on separable and on random
features, both feature-file formats of p3d-extract-features, bad inputs, the t-SNE picture."""
import json
import subprocess
import sys

import numpy as np
import pytest
from needs import missing

from p3d_keras.cli import transfer as transfer_cli
from p3d_keras.jobs import transfer


@pytest.fixture(autouse=True)
def sklearn_installed():
    try:
        import sklearn  # noqa: PLC0415,F401 (the optional [transfer] extra)
    except ImportError:
        missing("scikit-learn", "p3d-transfer's SVM and t-SNE (pip install -e '.[test]')")


CLASSES = ["archery", "bowling", "diving", "fencing"]


def blobs(per_class, dim=32, spread=0.3, seed=0, classes=4):
    """`per_class` features around each of `classes` random directions (separable for a small spread)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(classes, dim))
    labels = np.repeat(np.arange(classes), per_class)
    return centres[labels] + spread * rng.normal(size=(len(labels), dim)), labels


def shard_file(path, features, labels, prefix="v"):
    np.savez(path, video_features=np.asarray(features, "float32"), video_labels=np.asarray(labels),
             video_ids=np.array([f"{prefix}{i}" for i in range(len(labels))]))
    return str(path)


def video_folder(root, features, labels, windows=3, layers=("pool5",), flat=False, seed=0):
    """A video-mode output folder: one file per video (`class/name.npz`), `windows` rows per
    video around the video's feature."""
    rng = np.random.default_rng(seed)
    for n, (feature, label) in enumerate(zip(features, labels)):
        media_id = f"clip{n}" if flat else f"{CLASSES[label]}/clip{n}"
        file = root / f"{media_id}.npz"
        file.parent.mkdir(parents=True, exist_ok=True)
        rows = feature + 0.01 * rng.normal(size=(windows, len(feature)))
        np.savez(file, **{f"features/{layer}": rows.astype("float32") for layer in layers},
                 timestamps=np.zeros((windows, 2)), fps=25.0, seconds=4.0, media_id=media_id, path=f"/v/{media_id}.mp4",
                 looped=False, provenance="{}")
    (root / ".work").mkdir(exist_ok=True)
    np.savez(root / ".work" / "stray.npz", x=np.zeros(1))  # the job's work folder is not a video
    return str(root)


def test_svm_separates_separable_features_and_not_random_ones(tmp_path):
    train, test = blobs(30, seed=1), blobs(10, seed=2)
    report = transfer.transfer(shard_file(tmp_path / "train.npz", *train), shard_file(tmp_path / "test.npz", *test))
    assert report["accuracy"] == 1.0 and report["num_train"] == 120 and report["num_test"] == 40
    assert report["classes"] == ["0", "1", "2", "3"] and report["feature_size"] == 32
    assert report["confusion_matrix"] == (10 * np.eye(4, dtype=int)).tolist()

    rng = np.random.default_rng(3)  # random features, random labels: chance (1/4) within 3 standard deviations
    random_train = shard_file(tmp_path / "random_train.npz", rng.normal(size=(400, 32)), rng.integers(0, 4, 400))
    random_test = shard_file(tmp_path / "random_test.npz", rng.normal(size=(400, 32)), rng.integers(0, 4, 400))
    accuracy = transfer.transfer(random_train, random_test)["accuracy"]
    assert abs(accuracy - 0.25) < 3 * np.sqrt(0.25 * 0.75 / 400), accuracy


def test_features_are_l2_normalised():
    rows = transfer.l2_normalize([[3.0, 4.0], [0.0, 0.0]])
    np.testing.assert_allclose(rows, [[0.6, 0.8], [0.0, 0.0]])
    # scaling a video's feature changes nothing: the SVM sees directions only
    features, labels = blobs(10)
    svm = transfer.train_svm(features, labels)
    scaled = transfer.train_svm(features * np.arange(1, 41)[:, None], labels)
    np.testing.assert_allclose(svm.coef_, scaled.coef_, atol=1e-6)


def test_bad_inputs_are_clear_errors(tmp_path):
    train = shard_file(tmp_path / "train.npz", *blobs(5))
    narrow = shard_file(tmp_path / "narrow.npz", *blobs(5, dim=16))
    with pytest.raises(ValueError, match=r"Expected test features of the training features' size. "
                                         r"Received: train='.*train.npz: 32', test='.*narrow.npz: 16'"):
        transfer.transfer(train, narrow)
    one = shard_file(tmp_path / "one.npz", blobs(5)[0], np.zeros(20, int))
    with pytest.raises(ValueError, match=r"Expected training features of at least two classes.*classes=\['0'\]"):
        transfer.transfer(one, train)
    with pytest.raises(ValueError, match=r"Expected test classes that the training features have.*"
                                         r"classes_without_training_videos=\['0'\]"):
        transfer.transfer(shard_file(tmp_path / "no0.npz", blobs(5)[0][5:], blobs(5)[1][5:]), train)
    np.savez(tmp_path / "other.npz", a=1)
    with pytest.raises(ValueError, match="shard-mode file with"):
        transfer.transfer(train, str(tmp_path / "other.npz"))
    with pytest.raises(ValueError, match="class indices below 2"):
        (tmp_path / "two.txt").write_text("a\nb\n")
        transfer.transfer(train, train, labels_file=str(tmp_path / "two.txt"))

    flat = video_folder(tmp_path / "flat", *blobs(2), flat=True)
    with pytest.raises(ValueError, match=r"media ids class/video .* or a labels CSV.*videos_without_folder="):
        transfer.transfer(flat, flat)
    csv = tmp_path / "labels.csv"
    csv.write_text("media_id,label\n" + "".join(f"clip{n},{CLASSES[n // 2]}\n" for n in range(7)))
    with pytest.raises(ValueError, match=r"a label for every video in the labels CSV.*first_missing=\['clip7'\]"):
        transfer.transfer(flat, flat, labels_csv=str(csv))
    layered = video_folder(tmp_path / "layered", *blobs(2), layers=("res4", "res5"))
    with pytest.raises(ValueError, match=r"Expected layer \(the files hold several and no pool5\)"):
        transfer.transfer(layered, layered)
    with pytest.raises(ValueError, match=r"a layer of the feature files, one of \['res4', 'res5'\]"):
        transfer.transfer(layered, layered, layer="pool5")
    with pytest.raises(ValueError, match="a folder of per-video feature files"):
        (tmp_path / "empty").mkdir()
        transfer.transfer(str(tmp_path / "empty"), train)


def test_transfer_program_on_video_folders(tmp_path, caplog):
    caplog.set_level("INFO")
    train = video_folder(tmp_path / "train", *blobs(12, seed=1), layers=("pool5", "res5"))
    test = video_folder(tmp_path / "test", *blobs(8, seed=2), seed=1)
    out = tmp_path / "svm"
    assert transfer_cli.main(["--train", train, "--test", test, "--out", str(out), "--c", "0.5"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["accuracy"] == 1.0 and report["classes"] == CLASSES and report["svm"] == {"kind": "LinearSVC",
                                                                                            "C": 0.5}
    assert report["per_class_accuracy"]["diving"] == {"videos": 8, "accuracy": 1.0}
    for picture in ("confusion_matrix.png", "tsne.png"):
        assert (out / picture).read_bytes()[:4] == b"\x89PNG", picture
    import matplotlib.image  # noqa: PLC0415 (the test extra has it)

    assert matplotlib.image.imread(out / "tsne.png").shape[:2] == (780, 960)
    assert "accuracy 1.0000 on 32 test videos of 4 classes" in caplog.text
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_transfer_program_on_shard_files_with_a_label_file(tmp_path):
    (tmp_path / "labels.txt").write_text("\n".join(CLASSES) + "\n")
    train = shard_file(tmp_path / "train.npz", *blobs(10, seed=1))
    test = shard_file(tmp_path / "test.npz", *blobs(5, seed=2), prefix="t")
    out = tmp_path / "svm"
    assert transfer_cli.main(["--train", train, "--test", test, "--labels", str(tmp_path / "labels.txt"),
                              "--out", str(out), "--tsne", "all"]) == 0
    assert json.loads((out / "report.json").read_text())["classes"] == CLASSES
    assert (out / "tsne.png").read_bytes()[:4] == b"\x89PNG"


def test_transfer_program_errors_exit_2(tmp_path, caplog, monkeypatch):
    train = shard_file(tmp_path / "train.npz", *blobs(5))
    assert transfer_cli.main(["--train", train, "--test", str(tmp_path / "none.npz"), "--out", str(tmp_path)]) == 2
    assert "p3d-transfer: Expected a shard-mode .npz file or a video-mode folder" in caplog.text
    monkeypatch.setitem(sys.modules, "sklearn", None)  # `import sklearn...` raises ImportError
    assert transfer_cli.main(["--train", train, "--test", train, "--out", str(tmp_path)]) == 2
    assert "Expected scikit-learn (pip install 'p3d_keras[transfer]')" in caplog.text


def test_the_program_never_loads_tensorflow():
    """Reading feature files needs NumPy only (`jobs.feature_files`): no TensorFlow start-up lines."""
    code = "import sys, p3d_keras.cli.transfer; print(sorted({'tensorflow', 'keras'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.parametrize("content", ["pickle", "not_zip", "truncated"])
def test_unreadable_feature_files_are_errors_naming_them(tmp_path, content):
    path = tmp_path / "features.npz"
    folder = tmp_path / "videos" / "class_a"
    folder.mkdir(parents=True)
    ids = np.array(["v0"], dtype=object if content == "pickle" else str)
    np.savez(path, video_features=np.ones((1, 4)), video_labels=np.array([0]), video_ids=ids)
    if content != "pickle":
        data = path.read_bytes()
        path.write_bytes(b"\x80\x04garbage" if content == "not_zip" else data[:len(data) // 2])
    (folder / "v0.features.npz").write_bytes(path.read_bytes())
    with pytest.raises(ValueError, match=f"Expected a .npz file of arrays.*{path}"):
        transfer.read_feature_set(path)
    with pytest.raises(ValueError, match="v0.features.npz"):
        transfer.read_feature_set(tmp_path / "videos")


@pytest.mark.parametrize("test_videos", [1, 2])
def test_a_test_set_of_one_or_two_videos_is_scored(tmp_path, test_videos, caplog):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "train.npz", video_features=rng.normal(size=(6, 8)), video_labels=np.array([0, 0, 0, 1, 1, 1]),
             video_ids=np.array([f"v{i}" for i in range(6)]))
    np.savez(tmp_path / "test.npz", video_features=rng.normal(size=(test_videos, 8)),
             video_labels=np.arange(test_videos), video_ids=np.array([f"t{i}" for i in range(test_videos)]))
    report = transfer.transfer(tmp_path / "train.npz", tmp_path / "test.npz", out=tmp_path / "out")
    assert report["num_test"] == test_videos
    assert (tmp_path / "out" / "tsne.png").exists() == (test_videos > 1)
    assert ("not drawn" in caplog.text) == (test_videos == 1)
