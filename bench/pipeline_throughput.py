"""Training-pipeline throughput against the JPEG-decode limit, measured in the same run.

Writes synthetic shards (smooth-noise 182x242 JPEGs, quality 90, the converter's default frame
size), then times, alternately in each round,
  - the limit: the same number of frames as the pipelines, as clip-length windows of the same
    shards held in memory, decoded whole by `tf.io.decode_jpeg` (unrolled, as the reader does) in
    a map with the same parallelism (AUTOTUNE) and prefetched; nothing else is done to them (no
    file reading, no batching: a batch of 16 whole 182x242 clips is 34 MB, which the default CPU
    allocator maps fresh and page-faults in every time, a cost of the limit's larger frames that
    made it look slower than the uint8 pipeline);
  - the uint8 pipeline: `training_dataset(output_dtype="uint8")` clips/s (frames/s = clips/s x
    clip_length), what `p3d-train` uses (the model normalises on its device); and
  - the float32 pipeline: `training_dataset(normalization=...)`, normalised on the CPU,
and prints Markdown tables: the rates in total and per core, each pipeline's ratio to the limit,
and the cores a GPU consuming N clips/s would need at the measured per-core rates.

One epoch of `--videos` videos is a fresh iterator (shuffle buffer filled again, parallelism
autotuned again), so the default epoch holds as many videos as the clips timed per round: a
bench of a few tens of videos mostly times epoch restarts, not the steady state of training.

    python bench/pipeline_throughput.py --videos 256 --frames 20 --clips 256 --rounds 3
    TF_CPU_ALLOCATOR_USE_BFC=true python bench/pipeline_throughput.py ...

Allocator: with TensorFlow's default CPU allocator every float32 batch (16 clips x 16 x 160 x 160
x 3 = 79 MB) is fresh memory from `mmap` (glibc maps anything over 32 MB), so filling it page-
faults ~19,000 pages: ~2 ms per clip, as much as the rest of the clip's work after decoding.
`TF_CPU_ALLOCATOR_USE_BFC=true` (read when TensorFlow starts) makes TensorFlow reuse its CPU memory;
it also speeds up the uint8 pipeline (20 MB batches) by a quarter. The table's header says which
allocator ran.
"""
import argparse
import os
import pathlib
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf

from p3d_keras.tfrecords_tools import reader
from p3d_keras.tfrecords_tools import schema

HEIGHT, WIDTH = 182, 242


def smooth_noise_frames(num_frames, rng):
    """`num_frames` uint8 frames of smooth noise: a drifting low-resolution noise field upsampled."""
    field = rng.uniform(0, 255, (num_frames + 8, 12, 16, 3)).astype("float32")
    field = tf.nn.avg_pool3d(field[None], [1, 8, 1, 1, 1], [1, 1, 1, 1, 1], "VALID")[0][:num_frames]
    frames = tf.image.resize(field, [HEIGHT, WIDTH], method="bicubic")
    frames += rng.normal(0, 6, frames.shape)  # texture, so the JPEGs are not trivially small
    return tf.cast(tf.clip_by_value(frames, 0, 255), tf.uint8)


def write_shards(directory, *, videos, frames, num_shards, seed=0):
    """Synthetic shards of `videos` videos of `frames` frames; returns (paths, mean JPEG bytes)."""
    rng = np.random.default_rng(seed)
    paths = [str(directory / f"bench-{i:05d}-of-{num_shards:05d}.tfrecord") for i in range(num_shards)]
    writers = [tf.io.TFRecordWriter(p) for p in paths]
    sizes = []
    for v in range(videos):
        encoded = [tf.io.encode_jpeg(f, quality=90).numpy() for f in smooth_noise_frames(frames, rng)]
        sizes += [len(e) for e in encoded]
        record = schema.make_example(
            encoded_frames=encoded, timestamps_us=[40_000 * i for i in range(frames)], height=HEIGHT,
            width=WIDTH, frame_rate=25.0, label_index=v % 10, label_string=f"c{v % 10}", media_id=f"v{v}")
        writers[v % num_shards].write(record)
    for w in writers:
        w.close()
    return paths, float(np.mean(sizes))


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


def seconds_to_consume(dataset):
    start = time.perf_counter()
    for _ in dataset:
        pass
    return time.perf_counter() - start


def measure(args, paths):
    """Best-of-rounds frames/s of the decode limit and of each pipeline (`ROWS` order), timed
    alternately within each round."""
    epochs = -(-args.clips // args.videos)
    batches = -(-args.clips // args.batch_size)
    frames = batches * args.batch_size * args.clip_length

    def pipeline(**output):
        return reader.training_dataset(
            paths, batch_size=args.batch_size, clip_length=args.clip_length, crop_size=args.crop_size,
            multiscale=args.multiscale, drop_remainder=False, **output).repeat(epochs).take(batches)

    datasets = {
        "limit": decode_limit_dataset(paths, num_clips=batches * args.batch_size, clip_length=args.clip_length),
        "uint8": pipeline(output_dtype="uint8"),
        "float32": pipeline(normalization=args.normalization),
    }
    for dataset in datasets.values():
        seconds_to_consume(dataset.take(2))  # warm up: traces functions, fills the shard cache
    best = dict.fromkeys(datasets, 0.0)
    for _ in range(args.rounds):
        for name, dataset in datasets.items():
            best[name] = max(best[name], frames / seconds_to_consume(dataset))
    return best


def table(args, frames_per_s, jpeg_bytes, cores):
    """Markdown tables of `measure`'s frames/s."""
    clips = {name: rate / args.clip_length for name, rate in frames_per_s.items()}
    limit = frames_per_s["limit"]
    rows = {
        "limit": "JPEG-decode limit (`tf.io.decode_jpeg`, whole frames in memory, same parallelism, no batching)",
        "uint8": f"training pipeline, uint8 out (`p3d-train`; {args.normalization} on the device)",
        "float32": f"training pipeline, float32 out ({args.normalization} on the CPU)",
    }
    lines = [
        f"{args.videos} videos x {args.frames} frames, {HEIGHT}x{WIDTH} JPEG q90 (mean {jpeg_bytes / 1024:.1f} KiB), "
        f"clip {args.clip_length} x {args.crop_size}{' multi-scale' if args.multiscale else ''}, "
        f"batch {args.batch_size}, {args.clips} clips, best of {args.rounds}, {cores} cores, "
        f"{'BFC' if os.environ.get('TF_CPU_ALLOCATOR_USE_BFC', '').lower() in ('1', 'true') else 'default'} CPU allocator",
        "",
        "| | frames/s | clips/s | clips/s per core | vs limit |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [f"| {rows[name]} | {rate:,.0f} | {clips[name]:,.1f} | {clips[name] / cores:,.1f} | {rate / limit:.0%} |"
              for name, rate in frames_per_s.items()]
    lines += [
        "",
        "| GPU consumes (clips/s) | cores needed, uint8 pipeline | float32 pipeline | at the decode limit |",
        "|---:|---:|---:|---:|",
    ]
    lines += [f"| {n} | {n / (clips['uint8'] / cores):,.1f} | {n / (clips['float32'] / cores):,.1f} | "
              f"{n / (clips['limit'] / cores):,.1f} |" for n in args.gpu_clips_per_s]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=256, help="videos, so also clips per epoch")
    parser.add_argument("--frames", type=int, default=20, help="frames per video")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--clips", type=int, default=256, help="clips timed per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clip-length", type=int, default=16)
    parser.add_argument("--crop-size", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--multiscale", action="store_true")
    parser.add_argument("--normalization", default="caffe", help="the float32 pipeline's preset")
    parser.add_argument("--gpu-clips-per-s", type=int, nargs="+", default=[200, 500])
    args = parser.parse_args(argv)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    with tempfile.TemporaryDirectory() as tmp:
        paths, jpeg_bytes = write_shards(pathlib.Path(tmp), videos=args.videos, frames=args.frames,
                                         num_shards=args.shards)
        frames_per_s = measure(args, paths)
    print(table(args, frames_per_s, jpeg_bytes, cores))
    return 0


if __name__ == "__main__":
    sys.exit(main())
