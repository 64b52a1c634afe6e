"""The tf.data clip reader on tiny synthetic shards (32x48 frames, 3-20 frames per video), and
end to end on the converter's own output."""
import numpy as np
import pytest
import tensorflow as tf

from p3d_keras.tfrecords_tools import reader
from shard_fixtures import frame_indices, video_example, write_shards

VIDEOS = [(10, 0), (3, 1), (20, 2), (6, 1)]
SMALL = dict(clip_length=4, crop_size=24, normalization="unit")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("shards"), VIDEOS, num_shards=2)


@pytest.fixture(scope="module")
def flow_shards(tmp_path_factory):
    """`shards`' records marked as flow (the reader refuses RGB records for modality='flow')."""
    return write_shards(tmp_path_factory.mktemp("flow_shards"), VIDEOS, num_shards=2, modality="flow")


def epoch(dataset):
    return [tuple(t.numpy() for t in batch) for batch in dataset]


def test_training_shapes_dtypes_and_windows(shards):
    ds = reader.training_dataset(shards, batch_size=2, flip=False, deterministic=True, seed=0, **SMALL)
    assert ds.element_spec[0].shape.as_list() == [2, 4, 24, 24, 3]
    batches = epoch(ds)
    assert len(batches) == 2
    clips = np.concatenate([b[0] for b in batches])
    labels = np.concatenate([b[1] for b in batches])
    assert clips.dtype == np.float32 and labels.dtype == np.int32
    assert sorted(labels) == [0, 1, 1, 2]  # one window per video per epoch
    for clip_frames in frame_indices(clips):  # consecutive frames, or the 3-frame video looped
        assert np.all(np.diff(clip_frames) == 1) or list(clip_frames) == [0, 1, 2, 0]
    assert 0 <= clips.min() and clips.max() <= 1


def test_short_video_loops(tmp_path):
    paths = write_shards(tmp_path, [(3, 0)])
    clips, _ = epoch(reader.training_dataset(paths, batch_size=1, clip_length=7, frame_stride=1, crop_size=24,
                                             normalization="unit", flip=False, deterministic=True, seed=3))[0]
    np.testing.assert_array_equal(frame_indices(clips)[0], [0, 1, 2, 0, 1, 2, 0])


def test_deterministic_runs_repeat_and_epochs_differ(shards):
    def run():
        ds = reader.training_dataset(shards, batch_size=2, deterministic=True, seed=5, multiscale=True, **SMALL)
        return [epoch(ds) for _ in range(2)]

    first, second = run(), run()
    for e in range(2):
        for a, b in zip(first[e], second[e]):
            np.testing.assert_array_equal(a[0], b[0])
            np.testing.assert_array_equal(a[1], b[1])
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(first[0], first[1]))


def test_crop_and_flip_are_clip_consistent(shards):
    ds = reader.training_dataset(shards, batch_size=4, deterministic=True, seed=1, scale_jitter=(0.8, 1.2),
                                 **SMALL)
    clips = epoch(ds)[0][0]
    green = clips[..., 1].mean(axis=2)  # [B, T, W]: the left-right ramp
    for clip in green:
        np.testing.assert_allclose(clip, np.broadcast_to(clip[0], clip.shape), atol=0.03)


def test_gzip_and_flow(tmp_path):
    paths = write_shards(tmp_path, VIDEOS, num_shards=2, compression="GZIP", modality="flow")
    ds = reader.training_dataset(paths, batch_size=4, modality="flow", deterministic=True, seed=0,
                                 clip_length=4, crop_size=24)
    clips, labels = epoch(ds)[0]
    assert clips.shape == (4, 4, 24, 24, 2) and sorted(labels) == [0, 1, 1, 2]
    assert -128 <= clips.min() and clips.max() <= 127


def test_evaluation_grouping_and_windows(shards):
    ds = reader.evaluation_dataset(shards, batch_size=5, num_clips=2, crops="three", **SMALL)
    clips, labels, ids = (np.concatenate(parts) for parts in zip(*epoch(ds)))
    assert clips.shape == (4 * 2 * 3, 4, 24, 24, 3) and clips.dtype == np.float32
    by_video = {}
    for label, vid, first in zip(labels, ids, frame_indices(clips)[:, 0]):
        by_video.setdefault(vid.decode(), []).append((label, first))
    assert sorted(by_video) == ["v0", "v1", "v2", "v3"]
    # v0: 10 frames -> starts 0..6, 7 positions, middles 1.75 and 5.25; window-major, 3 crops each.
    assert by_video["v0"] == [(0, 1)] * 3 + [(0, 5)] * 3
    assert by_video["v1"] == [(1, 0)] * 6  # 3 frames: looped from 0
    # The three crops of a 32x48 frame run left, centre, right: the green ramp rises.
    assert clips[0, 0, :, :, 1].mean() < clips[1, 0, :, :, 1].mean() < clips[2, 0, :, :, 1].mean()


def test_zero_frame_record_names_the_shard(tmp_path):
    path = str(tmp_path / "empty-00000-of-00001.tfrecord")
    with tf.io.TFRecordWriter(path) as w:
        w.write(video_example(0, 0, "nothing"))
    with pytest.raises(tf.errors.InvalidArgumentError, match="0 frames in record 0 of shard=.*empty-00000"):
        epoch(reader.training_dataset(path, batch_size=1, **SMALL))


@pytest.mark.parametrize("compression", [None, "GZIP"])
def test_corrupt_shard_raises_or_is_counted(tmp_path, compression):
    paths = write_shards(tmp_path, VIDEOS * 2, num_shards=2, compression=compression)
    data = open(paths[1], "rb").read()
    with open(paths[1], "wb") as f:
        f.write(data[: len(data) * 2 // 3])  # truncated in its last records
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"corrupt or truncated record in shard=.*train-00001"):
        epoch(reader.evaluation_dataset(paths, batch_size=8, num_clips=1, **SMALL))
    ds = reader.training_dataset(paths, batch_size=1, skip_corrupt=True, deterministic=True, seed=0, **SMALL)
    read = sum(len(b[1]) for b in epoch(ds))
    assert 4 <= read < 8 and ds.corrupt_records.count == 1
    epoch(ds)
    assert ds.corrupt_records.count == 2  # once per read of the corrupt shard
    ds = reader.evaluation_dataset(paths, batch_size=8, num_clips=1, skip_corrupt=True, **SMALL)
    assert 4 <= len(np.concatenate([b[1] for b in epoch(ds)])) < 8 and ds.corrupt_records.count == 1
    assert reader.evaluation_dataset(paths, batch_size=8, **SMALL).corrupt_records is None


def test_bad_options_raise(shards):
    with pytest.raises(ValueError, match="Received: seed=None"):
        reader.training_dataset(shards, batch_size=1, deterministic=True)
    with pytest.raises(ValueError, match="Received: normalization='caffe'"):
        reader.training_dataset(shards, batch_size=1, modality="flow", normalization="caffe")
    with pytest.raises(ValueError, match="Received: crops='five'"):
        reader.evaluation_dataset(shards, batch_size=1, crops="five")
    with pytest.raises(ValueError, match="Received: file_pattern="):
        reader.training_dataset("/nonexistent/*.tfrecord", batch_size=1)
    with pytest.raises(ValueError, match="Received: compression='zip'"):
        reader.training_dataset(shards, batch_size=1, compression="zip")
    with pytest.raises(ValueError, match="Received: stride_range="):
        reader.training_dataset(shards, batch_size=1, frame_stride=2, stride_range=(1, 3))
    with pytest.raises(ValueError, match="Expected output_dtype to be one of .*Received: output_dtype='float16'"):
        reader.training_dataset(shards, batch_size=1, output_dtype="float16")
    with pytest.raises(ValueError, match="normalization=None with output_dtype='uint8'.*Received: normalization='caffe'"):
        reader.evaluation_dataset(shards, batch_size=1, output_dtype="uint8", normalization="caffe")


def test_caffe_clips_are_bgr_minus_mean_of_the_same_clips(shards):
    # The reader reverses the channels on uint8 frames (with the flip in training) itself.
    mean = np.array([104.0, 117.0, 123.0], "float32")
    for make in (lambda **kw: reader.training_dataset(shards, batch_size=2, deterministic=True, seed=4,
                                                      clip_length=4, crop_size=24, **kw),
                 lambda **kw: reader.evaluation_dataset(shards, batch_size=5, num_clips=2, crops="three",
                                                        clip_length=4, crop_size=24, **kw)):
        for unit, caffe in zip(epoch(make(normalization="unit")), epoch(make(normalization="caffe"))):
            np.testing.assert_allclose(caffe[0], np.rint(unit[0] * 255)[..., ::-1] - mean, atol=1e-3)
            np.testing.assert_array_equal(caffe[1], unit[1])


@pytest.mark.parametrize("modality, normalization", [
    ("rgb", "caffe"), ("rgb", "imagenet"), ("rgb", "unit"), ("flow", "flow")])
def test_uint8_clips_normalised_in_the_model_equal_the_float32_clips(shards, flow_shards, modality, normalization):
    # The same seed gives the same windows, crops and flips; Normalize does the BGR reversal the
    # float32 reader fuses with the flip, and the same normalize arithmetic.
    from p3d_keras.core.layers import Normalize
    shards = flow_shards if modality == "flow" else shards
    layer = Normalize(normalization)
    common = dict(modality=modality, clip_length=4, crop_size=24)
    for make in (lambda **kw: reader.training_dataset(shards, batch_size=2, deterministic=True, seed=7, **common, **kw),
                 lambda **kw: reader.evaluation_dataset(shards, batch_size=5, num_clips=2, crops="three", **common,
                                                        **kw)):
        floats, uint8s = epoch(make(normalization=normalization)), epoch(make(output_dtype="uint8"))
        assert len(floats) == len(uint8s) >= 2
        for f, u in zip(floats, uint8s):
            assert u[0].dtype == np.uint8 and u[0].shape == f[0].shape
            np.testing.assert_array_equal(np.asarray(layer(u[0])), f[0])
            for a, b in zip(f[1:], u[1:]):
                np.testing.assert_array_equal(a, b)


def test_uint8_clips_keep_the_stored_channel_order(shards):
    # No flip: red is the frame index, green rises left to right (shard_fixtures.frame).
    clips, _ = epoch(reader.training_dataset(shards, batch_size=4, flip=False, deterministic=True, seed=0,
                                             clip_length=4, crop_size=24, output_dtype="uint8"))[0]
    assert clips.dtype == np.uint8
    for clip_frames in frame_indices(clips / 255.0):
        assert np.all(np.diff(clip_frames) == 1) or list(clip_frames) == [0, 1, 2, 0]
    green = clips[..., 1].astype(float).mean(axis=(0, 1, 2))
    assert green[-1] - green[0] > 50


def test_resized_uint8_clips_are_the_float32_clips_rounded(shards):
    def clips(**kw):
        return np.concatenate([b[0] for b in epoch(reader.training_dataset(
            shards, batch_size=2, deterministic=True, seed=3, clip_length=4, crop_size=24, scale_jitter=(0.7, 0.9),
            **kw))])

    unit, uint8 = clips(normalization="unit"), clips(output_dtype="uint8")
    assert uint8.dtype == np.uint8
    np.testing.assert_allclose(uint8, unit * 255, atol=0.5 + 1e-3)
    assert not np.allclose(unit * 255, np.rint(unit * 255), atol=1e-3)  # the crops really were resized


def test_end_to_end_from_converter_output(tmp_path):
    from p3d_keras.jobs import synthetic
    from p3d_keras.jobs.video_inference import video_frames
    from p3d_keras.tfrecords_tools import sources, video, writer

    rng = np.random.default_rng(0)
    for cls in ("move_left", "move_up"):
        (tmp_path / "videos" / cls).mkdir(parents=True)
        for i in range(2):
            synthetic.write_video(tmp_path / "videos" / cls / f"{cls}_{i}.mp4",
                                  synthetic.render_clip(cls, rng, frames=20, size=48))
    items, label_map = sources.list_videos("folder", str(tmp_path / "videos"))
    summary = writer.convert(items, label_map, str(tmp_path / "shards"), decode=video.DecodeOptions(size=(48, 48)),
                             num_shards=2, workers=0)
    assert summary.converted == 4 and label_map == {"move_left": 0, "move_up": 1}
    pattern = str(tmp_path / "shards" / "*.tfrecord")

    clips, labels = next(iter(reader.training_dataset(pattern, batch_size=2, crop_size=32, normalization="unit",
                                                      deterministic=True, seed=0)))
    assert clips.shape == (2, 16, 32, 32, 3) and clips.dtype == tf.float32 and set(labels.numpy()) <= {0, 1}

    evaluation = reader.evaluation_dataset(pattern, batch_size=4, num_clips=2, crop_size=48, normalization="unit")
    seen = {}
    for clips, labels, ids in evaluation.as_numpy_iterator():
        for clip, label, media_id in zip(clips, labels, ids):
            seen.setdefault(media_id.decode(), []).append((clip, label))
    assert len(seen) == 4 and all(len(v) == 2 for v in seen.values())
    item = next(i for i in items if i.media_id in seen)
    source = np.stack([f.pixels for f in video_frames(item.path, None)])  # 20 frames; window 0 of 2 starts at 1
    clip, label = seen[item.media_id][0]
    assert label == label_map[item.label]
    error = np.abs(clip * 255 - source[1:17]).mean()
    assert error < 8  # JPEG + mp4 round trip
    assert error < np.abs(clip * 255 - source[0:16]).mean()  # and the right window
