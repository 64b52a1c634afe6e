"""Export a P3D ResNet classifier for ONNX Runtime, OpenVINO and LiteRT (`export_portable`), and run
such an export without Keras (`load_portable`).

Every format holds the same graph (`portable_network`):

* input `frames`: uint8 clips `[batch, T, H, W, C]`, RGB (or the two flow channels), with T, H, W,
  C fixed to the network's clip: these runtimes plan memory and pick kernels for static shapes, so
  a clip is sampled, resized (short side `resize_short_side`) and centre-cropped *before* it is
  handed over. The batch is free for ONNX and OpenVINO, and 1 for LiteRT (mobile delegates want
  fully static shapes; `PortableRunner` runs a larger batch clip by clip).
* the normalisation of the model's metadata inside (`p3d_keras.core.layers.Normalize`, unless the
  network already starts with one);
* outputs `probabilities` `[batch, classes]` float32 (softmax, added for a network returning
  logits) and, with `features=True`, `features` `[batch, D]` float32 (pool5).

Each file carries the contract (`portable_contract`: the model metadata, class names, clip length,
crop size, resize rule, normalisation done inside, channel order, input and outputs, format and
precision) as JSON under the key `p3d_contract` in its own metadata: ONNX `metadata_props`,
OpenVINO `rt_info`, LiteRT flatbuffer metadata.

Precision (`precision=`, the first is the default):

* onnx: `float32`.
* openvino: `float32` (weights saved in float32, `INFERENCE_PRECISION_HINT=f32` when loaded) or
  `auto` (OpenVINO's defaults: float16 weights, the device's own inference precision, e.g. bf16 on
  CPUs with AMX or AVX512-BF16; not within 1e-4 of Keras).
* litert: `float32`, `float16` (float16 weights), `int8-dynamic` (int8 weights, dynamic-range
  activations) or `int8` (full integer: weights and activations, calibrated on `calibration`
  clips). Builtin operators only (no Select TF ops, which phones' runtimes do not ship).

Runtimes are optional extras: `pip install p3d_keras[onnx]` (onnxruntime, and tf2onnx to export),
`[openvino]`, `[litert]` (ai-edge-litert).
"""
import dataclasses
import json
import logging
import os
import pathlib
import re

import keras
import numpy as np
import tensorflow as tf

from p3d_keras.applications import as_2d_ops
from p3d_keras.core.checks import check_choice, expect
from p3d_keras.core.layers import Normalize
from p3d_keras.jobs import export, models, video_inference
from p3d_keras.jobs.model_folder import ModelMetadata, P3DModel
from p3d_keras.tfrecords_tools import collection, reader
from p3d_keras.version import __version__

log = logging.getLogger(__name__)

INPUT_NAME = export.INPUT_KEY
PROBABILITIES = video_inference.PROBABILITIES  # the output names every format has: one home
FEATURES = "features"  # pool5, named for what it is in an export
CONTRACT_KEY = "p3d_contract"  # the metadata key holding the contract (JSON) in every format
CONTRACT_VERSION = 1
CHANNEL_ORDER = {"rgb": "RGB", "flow": "xy"}  # by modality: what the uint8 input's last axis holds
ONNX_OPSET = 17
OPENVINO_HINTS = {"float32": {"INFERENCE_PRECISION_HINT": "f32"}, "auto": {}}  # compile config by precision
LITERT_FILE_IDENTIFIER = b"TFL3"


@dataclasses.dataclass(frozen=True)
class PortableFormat:
    """An export format: file `suffix`, `precisions` (the first is the default), the exported
    `batch` dimension (None: any) and the pip `extra` that brings its runtime."""
    name: str
    suffix: str
    precisions: tuple
    batch: int | None
    extra: str


FORMATS = {f.name: f for f in (
    PortableFormat("onnx", ".onnx", ("float32",), None, "onnx"),
    PortableFormat("openvino", ".xml", ("float32", "auto"), None, "openvino"),
    PortableFormat("litert", ".tflite", ("float32", "float16", "int8-dynamic", "int8"), 1, "litert"),
)}


# ----------------------------------------------------------------------------------------------
# The graph and its contract


def portable_network(loaded, *, features=False):
    """The Keras model every format exports for the `P3DModel` `loaded`: uint8 clips `frames`
    in, normalised inside with `loaded.metadata.normalization` (unless the network already starts
    with a `Normalize`, which must agree), `{"probabilities": ..., ["features": pool5]}` out.
    Shares the network's weights. Raises ValueError for a network without a classifier (or
    without pool5 when `features`) or one normalising differently from its metadata."""
    model, metadata = loaded.model, loaded.metadata
    inside = models.inside_normalization(model)
    expect(inside in (None, metadata.normalization),
           f"a network that normalises its frames as its metadata says ({metadata.normalization!r}) or not at all",
           inside_normalization=inside)
    softmax_done = models.outputs_probabilities(model)
    outputs = {PROBABILITIES: model.outputs[0]}
    if features:
        outputs[FEATURES] = models.feature_model(model).outputs[0]
    heads = keras.Model(model.inputs, outputs, name=f"{model.name}_heads")
    frames = keras.Input(model.input_shape[1:], dtype="uint8", name=INPUT_NAME)
    out = dict(heads(frames if inside else Normalize(metadata.normalization, name="normalize")(frames)))
    if not softmax_done:
        out[PROBABILITIES] = keras.layers.Softmax(name=PROBABILITIES)(out[PROBABILITIES])
    return keras.Model(frames, out, name=f"{model.name}_portable")


def portable_contract(metadata, *, format, precision, features):
    """The contract an export of `format` carries (JSON-ready dict): the `ModelMetadata` fields
    (`clip_length`, `crop_size`, `channels`, `normalization`, `resize_short_side`, `class_names`,
    `provenance`, ...) and `normalized_inside` (True: feed raw uint8 frames), `channel_order`,
    `input` (`name`, `dtype`, `shape` with None for a free batch), `outputs`, `export_format`,
    `precision`, `contract_version` and `exported_by`."""
    fmt = FORMATS[format]
    shape = [fmt.batch, metadata.clip_length, metadata.crop_size, metadata.crop_size, metadata.channels]
    return {**metadata.to_json(), "contract_version": CONTRACT_VERSION, "normalized_inside": True,
            "channel_order": CHANNEL_ORDER[metadata.modality],
            "input": {"name": INPUT_NAME, "dtype": "uint8", "shape": shape},
            "outputs": [PROBABILITIES, FEATURES] if features else [PROBABILITIES],
            "export_format": format, "precision": precision, "exported_by": f"p3d_keras {__version__}"}


def check_clips(clips, shape, name="clips"):
    """Raise ValueError unless `clips` is a uint8 numpy array `[batch >= 1, *shape[1:]]` (`shape`:
    the contract's input shape); the message names the expected shape."""
    expected = f"uint8 {name} of shape [batch, {', '.join(str(n) for n in shape[1:])}] (batch, frames, height, " \
               f"width, channels)"
    received = (f"{name} of dtype {clips.dtype} and shape {list(clips.shape)}" if isinstance(clips, np.ndarray)
                else f"{name} of type {type(clips).__name__}")
    ok = (isinstance(clips, np.ndarray) and clips.dtype == np.uint8 and clips.ndim == len(shape)
          and clips.shape[0] >= 1 and list(clips.shape[1:]) == list(shape[1:]))
    if not ok:
        raise ValueError(f"Expected {expected}. Received: {received}")


# ----------------------------------------------------------------------------------------------
# Export


def export_portable(loaded, path, *, format, precision=None, features=False, calibration=None,
                    calibration_steps=100):
    """Export the classifier `loaded` (a `P3DModel`: `p3d_keras.load_model`, `jobs.models.load`)
    to the file `path` for ONNX Runtime, OpenVINO or LiteRT (see the module docstring for the
    graph, the contract it carries and the precisions).

    Args:
        loaded: the network and its metadata (normalisation, class names, resize rule).
        path: the file to write, ending in `.onnx`, `.xml` (OpenVINO writes the weights to the
            `.bin` beside it) or `.tflite`; its folder is created.
        format: `"onnx"`, `"openvino"` or `"litert"`.
        precision: one of `FORMATS[format].precisions`; None: the first (float32).
        features: also output `features` (pool5).
        calibration: for LiteRT `precision="int8"` only (and required there): an iterable of
            uint8 clips `[T, H, W, C]` or batches `[B, T, H, W, C]` (or `(clips, labels)` pairs,
            as the reader with `output_dtype="uint8"` gives) to calibrate the activations on.
        calibration_steps: at most this many clips are taken from `calibration`.

    Returns:
        `path` as a string.

    Raises:
        ValueError: an unknown format or precision, a suffix that does not match the format,
            `calibration` missing for int8 (or given otherwise), calibration clips of the wrong
            dtype or shape, or a network that is not a classifier.
    """
    check_choice("format", format, FORMATS)
    fmt = FORMATS[format]
    precision = fmt.precisions[0] if precision is None else precision
    expect(precision in fmt.precisions, f"precision in {list(fmt.precisions)} for format={format!r}",
           precision=precision)
    expect(isinstance(loaded, P3DModel), "a P3DModel (p3d_keras.load_model or jobs.models.load)",
           loaded=type(loaded).__name__)
    path = pathlib.Path(path)
    expect(path.suffix == fmt.suffix, f"a path ending in {fmt.suffix!r} for format={format!r}", path=os.fspath(path))
    expect((calibration is not None) == (precision == "int8"),
           "calibration clips with precision='int8', and only there", precision=precision,
           calibration=None if calibration is None else type(calibration).__name__)
    expect(isinstance(calibration_steps, int) and calibration_steps > 0, "calibration_steps to be a positive int",
           calibration_steps=calibration_steps)
    if format == "litert":
        loaded = dataclasses.replace(loaded, model=as_2d_ops(loaded.model))  # LiteRT builtins only
    network = portable_network(loaded, features=features)
    contract = portable_contract(loaded.metadata, format=format, precision=precision, features=features)
    spec = tf.TensorSpec(contract["input"]["shape"], tf.uint8, name=INPUT_NAME)

    @tf.function(input_signature=[spec])
    def serve(frames):
        return network(frames, training=False)

    path.parent.mkdir(parents=True, exist_ok=True)
    if format == "onnx":
        _write_onnx(serve, path, contract)
    elif format == "openvino":
        _write_openvino(serve, path, contract)
    else:
        _write_litert(serve, network, path, contract, calibration=calibration, steps=calibration_steps)
    log.info("exported %s (%s, %s, outputs %s)", path, format, precision, ", ".join(contract["outputs"]))
    return os.fspath(path)


def _write_onnx(serve, path, contract):
    import onnx  # noqa: PLC0415 (optional extra: onnx)
    import tf2onnx  # noqa: PLC0415 (optional extra: onnx)

    logging.getLogger("tf2onnx").setLevel(logging.WARNING)  # its INFO lines narrate every conversion
    proto, _ = tf2onnx.convert.from_function(serve, input_signature=serve.input_signature, opset=ONNX_OPSET)
    proto.metadata_props.add(key=CONTRACT_KEY, value=json.dumps(contract))
    onnx.save(proto, os.fspath(path))


def _write_openvino(serve, path, contract):
    import openvino as ov  # noqa: PLC0415 (optional extra: openvino)

    ov_model = ov.convert_model(serve)
    ov_model.set_rt_info(json.dumps(contract), [CONTRACT_KEY])
    ov.save_model(ov_model, os.fspath(path), compress_to_fp16=contract["precision"] != "float32")


def _calibration_clips(calibration, shape, steps):
    """A representative dataset for the LiteRT converter: `[clip[None]]` for at most `steps`
    clips of `calibration` (see `export_portable`)."""
    def clips():
        taken = 0
        for item in calibration:
            batch = np.asarray(item[0] if isinstance(item, (tuple, list)) else item)
            batch = batch[None] if batch.ndim == len(shape) - 1 else batch
            check_clips(batch, shape, name="calibration clips")
            for clip in batch:
                yield [clip[None]]
                taken += 1
                if taken == steps:
                    return
        expect(taken > 0, "at least one calibration clip", calibration="empty")
    return clips


def _write_litert(serve, network, path, contract, *, calibration, steps):
    precision = contract["precision"]
    weights = tf.Module()
    weights.variables_ = [getattr(v, "value", v) for v in network.variables]  # frozen by the converter
    converter = tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()], weights)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if precision != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if precision == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if precision == "int8":
        converter.representative_dataset = _calibration_clips(calibration, contract["input"]["shape"], steps)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    try:
        flatbuffer = converter.convert()
    except Exception as error:  # the converter's own ConverterError, not public API
        if "NEEDS_FLEX_OPS" not in str(error):
            raise
        flex = sorted(set(re.findall(r"'(tf\.\w+)' op is neither", str(error))))
        raise ValueError("Expected a network of LiteRT builtin operators only (no Select TF ops). "
                         f"Received: a network needing {', '.join(flex) or 'Select TF ops'}") from None
    path.write_bytes(_with_litert_metadata(flatbuffer, CONTRACT_KEY, json.dumps(contract)))


def _with_litert_metadata(flatbuffer, key, value):
    """The LiteRT model `flatbuffer` (bytes) with the metadata entry `key` holding the text `value`."""
    import flatbuffers  # noqa: PLC0415 (optional extra: litert)
    from ai_edge_litert import schema_py_generated as schema  # noqa: PLC0415 (optional extra: litert)

    model = schema.ModelT.InitFromPackedBuf(flatbuffer, 0)
    expect(all(buffer.offset <= 1 for buffer in model.buffers), "a LiteRT model under 2 GB (weights inside)",
           model="weights stored after the flatbuffer")
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(value.encode("utf-8"), np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = key, len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), entry]
    builder = flatbuffers.Builder(len(flatbuffer) + len(value) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=LITERT_FILE_IDENTIFIER)
    return bytes(builder.Output())


def litert_operators(path):
    """`{"builtin": [...], "custom": [...]}`: the sorted operator names of the LiteRT model at
    `path` (builtins such as `CONV_2D`; custom ones such as `FlexMaxPool3D`, a Select TF op)."""
    from ai_edge_litert import schema_py_generated as schema  # noqa: PLC0415 (optional extra: litert)

    model = schema.Model.GetRootAs(pathlib.Path(path).read_bytes(), 0)
    names = {value: name for name, value in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    found = {"builtin": set(), "custom": set()}
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == schema.BuiltinOperator.CUSTOM:
            found["custom"].add(code.CustomCode().decode("utf-8"))
        else:
            found["builtin"].add(names[builtin])
    return {kind: sorted(ops) for kind, ops in found.items()}


# ----------------------------------------------------------------------------------------------
# Running an export


class PortableRunner:
    """An exported P3D classifier loaded in its runtime (`load_portable`).

    `runner(clips)` takes uint8 clips `[batch, T, H, W, C]` (the shape `contract["input"]["shape"]`
    says, any batch >= 1; checked before the runtime sees them: ValueError naming the expected shape)
    and returns `{"probabilities": [batch, classes], ["features": [batch, D]]}` float32 numpy arrays.
    `contract` is the dict the export carries (`portable_contract`); `path` and `format` say what
    was loaded."""

    def __init__(self, path, format, contract, run):
        self.path, self.format, self.contract = os.fspath(path), format, contract
        self._run = run

    def __call__(self, clips):
        check_clips(clips, self.contract["input"]["shape"])
        batch = FORMATS[self.format].batch
        if batch is None:
            return self._run(clips)
        parts = [self._run(clips[i:i + batch]) for i in range(0, len(clips), batch)]
        return {name: np.concatenate([part[name] for part in parts]) for name in self.contract["outputs"]}

    def __repr__(self):
        return f"PortableRunner({self.path!r}, format={self.format!r}, precision={self.contract['precision']!r})"


class PortableInference:
    """An export (`load_portable`) run over a video's windows as `VideoInference` runs a Keras
    network (the same `plan`, `frames`, `run_windows`, `windows`): the frames prepared as the
    export's contract says (its clip length, short side, crop; normalised inside the export),
    `batch_size` windows per call. Its outputs are `"probabilities"` and, when exported with
    `features=True`, `"pool5"` (the export's `features`).

        inference = PortableInference(load_portable("p3d.onnx"))
        result = inference.run("talk.mp4", stride_seconds=1.0)   # a video_inference.VideoResult
    """

    def __init__(self, runner, *, batch_size=8):
        expect(isinstance(batch_size, int) and batch_size > 0, "batch_size to be a positive int", batch_size=batch_size)
        self.runner, self.batch_size = runner, batch_size
        fields = {key: runner.contract[key] for key in ModelMetadata.__dataclass_fields__}
        self.metadata = ModelMetadata.from_json(fields, runner.path)
        self._names = {PROBABILITIES: PROBABILITIES, FEATURES: models.FEATURE_LAYER}
        self.outputs = tuple(self._names[name] for name in runner.contract["outputs"])

    plan, frames = video_inference.VideoInference.plan, video_inference.VideoInference.frames

    def batches(self, windows):
        """`(windows, uint8 clips)` for each batch of `batch_size` of the `Window`s `windows`."""
        for batch in video_inference.batched(windows, self.batch_size):
            yield batch, np.stack([w.frames for w in batch])

    def run_batches(self, batches):
        """`WindowResult`s of an iterable of `batches`' items, one call of the runtime each."""
        for batch, clips in batches:
            outputs = {self._names[name]: value for name, value in self.runner(clips).items()}
            for i, window in enumerate(batch):
                yield video_inference.WindowResult(window.index, window.start_us / 1e6, window.end_us / 1e6,
                                                   {name: value[i] for name, value in outputs.items()}, window.looped)

    run_windows, windows, run = (video_inference.VideoInference.run_windows, video_inference.VideoInference.windows,
                                 video_inference.VideoInference.run)


def _contract(text, path):
    expect(text is not None, f"a P3D export carrying its contract under the metadata key {CONTRACT_KEY!r}",
           path=os.fspath(path))
    try:
        contract = json.loads(text)
    except ValueError:
        contract = None
    expect(isinstance(contract, dict), f"a JSON object under the metadata key {CONTRACT_KEY!r}",
           path=os.fspath(path), contract=text[:80])
    return contract


def _load_onnx(path, threads):
    import onnxruntime as ort  # noqa: PLC0415 (optional extra: onnx)

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
    return session.get_modelmeta().custom_metadata_map.get(CONTRACT_KEY), lambda contract: (
        lambda clips: dict(zip(contract["outputs"], session.run(contract["outputs"], {INPUT_NAME: clips}))))


def _load_openvino(path, threads):
    import openvino as ov  # noqa: PLC0415 (optional extra: openvino)

    with open(path, "rb") as f:  # else OpenVINO tries its other frontends, TensorFlow's logging errors
        if not f.read(256).lstrip().startswith(b"<"):
            raise ValueError("not an XML file")
    core = ov.Core()
    model = core.read_model(os.fspath(path))

    def runner(contract):
        config = dict(OPENVINO_HINTS[contract["precision"]])
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        compiled = core.compile_model(model, "CPU", config)
        request = compiled.create_infer_request()

        def run(clips):
            results = request.infer({INPUT_NAME: clips})
            return {name: np.array(results[compiled.output(name)]) for name in contract["outputs"]}
        return run
    return model.get_rt_info([CONTRACT_KEY]).astype(str) if model.has_rt_info([CONTRACT_KEY]) else None, runner


def _load_litert(path, threads):
    from ai_edge_litert import schema_py_generated as schema  # noqa: PLC0415 (optional extra: litert)
    from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415 (optional extra: litert)

    data = pathlib.Path(path).read_bytes()
    if data[4:8] != LITERT_FILE_IDENTIFIER:
        raise ValueError(f"no LiteRT file identifier {LITERT_FILE_IDENTIFIER!r} at bytes 4-8")
    model = schema.Model.GetRootAs(data, 0)
    text = None
    for i in range(model.MetadataLength()):
        if model.Metadata(i).Name().decode("utf-8") == CONTRACT_KEY:
            text = model.Buffers(model.Metadata(i).Buffer()).DataAsNumpy().tobytes().decode("utf-8")
    runner = Interpreter(model_content=data, num_threads=threads).get_signature_runner()

    def run_with(contract):
        def run(clips):
            results = runner(**{INPUT_NAME: clips})
            return {name: np.array(results[name]) for name in contract["outputs"]}
        return run
    return text, run_with


# By format: `(path, threads)` -> `(contract text or None, contract -> run)`, the file read by its runtime.
LOADERS = {"onnx": _load_onnx, "openvino": _load_openvino, "litert": _load_litert}


def load_portable(path, *, threads=None):
    """A `PortableRunner` for the export at `path` (`export_portable`), its format told by the
    suffix (`.onnx`, `.xml`, `.tflite`). `threads`: the runtime's intra-op threads (None: its
    default). OpenVINO compiles for the CPU with the export's precision (`OPENVINO_HINTS`).

    Raises ValueError for an unknown suffix, a missing file, a file its runtime cannot read
    (naming it and the runtime's reason), or a file without a P3D contract; ImportError when the
    format's runtime is not installed (the message names the extra)."""
    path = pathlib.Path(path)
    formats = {fmt.suffix: fmt for fmt in FORMATS.values()}
    expect(path.suffix in formats, f"an export file ending in one of {sorted(formats)}", path=os.fspath(path))
    expect(path.is_file(), "an existing export file", path=os.fspath(path))
    expect(threads is None or (isinstance(threads, int) and threads > 0), "threads to be None or a positive int",
           threads=threads)
    fmt = formats[path.suffix]
    try:
        text, runner = LOADERS[fmt.name](path, threads)
    except ModuleNotFoundError as error:
        raise ImportError(f"Running a {fmt.name} export needs {error.name}: pip install "
                          f"'p3d_keras[{fmt.extra}]'") from error
    except Exception as error:  # each runtime's own exception classes (onnxruntime's are not RuntimeErrors)
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"Expected an export file that the {fmt.name} runtime reads. Received: {path} "
                         f"({reason})") from None
    contract = _contract(text, path)
    return PortableRunner(path, fmt.name, contract, runner(contract))


# ----------------------------------------------------------------------------------------------
# p3d-export --format onnx|openvino|litert


def export_portable_model(spec, *, base_dir, format, name="p3d", version=None, classes=None, labels_file=None,
                          normalization=None, resize_short_side=None, calibration_data=None, **options):
    """Load the network of `spec` (`models.load`, as `export.export_model` does) and export it with
    `export_portable(..., format=format, **options)` as `<base_dir>/<name>/<version>/model<suffix>`
    (`version` None: the next integer; the layout OpenVINO Model Server and Triton read). With
    `calibration_data` (TFRecord shards: a file, folder or pattern) the int8 calibration clips are
    one centre clip per video from the reader (`output_dtype="uint8"`). Returns the file's path."""
    check_choice("format", format, FORMATS)
    loaded = models.load(spec, classes=classes, normalization=normalization, labels_file=labels_file,
                         resize_short_side=resize_short_side)
    if calibration_data is not None:
        options["calibration"] = reader.evaluation_dataset(
            collection.shard_files(calibration_data), batch_size=1, num_clips=1, output_dtype="uint8",
            **dict(models.clip_options(loaded.metadata), normalization=None)).as_numpy_iterator()
    final, staging = export.new_version_dir(base_dir, name, version)
    export_portable(loaded, staging / f"model{FORMATS[format].suffix}", format=format, **options)
    os.rename(staging, final)
    return os.fspath(final / f"model{FORMATS[format].suffix}")
