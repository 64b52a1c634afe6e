"""Video accuracy of a trained P3D in every portable form (ONNX, OpenVINO float32 / auto, LiteRT
float32 / float16 / int8-dynamic / int8) against Keras, on the held-out videos of a demo run.

    p3d-demo --out DIR                                   # trains the small P3D (16x64x64 clips)
    python bench/quantised_accuracy.py DIR [--json out.json]

Takes the demo's model folder `DIR/p3d/last` and its records `DIR/records/{train,test}`. Each form
is exported (`jobs.portable.export_portable`) and run (`load_portable`) on the same uint8 clips:
`--num-clips` windows per test video, centre crop, `--frame-stride` apart (both default to what
the demo's own evaluation used, from `DIR/summary.json`), as `reader.evaluation_dataset(...,
output_dtype="uint8")` gives them. `litert-int8` (full integer) is calibrated on
`--calibration-clips` training clips (`reader.training_dataset(..., output_dtype="uint8")`, random
windows, no flip): calibration never sees a test video.

Per form: video and clip accuracy (video scores are the mean of its clips' probabilities, as
`p3d-evaluate` scores them), top-1 agreement with Keras (videos and clips), the largest and the
mean absolute probability difference from Keras over all clips, and the file's size. The Keras row
is the network `uint8 -> Normalize -> network -> softmax` (`portable.portable_network`) itself.
Results are in bench/README.md (Quantised accuracy).
"""
import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

import numpy as np
from serving_throughput import RUNTIMES, export_size, note

from p3d_keras.jobs import metrics, models
from p3d_keras.jobs.model_folder import load_model
from p3d_keras.jobs.portable import FORMATS, PROBABILITIES, export_portable, load_portable, portable_network
from p3d_keras.tfrecords_tools import collection, reader

PORTABLE = [name for name, runtime in RUNTIMES.items() if runtime.kind in FORMATS and runtime.ops == "3d"]
DEMO_MODEL = os.path.join("p3d", "last")
DEMO_SUMMARY = "summary.json"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("demo", type=pathlib.Path, help="a p3d-demo output folder (p3d-demo --out DIR)")
    p.add_argument("--runtimes", default=",".join(PORTABLE), help=f"comma-separated, from {', '.join(PORTABLE)}")
    p.add_argument("--num-clips", type=int, help="windows per test video (default: the demo's eval_clips)")
    p.add_argument("--frame-stride", type=int, help="frames between a clip's frames (default: the demo's)")
    p.add_argument("--calibration-clips", type=int, default=100, help="training clips calibrating litert-int8")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--json", type=pathlib.Path, help="also write the rows as JSON here")
    args = p.parse_args(argv)
    args.runtimes = [v.strip() for v in args.runtimes.split(",") if v.strip()]
    bad = [v for v in args.runtimes if v not in PORTABLE]
    if bad or not args.runtimes:
        p.error(f"--runtimes: expected a comma-separated list from {', '.join(PORTABLE)}; got {bad or 'nothing'}")
    config = demo_config(args.demo)
    args.num_clips = args.num_clips or config.get("eval_clips", 1)
    args.frame_stride = args.frame_stride or config.get("frame_stride", 1)
    return args


def demo_config(folder):
    """The demo's `DemoConfig` as a dict (from its summary.json), or {} when there is none yet."""
    path = folder / DEMO_SUMMARY
    return json.loads(path.read_text(encoding="utf-8"))["config"] if path.is_file() else {}


def test_clips(loaded, records, args):
    """`(clips [N, T, S, S, C] uint8, labels [N], video_ids [N])` of the test records."""
    options = dict(models.clip_options(loaded.metadata, frame_stride=args.frame_stride), normalization=None)
    dataset = reader.evaluation_dataset(collection.shard_files(records), batch_size=args.batch_size,
                                        num_clips=args.num_clips, output_dtype="uint8", **options)
    parts = list(dataset.as_numpy_iterator())
    return tuple(np.concatenate([part[i] for part in parts]) for i in range(3))


def calibration_clips(loaded, records, args):
    """`args.calibration_clips` uint8 training clips `[N, T, S, S, C]` (random windows, no flip)."""
    options = dict(models.clip_options(loaded.metadata, frame_stride=args.frame_stride), normalization=None)
    dataset = reader.training_dataset(collection.shard_files(records), batch_size=1, output_dtype="uint8",
                                      flip=False, seed=0, drop_remainder=False, **options)
    clips = [clip for clip, _ in dataset.take(args.calibration_clips).as_numpy_iterator()]
    return np.concatenate(clips)


def batched(run, clips, batch_size):
    return np.concatenate([run(clips[i:i + batch_size]) for i in range(0, len(clips), batch_size)])


def score(probabilities, reference, labels, video_ids):
    """Accuracy of `probabilities [N, classes]` and its agreement with `reference` (Keras's)."""
    hits = metrics.clip_and_video_hits(probabilities, labels, video_ids, k=(1,))
    _, videos, _ = metrics.average_by_video(probabilities, labels, video_ids)
    _, reference_videos, _ = metrics.average_by_video(reference, labels, video_ids)
    drift = np.abs(probabilities.astype(np.float64) - reference)
    return dict(video_accuracy=hits["video_hit@1"], clip_accuracy=hits["clip_hit@1"],
                video_agreement=float(np.mean(videos.argmax(1) == reference_videos.argmax(1))),
                clip_agreement=float(np.mean(probabilities.argmax(1) == reference.argmax(1))),
                max_dp=float(drift.max()), mean_dp=float(drift.mean()))


def measure(args):
    loaded = load_model(args.demo / DEMO_MODEL)
    records = args.demo / "records"
    clips, labels, video_ids = test_clips(loaded, records / "test", args)
    note(f"{len(clips)} test clips of {len(np.unique(video_ids))} videos, {clips.shape[1:]} uint8")
    network = portable_network(loaded)
    reference = batched(lambda x: np.asarray(network.predict_on_batch(x)[PROBABILITIES]), clips, args.batch_size)
    rows = [dict(runtime="keras", precision="float32", **score(reference, reference, labels, video_ids))]
    calibration = calibration_clips(loaded, records / "train", args) if "litert-int8" in args.runtimes else None
    with tempfile.TemporaryDirectory() as folder:
        for name in args.runtimes:
            runtime = RUNTIMES[name]
            note(f"exporting and running {name} ...")
            path = pathlib.Path(folder) / f"{name}{FORMATS[runtime.kind].suffix}"
            start = time.perf_counter()
            export_portable(loaded, path, format=runtime.kind, precision=runtime.precision,
                            calibration=[calibration] if runtime.precision == "int8" else None,
                            calibration_steps=args.calibration_clips)
            runner = load_portable(path)
            probabilities = batched(lambda x: runner(x)[PROBABILITIES], clips, args.batch_size)
            rows.append(dict(runtime=name, precision=runtime.precision, size_mb=export_size(path),
                             seconds=time.perf_counter() - start,
                             **score(probabilities, reference, labels, video_ids)))
    return rows, dict(test_clips=len(clips), test_videos=len(np.unique(video_ids)),
                      calibration_clips=0 if calibration is None else len(calibration),
                      model=os.fspath(args.demo / DEMO_MODEL), params=loaded.model.count_params())


def table(rows):
    lines = ["| runtime | precision | video accuracy | clip accuracy | top-1 agreement, videos "
             "| top-1 agreement, clips | max abs dp | mean abs dp | MB on disk |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        size = f"{r['size_mb']:.2f}" if "size_mb" in r else "-"
        lines.append(f"| {r['runtime']} | {r['precision']} | {r['video_accuracy']:.1%} | {r['clip_accuracy']:.1%} "
                     f"| {r['video_agreement']:.1%} | {r['clip_agreement']:.1%} | {r['max_dp']:.1e} "
                     f"| {r['mean_dp']:.1e} | {size} |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    rows, info = measure(args)
    print(f"# {info['model']} ({info['params']:,} parameters): {info['test_videos']} test videos, "
          f"{args.num_clips} centre clip(s) each, frame stride {args.frame_stride}; litert-int8 calibrated on "
          f"{info['calibration_clips']} training clips")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(dict(info, config={k: str(v) for k, v in vars(args).items()}, rows=rows),
                                        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
