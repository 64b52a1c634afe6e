"""`jobs.beam_features` on the in-process runner: the local extractor's folder, file for file (features
within float tolerance, the rest equal); reruns skip finished videos; either extractor resumes
the other's folder; the program's --beam mode."""
import json
import pickle

import numpy as np
import pytest

from p3d_keras.applications import P3DResNet
from p3d_keras.cli import extract_features
from p3d_keras.jobs import models
from p3d_keras.jobs.model_folder import save_model_folder
from p3d_keras.jobs.feature_files import read_features
from p3d_keras.jobs.video_features import extract_video_features
from p3d_keras.tfrecords_tools import video
from test_predict import bad_video
from test_video_features import write_videos

pytest.importorskip("av")
pytest.importorskip("apache_beam")
from p3d_keras.jobs import beam_features  # noqa: E402 (after the skip: needs apache_beam at run time)

LAYERS = ("pool5", "probabilities")
ARGS = dict(layers=LAYERS, stride=8, batch_size=3)
DIRECT = ["--runner=FnApiRunner"]  # in-process; DirectRunner would first try to download Prism


def _files(out):
    return {p.relative_to(out): (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.rglob("*.npz")}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("beam_features")
    save_model_folder(root / "tiny", P3DResNet((1, 1, 1, 1), width=4, input_shape=(16, 32, 32, 3), classes=3),
                      normalization="caffe")  # its provenance is the folder's, the same in every load
    videos = [*write_videos(root / "videos", lengths=(40, 20)), bad_video("short", root / "videos"),
              bad_video("corrupt", root / "videos")]
    model = str(root / "tiny")
    loads, load = [], beam_features.load_network
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(beam_features, "load_network", lambda *args: loads.append(args) or load(*args))
        summary = beam_features.run(videos, model, root / "beam", pipeline_args=DIRECT, **ARGS)
    assert len(loads) == 2  # once by the launcher, once by the one worker: not once per video
    local = extract_video_features(beam_features.load_network(model), videos, root / "local", **ARGS)
    return root, videos, model, summary, local


def test_the_pipeline_writes_the_local_extractors_files(setup):
    root, videos, _, summary, local = setup
    beam, here = root / "beam", root / "local"
    assert sorted(_files(beam)) == sorted(_files(here)) and len(_files(beam)) == 3
    for name in _files(beam):
        a, b = read_features(beam / name), read_features(here / name)
        assert a["features"].keys() == b["features"].keys() == set(LAYERS)
        for layer in LAYERS:
            assert a["features"][layer].dtype == np.float32
            np.testing.assert_allclose(a["features"][layer], b["features"][layer], rtol=0, atol=1e-6)
        np.testing.assert_array_equal(a["timestamps"], b["timestamps"])
        assert {k: v for k, v in a.items() if k not in ("features", "timestamps")} == \
            {k: v for k, v in b.items() if k not in ("features", "timestamps")}
    for name in ("settings.json", "index.jsonl", "failures.jsonl"):
        assert (beam / name).read_text() == (here / name).read_text(), name
    failures = [json.loads(line) for line in (beam / "failures.jsonl").read_text().splitlines()]
    assert [f["path"] for f in failures] == [str(videos[3])] and failures[0]["reason"]
    assert summary.failures == failures == local.failures
    p = summary.progress
    assert (p.done, p.total, p.resumed, p.written, p.failed, p.looped, p.windows) == (4, 4, 0, 3, 1, 1, 6)


def test_a_rerun_skips_finished_videos_and_either_extractor_resumes_the_others_folder(setup, tmp_path):
    root, videos, model, _, _ = setup
    before = _files(root / "beam")
    again = beam_features.run(videos, model, root / "beam", pipeline_args=DIRECT, **ARGS)
    assert (again.progress.resumed, again.progress.written, again.progress.failed) == (4, 0, 0)
    assert _files(root / "beam") == before and len(again.failures) == 1
    extra = write_videos(tmp_path / "more", lengths=(24, 32))
    extra = [path.rename(path.with_name("w" + path.name)) for path in extra]  # wv0.mp4, wv1.mp4
    network = beam_features.load_network(model)
    runs = {"beam": lambda items: extract_video_features(network, items, root / "beam", **ARGS),
            "local": lambda items: beam_features.run(items, model, root / "local", pipeline_args=DIRECT, **ARGS)}
    for (folder, extract), new in zip(runs.items(), extra):
        summary = extract([*videos, new])
        assert (summary.progress.resumed, summary.progress.written, summary.progress.failed) == (4, 1, 0), folder
        index = [json.loads(line)["media_id"] for line in (root / folder / "index.jsonl").read_text().splitlines()]
        assert index == ["short", "v0", "v1", new.stem] and len(summary.failures) == 1
    with pytest.raises(ValueError, match=r"Received: changed \['plan'\]"):
        beam_features.run(videos, model, root / "beam", pipeline_args=DIRECT,
                          **{**ARGS, "stride": 16})


def test_bad_model_references_and_folders_are_refused(setup):
    root, videos, model, _, _ = setup
    with pytest.raises(ValueError, match=r"\(workers cannot receive a live model\). Received: model=.P3DModel."):
        beam_features.load_network(beam_features.load_network(model))
    with pytest.raises(ValueError, match="a saved model or weights"):
        beam_features.load_network(models.ModelSpec(depth=(1, 1, 1, 1), width=4))
    with pytest.raises(ValueError, match="Expected out to be a folder of a file system .* Received: out='gs://b/f'"):
        beam_features.run(videos, model, "gs://b/f", pipeline_args=DIRECT)
    fn = beam_features._ExtractFn(model, root / "x", layers=LAYERS, plan={}, decode=None, batch_size=1,
                                  normalization=None)
    fn._ready = object()  # a loaded network is never pickled
    assert pickle.loads(pickle.dumps(fn))._ready is None
    other = beam_features._ExtractFn(model, root / "beam", layers=LAYERS, plan={"stride": 16},
                                     decode=video.DecodeOptions(), batch_size=1, normalization=None)
    with pytest.raises(ValueError, match=r"earlier run in .*beam.* Received: changed \['plan'\]"):
        other.setup()  # a worker whose settings are not the folder's writes nothing


def test_the_programs_beam_mode_writes_the_folder(setup, tmp_path, capsys, caplog):
    root, _, _, _, _ = setup
    args = ["--videos", str(root / "videos"), "--model", str(root / "tiny"), "--layers", "pool5,probabilities",
            "--stride", "8", "--batch-size", "3"]
    assert extract_features.main([*args, "--out", str(tmp_path / "out"), "--beam", "--", *DIRECT]) == 0
    assert "3 videos written (6 windows, 1 looped: shorter than a window), 0 done before, 1 failed" in \
        capsys.readouterr().out
    assert sorted(map(str, _files(tmp_path / "out"))) == ["short.npz", "v0.npz", "v1.npz"]
    assert (tmp_path / "out" / "settings.json").read_text() == (root / "beam" / "settings.json").read_text()
    assert extract_features.main([*args, "--out", str(tmp_path / "o2"), "--", *DIRECT]) == 2
    assert "Expected runner arguments after -- only with --beam. Received: ['--runner=FnApiRunner']" in caplog.text
    assert not (tmp_path / "o2").exists()
