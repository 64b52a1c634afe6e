"""`make demo`: the whole job on a synthetic motion dataset that only time can solve.

1. render textured objects moving left/right/up/down, rotating cw/ccw, approaching/receding
   (random appearance and start, every frame distributed alike across classes) as mp4 files;
2. convert them to TFRecords (`tfrecords_tools.writer.convert`, what `p3d-tfrecords convert` runs);
3. train a small P3D (reduced stage table, width 16, 16x64x64 clips, AdamW) and the same network
   without its temporal convolutions (a 2D control, blind to the direction of time) with
   `training.train` (`p3d-train`);
4. evaluate both on held-out videos (`evaluation.evaluate`: video accuracy, and per direction pair);
5. export the P3D as a SavedModel (`export.export_saved_model`) and classify a held-out video through it;
6. draw a picture of that video's frames with the prediction;
7. label a long video of eight motions in a row window by window (`jobs.video_inference`) and draw
   the predicted segments against the true ones (`jobs.timeline`).

`run_demo` does it all; the `p3d-demo` program (`make demo`) prints its summary.
"""
import dataclasses
import json
import logging
import os

import numpy as np

from p3d_keras.applications import top_classes
from p3d_keras.core.labels import read_label_file
from p3d_keras.jobs import evaluation, export, model_folder, predict, synthetic, timeline, training, video_inference
from p3d_keras.jobs.models import ModelSpec, parse_depth
from p3d_keras.jobs.video_inference import video_frames
from p3d_keras.tfrecords_tools import collection, sources, video, writer

log = logging.getLogger(__name__)

# Opposite directions: a network blind to time order cannot tell the two classes of a pair apart.
PAIRS = (("move_left", "move_right"), ("move_up", "move_down"), ("rotate_cw", "rotate_ccw"),
         ("approach", "recede"))


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    train_per_class: int = 250
    test_per_class: int = 25
    frames: int = 48  # per video; a clip is 16 frames 2 apart, so windows start at 17 offsets
    size: int = 64
    depth: str = "1,1,1,1"
    width: int = 16
    frame_stride: int = 2
    epochs: int = 7
    batch_size: int = 8
    optimizer: str = "adamw"  # from scratch, AdamW needs far fewer steps than SGD here
    lr: float = 0.003
    eval_clips: int = 3
    seed: int = 0


FAST = DemoConfig(train_per_class=3, test_per_class=2, frames=32, width=8, epochs=1, batch_size=4, eval_clips=1)


def pair_accuracy(report, pair):
    """Direction accuracy within an opposite pair (chance 50 %): of the pair's videos predicted as
    either class of the pair, the share predicted as the right one (from an evaluation report)."""
    names = report["classes"]
    idx = [names.index(c) for c in pair]
    within = np.asarray(report["confusion_matrix"])[idx][:, idx]
    return float(within.trace() / max(within.sum(), 1))


def train_and_evaluate(records, out, cfg, temporal):
    """Train then evaluate one network; returns (its last model's path, the evaluation report)."""
    name = "p3d" if temporal else "control_2d"
    spec = ModelSpec(depth=parse_depth(cfg.depth), width=cfg.width, frames=16, size=cfg.size, dropout=0.2,
                     temporal=temporal)
    history = training.train(spec, train=os.path.join(records, "train"), out=os.path.join(out, name),
                             epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, optimizer=cfg.optimizer,
                             schedule="cosine", partial_bn=False, flip=False, weight_decay=1e-4, seed=cfg.seed,
                             verbose=2, frame_stride=cfg.frame_stride)
    if not history.history:
        raise RuntimeError(f"training {name} ran no epoch")
    model_path = os.path.join(out, name, training.LAST)  # a model folder
    report = evaluation.evaluate(ModelSpec(model=model_path), data=os.path.join(records, "test"),
                                 out=os.path.join(out, name, "evaluation"), num_clips=cfg.eval_clips,
                                 frame_stride=cfg.frame_stride)
    return model_path, report


def convert(videos, records, split):
    """Convert one split's folder-per-class tree to 2 shards of 64x64 frames."""
    items, label_map = sources.list_videos("folder", os.path.join(videos, split))
    summary = writer.convert(items, label_map, os.path.join(records, split), decode=video.DecodeOptions(size=(64, 64)),
                             num_shards=2, prefix=split)
    if summary.failed:
        raise RuntimeError(f"{summary.failed} videos of the {split} split failed to convert: see "
                           f"{os.path.join(records, split, collection.FAILURES)}")


def draw_prediction(frames, title, path, shown=8):
    """A strip of `shown` frames of a video with a caption, as PNG."""
    from PIL import Image, ImageDraw  # noqa: PLC0415

    picks = np.linspace(0, len(frames) - 1, shown).round().astype(int)
    h, w = frames.shape[1:3]
    scale = 2
    sheet = Image.new("RGB", (shown * w * scale + (shown + 1) * 4, h * scale + 34), "white")
    for i, f in enumerate(picks):
        tile = Image.fromarray(frames[f]).resize((w * scale, h * scale), Image.NEAREST)
        sheet.paste(tile, (4 + i * (w * scale + 4), 30))
    ImageDraw.Draw(sheet).text((6, 8), title, fill="black")
    sheet.save(path)
    return path


# The long video: one segment per class, in an order where each class follows a different one.
LONG_VIDEO_CLASSES = ("move_left", "rotate_cw", "move_up", "approach", "move_right", "rotate_ccw", "move_down",
                      "recede")
LONG_SEGMENT_FRAMES = 100  # 4 s at 25 fps: most windows (32 frames) lie inside one motion
LONG_STRIDE = 8  # frames between window starts on the long video


def make_long_video(path, cfg, classes=LONG_VIDEO_CLASSES, segment_frames=LONG_SEGMENT_FRAMES, fps=25):
    """Write one video of several motion segments in a row (a new object each time) and return
    the true segments as `[(start seconds, end seconds, class), ...]`."""
    rng = np.random.default_rng([cfg.seed, 1])
    clips = [synthetic.render_clip(cls, rng, frames=segment_frames, size=cfg.size) for cls in classes]
    synthetic.write_video(path, np.concatenate(clips), fps=fps)
    return [(i * segment_frames / fps, (i + 1) * segment_frames / fps, cls) for i, cls in enumerate(classes)]


def label_long_video(model_path, out, cfg):
    """Run the trained P3D along the long video: its windows (the training clips' 32 frames, every
    `LONG_STRIDE` frames), the predicted segments against the true ones, the share of windows whose
    top class is the true class at the window's middle, and a timeline picture."""
    path = os.path.join(out, "long_video.mp4")
    truth = make_long_video(path, cfg)
    inference = video_inference.VideoInference(model_folder.load_model(model_path), batch_size=cfg.batch_size)
    result = inference.run(path, window=16 * cfg.frame_stride, stride=LONG_STRIDE)
    names = inference.metadata.class_names
    top = result.outputs["probabilities"].argmax(axis=1)
    middles = result.times.mean(axis=1)
    true_at = [next(cls for start, end, cls in truth if start <= t < end) for t in middles]
    accuracy = float(np.mean([names[i] == cls for i, cls in zip(top, true_at)]))
    predicted = [(s.start, s.end, s.label) for s in timeline.segments(result.times, result.outputs["probabilities"],
                                                                       names)]
    shown = timeline.thumbnails(path, timeline.thumbnail_times(np.asarray(truth)[:, :2].astype(float), len(truth)))
    picture = timeline.draw_timeline(os.path.join(out, "timeline.png"), result.times,
                                     result.outputs["probabilities"], names, thumbnails=shown, true_segments=truth,
                                     top=len(names), title="the demo's P3D along a video of 8 motions in a row")
    return {"video": path, "windows": len(top), "window_accuracy": accuracy, "true_segments": truth,
            "predicted_segments": predicted, "picture": picture}


def run_demo(out, cfg=DemoConfig()):
    """Run every step; returns the summary dict (also written to `out/summary.json`)."""
    videos, records = os.path.join(out, "videos"), os.path.join(out, "records")
    log.info("1/6 rendering the synthetic motion dataset into %s", videos)
    synthetic.make_motion_dataset(videos, splits={"train": cfg.train_per_class, "test": cfg.test_per_class},
                                  frames=cfg.frames, size=cfg.size, seed=cfg.seed, workers=None)
    log.info("2/6 converting to TFRecords")
    for split in ("train", "test"):
        convert(videos, records, split)
    log.info("3/6 training the P3D and the 2D control")
    p3d_path, p3d = train_and_evaluate(records, out, cfg, temporal=True)
    _, control = train_and_evaluate(records, out, cfg, temporal=False)
    log.info("4/6 exporting the P3D as a SavedModel")
    saved = export.export_model(ModelSpec(model=p3d_path), base_dir=os.path.join(out, "serving"), name="p3d_motion",
                                warmup=False)  # the model folder's class names and normalisation
    labels = collection.collection_labels(os.path.join(records, "train"))
    log.info("5/6 classifying a held-out video through the SavedModel")
    sample = os.path.join(videos, "test", synthetic.CLASSES[1], f"{synthetic.CLASSES[1]}_0000.mp4")
    top = top_classes(predict.predict_video(sample, saved_model=saved).mean, labels, 3)
    frames = np.stack([frame.pixels for frame in video_frames(sample, None)])  # a short clip: all of it
    picture = draw_prediction(frames, f"{os.path.basename(sample)}: predicted {top[0][1]} ({top[0][2]:.0%})",
                              os.path.join(out, "prediction.png"))
    log.info("6/6 labelling a long video of several motions in a row, window by window")
    long_video = label_long_video(p3d_path, out, cfg)
    summary = {
        "config": dataclasses.asdict(cfg),
        "p3d": {"video_accuracy": p3d["video_hit@1"], "pairs": {"/".join(p): pair_accuracy(p3d, p) for p in PAIRS}},
        "control_2d": {"video_accuracy": control["video_hit@1"],
                       "pairs": {"/".join(p): pair_accuracy(control, p) for p in PAIRS}},
        "test_videos": p3d["num_videos"], "saved_model": saved, "sample": sample, "sample_top3": top,
        "picture": picture, "long_video": long_video,
    }
    with open(os.path.join(out, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    return summary


def format_summary(summary):
    """The table `make demo` prints."""
    lines = [f"held-out videos: {summary['test_videos']}",
             f"{'':28}{'P3D':>8}{'2D control':>12}   (pairs: direction accuracy, chance 50 %)",
             f"{'video accuracy (8 classes)':28}{summary['p3d']['video_accuracy']:8.1%}"
             f"{summary['control_2d']['video_accuracy']:12.1%}"]
    for pair in summary["p3d"]["pairs"]:
        p3d, control = summary["p3d"]["pairs"][pair], summary["control_2d"]["pairs"][pair]
        lines.append(f"{'  ' + pair:28}{p3d:8.1%}{control:12.1%}")
    index, label, p = summary["sample_top3"][0]
    lines.append(f"SavedModel {summary['saved_model']} classifies {os.path.basename(summary['sample'])} "
                 f"as {label} ({p:.1%}); picture: {summary['picture']}")
    long_video = summary["long_video"]
    lines.append(f"long video {long_video['video']} ({len(long_video['true_segments'])} motions in a row): "
                 f"{long_video['window_accuracy']:.1%} of {long_video['windows']} windows right; "
                 f"timeline: {long_video['picture']}")
    lines.append(f"  {'true':>24}   predicted")
    for start, end, cls in long_video["true_segments"]:
        found = [f"{label} {max(s, start):.1f}-{min(e, end):.1f}s" for s, e, label in long_video["predicted_segments"]
                 if s < end and e > start]
        lines.append(f"  {cls:>12} {start:4.1f}-{end:4.1f}s   {', '.join(found)}")
    return "\n".join(lines)
