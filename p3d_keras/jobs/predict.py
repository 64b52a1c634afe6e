"""Classify a video file with a P3D ResNet (a `ModelSpec`: saved model, preset, weights) or an
exported SavedModel (`predict_video`; the `p3d-predict` program calls it)."""
import re

import keras
import numpy as np
import tensorflow as tf

from p3d_keras.applications import top_classes
from p3d_keras.core.labels import read_label_file
from p3d_keras.jobs import models
from p3d_keras.jobs.clip_input import default_resize_short_side, make_preprocess
from p3d_keras.tfrecords_tools import sampling, video


def read_video(path, max_frames=None):
    """All frames of a video file as uint8 RGB `[T, H, W, 3]`, upright as displayed (a phone
    video's rotation applied, as the converter does: `tfrecords_tools.video.upright_image`).
    Raises ValueError naming `path` for a file that is not a readable video."""
    decode = video.DecodeOptions(max_frames=max_frames)
    try:
        frames = [np.asarray(video.upright_image(frame)) for _, frame in video.iter_frames(path, decode)]
    except video.VideoError as error:
        raise ValueError(f"Expected a video file that PyAV can decode. Received: {path!r}: {error}") from error
    if not frames:
        raise ValueError(f"Expected a video with at least one frame. Received: {path!r} with none")
    return np.stack(frames)


def video_probabilities(frames, model, *, normalization="caffe", num_clips=5, resize_short_side=None):
    """Mean class probabilities of a Keras classifier over `num_clips` windows of uint8 `frames`,
    placed as in evaluation (one window: the centre one; short videos loop), each resized,
    centre-cropped and normalised exactly as the exported SavedModel does."""
    clip_length, size = model.input_shape[1], model.input_shape[2]
    preprocess = make_preprocess(model, normalization, resize_short_side or default_resize_short_side(size))
    clips = frames[sampling.evaluation_indices(len(frames), clip_length, 1, num_clips).numpy()]
    outputs = keras.ops.convert_to_numpy(model(np.asarray(preprocess(clips)), training=False))
    if not models.outputs_probabilities(model):
        outputs = keras.ops.convert_to_numpy(keras.ops.softmax(outputs))
    return outputs.mean(axis=0)


def saved_model_probabilities(frames, saved_model_dir):
    """Class probabilities and labels from an exported SavedModel's `serving_default`; raises
    ValueError when there are fewer frames than the model's clip length (its graph asserts it)."""
    serving = tf.saved_model.load(saved_model_dir).signatures["serving_default"]
    try:
        out = serving(frames=tf.constant(frames[None]))
    except tf.errors.InvalidArgumentError as e:
        needed = re.search(r"Expected at least (\d+) frames", e.message)  # clip_input.make_preprocess's assertion
        if needed is None:
            raise
        raise ValueError(f"Expected at least {needed[1]} frames for the SavedModel {saved_model_dir!r} (its "
                         f"clip length). Received: {len(frames)} frames") from e
    return out["probabilities"].numpy()[0], [b.decode("utf-8") for b in out["top_k_labels"].numpy()[0]]


def predict_video(path, *, spec=None, saved_model=None, labels_file=None, normalization=None, classes=None, num_clips=5,
                  max_frames=None, top=5):
    """The `top` classes of the video file `path` as `(index, label, probability)`, best first:
    mean probabilities over `num_clips` windows of a Keras network (`spec`, a `models.ModelSpec`,
    with `classes`; a model folder's normalisation, resize rule and class names decide, else the
    preset's), or the centre window through an exported SavedModel version folder (`saved_model`).
    Give one of the two. labels_file: a class-name file (default: the folder's or the preset's
    names; numbers without any; contradicting a folder's raises). Raises ValueError naming `path` for a
    video that cannot be read or is too short for the SavedModel."""
    if (spec is None) == (saved_model is None):
        raise ValueError("Expected exactly one of spec (a Keras network) and saved_model. Received: "
                         f"spec={spec!r}, saved_model={saved_model!r}")
    frames = read_video(path, max_frames)
    if saved_model:
        try:
            probabilities, _ = saved_model_probabilities(frames, saved_model)
        except ValueError as e:
            raise ValueError(f"{path!r}: {e}") from e
        names = read_label_file(labels_file) if labels_file else None
    else:
        loaded = models.load(spec, classes=classes, normalization=normalization, labels_file=labels_file)
        meta = loaded.metadata
        names = meta.class_names
        probabilities = video_probabilities(frames, loaded.model, normalization=meta.normalization,
                                            num_clips=num_clips, resize_short_side=meta.resize_short_side)
    return top_classes(probabilities, names, top)
