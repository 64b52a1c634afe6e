"""Evaluating a P3D ResNet on TFRecord shards, as in the paper (`evaluate`; the `p3d-evaluate`
program calls it).

Clip hit@1/5 and video hit@1/5 (a video's score is the mean of its clips' softmax scores),
per-class accuracy, a confusion matrix (JSON and PNG), a JSON report, and the per-video scores
(`fusion.SCORES`) that `p3d-fuse` fuses.
"""
import logging
import os

import keras

from p3d_keras.core.labels import read_label_file
from p3d_keras.jobs import fusion, metrics, models, reports
from p3d_keras.tfrecords_tools import collection

log = logging.getLogger(__name__)


def evaluate(spec, *, data, out=None, labels_file=None, num_clips=20, crops="center", batch_size=8, frame_stride=1,
             normalization=None, decoder="auto", clip_scores=False):
    """Evaluate the network of `spec` (`models.ModelSpec`) on the shards `data` with `num_clips`
    clips per video (`crops`: "center" or "three") and return the report: clip and video hit@1/5,
    per-class accuracy, the video-level confusion matrix. With `out`, also writes
    `out/report.json`, `out/confusion_matrix.png` (the PNG needs the [plots] extra) and
    `out/scores.npz`: each video's mean softmax scores (`fusion.Scores`; with `clip_scores`, each
    clip's too), what `p3d-fuse` fuses. A model returning logits is scored by their softmax.

    labels_file: a class-name file (default: a model folder's names, else `labels.txt` beside
        the shards, else class numbers; with a model folder it must agree with the folder's).
    frame_stride, normalization, decoder, batch_size: the reader's; normalization None means the
        preset's or the modality's default. Raises ValueError when the class names do not match
        the model, or for bad shards (naming them).
    """
    names = read_label_file(labels_file) if labels_file else collection.collection_labels(data)
    loaded = models.load(spec, classes=len(names) if names else None, normalization=normalization,
                         labels_file=labels_file)
    model = loaded.model
    classes = model.output_shape[-1]
    class_names = list(loaded.metadata.class_names or names or [str(i) for i in range(classes)])
    if len(class_names) != classes:
        raise ValueError(f"Expected {classes} class names (the model's classes). Received: {len(class_names)}")
    dataset = models.clip_dataset(loaded.metadata, data, num_clips=num_clips, crops=crops, batch_size=batch_size,
                                  frame_stride=frame_stride, decoder=decoder)
    scores, clip_labels, video_ids = metrics.predict_clips(model, dataset)
    if not models.outputs_probabilities(model):
        scores = keras.ops.convert_to_numpy(keras.ops.softmax(scores))
    report = metrics.evaluation_report(scores, clip_labels, video_ids, class_names)
    report.update(num_clips_per_video=num_clips, crops=crops, data=data)
    if out is not None:
        reports.write_report(out, report)
        fusion.write_scores(os.path.join(out, fusion.SCORES), fusion.Scores.from_clips(
            scores, clip_labels, video_ids, class_names, keep_clips=clip_scores, source=str(out)))
    return report
