"""The schema's TF-free encoding: the bytes of TensorFlow's own deterministic serialisation."""
import numpy as np
import pytest
import tensorflow as tf

from p3d_keras.tfrecords_tools import schema

JPEGS = [tf.io.encode_jpeg(np.full((8, 10, 3), i * 20, np.uint8)).numpy() for i in range(3)]
CASES = {  # name: make_example's arguments
    "non-ASCII strings": dict(
        encoded_frames=JPEGS, timestamps_us=[0, 40_000, 80_000], height=8, width=10, frame_rate=25.0,
        label_index=7, label_string="jump ü", media_id="v_ü_1/日本", start_us=1_000_000),
    "empty strings and frames, 2-byte lengths, negative and extreme int64": dict(
        encoded_frames=[b"", b"\x00" * 200, b"\xff" * 20_000], timestamps_us=[-1, 2**63 - 1, -(2**63)],
        height=182, width=242, frame_rate=29.97, label_index=2**40, label_string="", media_id="",
        start_us=-5, end_us=2**62, image_format=""),
    "a 3 MB frame (4-byte length), float rounding": dict(
        encoded_frames=[bytes(range(256)) * 12_000], timestamps_us=[123_456_789], height=1, width=1,
        frame_rate=1 / 3, label_index=0, label_string="a", media_id="b"),
    "flow records": dict(
        encoded_frames=JPEGS[:2], timestamps_us=[0, 40_000], height=8, width=10, frame_rate=25.0, label_index=3,
        label_string="run", media_id="v", modality="flow"),
    "no frames": dict(
        encoded_frames=[], timestamps_us=[], height=1, width=1, frame_rate=0.0, label_index=1,
        label_string="x", media_id="y"),
}


def _tf_example(*, encoded_frames, timestamps_us, height, width, frame_rate, label_index, label_string,
                media_id, start_us=0, end_us=None, image_format="JPEG", modality="rgb"):
    """The same record built with TensorFlow's protos (the reference the encoding must match)."""
    int64 = lambda v: tf.train.Feature(int64_list=tf.train.Int64List(value=[v]))  # noqa: E731
    data = lambda v: tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))  # noqa: E731
    end_us = start_us + (timestamps_us[-1] if timestamps_us else 0) if end_us is None else end_us
    example = tf.train.SequenceExample(context=tf.train.Features(feature={
        schema.LABEL_INDEX: int64(label_index), schema.LABEL_STRING: data(label_string.encode()),
        schema.MEDIA_ID: data(media_id.encode()), schema.CLIP_START: int64(start_us),
        schema.CLIP_END: int64(end_us), schema.HEIGHT: int64(height), schema.WIDTH: int64(width),
        schema.FRAME_RATE: tf.train.Feature(float_list=tf.train.FloatList(value=[frame_rate])),
        schema.FORMAT: data(image_format.encode()), schema.MODALITY: data(modality.encode()),
    }))
    lists = example.feature_lists.feature_list
    lists[schema.ENCODED].feature.extend(data(f) for f in encoded_frames)
    lists[schema.TIMESTAMP].feature.extend(int64(t) for t in timestamps_us)
    return example


@pytest.mark.parametrize("name", sorted(CASES))
def test_bytes_equal_tensorflow_deterministic_serialisation(name):
    expected = _tf_example(**CASES[name]).SerializeToString(deterministic=True)
    assert schema.make_example(**CASES[name]) == expected


@pytest.mark.parametrize("name", sorted(CASES))
def test_streamed_parts_make_the_same_record(name):
    args = CASES[name]
    end_us = args.get("end_us", args.get("start_us", 0) + (args["timestamps_us"] or [0])[-1])
    context = schema.encode_context(
        height=args["height"], width=args["width"], frame_rate=args["frame_rate"],
        label_index=args["label_index"], label_string=args["label_string"], media_id=args["media_id"],
        start_us=args.get("start_us", 0), end_us=end_us, image_format=args.get("image_format", "JPEG"),
        modality=args.get("modality", "rgb"))
    frames = [schema.encode_frame(f) for f in args["encoded_frames"]]
    head, tail = schema.record_parts(context, sum(map(len, frames)), args["timestamps_us"])
    assert head + b"".join(frames) + tail == schema.make_example(**args)


def test_parse_round_trip_with_tensorflow():
    args = CASES["empty strings and frames, 2-byte lengths, negative and extreme int64"]
    parsed = schema.parse_example(tf.constant(schema.make_example(**args)))
    assert parsed[schema.LABEL_INDEX].numpy() == 2**40
    assert parsed[schema.LABEL_STRING].numpy() == b"" and parsed[schema.MEDIA_ID].numpy() == b""
    assert (parsed[schema.CLIP_START].numpy(), parsed[schema.CLIP_END].numpy()) == (-5, 2**62)
    assert (parsed[schema.HEIGHT].numpy(), parsed[schema.WIDTH].numpy()) == (182, 242)
    assert parsed[schema.FRAME_RATE].numpy() == np.float32(29.97)
    assert parsed[schema.FORMAT].numpy() == b""
    assert parsed[schema.TIMESTAMP].numpy().tolist() == [-1, 2**63 - 1, -(2**63)]
    assert [bytes(b) for b in parsed[schema.ENCODED].numpy()] == args["encoded_frames"]

    parsed = schema.parse_example(tf.constant(schema.make_example(**CASES["non-ASCII strings"])))
    assert parsed[schema.LABEL_STRING].numpy().decode() == "jump ü"
    assert parsed[schema.MEDIA_ID].numpy().decode() == "v_ü_1/日本"
    assert parsed[schema.CLIP_END].numpy() == 1_080_000  # start + last timestamp by default
    assert parsed[schema.FORMAT].numpy() == b"JPEG"
    assert [bytes(b) for b in parsed[schema.ENCODED].numpy()] == JPEGS


def test_tensorflow_parses_the_bytes_as_the_same_proto():
    args = CASES["non-ASCII strings"]
    parsed = tf.train.SequenceExample.FromString(schema.make_example(**args))
    assert parsed == _tf_example(**args)


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="same length. Received: 1 frames and 0 timestamps"):
        schema.make_example(encoded_frames=[b"x"], timestamps_us=[], height=1, width=1, frame_rate=1,
                            label_index=0, label_string="a", media_id="m")


def test_parse_record_names_the_first_missing_feature_without_failing():
    example = _tf_example(**CASES["non-ASCII strings"])
    del example.context.feature[schema.FRAME_RATE]
    example.context.feature[schema.WIDTH].int64_list.value.append(3)  # two values: not one
    parsed, missing = schema.parse_record(tf.constant(example.SerializeToString()))
    assert missing.numpy() == schema.WIDTH.encode() and parsed[schema.FRAME_RATE].numpy() == 0
    assert [bytes(b) for b in parsed[schema.ENCODED].numpy()] == JPEGS
    foreign = tf.train.Example(features=tf.train.Features(feature={
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[1]))})).SerializeToString()
    parsed, missing = schema.parse_record(tf.constant(foreign))
    assert missing.numpy() == schema.LABEL_INDEX.encode() and parsed[schema.ENCODED].shape == (0,)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"without one clip/label/index .* in record 7 of x"):
        schema.parse_example(tf.constant(foreign), tf.constant("record 7 of x"))
    garbage = b"\x0a\xff\xff\xff\xff\x0fnot a protocol buffer"
    with pytest.raises(tf.errors.InvalidArgumentError, match="example id: record 8 of x"):
        schema.parse_record(tf.constant(garbage), tf.constant("record 8 of x"))


def test_jpeg_size_reads_what_tensorflow_reads():
    images = [np.random.default_rng(0).integers(0, 255, (h, w, c), np.uint8) for h, w, c in
              [(8, 10, 3), (1, 1, 1), (300, 7, 3), (16, 4000, 1)]]
    jpegs = [tf.io.encode_jpeg(image, quality=q, progressive=p, chroma_downsampling=p).numpy()
             for image in images for q, p in ((95, False), (40, True))]
    jpegs.append(JPEGS[0][:2] + b"\xff\xfe\x00\x05abc" + JPEGS[0][2:])  # a comment segment first
    for jpeg in jpegs:
        assert schema.jpeg_size(jpeg) == tuple(tf.io.extract_jpeg_shape(jpeg).numpy()[:2].tolist())
    png = tf.io.encode_png(images[0]).numpy()
    for not_jpeg in (b"", b"\xff\xd8\xff", png, JPEGS[0][:20], b"\xff\xd8\xff\xd9", b"\xff\xd8\xff\xda\x00\x02"):
        assert schema.jpeg_size(not_jpeg) is None
