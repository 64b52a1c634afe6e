"""Training-pipeline throughput against the JPEG-decode limit, measured in the same run.

Writes synthetic shards (smooth-noise 182x242 JPEGs, quality 90, the converter's default frame
size; `--unique-videos` distinct videos, repeated as records with their own ids up to `--videos`)
and their window indexes, then times one epoch of each, alternately in each round:
  - the limit: as many clips as the epoch has videos, as clip-length windows of the same
    videos held in memory, decoded whole by `tf.io.decode_jpeg` (unrolled, as the reader does) in
    a map with the same parallelism (AUTOTUNE) and prefetched; nothing else is done to them (no
    file reading, no batching: a batch of 16 whole 182x242 clips is 34 MB, which the default CPU
    allocator maps fresh and page-faults in every time, a cost of the limit's larger frames that
    made it look slower than the uint8 pipeline);
  - the uint8 pipeline, `training_dataset(output_dtype="uint8")`, what `p3d-train` uses (the
    model normalises on its device), reading whole records (`reads="records"`) and
    reading only each window's bytes (`reads="windows"`), decoding with the native clip decoder
    (`decoder="native"`, `clip_decoder`), and with `reads="windows"` also with TensorFlow's
    JPEG ops (`decoder="tf"`);
  - the float32 pipeline, `training_dataset(normalization=...)`, normalised on the CPU, with
    `reads="windows"` and the native decoder;
and prints Markdown tables: the rates in total and per core, each pipeline's ratio to the limit,
and the cores a GPU consuming N clips/s would need at the measured per-core rates (frames/s =
clips/s x clip_length).

Videos are `--frames 186` frames long by default, UCF101's mean (7.4 s at 25 fps; Kinetics clips
are 250-300): reading a whole record for one 16-frame window then reads ~12x the window's bytes,
which is what `reads="windows"` avoids. `--frames 20` shows the short-video case.

Each round is one epoch from a fresh iterator, so it pays what every epoch of training pays
once: with `reads="records"` the reader's shuffle buffer (`shuffle_buffer` windows, 512 by
default) is filled before its first batch (`reads="windows"` shuffles its in-memory index
instead), and parallelism is autotuned again. Three figures per row:
  - end to end: the epoch's clips over the epoch's time, start included;
  - steady: the clips between the first and the last `--steady-skip` clips of the epoch, over
    the time between them (reading, shuffling and decoding all under way; the limit is measured
    over the same clips);
  - first element: ms from the iterator's creation to its first element;
and the CPU time of the whole process per clip over the epoch (median of the rounds), the work a
clip costs whatever else shares the machine; its "vs limit" is the limit's CPU per clip over the
row's (with the cores saturated, as here, it is the clips/s ratio without the scheduling noise).
The end-to-end figure depends on the epoch's length (the start is a fixed cost); the default of
1536 videos of 186 frames is 3.6 GB of shards (`--videos 4096 --frames 20`, the previous default,
is 1 GB).

    TF_CPU_ALLOCATOR_USE_BFC=true python bench/pipeline_throughput.py --rounds 3
    git show REF:tfrecords_tools/reader.py > /tmp/baseline_reader.py  # a change to the reader against REF's
    # (REF from after the layout move: an older reader.py imports modules that have moved since)
    TF_CPU_ALLOCATOR_USE_BFC=true python bench/pipeline_throughput.py --rows "uint8 windows" --baseline-reader /tmp/baseline_reader.py
    TF_CPU_ALLOCATOR_USE_BFC=true python bench/pipeline_throughput.py --rounds 3 --frames 20 --videos 4096 --unique-videos 256 --steady-skip 768

Allocator: with TensorFlow's default CPU allocator every float32 batch (16 clips x 16 x 160 x 160
x 3 = 79 MB) is fresh memory from `mmap` (glibc maps anything over 32 MB), so filling it page-
faults ~19,000 pages: ~2 ms per clip, as much as the rest of the clip's work after decoding.
`TF_CPU_ALLOCATOR_USE_BFC=true` (read when TensorFlow starts) makes TensorFlow reuse its CPU memory;
with TensorFlow's JPEG ops it also sped up the uint8 pipeline (20 MB batches) by a few percent; with the native
decoder the uint8 pipeline measured the same with both allocators. The table's header says which
allocator ran.
"""
import argparse
import importlib.util
import math
import os
import pathlib
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf

from p3d_keras.tfrecords_tools import index
from p3d_keras.tfrecords_tools import reader
from p3d_keras.tfrecords_tools import schema

HEIGHT, WIDTH = 182, 242
ROWS = ("uint8 records", "uint8 windows", "uint8 windows tf", "float32 windows")
BASELINE = " baseline"  # the suffix of a row's name timed with --baseline-reader


def smooth_noise_frames(num_frames, rng):
    """`num_frames` uint8 frames of smooth noise: a drifting low-resolution noise field upsampled."""
    field = rng.uniform(0, 255, (num_frames + 8, 12, 16, 3)).astype("float32")
    field = tf.nn.avg_pool3d(field[None], [1, 8, 1, 1, 1], [1, 1, 1, 1, 1], "VALID")[0][:num_frames]
    frames = tf.image.resize(field, [HEIGHT, WIDTH], method="bicubic")
    frames += rng.normal(0, 6, frames.shape)  # texture, so the JPEGs are not trivially small
    return tf.cast(tf.clip_by_value(frames, 0, 255), tf.uint8)


def write_shards(directory, *, videos, frames, num_shards, unique_videos, seed=0):
    """Synthetic shards of `videos` records of `frames` frames, the frames of `unique_videos`
    distinct videos repeated (each record with its own media id); returns (paths, mean JPEG bytes)."""
    rng = np.random.default_rng(seed)
    paths = [str(directory / f"bench-{i:05d}-of-{num_shards:05d}.tfrecord") for i in range(num_shards)]
    writers = [tf.io.TFRecordWriter(p) for p in paths]
    distinct = [[tf.io.encode_jpeg(f, quality=90).numpy() for f in smooth_noise_frames(frames, rng)]
                for _ in range(min(unique_videos, videos))]
    for v in range(videos):
        record = schema.make_example(
            encoded_frames=distinct[v % len(distinct)], timestamps_us=[40_000 * i for i in range(frames)],
            height=HEIGHT, width=WIDTH, frame_rate=25.0, label_index=v % 10, label_string=f"c{v % 10}",
            media_id=f"v{v}")
        writers[v % num_shards].write(record)
    for w in writers:
        w.close()
    return paths, float(np.mean([len(e) for video in distinct for e in video]))


def decode_limit_dataset(paths, *, num_clips, clip_length, seed=0):
    """`num_clips` windows of `clip_length` consecutive frames of the shards' videos (one random
    window per video, cycling over the videos), held in memory, each decoded whole by
    `tf.io.decode_jpeg` in a parallel map (AUTOTUNE) and prefetched: the JPEG-decode work of the
    pipeline's clips with none of its other work."""
    rng = np.random.default_rng(seed)
    videos = [schema.parse_example(r)[schema.ENCODED].numpy() for r in tf.data.TFRecordDataset(paths)]
    windows = []
    for n in range(num_clips):
        frames = videos[n % len(videos)]
        start = rng.integers(0, max(len(frames) - clip_length, 0) + 1)
        windows.append([frames[(start + i) % len(frames)] for i in range(clip_length)])

    def decode(encoded):
        return tf.stack([tf.io.decode_jpeg(encoded[i], channels=3) for i in range(clip_length)])

    return (tf.data.Dataset.from_tensor_slices(tf.constant(windows, tf.string))
            .map(decode, num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE))


def load_module(path):
    """The Python module in the file `path` (`--baseline-reader`: another version of `reader.py`,
    importing the rest of the package as it is now, its relative imports too: it is loaded as a
    module of `p3d_keras.tfrecords_tools`). Raises `FileNotFoundError` without one."""
    spec = importlib.util.spec_from_file_location("p3d_keras.tfrecords_tools.baseline_reader", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def element_times(dataset):
    """Seconds from the iterator's creation to each element of `dataset`."""
    start = time.perf_counter()
    return [time.perf_counter() - start for _ in dataset]


def rates(times, clips_per_element, skip):
    """(end-to-end clips/s, steady clips/s, first element ms) of one epoch's `element_times`:
    steady counts the clips between the first and the last `skip` clips, over their time (NaN
    for `skip=None`)."""
    clips = [clips_per_element * (i + 1) for i in range(len(times))]
    steady = float("nan")
    if skip is not None:
        first = next(i for i, c in enumerate(clips) if c >= skip)
        last = next(i for i, c in enumerate(clips) if c >= clips[-1] - skip)
        steady = (clips[last] - clips[first]) / (times[last] - times[first])
    return clips[-1] / times[-1], steady, times[0] * 1e3


def measure(args, paths):
    """Per row (the limit, then the pipelines): the best of the rounds' (end-to-end, steady) clips/s and the
    median first-element ms and CPU ms per clip; one epoch per row in each round, rows alternately. The steady rate is
    NaN unless `--steady-skip` covers the shuffle buffer and leaves clips between the two ends."""
    def pipeline(module=reader, **output):
        return module.training_dataset(
            paths, batch_size=args.batch_size, clip_length=args.clip_length, crop_size=args.crop_size,
            multiscale=args.multiscale, shuffle_buffer=args.shuffle_buffer, drop_remainder=False, **output)

    rows = {
        "uint8 records": dict(output_dtype="uint8", reads="records", decoder="native"),
        "uint8 windows": dict(output_dtype="uint8", reads="windows", decoder="native"),
        "uint8 windows tf": dict(output_dtype="uint8", reads="windows", decoder="tf"),
        "float32 windows": dict(normalization=args.normalization, reads="windows", decoder="native"),
    }
    baseline = load_module(args.baseline_reader) if args.baseline_reader else None
    datasets = {"limit": (decode_limit_dataset(paths, num_clips=args.videos, clip_length=args.clip_length), 1)}
    for name in args.rows:
        datasets[name] = (pipeline(**rows[name]), args.batch_size)
        if baseline is not None:
            datasets[f"{name}{BASELINE}"] = (pipeline(baseline, **rows[name]), args.batch_size)
    skip = args.steady_skip if args.shuffle_buffer <= args.steady_skip < args.videos / 2 else None
    for dataset, _ in datasets.values():
        element_times(dataset.take(2))  # warm up: traces functions, fills the page cache
    measured = {name: [] for name in datasets}
    for _ in range(args.rounds):
        for name, (dataset, clips_per_element) in datasets.items():
            cpu = time.process_time()
            times = element_times(dataset)
            cpu_ms = (time.process_time() - cpu) * 1e3 / args.videos
            measured[name].append((*rates(times, clips_per_element, skip), cpu_ms))
    return {name: (max(r[0] for r in runs), max(r[1] for r in runs), float(np.median([r[2] for r in runs])),
                   float(np.median([r[3] for r in runs])))
            for name, runs in measured.items()}


def table(args, measured, jpeg_bytes, cores):
    """Markdown tables of `measure`'s rates."""
    limit_end, limit_steady, _, limit_cpu = measured["limit"]
    rows = {
        "limit": "JPEG-decode limit (`tf.io.decode_jpeg`, whole frames in memory, same parallelism, no batching)",
        "uint8 records": f"training pipeline, uint8 out, `reads='records'` ({args.normalization} on the device)",
        "uint8 windows": f"training pipeline, uint8 out, `reads='windows'` ({args.normalization} on the device)",
        "uint8 windows tf": "the same with `decoder='tf'` (TensorFlow's JPEG ops)",
        "float32 windows": f"training pipeline, float32 out, `reads='windows'` ({args.normalization} on the CPU)",
    }
    lines = [
        f"epoch of {args.videos} videos ({args.unique_videos} distinct) x {args.frames} frames, {HEIGHT}x{WIDTH} "
        f"JPEG q90 (mean {jpeg_bytes / 1024:.1f} KiB), clip {args.clip_length} x {args.crop_size}"
        f"{' multi-scale' if args.multiscale else ''}, batch {args.batch_size}, best of {args.rounds} epochs, "
        f"steady = all but the first and last {args.steady_skip} clips, {cores} cores, "
        f"{'BFC' if os.environ.get('TF_CPU_ALLOCATOR_USE_BFC', '').lower() in ('1', 'true') else 'default'} CPU allocator",
        "",
        "| | clips/s end to end | per core | vs limit | clips/s steady | vs limit | first element ms "
        "| CPU ms per clip | vs limit |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = {name: rows.get(name) or f"{rows[name.removesuffix(BASELINE)]}, the reader of {args.baseline_reader}"
            for name in measured}
    lines += [f"| {rows[name]} | {end:,.1f} | {end / cores:,.1f} | {end / limit_end:.0%} | "
              + ("n/a | n/a" if math.isnan(steady) else f"{steady:,.1f} | {steady / limit_steady:.0%}")
              + f" | {first:,.0f} | {cpu:.2f} | {limit_cpu / cpu:.0%} |"
              for name, (end, steady, first, cpu) in measured.items()]
    per_core = {name: end / cores for name, (end, _, _, _) in measured.items()}
    lines += [
        "",
        "| GPU consumes (clips/s) | " + " | ".join(f"cores needed, {name}" for name in rows if name != "limit")
        + " | at the decode limit |",
        "|---:|" + "---:|" * len(rows),
    ]
    names = [name for name in rows if name != "limit"] + ["limit"]
    lines += [f"| {n} | " + " | ".join(f"{n / per_core[name]:,.1f}" for name in names) + " |"
              for n in args.gpu_clips_per_s]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=1536, help="videos, so also clips per epoch (one epoch a round)")
    parser.add_argument("--unique-videos", type=int, default=64, help="distinct videos among them")
    parser.add_argument("--frames", type=int, default=186, help="frames per video (UCF101's mean: 186)")
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shuffle-buffer", type=int, default=512, help="the reader's shuffle_buffer (windows)")
    parser.add_argument("--steady-skip", type=int, default=512,
                        help="clips left out of the steady rate at each end of an epoch; the steady rate is "
                             "only reported when this is at least the shuffle buffer (so reading is under way) "
                             "and the epoch is longer than twice this")
    parser.add_argument("--clip-length", type=int, default=16)
    parser.add_argument("--crop-size", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--multiscale", action="store_true")
    parser.add_argument("--normalization", default="caffe", help="the float32 pipeline's preset")
    parser.add_argument("--gpu-clips-per-s", type=int, nargs="+", default=[200, 500])
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS),
                        help="the pipelines to time besides the limit (default: all)")
    parser.add_argument("--baseline-reader", help="another reader.py (the rest of the package as it is now) to time "
                                                  "each row with too, in the same rounds, as '<row> baseline': e.g. "
                                                  "`git show REF:tfrecords_tools/reader.py > FILE`")
    args = parser.parse_args(argv)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    with tempfile.TemporaryDirectory() as tmp:
        paths, jpeg_bytes = write_shards(pathlib.Path(tmp), videos=args.videos, frames=args.frames,
                                         num_shards=args.shards, unique_videos=args.unique_videos)
        for path in paths:
            index.write_index(path)
        measured = measure(args, paths)
    print(table(args, measured, jpeg_bytes, cores))
    return 0


if __name__ == "__main__":
    sys.exit(main())
