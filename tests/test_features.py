"""Features (`jobs.features`, `p3d-extract-features`): per clip and per video, into an .npz."""
import numpy as np

from p3d_keras.cli import extract_features as extract_features_cli
from program_fixtures import MODEL_ARGS


def test_extract_features_program(shards, trained, tmp_path):
    out = tmp_path / "features.npz"
    assert extract_features_cli.main(["--data", str(shards / "test"), "--out", str(out), "--num-clips", "3",
                          "--model", str(trained / "last")]) == 0
    data = np.load(out)
    assert data["clip_features"].shape == (18, 128) and data["video_features"].shape == (6, 128)
    first = data["video_ids"][0]
    np.testing.assert_allclose(data["video_features"][0],
                               data["clip_features"][data["clip_video_ids"] == first].mean(axis=0), rtol=1e-5)
    assert sorted(data["video_ids"]) == [f"v{i}" for i in range(6)]
    assert extract_features_cli.main(["--data", str(shards / "test"), "--out", str(tmp_path / "f.txt"), *MODEL_ARGS]) == 2
