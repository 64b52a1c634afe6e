"""Clip features (pool5, 2048-d for the full networks) and their per-video average, the paper's
video representation, and the `p3d-extract-features` program."""
import argparse
import logging

import keras
import numpy as np

from p3d_keras.cli import common

log = logging.getLogger(__name__)


FEATURE_LAYER = "pool5"


def feature_model(model):
    """`model` up to its pooled clip descriptor (`pool5`: 2048-d for the full networks), sharing
    its weights."""
    if FEATURE_LAYER not in [layer.name for layer in model.layers]:
        raise ValueError(f"Expected a P3D ResNet with a pooled output (include_top=True, or pooling='avg'). "
                         f"Received: model={model.name!r} without a {FEATURE_LAYER!r} layer")
    return keras.Model(model.inputs, model.get_layer(FEATURE_LAYER).output, name=f"{model.name}_features")


def extract_features(model, dataset):
    """Features of every clip of an `evaluation_dataset` and their per-video mean: a dict with
    `clip_features [N, D]`, `clip_labels`, `clip_video_ids`, `video_features [V, D]`,
    `video_labels`, `video_ids`."""
    from p3d_keras.jobs import metrics  # noqa: PLC0415

    features, labels, video_ids = metrics.predict_clips(feature_model(model), dataset)
    videos, video_features, video_labels = metrics.average_by_video(features, labels, video_ids, name="features")
    return dict(clip_features=features.astype("float32"), clip_labels=labels, clip_video_ids=_text(video_ids),
                video_features=video_features.astype("float32"), video_labels=video_labels, video_ids=_text(videos))


def _text(ids):
    """Video ids as a unicode array (the reader yields UTF-8 bytes)."""
    return np.array([i.decode("utf-8") if isinstance(i, bytes) else str(i) for i in ids])


def build_parser():
    p = argparse.ArgumentParser(prog="p3d-extract-features", description="pool5 features per clip and averaged "
                                "per video (the paper's video representation) into an .npz file.")
    p.add_argument("--data", required=True, help="shards: a p3d-tfrecords output folder or a glob")
    p.add_argument("--out", required=True, help="output .npz file")
    p.add_argument("--num-clips", type=common.positive_int, default=20, help="clips per video (default 20)")
    p.add_argument("--batch-size", type=common.positive_int, default=8)
    p.add_argument("--frame-stride", type=common.positive_int, default=1)
    p.add_argument("--normalization", help="input normalisation (default: caffe, or the preset's)")
    common.add_decoder_argument(p)
    common.add_model_arguments(p)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    common.setup_logging()
    try:
        model = common.model_from_args(args, **({} if args.model else dict(include_top=False, pooling="avg")))
        if not args.out.endswith(".npz"):
            raise ValueError(f"--out must end in .npz. Received: --out={args.out!r}")
        from p3d_keras.jobs.evaluation import clip_dataset_for  # noqa: PLC0415

        result = extract_features(model, clip_dataset_for(model, args, args.num_clips))
    except (OSError, ValueError) as e:
        log.error("p3d-extract-features: %s", e)
        return 2
    np.savez(args.out, **result)
    log.info("%d clips, %d videos, %d-d features -> %s", len(result["clip_labels"]), len(result["video_ids"]),
             result["video_features"].shape[1], args.out)
    return 0
