"""Inference and training-step throughput (clips/s) of a P3D ResNet on each Keras backend.

The parent process spawns one child per (backend, dtype), because Keras picks its backend from
`KERAS_BACKEND` at import time. Each child builds the model, runs warm-up calls (the first one
traces and compiles; none are timed), then times `predict_on_batch` and `train_on_batch` (SGD,
sparse categorical cross-entropy) over several windows and reports the median clips/s, the
compile time (first call) and its peak RSS. The parent prints a Markdown table.

Backends: `tf` (TensorFlow as installed, `jit_compile=False`), `tf-onednn` (the same with
`TF_ENABLE_ONEDNN_OPTS=1`: TensorFlow turns its oneDNN CPU kernels on by default only on CPUs with
AVX-512 and newer; `tf` runs without the variable, whatever the calling shell set),
`tf-xla` (TensorFlow, `jit_compile=True`), `jax` (always XLA-compiled; runs on whatever device JAX
sees, GPU included).

    python bench/model_throughput.py                      # P3D-199, 2 x 16x160x160, tf,tf-onednn,tf-xla,jax
    python bench/model_throughput.py --quick              # tiny network, < 1 minute
    python bench/model_throughput.py --backends jax --dtype float32,mixed_bfloat16   # on a GPU
    python bench/model_throughput.py ... --input uint8   # uint8 clips, normalised in the model

`--input uint8` feeds uint8 clips to `uint8 -> p3d_keras.core.layers.Normalize("caffe") -> network`,
what `p3d-train` trains by default (the reader's `output_dtype="uint8"`): a quarter of the bytes
to copy to the device per step. `--input float32` (default) feeds normalised float32 clips.
"""
import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time

# Forward GFLOPs of one 16x160x160 clip through P3D-199 (width 64); training ~ 3x forward.
P3D199_CLIP_GFLOPS = 36.8
TRAIN_FLOPS_FACTOR = 3
BACKENDS = {  # name -> (KERAS_BACKEND, jit_compile, extra environment)
    "tf": ("tensorflow", False, {}),
    "tf-onednn": ("tensorflow", False, {"TF_ENABLE_ONEDNN_OPTS": "1"}),
    "tf-xla": ("tensorflow", True, {}),
    "jax": ("jax", True, {}),
}
BASELINE = "tf"
DTYPES = ("float32", "bfloat16", "float16", "mixed_bfloat16", "mixed_float16")
QUICK = dict(depth="1,1,1,1", width=8, size=32, frames=16, batch=2, classes=10, steps=2, warmup=1, windows=3)
ERROR_TAIL_LINES = 6


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--depth", default="199", help="63, 131, 199, or four block counts, e.g. 1,1,1,1")
    p.add_argument("--width", type=int, default=64, help="res2 bottleneck width (64 in the paper)")
    p.add_argument("--batch", type=int, default=2, help="clips per step")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=160, help="frame height and width")
    p.add_argument("--classes", type=int, default=400)
    p.add_argument("--steps", type=int, default=2, help="timed steps per window")
    p.add_argument("--windows", type=int, default=3, help="timed windows; clips/s is their median")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls before timing (the first compiles)")
    p.add_argument("--backends", default="tf,tf-onednn,tf-xla,jax", help=f"comma-separated, from {', '.join(BACKENDS)}")
    p.add_argument("--dtype", default="float32",
                   help=f"Keras dtype policy, or several comma-separated; from {', '.join(DTYPES)}")
    p.add_argument("--input", choices=("float32", "uint8"), default="float32",
                   help="clip dtype fed to the model: float32, or uint8 normalised in the model (as p3d-train)")
    p.add_argument("--quick", action="store_true", help="tiny network and few steps (validation run)")
    p.add_argument("--timeout", type=float, default=None, help="seconds allowed per child")
    p.add_argument("--json", type=pathlib.Path, help="also write the results as JSON here")
    p.add_argument("--child", choices=tuple(BACKENDS), help=argparse.SUPPRESS)
    p.add_argument("--child-out", type=pathlib.Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    args.backends = split_choices(p, "backends", args.backends, BACKENDS)
    args.dtype = split_choices(p, "dtype", args.dtype, DTYPES)
    return args


def split_choices(parser, name, text, choices):
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in choices]
    if bad or not values:
        parser.error(f"--{name}: expected a comma-separated list from {', '.join(choices)}; got {text!r}")
    return values


def parse_depth(text):
    parts = [int(v) for v in str(text).split(",")]
    return parts[0] if len(parts) == 1 else tuple(parts)


def clip_gflops(args):
    """Forward GFLOPs per clip, scaled from P3D-199 at 16x160x160; None for other networks."""
    if parse_depth(args.depth) != 199 or args.width != 64:
        return None
    return P3D199_CLIP_GFLOPS * (args.size / 160) ** 2 * args.frames / 16


# ----------------------------------------------------------------------------- child


def time_calls(fn, batch, warmup, steps, windows):
    """Runs `fn` `warmup` times untimed, then `windows` windows of `steps` calls.

    Returns (seconds of the first call, i.e. trace + compile; median clips/s over the windows;
    clips/s of every window)."""
    start = time.perf_counter()
    fn()
    compile_s = time.perf_counter() - start
    for _ in range(warmup - 1):
        fn()
    rates = []
    for _ in range(windows):
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        rates.append(batch * steps / (time.perf_counter() - start))
    return compile_s, statistics.median(rates), rates


def device_name(backend):
    if backend == "jax":
        import jax  # noqa: PLC0415 (only importable with the JAX backend installed)

        dev = jax.devices()[0]
        kind = getattr(dev, "device_kind", dev.platform)
        return dev.platform if kind == dev.platform else f"{dev.platform} ({kind})"
    import tensorflow as tf  # noqa: PLC0415

    gpus = tf.config.list_physical_devices("GPU")
    return "gpu" if gpus else "cpu"


def build_model(args, jit_compile):
    import keras  # noqa: PLC0415 (KERAS_BACKEND must be set first)

    from p3d_keras.applications import P3DResNet  # noqa: PLC0415

    model = P3DResNet(parse_depth(args.depth), width=args.width, classes=args.classes,
                      input_shape=(args.frames, args.size, args.size, 3))
    if args.input == "uint8":
        from p3d_keras.jobs.training import with_input_normalization  # noqa: PLC0415

        model = with_input_normalization(model, "caffe")
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=1e-3, momentum=0.9),
                  loss="sparse_categorical_crossentropy", jit_compile=jit_compile)
    return model


def run_child(args):
    """Measures one backend and one dtype; returns a JSON-able dict."""
    import keras  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    backend, jit_compile, _ = BACKENDS[args.child]
    assert keras.backend.backend() == backend, keras.backend.backend()
    keras.mixed_precision.set_global_policy(args.dtype[0])
    start = time.perf_counter()
    model = build_model(args, jit_compile)
    build_s = time.perf_counter() - start
    rng = np.random.default_rng(0)
    shape = (args.batch, args.frames, args.size, args.size, 3)
    if args.input == "uint8":
        x = rng.integers(0, 256, size=shape, dtype=np.uint8)
    else:
        x = rng.standard_normal(shape, dtype=np.float32)
    y = rng.integers(0, args.classes, size=(args.batch,))
    timing = dict(batch=args.batch, warmup=args.warmup, steps=args.steps, windows=args.windows)
    infer = time_calls(lambda: model.predict_on_batch(x), **timing)
    train = time_calls(lambda: model.train_on_batch(x, y), **timing)
    return dict(
        device=device_name(backend), params=model.count_params(), build_s=build_s,
        infer_compile_s=infer[0], infer_clips_s=infer[1], infer_windows=infer[2],
        train_compile_s=train[0], train_clips_s=train[1], train_windows=train[2],
        peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )


# ----------------------------------------------------------------------------- parent


def child_command(args, backend, dtype, out):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", backend, "--child-out", str(out),
           "--dtype", dtype, "--backends", backend]
    for key in ("depth", "width", "batch", "frames", "size", "classes", "steps", "windows", "warmup", "input"):
        cmd += [f"--{key}", str(getattr(args, key))]
    return cmd


def run_backend(args, backend, dtype):
    """Runs one child; returns its result, or a dict with `error` if it failed."""
    keras_backend, _, extra_env = BACKENDS[backend]
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    env.update(KERAS_BACKEND=keras_backend, TF_CPP_MIN_LOG_LEVEL="2", **extra_env)
    row = dict(backend=backend, dtype=dtype)
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "result.json"
        start = time.perf_counter()
        try:
            proc = subprocess.run(child_command(args, backend, dtype, out), env=env, capture_output=True,
                                  text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            return dict(row, error=f"timed out after {args.timeout:g} s")
        row["wall_s"] = time.perf_counter() - start
        if proc.returncode or not out.exists():
            tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()][-ERROR_TAIL_LINES:]
            return dict(row, error=f"exit {proc.returncode}: " + " | ".join(tail))
        return dict(row, **json.loads(out.read_text()))


def fmt(value, spec=".2f", suffix=""):
    return "-" if value is None else format(value, spec) + suffix


def table(rows, gflops):
    """Markdown table of the rows; ratios are against the `tf` row of the same dtype."""
    baselines = {r["dtype"]: r for r in rows if r["backend"] == BASELINE and "error" not in r}
    lines = ["| backend | dtype | device | inference clips/s | train clips/s | inference vs tf | train vs tf "
             "| inference GFLOP/s | train GFLOP/s | compile s (infer / train) | peak RSS GiB |",
             "|" + "---|" * 11]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['backend']} | {r['dtype']} | - | failed: {r['error']} |" + " - |" * 7)
            continue
        base = baselines.get(r["dtype"])
        ratio = {k: base and r[k] / base[k] for k in ("infer_clips_s", "train_clips_s")}
        flops = {k: gflops and r[k] * gflops * f for k, f in (("infer_clips_s", 1),
                                                              ("train_clips_s", TRAIN_FLOPS_FACTOR))}
        lines.append(
            f"| {r['backend']} | {r['dtype']} | {r['device']} | {fmt(r['infer_clips_s'])} "
            f"| {fmt(r['train_clips_s'])} | {fmt(ratio['infer_clips_s'], '.2f', 'x')} "
            f"| {fmt(ratio['train_clips_s'], '.2f', 'x')} | {fmt(flops['infer_clips_s'], '.1f')} "
            f"| {fmt(flops['train_clips_s'], '.1f')} | {r['infer_compile_s']:.1f} / {r['train_compile_s']:.1f} "
            f"| {r['peak_rss_mib'] / 1024:.1f} |")
    return "\n".join(lines)


def run_parent(args):
    gflops = clip_gflops(args)
    print(f"# P3D depth={args.depth} width={args.width}, batch {args.batch} x {args.frames}x{args.size}x"
          f"{args.size} {args.input}; {args.warmup} warm-up, {args.windows} windows x {args.steps} steps; "
          f"forward GFLOPs/clip: {fmt(gflops, '.1f')}", flush=True)
    rows = []
    for dtype in args.dtype:
        for backend in args.backends:
            print(f"# running {backend} ({dtype}) ...", file=sys.stderr, flush=True)
            rows.append(run_backend(args, backend, dtype))
            print(f"#   {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
    print(table(rows, gflops))
    if args.json:
        args.json.write_text(json.dumps(dict(config=vars_for_json(args), gflops_per_clip=gflops, rows=rows),
                                        indent=2))
    return 0 if all("error" not in r for r in rows) else 1


def vars_for_json(args):
    return {k: (str(v) if isinstance(v, pathlib.Path) else v) for k, v in vars(args).items()
            if not k.startswith("child")}


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        args.child_out.write_text(json.dumps(run_child(args)))
        return 0
    return run_parent(args)


if __name__ == "__main__":
    sys.exit(main())
