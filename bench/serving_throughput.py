"""CPU inference throughput (clips/s) of a P3D ResNet in every form p3d_keras serves it, in one run.

For each network (random weights, 400 classes) the script exports each form once, loads it, and
feeds the same uint8 clips `[batch, 16, 160, 160, 3]` to all of them; every form normalises inside
and outputs softmax probabilities:

* `keras`: the Keras model (TensorFlow backend) `uint8 -> Normalize -> network -> softmax`
  (`jobs.portable.portable_network`), called with `predict_on_batch`; the baseline of the ratios.
* `keras-2d`: the same over the 2D-ops form (`applications.as_2d_ops`); `onnx-2d`, `openvino-2d`
  (not run by default): the 2D-ops form exported to ONNX and OpenVINO.
* `saved_model`: the TF Serving export's `serving_default` (`jobs.export.export_saved_model`,
  with `resize_short_side` = the crop size, so its resize keeps the 160x160 frames).
* `onnx`, `openvino` (float32), `openvino-auto` (OpenVINO's default precision on this CPU),
  `litert` (float32), `litert-fp16`, `litert-int8-dynamic`, `litert-int8` (full integer, calibrated
  on `--calibration-clips` random clips): `jobs.portable.export_portable` / `load_portable`. LiteRT
  exports have batch 1: a batch runs clip by clip.

Timing: for each (network, batch) every form runs `--warmup` untimed calls, then timed calls in
interleaved rounds (one call of each form per round, so a change in the machine's load hits all
forms alike) until it has `--repeats` calls, or has spent `--budget` seconds after at least two
calls. clips/s is batch / median seconds per call. `max abs dp` and `max abs dlog p` are the
largest differences of a probability and of a log-probability (about the logit drift) from the
`keras` row's on the same clips: with random weights a check that the form computes the same
network, not an accuracy (`quantised_accuracy.py` measures that on a trained one).

    python bench/serving_throughput.py                                 # P3D-63 and P3D-199, batch 1 and 8
    python bench/serving_throughput.py --depths 63 --batches 1 --runtimes keras,onnx,openvino
    python bench/serving_throughput.py --quick                         # tiny network, every form

Results are in bench/README.md (Serving throughput).
"""
import argparse
import dataclasses
import gc
import json
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from p3d_keras.applications import as_2d_ops
from p3d_keras.jobs import export, models
from p3d_keras.jobs.portable import FORMATS, PROBABILITIES, export_portable, load_portable, portable_network


@dataclasses.dataclass(frozen=True)
class Runtime:
    """A served form: `kind` (keras, saved_model or a `portable.FORMATS` name) and `precision`."""
    name: str
    kind: str
    precision: str = "float32"
    ops: str = "3d"


RUNTIMES = {r.name: r for r in (
    Runtime("keras", "keras"),
    Runtime("keras-2d", "keras", ops="2d"),
    Runtime("saved_model", "saved_model"),
    Runtime("onnx", "onnx"),
    Runtime("onnx-2d", "onnx", ops="2d"),
    Runtime("openvino", "openvino"),
    Runtime("openvino-2d", "openvino", ops="2d"),
    Runtime("openvino-auto", "openvino", "auto"),
    Runtime("litert", "litert"),
    Runtime("litert-fp16", "litert", "float16"),
    Runtime("litert-int8-dynamic", "litert", "int8-dynamic"),
    Runtime("litert-int8", "litert", "int8"),
)}
BASELINE = "keras"
# litert-fp16: float16 weights, computed in float32 on CPUs; onnx-2d, openvino-2d: a question, not a form p3d-export
# writes (it exports the 3D form to ONNX and OpenVINO)
DEFAULT_RUNTIMES = [name for name in RUNTIMES if name not in ("litert-fp16", "onnx-2d", "openvino-2d")]
QUICK = dict(depths=["1,1,1,1"], width=8, size=32, classes=10, batches=[1, 2], repeats=3)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--depths", default="63,199", type=split_depths,
                   help="networks: 63, 131, 199, comma-separated (block tables separated by ';', e.g. '1,1,1,1')")
    p.add_argument("--batches", default="1,8", type=lambda s: [int(v) for v in s.split(",")])
    p.add_argument("--runtimes", default=",".join(DEFAULT_RUNTIMES),
                   help=f"comma-separated, from {', '.join(RUNTIMES)}")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=160)
    p.add_argument("--classes", type=int, default=400)
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per form and batch (the first compiles)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per form and batch (at most)")
    p.add_argument("--budget", type=float, default=20.0,
                   help="seconds of timed calls per form and batch after which it stops (after two calls)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                   help="intra-op threads of ONNX Runtime, OpenVINO and LiteRT (TensorFlow: its default)")
    p.add_argument("--calibration-clips", type=int, default=2, help="random clips calibrating litert-int8")
    p.add_argument("--quick", action="store_true", help="a (1,1,1,1)-block width-8 network at 16x32x32")
    p.add_argument("--json", type=pathlib.Path, help="also write the rows as JSON here")
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    args.runtimes = [v.strip() for v in args.runtimes.split(",") if v.strip()]
    bad = [v for v in args.runtimes if v not in RUNTIMES]
    if bad or not args.runtimes:
        p.error(f"--runtimes: expected a comma-separated list from {', '.join(RUNTIMES)}; got {bad or 'nothing'}")
    return args


def split_depths(text):
    """`"63,199"` -> `["63", "199"]`; block tables are separated by ';': `"1,1,1,1;63"`."""
    return [v.strip() for v in text.split(";" if ";" in text else ",") if v.strip()]


def note(text):
    print(f"# {text}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# The forms


def random_network(args, depth):
    """A `P3DModel` of a new P3DResNet (random weights, caffe normalisation, no class names)."""
    keras.utils.set_random_seed(0)
    spec = models.ModelSpec(depth=models.parse_depth(depth), width=args.width, frames=args.frames, size=args.size)
    return models.load(spec, classes=args.classes)


def keras_form(loaded, runtime):
    model = as_2d_ops(loaded.model) if runtime.ops == "2d" else loaded.model
    network = portable_network(dataclasses.replace(loaded, model=model))
    return lambda clips: np.asarray(network.predict_on_batch(clips)[PROBABILITIES])


def saved_model_form(loaded, folder):
    crop = loaded.metadata.crop_size
    path = export.export_saved_model(loaded.model, folder, normalization=loaded.metadata.normalization,
                                     resize_short_side=crop, warmup=False)
    served = tf.saved_model.load(path)
    serve = served.signatures[export.SERVING_SIGNATURE]

    def run(clips, served=served):  # holds the loaded object: its signatures need it alive
        return serve(**{export.INPUT_KEY: tf.constant(clips)})[PROBABILITIES].numpy()
    return run, export_size(path)


def portable_form(loaded, runtime, folder, args):
    if runtime.ops == "2d":  # LiteRT exports convert to the 2D-ops form anyway
        loaded = dataclasses.replace(loaded, model=as_2d_ops(loaded.model))
    path = pathlib.Path(folder) / f"{runtime.name}{FORMATS[runtime.kind].suffix}"
    calibration = None
    if runtime.precision == "int8":
        rng = np.random.default_rng(1)
        shape = (args.calibration_clips, *loaded.model.input_shape[1:])
        calibration = [rng.integers(0, 256, size=shape, dtype=np.uint8)]
    export_portable(loaded, path, format=runtime.kind, precision=runtime.precision, calibration=calibration,
                    calibration_steps=max(args.calibration_clips, 1))
    runner = load_portable(path, threads=args.threads)
    return (lambda clips: runner(clips)[PROBABILITIES]), export_size(path)


def export_size(path):
    """MB on disk of a file, or of the files beside an OpenVINO `.xml` / under a SavedModel folder."""
    path = pathlib.Path(path)
    files = [f for f in path.rglob("*") if f.is_file()] if path.is_dir() else [path, path.with_suffix(".bin")]
    return sum(f.stat().st_size for f in files if f.exists()) / 1e6


def build_forms(loaded, args, folder):
    """`{name: (run, export seconds, MB on disk)}` for the requested runtimes; a form that fails
    to export or load is reported with its error instead."""
    forms = {}
    for name in args.runtimes:
        runtime = RUNTIMES[name]
        note(f"exporting and loading {name} ...")
        start = time.perf_counter()
        try:
            if runtime.kind == "keras":
                run, size = keras_form(loaded, runtime), None
            elif runtime.kind == "saved_model":
                run, size = saved_model_form(loaded, folder)
            else:
                run, size = portable_form(loaded, runtime, folder, args)
        except Exception as error:  # a bench reports a failing runtime and measures the others
            forms[name] = dict(error=f"{type(error).__name__}: {str(error).splitlines()[0][:200]}")
            note(f"  {name} failed: {forms[name]['error']}")
            continue
        forms[name] = dict(run=run, export_s=time.perf_counter() - start, size_mb=size)
    return forms


# ----------------------------------------------------------------------------------------------
# Timing


def time_forms(forms, clips, args):
    """Warm up every form, then time them in interleaved rounds; `{name: result dict}`."""
    results = {}
    for name, form in forms.items():
        if "error" in form:
            results[name] = dict(error=form["error"])
            continue
        outputs = None
        try:
            for _ in range(max(args.warmup, 1)):
                outputs = form["run"](clips)
        except Exception as error:  # as in build_forms
            results[name] = dict(error=f"{type(error).__name__}: {str(error).splitlines()[0][:200]}")
            continue
        results[name] = dict(seconds=[], probabilities=np.asarray(outputs, np.float64))
    active = [name for name, r in results.items() if "error" not in r]
    while active:
        for name in list(active):
            start = time.perf_counter()
            forms[name]["run"](clips)
            seconds = results[name]["seconds"]
            seconds.append(time.perf_counter() - start)
            if len(seconds) >= args.repeats or (len(seconds) >= 2 and sum(seconds) >= args.budget):
                active.remove(name)
    return results


def drifts(probabilities, reference):
    """`max_dp` (largest probability difference) and `max_dlogp` (largest log-probability
    difference: the logit drift, which near-uniform probabilities of random weights hide) against
    `reference`; None without one."""
    if reference is None:
        return dict(max_dp=None, max_dlogp=None)
    logs = [np.log(np.maximum(p, 1e-30)) for p in (probabilities, reference)]
    return dict(max_dp=float(np.abs(probabilities - reference).max()),
                max_dlogp=float(np.abs(logs[0] - logs[1]).max()))


def measure(args):
    rows = []
    for depth in args.depths:
        loaded = random_network(args, depth)
        with tempfile.TemporaryDirectory() as folder:
            forms = build_forms(loaded, args, folder)
            for batch in args.batches:
                note(f"P3D depth={depth}, batch {batch}: timing {', '.join(forms)} ...")
                clips = np.random.default_rng(batch).integers(
                    0, 256, size=(batch, *loaded.model.input_shape[1:]), dtype=np.uint8)
                load_before = os.getloadavg()[0]
                results = time_forms(forms, clips, args)
                reference = results.get(BASELINE, {}).get("probabilities")
                for name, result in results.items():
                    row = dict(depth=depth, batch=batch, runtime=name, precision=RUNTIMES[name].precision,
                               load_average=(load_before, os.getloadavg()[0]))
                    if "error" in result:
                        rows.append(dict(row, error=result["error"]))
                        continue
                    median = statistics.median(result["seconds"])
                    drift = drifts(result["probabilities"], reference)
                    rows.append(dict(row, clips_s=batch / median, seconds=result["seconds"], **drift,
                                     export_s=forms[name]["export_s"], size_mb=forms[name]["size_mb"]))
                    note(f"  {name}: {batch / median:.2f} clips/s ({len(result['seconds'])} calls)")
            del forms
        del loaded
        keras.backend.clear_session()
        gc.collect()
    return rows


# ----------------------------------------------------------------------------------------------
# Report


def fmt(value, spec=".2f", suffix=""):
    return "-" if value is None else format(value, spec) + suffix


def table(rows):
    """Markdown table; ratios against the `keras` row of the same network and batch."""
    base = {(r["depth"], r["batch"]): r["clips_s"] for r in rows if r["runtime"] == BASELINE and "clips_s" in r}
    lines = ["| network | batch | runtime | precision | clips/s | vs keras | calls | max abs dp | max abs dlog p "
             "| export s | MB on disk |", "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        head = f"| P3D-{r['depth']} | {r['batch']} | {r['runtime']} | {r['precision']}"
        if "error" in r:
            lines.append(f"{head} | failed: {r['error']} | - | - | - | - | - | - |")
            continue
        ratio = base.get((r["depth"], r["batch"]))
        lines.append(f"{head} | {r['clips_s']:.2f} | {fmt(ratio and r['clips_s'] / ratio, '.2f', 'x')} "
                     f"| {len(r['seconds'])} | {fmt(r['max_dp'], '.1e')} | {fmt(r['max_dlogp'], '.1e')} "
                     f"| {r['export_s']:.1f} | {fmt(r['size_mb'], '.0f')} |")
    return "\n".join(lines)


def versions():
    import ai_edge_litert  # noqa: PLC0415 (optional extra: litert; only for the versions line)
    import onnxruntime  # noqa: PLC0415 (optional extra: onnx)
    import openvino  # noqa: PLC0415 (optional extra: openvino)

    return {"python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
            "onnxruntime": onnxruntime.__version__, "openvino": openvino.get_version(),
            "ai_edge_litert": getattr(ai_edge_litert, "__version__", "?"), "numpy": np.__version__}


def cpu_model():
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main(argv=None):
    args = parse_args(argv)
    print(f"# {cpu_model()}, {len(os.sched_getaffinity(0))} cores; {json.dumps(versions())}")
    print(f"# {args.frames}x{args.size}x{args.size} uint8 clips, {args.classes} classes, width {args.width}; "
          f"{args.warmup} warm-up, <= {args.repeats} timed calls or {args.budget:g} s per form; "
          f"{args.threads} threads; TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'unset')}")
    start = time.perf_counter()
    rows = measure(args)
    print(table(rows))
    print(f"# {time.perf_counter() - start:.0f} s in all; load average {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps(dict(config={k: str(v) for k, v in vars(args).items()}, rows=rows,
                                             versions=versions(), cpu=cpu_model()), indent=1))
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
