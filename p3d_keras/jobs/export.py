"""Export a P3D ResNet classifier as a SavedModel for TF Serving (`export_saved_model`, and
`export_model` from a `ModelSpec`, which the `p3d-export` program calls).

The export lives under `<base_dir>/<name>/<version>/`, the layout TF Serving watches. It is a plain
TensorFlow graph (no Keras or p3d_keras objects are needed to load it) with three signatures. Two
take `frames`: uint8 `[batch, T, H, W, C]` with any `T >= T_model` and any frame size.

* `serving_default` returns `probabilities` `[B, classes]` float32, `top_k_indices` `[B, k]` int32,
  `top_k_labels` `[B, k]` string and `top_k_scores` `[B, k]` float32.
* `features` returns `features` `[B, D]` float32, the pool5 clip descriptor of the same weights.
* `serving_encoded` takes `records`: `[B]` strings, each a serialised SequenceExample of the
  converter's format (`tfrecords_tools.schema`: one JPEG per frame in `image/encoded`; no context
  feature is needed), and returns what `serving_default` returns. A record may have any number of
  frames (a short one loops) of any size; records of different sizes may share a batch.

Preprocessing runs inside the graph, in this order:

1. temporal sampling: the centre window of `T_model` frames (`T_model = model.input_shape[1]`),
   the evaluation reader's one clip per video (`tfrecords_tools.sampling.evaluation_indices`:
   starting at `(T - T_model + 1) // 2`); fewer than `T_model` frames fail with an
   `InvalidArgumentError` "Expected at least 16 frames ..." (`serving_encoded`: the window loops
   over a short record, and only its frames are decoded, whole, with TensorFlow's JPEG decoder);
2. resize keeping the aspect ratio so the short side is `resize_short_side` (bilinear, no
   antialiasing; the long side is `round(long * short_side / short)`, rounding half to even);
3. centre crop to the model's `H x W`, starting at `(resized - crop) // 2` on each axis;
4. cast to float32 and `p3d_keras.core.normalization.normalize` with the chosen preset.

Bad input: the input signature refuses another dtype, rank or channel count (a `TypeError` or
`ValueError` from a loaded function, `INVALID_ARGUMENT` "Expected ... uint8 ... [?,?,?,?,3]" from
TF Serving). `serving_encoded` raises an `InvalidArgumentError` naming the record ("record 1 of the
request") for bytes that are not a protocol buffer or a record without frames, and naming the frame
too for a frame of the window that is not a JPEG, not of the window's size or not decodable
(`tfrecords_tools.clips.centre_clip`); one bad request fails alone, the model serves the next.

`assets.extra/tf_serving_warmup_requests` holds one `PredictionLog` per signature (TFRecord), so the
server traces and warms the three graphs before it reports the model as available.
"""
import dataclasses
import json
import logging
import os
import pathlib
import shutil

import numpy as np
import tensorflow as tf

from p3d_keras.core.protowire import group_fields, length_delimited, payload
from p3d_keras.jobs import model_folder, models
from p3d_keras.jobs.clip_input import default_resize_short_side, make_preprocess, make_record_preprocess
from p3d_keras.tfrecords_tools import flow, schema

log = logging.getLogger(__name__)

SERVING_SIGNATURE = "serving_default"
FEATURES_SIGNATURE = "features"
ENCODED_SIGNATURE = "serving_encoded"
INPUT_KEY = "frames"
ENCODED_INPUT_KEY = "records"  # serving_encoded's input
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
METADATA_ASSET = os.path.join("assets.extra", model_folder.METADATA_FILE)  # the model's metadata, as a folder has it
DEFAULT_TOP_K = 5  # or every class, for a model with fewer

# Protobuf field numbers of the TF Serving messages the warmup file holds, from
# github.com/tensorflow/serving, tensorflow_serving/apis/:
#   prediction_log.proto  PredictionLog { PredictLog predict_log = 6; }
#                         PredictLog { PredictRequest request = 1; }
#   predict.proto         PredictRequest { ModelSpec model_spec = 1; map<string, TensorProto> inputs = 2; }
#   model.proto           ModelSpec { string name = 1; string signature_name = 3; }
# A map entry is a message { key = 1; value = 2; }. tensorflow_serving.apis is not a dependency:
# the messages are written (and read back) with p3d_keras.core.protowire by the functions below.
PREDICTION_LOG_PREDICT_LOG = 6
PREDICT_LOG_REQUEST = 1
PREDICT_REQUEST_MODEL_SPEC, PREDICT_REQUEST_INPUTS = 1, 2
MODEL_SPEC_NAME, MODEL_SPEC_SIGNATURE_NAME = 1, 3
MAP_ENTRY_KEY, MAP_ENTRY_VALUE = 1, 2


# ----------------------------------------------------------------------------------------------
# The serving graph


def build_serving_module(model, *, labels, normalization, resize_short_side, top_k):
    """A `tf.Module` holding the model's variables and the three serving functions."""
    channels = model.input_shape[-1]
    spec = tf.TensorSpec([None, None, None, None, channels], tf.uint8, name=INPUT_KEY)
    records_spec = tf.TensorSpec([None], tf.string, name=ENCODED_INPUT_KEY)
    preprocess = make_preprocess(model, normalization, resize_short_side)
    preprocess_records = make_record_preprocess(model, normalization, resize_short_side)
    features_model = models.feature_model(model)
    softmax_done = models.outputs_probabilities(model)
    labels = tf.constant(list(labels), dtype=tf.string)

    def classify(inputs):
        outputs = tf.cast(model(inputs, training=False), tf.float32)
        probabilities = outputs if softmax_done else tf.nn.softmax(outputs, axis=-1)
        scores, indices = tf.math.top_k(probabilities, k=top_k)
        return {
            "probabilities": probabilities,
            "top_k_indices": tf.cast(indices, tf.int32),
            "top_k_labels": tf.gather(labels, indices),
            "top_k_scores": scores,
        }

    @tf.function(input_signature=[spec])
    def serve(frames):
        return classify(preprocess(frames))

    @tf.function(input_signature=[records_spec])
    def serve_encoded(records):
        return classify(preprocess_records(records))

    @tf.function(input_signature=[spec])
    def features(frames):
        return {"features": tf.cast(features_model(preprocess(frames), training=False), tf.float32)}

    module = tf.Module(name="p3d_serving")
    module.model_variables = [getattr(v, "value", v) for v in model.variables]  # the tf.Variables
    module.serve, module.serve_encoded, module.features = serve, serve_encoded, features
    return module


# ----------------------------------------------------------------------------------------------
# Warmup requests: PredictionLog protos in the protobuf wire format


def encode_predict_request(model_name, signature_name, inputs):
    """A serialized `PredictRequest` for `inputs` (name -> array): what a gRPC client sends."""
    model_spec = (length_delimited(MODEL_SPEC_NAME, model_name)
                  + length_delimited(MODEL_SPEC_SIGNATURE_NAME, signature_name))
    request = length_delimited(PREDICT_REQUEST_MODEL_SPEC, model_spec)
    for key, value in inputs.items():
        tensor = tf.make_tensor_proto(value).SerializeToString()
        entry = length_delimited(MAP_ENTRY_KEY, key) + length_delimited(MAP_ENTRY_VALUE, tensor)
        request += length_delimited(PREDICT_REQUEST_INPUTS, entry)
    return request


def encode_prediction_log(model_name, signature_name, inputs):
    """A serialized `PredictionLog` holding one `PredictRequest` for `inputs` (name -> array)."""
    request = encode_predict_request(model_name, signature_name, inputs)
    return length_delimited(PREDICTION_LOG_PREDICT_LOG, length_delimited(PREDICT_LOG_REQUEST, request))


def _only(fields, number):
    """The payloads (bytes) of the length-delimited field `number`, in order."""
    return [bytes(payload(wire, value)) for wire, value in fields.get(number, [])]


def decode_prediction_log(serialized):
    """`(model_name, signature_name, inputs)` of a serialized `PredictionLog` with a predict_log."""
    logs = _only(group_fields(serialized), PREDICTION_LOG_PREDICT_LOG)
    if len(logs) != 1:
        raise ValueError("Expected a PredictionLog with one predict_log. "
                         f"Received: {len(logs)} predict_log fields")
    request = group_fields(_only(group_fields(logs[0]), PREDICT_LOG_REQUEST)[0])
    spec = group_fields(b"".join(_only(request, PREDICT_REQUEST_MODEL_SPEC)))
    name = b"".join(_only(spec, MODEL_SPEC_NAME)).decode("utf-8")
    signature = b"".join(_only(spec, MODEL_SPEC_SIGNATURE_NAME)).decode("utf-8")
    inputs = {}
    for entry in _only(request, PREDICT_REQUEST_INPUTS):
        entry = group_fields(entry)
        proto = tf.make_tensor_proto(0)  # any TensorProto, overwritten by the parse
        proto.ParseFromString(_only(entry, MAP_ENTRY_VALUE)[0])
        inputs[_only(entry, MAP_ENTRY_KEY)[0].decode("utf-8")] = tf.make_ndarray(proto)
    return name, signature, inputs


def encode_record(frames, quality=90):
    """A serialised record of the converter's format (`tfrecords_tools.schema`) holding the uint8
    `frames[T, H, W, C]` as JPEGs of `quality` (two flow channels as the converter stores them: the
    first two of three): a `serving_encoded` request's record. The context a converter writes
    (label, frame rate) is filled with placeholders: serving reads none of it."""
    frames = np.asarray(frames)
    is_flow = frames.shape[-1] == 2
    if is_flow:  # full-resolution chroma, as `flow.encode_jpeg`
        frames = flow.stored_frame(frames)
    jpegs = [tf.io.encode_jpeg(frame, quality=quality, chroma_downsampling=not is_flow).numpy() for frame in frames]
    return schema.make_example(encoded_frames=jpegs, timestamps_us=list(range(len(jpegs))), height=frames.shape[1],
                               width=frames.shape[2], frame_rate=0.0, label_index=-1, label_string="",
                               media_id="request", modality="flow" if is_flow else "rgb")


def warmup_inputs(frames):
    """`{signature: inputs}` of the warmup requests: uint8 `frames[1, T, H, W, 3]` to the two frame
    signatures, and the same frames as one JPEG record to `serving_encoded`."""
    return {SERVING_SIGNATURE: {INPUT_KEY: frames}, FEATURES_SIGNATURE: {INPUT_KEY: frames},
            ENCODED_SIGNATURE: {ENCODED_INPUT_KEY: np.array([encode_record(frames[0])], dtype=object)}}


def write_warmup_requests(export_dir, model_name, frames):
    """Write `assets.extra/tf_serving_warmup_requests`: one request per signature (`warmup_inputs`)."""
    path = os.path.join(export_dir, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for signature, inputs in warmup_inputs(frames).items():
            writer.write(encode_prediction_log(model_name, signature, inputs))
    return path


def read_warmup_requests(path):
    """The `(model_name, signature_name, inputs)` of each request in a warmup file."""
    return [decode_prediction_log(record.numpy()) for record in tf.data.TFRecordDataset(os.fspath(path))]


# ----------------------------------------------------------------------------------------------
# Export


def next_version(model_dir):
    """One more than the largest integer-named directory in `model_dir` (1 if there is none)."""
    versions = [int(p.name) for p in pathlib.Path(model_dir).glob("*") if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def new_version_dir(base_dir, name, version):
    """`(final, staging)`: the directory `<base_dir>/<name>/<version>` of a new version (`version`
    None: `next_version`), which must not exist yet (ValueError), and an empty staging directory
    path beside it. An export is written to `staging` and renamed to `final`, so that a watching
    server (TF Serving, OpenVINO Model Server, Triton) never sees half an export."""
    model_dir = pathlib.Path(base_dir) / name
    version = next_version(model_dir) if version is None else version
    if not isinstance(version, int) or version < 0:
        raise ValueError(f"Expected a non-negative integer version. Received: version={version!r}")
    final = model_dir / str(version)
    if final.exists():
        raise ValueError(f"Expected a new version directory. Received: version={version} ({final} exists)")
    staging = model_dir / f".tmp-{version}"
    shutil.rmtree(staging, ignore_errors=True)
    return final, staging


def resolve_labels(labels, classes):
    if labels is None:
        return [str(i) for i in range(classes)]
    labels = [str(label) for label in labels]
    if len(labels) != classes:
        raise ValueError(f"Expected one label per class ({classes}). Received: len(labels)={len(labels)}")
    return labels


def check_export_args(model, resize_short_side, top_k, classes):
    height, width = model.input_shape[2:4]
    if not isinstance(resize_short_side, int) or resize_short_side < max(height, width):
        raise ValueError(f"Expected resize_short_side to be an integer of at least the crop size "
                         f"{max(height, width)}. Received: resize_short_side={resize_short_side!r}")
    if not isinstance(top_k, int) or not 1 <= top_k <= classes:
        raise ValueError(f"Expected top_k between 1 and the number of classes ({classes}). "
                         f"Received: top_k={top_k!r}")


def export_saved_model(model, base_dir, *, name="p3d", version=None, labels=None, normalization="caffe",
                       resize_short_side=None, top_k=None, warmup=True, metadata=None):
    """Export a P3D ResNet classifier as a TF Serving SavedModel under `<base_dir>/<name>/<version>/`.

    Args:
        model: a P3D ResNet built with `include_top=True` (softmax or logits output).
        base_dir: the model base path TF Serving is pointed at (`--model_base_path` is
            `<base_dir>/<name>`).
        name: model name: the directory under `base_dir` and the name in the warmup requests.
        version: integer version directory; `None` takes the next integer after the existing ones.
            An existing version is never overwritten.
        labels: class names, one per class; default `"0"` .. `"classes - 1"`.
        normalization: a preset name of `p3d_keras.core.normalization` (`caffe`, `imagenet`, `unit`,
            `flow`): how the weights were trained.
        resize_short_side: short side before the centre crop; default `round(crop * 182 / 160)`,
            the paper's 182x242 -> 160x160 ratio (182 for a 160 px model).
        top_k: how many top classes the serving signature returns; default `min(5, classes)`.
        warmup: write `assets.extra/tf_serving_warmup_requests`.
        metadata: a `model_folder.ModelMetadata` to write as `METADATA_ASSET` (`assets.extra/`),
            with the export's own normalisation, resize rule and class names.

    Returns:
        The path of the version directory.
    """
    classes = model.output_shape[-1]
    labels = resolve_labels(labels, classes)
    height, width = model.input_shape[2:4]
    if resize_short_side is None:
        resize_short_side = default_resize_short_side(max(height, width))
    if top_k is None:
        top_k = min(DEFAULT_TOP_K, classes)
    check_export_args(model, resize_short_side, top_k, classes)
    final, staging = new_version_dir(base_dir, name, version)
    module = build_serving_module(model, labels=labels, normalization=normalization,
                                  resize_short_side=resize_short_side, top_k=top_k)
    signatures = {SERVING_SIGNATURE: module.serve.get_concrete_function(),
                  FEATURES_SIGNATURE: module.features.get_concrete_function(),
                  ENCODED_SIGNATURE: module.serve_encoded.get_concrete_function()}
    tf.saved_model.save(module, os.fspath(staging), signatures=signatures)
    if warmup:
        frames = np.zeros((1, *model.input_shape[1:]), dtype="uint8")
        write_warmup_requests(os.fspath(staging), name, frames)
    if metadata is not None:
        exported = dataclasses.replace(metadata, normalization=normalization, resize_short_side=resize_short_side,
                                       class_names=tuple(labels))
        (staging / METADATA_ASSET).parent.mkdir(exist_ok=True)
        (staging / METADATA_ASSET).write_text(json.dumps(exported.to_json(), indent=1), encoding="utf-8")
    os.rename(staging, final)
    log.info("exported %s (%d classes, %s normalization, short side %d, top %d)",
             final, classes, normalization, resize_short_side, top_k)
    return os.fspath(final)


# ----------------------------------------------------------------------------------------------
# p3d-export


def export_model(spec, *, base_dir, classes=None, labels_file=None, normalization=None, resize_short_side=None,
                 **options):
    """Load the network of `spec` (`models.load`: a model folder's metadata decides; else a new or
    saved network with `classes`) and export it with `export_saved_model(..., **options)`, its
    metadata carried into the SavedModel (`METADATA_ASSET`).

    labels_file: a class-name file (default: the folder's or the preset's class names, else class
    numbers). normalization, resize_short_side: default the folder's, else the preset's (or the
    modality's default) and the paper's ratio; contradicting a model folder raises."""
    loaded = models.load(spec, classes=classes, normalization=normalization, labels_file=labels_file,
                         resize_short_side=resize_short_side)
    meta = loaded.metadata
    return export_saved_model(loaded.model, base_dir, labels=meta.class_names, normalization=meta.normalization,
                              resize_short_side=meta.resize_short_side, metadata=meta, **options)
