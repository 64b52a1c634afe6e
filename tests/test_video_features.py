"""`jobs.video_features`: per-video feature files from many videos, checked against
`VideoInference.run` (the library is the reference), across decoding processes, with bad videos,
resumes and a settings mismatch."""
import json
import os

import numpy as np
import pytest

from p3d_keras import load_model
from p3d_keras.applications import P3DResNet
from p3d_keras.core.output_folder import WORK_DIR
from p3d_keras.jobs import synthetic, video_features
from p3d_keras.jobs.feature_files import read_features
from p3d_keras.jobs.video_features import extract_video_features, output_name
from p3d_keras.jobs.video_inference import VideoInference
from p3d_keras.tfrecords_tools import sources
from test_predict import bad_video

pytest.importorskip("av")

BAD = ("corrupt", "empty", "text", "audio_only", "truncated", "folder")
LAYERS = ("pool5", "probabilities")


def write_videos(folder, lengths=(40, 20, 70)):
    """Good synthetic videos `v<i>.mp4` of `lengths` frames, 48 px."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i, frames in enumerate(lengths):
        path = folder / f"v{i}.mp4"
        synthetic.write_video(path, synthetic.render_clip("move_left", rng, frames=frames, size=48))
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("video_features")
    P3DResNet((1, 1, 1, 1), width=4, input_shape=(16, 32, 32, 3), classes=3).save(root / "tiny.keras")
    good = write_videos(root / "videos")
    bad = {kind: bad_video(kind, root / "videos") for kind in (*BAD, "short")}
    loaded = load_model(root / "tiny.keras")
    runs = {workers: extract_video_features(loaded, [*good, *bad.values()], root / f"out{workers}", layers=LAYERS,
                                            stride=8, workers=workers, batch_size=3)
            for workers in (0, 2)}
    return root, loaded, good, bad, runs


def test_files_hold_the_libraries_windows_and_equal_features_across_workers(setup):
    root, loaded, good, bad, runs = setup
    inference = VideoInference(loaded, LAYERS)
    for path in [*good, bad["short"]]:
        expected = inference.run(path, stride=8)
        name = output_name(path.stem)
        local, spawned = read_features(root / "out0" / name), read_features(root / "out2" / name)
        np.testing.assert_array_equal(local["timestamps"], expected.times)
        assert local["timestamps"].dtype == np.float64
        for layer in LAYERS:
            assert local["features"][layer].dtype == np.float32
            assert local["features"][layer].shape == expected.outputs[layer].shape
            np.testing.assert_allclose(local["features"][layer], expected.outputs[layer], rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(local["features"][layer], spawned["features"][layer])
        np.testing.assert_array_equal(local["timestamps"], spawned["timestamps"])
        assert local["media_id"] == path.stem and local["path"] == str(path) and local["fps"] == pytest.approx(25)
        assert local["looped"] == (path == bad["short"]) == expected.looped
        assert local["provenance"]["layers"] == list(LAYERS) and local["provenance"]["plan"]["stride"] == 8
    assert [len(read_features(root / "out0" / f"v{i}.npz")["timestamps"]) for i in range(3)] == [4, 1, 7]


def test_bad_videos_are_listed_once_and_the_short_one_is_a_looped_output(setup):
    root, _, good, bad, runs = setup
    for workers, summary in runs.items():
        out = root / f"out{workers}"
        failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
        assert sorted(f["path"] for f in failures) == sorted(str(bad[kind]) for kind in BAD)
        assert all(f["reason"] for f in failures) and failures == summary.failures
        index = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
        assert [e["media_id"] for e in index] == ["short", "v0", "v1", "v2"]
        assert [e["windows"] for e in index] == [1, 4, 1, 7] and [e["looped"] for e in index] == [True] + [False] * 3
        assert all((out / e["file"]).exists() for e in index)
        p = summary.progress
        assert (p.done, p.total, p.written, p.failed, p.looped, p.windows) == (10, 10, 4, 6, 1, 13)


def test_a_rerun_of_a_complete_folder_does_nothing_and_other_settings_are_refused(setup):
    root, loaded, good, bad, _ = setup
    out = root / "out0"
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.rglob("*.npz")}
    summary = extract_video_features(loaded, [*good, *bad.values()], out, layers=LAYERS, stride=8)
    assert (summary.progress.resumed, summary.progress.written, summary.progress.failed) == (10, 0, 0)
    assert len(summary.failures) == len(BAD)  # the earlier run's, still listed
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.rglob("*.npz")} == before
    with pytest.raises(ValueError, match=r"Expected the same inputs and parameters as the earlier run in .*out0.*"
                                         r"Received: changed \['layers', 'plan'\]"):
        extract_video_features(loaded, good, out, layers=("pool5",), stride=16)


def test_a_file_killed_between_its_write_and_its_journal_line_is_kept(setup, tmp_path):
    root, loaded, good, _, _ = setup
    out = tmp_path / "out"
    extract_video_features(loaded, good[:1], out, stride=8)
    (out / WORK_DIR / video_features.JOURNAL).write_text('{"media_id": "v1", "trunc')  # a line cut by a kill
    summary = extract_video_features(loaded, good, out, stride=8)
    assert (summary.progress.resumed, summary.progress.written) == (1, 2)
    assert [json.loads(line)["media_id"] for line in (out / "index.jsonl").read_text().splitlines()] == \
        ["v0", "v1", "v2"]


def test_output_names_are_safe_and_distinct():
    ids = ["class/video", "a b", "a_b", "../up", ".hidden", "a//b", "a/b", "é", "x" * 300, "x" * 299 + "y", "%41", "A"]
    names = [output_name(i) for i in ids]
    assert len(set(names)) == len(ids)
    assert names[:3] == ["class/video.npz", "a%20b.npz", "a_b.npz"]
    for name in names:
        parts = name.split("/")
        assert all(part and not part.startswith(".") and len(part.encode()) <= 204 for part in parts)
    with pytest.raises(ValueError, match="Expected a non-empty media id"):
        output_name("")


def test_segments_and_items(setup, tmp_path):
    root, loaded, good, _, _ = setup
    item = sources.VideoItem(str(good[2]), "", "v2@1.000-2.000", 1.0, 2.0)
    extract_video_features(loaded, [item], tmp_path, stride=8)
    data = read_features(tmp_path / output_name(item.media_id))
    assert data["timestamps"][0, 0] == pytest.approx(1.0) and data["timestamps"][-1, 1] <= 2.0 + 1e-9
    with pytest.raises(ValueError, match="one video per media id"):
        extract_video_features(loaded, [good[0], good[0]], tmp_path / "twice")
    with pytest.raises(ValueError, match="'nope'"):
        extract_video_features(loaded, good, tmp_path / "layers", layers=("nope",))
    assert not os.path.exists(tmp_path / "layers")


def test_a_file_that_is_not_a_feature_file_is_a_value_error_naming_it(setup, tmp_path):
    """Truncated (a copy in progress), pickled, garbage or another .npz: one ValueError naming the
    file (a truncated zip was a bare `BadZipFile` that p3d-transfer did not catch)."""
    root, *_ = setup
    whole = (root / "out0" / "v0.npz").read_bytes()
    files = {"truncated": whole[:len(whole) // 2], "garbage": b"not a zip file"}
    for name, data in files.items():
        (tmp_path / f"{name}.npz").write_bytes(data)
    np.savez(tmp_path / "pickled.npz", timestamps=np.array([object()], dtype=object))
    np.savez(tmp_path / "other.npz", a=np.zeros(2))
    for name in (*files, "pickled", "other"):
        path = tmp_path / f"{name}.npz"
        expected = "a .npz file of arrays \\(no pickles\\)" if name != "other" else \
            "a per-video feature file of p3d-extract-features"
        with pytest.raises(ValueError, match=rf"Expected {expected}\. Received: {path}"):
            read_features(path)
