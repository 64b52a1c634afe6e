"""TV-L1 flow records (`tfrecords_tools.flow`, `p3d-tfrecords convert --modality flow`): the flow of a
translating texture, the +-20 -> 0..255 mapping, flow records through the converter, the reader
and a flow P3D, the modality check naming the shard, resume refusing other flow settings, and the
demo's motion data converted to flow and trained on."""
import dataclasses
import io
import json
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from p3d_keras.applications import P3DResNet
from p3d_keras.cli import tfrecords as tfrecords_cli
from p3d_keras.jobs import synthetic, training
from p3d_keras.jobs.models import ModelSpec
from p3d_keras.jobs.model_folder import read_model_folder
from p3d_keras.tfrecords_tools import clips, flow, inspection, reader, schema, shards, sources, video, writer
from shard_fixtures import write_records, write_shards

pytest.importorskip("cv2", reason="TV-L1 flow needs opencv-contrib-python-headless (pip install -e '.[test]')")

SHIFT = 3  # pixels per frame, to the right
FLOW = video.DecodeOptions(size=(32, 32), flow=flow.FlowOptions())


def texture(height, width, seed=0):
    """A smooth random grey-level texture (uint8 `[height, width]`): enough structure everywhere
    for the flow to be measurable, no sharp edges."""
    coarse = np.random.default_rng(seed).uniform(0, 255, (height // 4 + 1, width // 4 + 1)).astype(np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC))


def translating(frames, height=32, width=32, shift=SHIFT):
    """`frames` RGB frames `[height, width, 3]` of a texture moving `shift` pixels right per frame."""
    wide = texture(height, width + shift * frames)
    start = shift * frames
    return [np.repeat(wide[:, start - shift * i:start - shift * i + width, None], 3, axis=-1) for i in range(frames)]


def decoded_flow(jpeg):
    """The flow (float32 `[H, W, 2]`, pixels) stored in a flow JPEG, decoded as the reader decodes it."""
    return flow.from_uint8(tf.io.decode_jpeg(jpeg, channels=3).numpy()[..., :2])


def interior(values, margin=4):
    return values[margin:-margin, margin:-margin]


def test_a_translating_texture_has_its_flow_after_the_0_255_mapping():
    jpegs = list(flow.FlowOptions().jpegs(translating(4, 48, 64)))
    assert len(jpegs) == 3  # N frames give N-1
    for jpeg in jpegs:
        xy = interior(decoded_flow(jpeg))
        assert abs(np.median(xy[..., 0]) - SHIFT) < 0.5 and abs(np.median(xy[..., 1])) < 0.5


def test_the_pure_function_and_the_stream_agree():
    frames = translating(3)
    streamed = list(flow.flow_frames(frames))
    assert [x.shape for x in streamed] == [(32, 32, 2)] * 2 and streamed[0].dtype == np.uint8
    np.testing.assert_array_equal(streamed[1], flow.uint8_flow(frames[1], frames[2]))
    # grey frames give the same flow as RGB ones (the flow is of the grey levels)
    np.testing.assert_array_equal(flow.uint8_flow(frames[0][..., 0], frames[1][..., 0]), streamed[0])
    # a repeated frame (the same object) is no motion, without computing
    repeated = list(flow.flow_frames([frames[0], frames[0], frames[1]]))
    assert (repeated[0] == 128).all()
    np.testing.assert_array_equal(repeated[1], streamed[0])


def test_bound_and_mapping_on_known_values():
    values = np.array([-1e9, -25.0, -20.0, -10.0, 0.0, 10.0, 20.0, 25.0, np.inf])
    assert flow.to_uint8(values).tolist() == [0, 0, 0, 64, 128, 191, 255, 255, 255]
    assert flow.to_uint8(values, bound=10.0).tolist() == [0, 0, 0, 0, 128, 255, 255, 255, 255]
    # round((f + 20) * 255 / 40): 63.75 -> 64, 127.5 -> 128 (half to even), 191.25 -> 191
    stored = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(flow.to_uint8(flow.from_uint8(stored)), stored)
    f = np.random.default_rng(0).uniform(-20, 20, 1000)
    assert np.abs(flow.from_uint8(flow.to_uint8(f)) - f).max() <= 20 / 255 + 1e-5
    # a mirrored clip's stored x, 255 - x, is exactly the negated flow
    np.testing.assert_allclose(flow.from_uint8(255 - stored), -flow.from_uint8(stored), atol=1e-5)
    mirrored = clips.mirror_flow(tf.constant(np.stack([stored, stored], -1)[None]), tf.constant(True)).numpy()[0]
    assert mirrored[:, 0].tolist() == (255 - stored).tolist() and mirrored[:, 1].tolist() == stored.tolist()


def test_stored_frames_have_x_y_then_zero_and_full_chroma():
    xy = np.stack(np.meshgrid(np.arange(0, 256, 8), np.arange(0, 256, 8)), -1).astype(np.uint8)
    assert flow.stored_frame(xy)[..., 2].max() == 0 and flow.stored_frame(xy).shape == (32, 32, 3)
    decoded = tf.io.decode_jpeg(flow.encode_jpeg(xy, quality=95), channels=3).numpy()
    assert np.abs(decoded[..., :2].astype(int) - xy).mean() < 2
    assert Image.open(io.BytesIO(flow.encode_jpeg(xy))).layer[1][1:3] == (1, 1)  # 4:4:4: chroma not subsampled


@pytest.mark.parametrize("call, message", [
    (lambda: flow.compute_flow(np.zeros((8, 8), np.uint8), np.zeros((8, 9), np.uint8)),
     r"Expected two frames of one size. Received: first of \(8, 8\) and second of \(8, 9\)"),
    (lambda: flow.compute_flow(np.zeros((8, 8), np.float32), np.zeros((8, 8), np.uint8)),
     r"Expected first to be a uint8 frame \[H, W\] or RGB \[H, W, 3\]. Received: first of shape \(8, 8\)"),
    (lambda: flow.FlowOptions(bound=0), r"Expected bound > 0. Received: bound=0"),
    (lambda: flow.FlowOptions(warps=0), r"Expected warps to be a positive int. Received: warps=0"),
    (lambda: video.DecodeOptions(flow="tvl1"),
     r"Expected flow to be None or a flow.FlowOptions. Received: flow='tvl1'"),
])
def test_bad_flow_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.fixture(scope="module")
def flow_shards(tmp_path_factory):
    """Flow records of 3 videos (17 frames each, translating right, one class each), converted in-process."""
    root = tmp_path_factory.mktemp("flow")
    items = []
    for k in range(3):
        path = root / "videos" / f"v{k}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        synthetic.write_video(path, np.stack(translating(17)))
        items.append(sources.VideoItem(str(path), f"class{k}", f"v{k}"))
    summary = writer.convert(items, sources.build_label_map(items), root / "shards", decode=FLOW, workers=0)
    return root, items, summary


def test_the_converter_writes_flow_records_and_says_so(flow_shards):
    root, items, summary = flow_shards
    manifest = json.loads((root / "shards" / "manifest.json").read_text())
    assert manifest["modality"] == "flow" and summary.failed == 0
    assert manifest["params"]["decode"]["flow"] == dataclasses.asdict(flow.FlowOptions())
    assert manifest["params"]["decode"]["size"] == [32, 32] and manifest["totals"]["frames"] == 3 * 16
    rgb = writer.convert(items[:1], {"class0": 0}, root / "rgb", decode=video.DecodeOptions(size=(32, 32)), workers=0)
    assert rgb.manifest["modality"] == "rgb" and "flow" not in rgb.manifest["params"]["decode"]  # as before flow
    records = list(inspection.iter_records(root / "shards"))
    assert inspection.summarize(root / "shards")["modalities"] == {"flow": 3}
    plain = list(inspection.iter_records(root / "rgb"))[0]
    for record in records:
        assert record[schema.MODALITY] == b"flow" and len(record[schema.ENCODED]) == 16
        # timestamps: each flow frame's first frame; the clip's span is the decoded frames'
        assert record[schema.TIMESTAMP].tolist() == plain[schema.TIMESTAMP].tolist()[:16]
        span = (record[schema.CLIP_START], record[schema.CLIP_END])
        assert span == (plain[schema.CLIP_START], plain[schema.CLIP_END])
        xy = interior(decoded_flow(record[schema.ENCODED][5]))
        assert abs(np.median(xy[..., 0]) - SHIFT) < 0.5 and abs(np.median(xy[..., 1])) < 0.5
    assert shards.shard_modality(next((root / "rgb").glob("*.tfrecord"))) == "rgb"
    assert shards.shard_modality(next((root / "shards").glob("*.tfrecord"))) == "flow"


def test_flow_records_round_trip_through_the_reader_and_a_flow_p3d(flow_shards):
    root, _, _ = flow_shards
    data = reader.training_dataset(root / "shards", batch_size=3, clip_length=16, crop_size=32, modality="flow",
                                   output_dtype="uint8", flip=False, seed=0, deterministic=True)
    batch, labels = next(iter(data))
    assert batch.shape == (3, 16, 32, 32, 2) and sorted(labels.numpy().tolist()) == [0, 1, 2]
    x = flow.from_uint8(interior(batch.numpy().transpose(2, 3, 0, 1, 4))[..., 0])
    assert abs(np.median(x) - SHIFT) < 0.5
    evaluation = reader.evaluation_dataset(root / "shards", batch_size=3, clip_length=16, crop_size=32, num_clips=1,
                                           modality="flow")
    clips_, _, ids = next(iter(evaluation))
    assert clips_.shape == (3, 16, 32, 32, 2) and clips_.dtype == tf.float32  # normalised: minus 128
    keras.utils.set_random_seed(0)
    model = P3DResNet((1, 1, 1, 1), width=4, input_shape=(16, 32, 32, 2), modality="flow", classes=3)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    train = reader.training_dataset(root / "shards", batch_size=3, clip_length=16, crop_size=32, modality="flow")
    history = model.fit(train.take(1), epochs=1, verbose=0, shuffle=False)
    assert np.isfinite(history.history["loss"][0])


def test_the_reader_refuses_the_other_modality_naming_the_shard(flow_shards, tmp_path):
    root, _, _ = flow_shards
    flow_shard = str(next((root / "shards").glob("*.tfrecord")))
    rgb_shards = write_shards(tmp_path, [(20, 0), (20, 1)], num_shards=2)
    for build in (reader.training_dataset, reader.evaluation_dataset):
        with pytest.raises(ValueError, match=f"Expected flow records for modality='flow' .*Received: rgb records in "
                                             f"shard={rgb_shards[0]}"):
            build(tmp_path, batch_size=2, modality="flow")
        with pytest.raises(ValueError, match=f"Expected rgb records for modality='rgb'. Received: flow records in "
                                             f"shard={flow_shard}"):
            build(root / "shards", batch_size=2)
    # a GZIP shard is read for its first record's context too; an empty shard says nothing
    gzipped = writer.convert([flow_shards[1][0]], {"class0": 0}, tmp_path / "gz", decode=FLOW, compression="GZIP",
                             workers=0)
    assert shards.shard_modality(next((tmp_path / "gz").glob("*.tfrecord.gz"))) == "flow" and gzipped.converted == 1
    assert shards.shard_modality(write_records(tmp_path / "empty.tfrecord", [])) is None


def test_records_without_a_modality_are_rgb(tmp_path):
    example = tf.train.SequenceExample()
    example.context.feature[schema.LABEL_INDEX].int64_list.value.append(0)
    path = write_records(tmp_path / "old.tfrecord", [example.SerializeToString()])
    assert shards.shard_modality(path) == "rgb"


def test_resume_refuses_other_flow_settings(flow_shards, tmp_path):
    _, items, _ = flow_shards
    out = tmp_path / "out"
    writer.convert(items[:1], {"class0": 0}, out, decode=FLOW, workers=0)
    other = dataclasses.replace(FLOW, flow=flow.FlowOptions(bound=10.0))
    with pytest.raises(ValueError, match=r"Expected the same inputs and parameters .*Received: changed \['decode'\]"):
        writer.convert(items[:1], {"class0": 0}, out, decode=other, workers=0)
    with pytest.raises(ValueError, match=r"changed \['decode'\]"):
        writer.convert(items[:1], {"class0": 0}, out, decode=video.DecodeOptions(size=(32, 32)), workers=0)


def test_a_single_frame_video_is_a_failure_for_flow(tmp_path):
    path = tmp_path / "one.mp4"
    synthetic.write_video(path, np.stack(translating(1)))
    summary = writer.convert([sources.VideoItem(str(path), "a", "one")], {"a": 0}, tmp_path / "out", decode=FLOW,
                             workers=0)
    assert summary.converted == 0
    assert summary.failures[0]["reason"] == "too short for flow: 1 frame decoded (flow needs 2)"


def test_motion_data_converted_to_flow_train_a_tiny_flow_p3d(tmp_path):
    classes = ("move_left", "move_right", "move_up", "move_down")
    synthetic.make_motion_dataset(tmp_path / "videos", splits={"train": 2}, frames=17, size=32, classes=classes)
    code = tfrecords_cli.main(["--log-level", "WARNING", "convert", "--layout", "folder", "--root",
                               str(tmp_path / "videos" / "train"), "--output", str(tmp_path / "flow"),
                               "--size", "32x32", "--modality", "flow", "--workers", "0", "--no-progress", "--strict"])
    assert code == 0
    assert json.loads((tmp_path / "flow" / "manifest.json").read_text())["totals"]["frames"] == 8 * 16
    spec = ModelSpec(depth=(1, 1, 1, 1), width=4, frames=16, size=32, modality="flow")
    history = training.train(spec, train=str(tmp_path / "flow"), out=str(tmp_path / "run"), epochs=1, batch_size=4,
                             seed=0, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    trained = read_model_folder(tmp_path / "run" / "last")
    assert trained.metadata.modality == "flow" and trained.metadata.normalization == "flow"
    assert trained.model.input_shape == (None, 16, 32, 32, 2)


def test_serving_records_store_flow_as_the_converter_does():
    from p3d_keras.jobs.export import encode_record

    xy = np.stack([flow.uint8_flow(a, b) for a, b in zip(translating(3), translating(3)[1:])])
    record = inspection_record(encode_record(xy))
    assert record[schema.MODALITY] == b"flow"
    for jpeg, stored in zip(record[schema.ENCODED], xy):
        decoded = tf.io.decode_jpeg(jpeg, channels=3).numpy()
        assert decoded[..., 2].max() <= 2 and np.abs(decoded[..., :2].astype(int) - stored).mean() < 2


def inspection_record(serialized):
    parsed, _ = schema.parse_record(tf.constant(serialized))
    return {key: value.numpy() for key, value in parsed.items()}


def test_without_opencv_contrib_the_converter_stops_before_any_video(flow_shards, tmp_path, monkeypatch, caplog):
    _, items, _ = flow_shards
    monkeypatch.setitem(sys.modules, "cv2", None)  # `import cv2` raises ImportError
    with pytest.raises(ImportError, match=r"Expected OpenCV with its contrib modules for TV-L1 flow: pip install "
                                          r"'p3d_keras\[flow\]'"):
        writer.convert(items[:1], {"class0": 0}, tmp_path / "out", decode=FLOW, workers=0)
    (tmp_path / "list.csv").write_text(f"{items[0].path},a\n")
    code = tfrecords_cli.main(["convert", "--layout", "csv", "--csv", str(tmp_path / "list.csv"), "--output",
                               str(tmp_path / "cli"), "--modality", "flow", "--workers", "0"])
    assert code == 2 and "p3d-tfrecords: Expected OpenCV with its contrib modules" in caplog.text
