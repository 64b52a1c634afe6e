"""The P3D model folder: the one artifact that programs write and read, a trained network with
everything needed to use it correctly.

A model folder holds two files:

    model.keras      the whole network (`keras.saving.save_model`)
    p3d_model.json   `ModelMetadata`: architecture arguments, clip length, crop size, channels,
                     normalisation, the short side to resize to before the centre crop, class
                     names, the evaluation it was measured with, where it came from, and the
                     sha256 of model.keras

`save_model_folder` writes one, `read_model_folder` reads and checks one, and `load_model` takes
whatever names a model (a folder, a bare `.keras` file, a preset name, or an `hf://` handle,
`p3d_keras.weights.hub`) and returns a `P3DModel`: the network with its metadata.
"""
import dataclasses
import datetime
import json
import logging
import os
import pathlib
import shutil
import uuid

import keras
import tensorflow as tf

from p3d_keras.applications import PRESETS, P3DResNet, load_labels
from p3d_keras.applications.p3d_resnet import p3d_arguments
from p3d_keras.core.files import sha256_of
from p3d_keras.core.layers import P3DBottleneck  # importing it registers the custom layers: model.keras loads
from p3d_keras.core.normalization import DEFAULT_NORMALIZATION, MODALITY_CHANNELS, NORMALIZATIONS, modality_of_channels
from p3d_keras.jobs.clip_input import default_resize_short_side
from p3d_keras.version import __version__
from p3d_keras.weights import hub
from p3d_keras.weights.hub import METADATA_FILE, MODEL_FILE

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
ARCHITECTURE_KEYS = ("depth", "width", "graph", "modality", "temporal", "classes", "dropout_rate")


class ModelFolderError(ValueError):
    """A model folder, file or handle that cannot be used: the message names it, what was expected
    and what was found."""


@dataclasses.dataclass(frozen=True)
class ModelMetadata:
    """Everything needed to use a network correctly (the content of `METADATA_FILE`).

    `architecture` holds the `P3DResNet` arguments (`ARCHITECTURE_KEYS`; `depth` is 63, 131, 199
    or a list of four block counts, `classes` None without a classifier) when the network is a
    P3D ResNet, else {}. `clip_length`, `crop_size` and `channels` are the network's input
    `(T, H = W, C)`; frames are resized so that their short side is `resize_short_side`, centre
    cropped, then normalised with `normalization` (a key of `NORMALIZATIONS`). `class_names` names
    the outputs of a classifier (None when unknown). `evaluation` is
    `{"protocol": {...}, "results": {...}}` when measured. `provenance` says where the network came
    from (`preset`, `original_file`, `training`, `versions`, `created`). `weights_sha256` is the
    sha256 of `MODEL_FILE` ("" for a network that was never saved).
    """

    format_version: int
    architecture: dict
    modality: str
    clip_length: int
    crop_size: int
    channels: int
    normalization: str
    resize_short_side: int
    class_names: tuple | None
    evaluation: dict | None
    provenance: dict
    weights_sha256: str

    def to_json(self):
        """A JSON-ready dict (`class_names` as a list, a tuple `depth` as a list)."""
        data = dataclasses.asdict(self)
        data["class_names"] = None if self.class_names is None else list(self.class_names)
        data["architecture"] = json.loads(json.dumps(self.architecture))
        return data

    @classmethod
    def from_json(cls, data, source):
        """The metadata in the dict `data` read from `source` (named in errors). Raises
        ModelFolderError for a newer `format_version`, missing or unknown keys, a value of the
        wrong type, an unknown modality or normalisation, or fields that contradict each other."""
        def fail(expected, received):
            raise ModelFolderError(f"{source}: Expected {expected}. Received: {received}")

        if not isinstance(data, dict):
            fail("a JSON object of P3D model metadata", f"{type(data).__name__}")
        version = data.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            fail("format_version, a positive integer", f"format_version={version!r}")
        if version > FORMAT_VERSION:
            fail(f"format_version <= {FORMAT_VERSION} (this p3d_keras {__version__} reads up to it; "
                 "a newer p3d_keras wrote the folder: upgrade p3d_keras)", f"format_version={version}")
        names = [f.name for f in dataclasses.fields(cls)]
        missing, unknown = sorted(set(names) - set(data)), sorted(set(data) - set(names))
        if missing or unknown:
            fail(f"exactly the keys {names}", f"missing {missing}, unknown {unknown}")
        kinds = dict(architecture=dict, modality=str, clip_length=int, crop_size=int, channels=int,
                     normalization=str, resize_short_side=int, class_names=(list, type(None)),
                     evaluation=(dict, type(None)), provenance=dict, weights_sha256=str)
        for key, kind in kinds.items():
            value = data[key]
            if not isinstance(value, kind) or (kind is int and (isinstance(value, bool) or value < 1)):
                wanted = "a positive integer" if kind is int else f"a JSON {getattr(kind, '__name__', kind)}"
                fail(f"{key} to be {wanted}", f"{key}={value!r}")
        if data["modality"] not in MODALITY_CHANNELS:
            fail(f"modality in {sorted(MODALITY_CHANNELS)}", f"modality={data['modality']!r}")
        if data["channels"] != MODALITY_CHANNELS[data["modality"]]:
            fail(f"channels={MODALITY_CHANNELS[data['modality']]} for modality={data['modality']!r}",
                 f"channels={data['channels']}")
        check_normalization(data["normalization"], data["channels"], source)
        if data["resize_short_side"] < data["crop_size"]:
            fail(f"resize_short_side >= crop_size={data['crop_size']}",
                 f"resize_short_side={data['resize_short_side']}")
        if data["class_names"] is not None and not all(isinstance(n, str) for n in data["class_names"]):
            fail("class_names to be a list of strings", f"class_names={data['class_names']!r}")
        sha = data["weights_sha256"]
        if sha and (len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha)):
            fail("weights_sha256, 64 lowercase hex digits", f"weights_sha256={sha!r}")
        architecture = dict(data["architecture"])
        if architecture:
            if sorted(architecture) != sorted(ARCHITECTURE_KEYS):
                fail(f"architecture with the keys {sorted(ARCHITECTURE_KEYS)} (or {{}} for a network that is not "
                     "a P3D ResNet)", f"architecture keys {sorted(architecture)}")
            if isinstance(architecture["depth"], list):
                architecture["depth"] = tuple(architecture["depth"])
            if architecture["modality"] != data["modality"]:
                fail(f"architecture modality = modality={data['modality']!r}",
                     f"architecture modality={architecture['modality']!r}")
        classes = architecture.get("classes")
        if classes is not None and data["class_names"] is not None and len(data["class_names"]) != classes:
            fail(f"{classes} class_names (architecture classes={classes})", f"{len(data['class_names'])} class names")
        return cls(**{**data, "architecture": architecture,
                      "class_names": None if data["class_names"] is None else tuple(data["class_names"])})


@dataclasses.dataclass(frozen=True)
class P3DModel:
    """A network and how to use it: `model`, its `metadata`, and the folder `path` it was read
    from (None for a preset built in memory or a bare `.keras` file)."""

    model: keras.Model
    metadata: ModelMetadata
    path: str | None


def check_normalization(name, channels, source):
    """Raise ModelFolderError (naming `source`) unless `name` is a normalisation for `channels`."""
    if name not in NORMALIZATIONS:
        raise ModelFolderError(f"{source}: Expected normalization in {sorted(NORMALIZATIONS)}. "
                               f"Received: normalization={name!r}")
    if NORMALIZATIONS[name].channels != channels:
        raise ModelFolderError(f"{source}: Expected a normalization for {channels} channels. Received: "
                               f"normalization={name!r}, which is for {NORMALIZATIONS[name].channels} channels")


def p3d_architecture(model):
    """The `P3DResNet` arguments (`ARCHITECTURE_KEYS`) of `model`, read from its layers' configs,
    or {} when `model` is not a P3D ResNet (no `res<stage><block>` P3D bottlenecks)."""
    arguments = p3d_arguments(model)
    return {} if arguments is None else {key: arguments[key] for key in ARCHITECTURE_KEYS}


def input_spec(model, source):
    """`(clip_length, crop_size, channels)` of `model`'s `(batch, T, H, W, C)` input, H == W."""
    shape = model.input_shape
    if not isinstance(shape, tuple) or len(shape) != 5 or None in shape[1:] or shape[2] != shape[3]:
        raise ModelFolderError(f"{source}: Expected a network taking clips (batch, T, H, W, C) with H = W, all "
                               f"fixed. Received: input shape {shape}")
    return shape[1], shape[2], shape[4]


def output_classes(model):
    """The number of outputs of a classifier `(batch, classes)`, None for any other output."""
    shape = model.output_shape
    return shape[-1] if isinstance(shape, tuple) and len(shape) == 2 else None


def versions():
    return {"p3d_keras": __version__, "keras": keras.__version__, "tensorflow": tf.__version__}


def describe_model(model, *, normalization, class_names=None, resize_short_side=None, evaluation=None,
                   provenance=None):
    """The `ModelMetadata` of `model` (`weights_sha256` "" until saved): its input
    `(T, H = W, C)`, modality, and `P3DResNet` arguments (`p3d_architecture`) are read from it;
    `provenance` is completed with `versions` and `created` (now, UTC) unless given.

    Raises ModelFolderError for an input that is not a fixed square clip, a `normalization` unknown
    or for other channels, `class_names` whose count differs from the classifier's outputs, or
    `resize_short_side` below the crop size.
    """
    source = f"model {model.name!r}"
    clip_length, crop_size, channels = input_spec(model, source)
    check_normalization(normalization, channels, source)
    if class_names is not None:
        class_names = tuple(class_names)
        if output_classes(model) != len(class_names):
            raise ModelFolderError(f"{source}: Expected one class name per output of the classifier (output shape "
                                   f"{model.output_shape}). Received: {len(class_names)} class names")
    provenance = {"versions": versions(),
                  "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  **(provenance or {})}
    metadata = ModelMetadata(
        format_version=FORMAT_VERSION, architecture=p3d_architecture(model),
        modality=modality_of_channels(channels), clip_length=clip_length, crop_size=crop_size, channels=channels,
        normalization=normalization,
        resize_short_side=default_resize_short_side(crop_size) if resize_short_side is None else resize_short_side,
        class_names=class_names, evaluation=evaluation, provenance=provenance, weights_sha256="")
    return ModelMetadata.from_json(metadata.to_json(), source)  # the same checks as a folder read back


def check_consistent(model, metadata, source):
    """Raise ModelFolderError (naming `source`) where `metadata` contradicts `model`: its input
    `(T, H, W, C)`, its classifier's outputs against `class_names`, its P3D architecture."""
    found = input_spec(model, source)
    declared = (metadata.clip_length, metadata.crop_size, metadata.channels)
    if found != declared:
        raise ModelFolderError(f"{source}: Expected a network taking (T, H, W, C) = {declared[:2] + declared[1:]} "
                               "(clip_length, crop_size, crop_size, channels). Received: a network taking "
                               f"{found[:2] + found[1:]}")
    classes = output_classes(model)
    if metadata.class_names is not None and classes != len(metadata.class_names):
        raise ModelFolderError(f"{source}: Expected a classifier with {len(metadata.class_names)} outputs (one per "
                               f"class name). Received: a network with output shape {model.output_shape}")
    if metadata.architecture:
        actual = p3d_architecture(model)
        differ = {k: (v, actual.get(k)) for k, v in metadata.architecture.items() if actual.get(k) != v}
        if differ:
            raise ModelFolderError(
                f"{source}: Expected a network with the declared architecture. Received: "
                + ", ".join(f"{k}={found!r} in the network, {k}={declared!r} declared"
                            for k, (declared, found) in differ.items()))


def save_model_folder(path, model, metadata=None, **describe_kwargs):
    """Write `model` and its metadata (`metadata`, else `describe_model(model, **describe_kwargs)`)
    as the model folder `path`; returns `path` as a string, with `weights_sha256` filled in.

    The folder is written beside `path` under a temporary name, then renamed into place: a reader
    never sees a half-written folder. An existing model folder at `path` (a folder holding
    `METADATA_FILE`, as `p3d-train` rewrites `best/` each epoch) is replaced: moved aside, the new
    one renamed in, the old one removed. Anything else at `path` is refused (ModelFolderError),
    never deleted.
    """
    path = pathlib.Path(path)
    source = str(path)
    if metadata is None:
        metadata = describe_model(model, **describe_kwargs)
    elif describe_kwargs:
        raise TypeError(f"Expected either metadata or describe_model's arguments. Received: both "
                        f"(metadata and {sorted(describe_kwargs)})")
    check_consistent(model, metadata, f"model {model.name!r} against the metadata given")
    if path.exists() and not (path.is_dir() and (path / METADATA_FILE).is_file()):
        raise ModelFolderError(f"{source}: Expected a new path or an existing model folder (holding {METADATA_FILE}) "
                               "to replace. Received: an existing path that is not a model folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex}")
    old = path.with_name(f"{path.name}.old-{os.getpid()}-{uuid.uuid4().hex}")
    try:
        tmp.mkdir()
        model.save(tmp / MODEL_FILE)
        metadata = dataclasses.replace(metadata, weights_sha256=sha256_of(tmp / MODEL_FILE))
        (tmp / METADATA_FILE).write_text(json.dumps(metadata.to_json(), indent=2) + "\n", encoding="utf-8")
        if path.exists():
            os.replace(path, old)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old, path)  # the old folder back where it was
                raise
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    return str(path)


def read_metadata(path):
    """The `ModelMetadata` of the model folder `path`, checked (`ModelMetadata.from_json`);
    raises ModelFolderError for a path that is not a folder, a missing or malformed JSON."""
    folder = pathlib.Path(path)
    file = folder / METADATA_FILE
    if not folder.is_dir():
        raise ModelFolderError(f"{folder}: Expected a P3D model folder ({METADATA_FILE} and {MODEL_FILE}). Received: "
                               f"{'a file' if folder.exists() else 'no such folder'}")
    if not file.is_file():
        raise ModelFolderError(f"{folder}: Expected a P3D model folder holding {METADATA_FILE} (and {MODEL_FILE}). "
                               f"Received: a folder without {METADATA_FILE} (files: {sorted(os.listdir(folder))})")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFolderError(f"{file}: Expected JSON model metadata. Received: malformed JSON ({e})") from None
    return ModelMetadata.from_json(data, str(file))


def read_model_folder(path):
    """The `P3DModel` in the folder `path`: its metadata (`read_metadata`), `MODEL_FILE` checked
    against `weights_sha256`, loaded, and checked against the metadata (`check_consistent`).

    Raises ModelFolderError naming the folder or file: no folder, no or malformed JSON, a newer
    `format_version`, a missing model file, a sha256 mismatch, metadata that contradicts the network.
    """
    folder = pathlib.Path(path)
    metadata = read_metadata(folder)
    model_file = folder / MODEL_FILE
    if not model_file.is_file():
        raise ModelFolderError(f"{folder}: Expected {MODEL_FILE} beside {METADATA_FILE}. Received: no {MODEL_FILE}")
    found = sha256_of(model_file)
    if found != metadata.weights_sha256:
        raise ModelFolderError(f"{model_file}: Expected sha256 {metadata.weights_sha256 or '(none recorded)'} (from "
                               f"{METADATA_FILE}). Received: a file with sha256 {found} (changed or damaged)")
    # The network without a training state (compile=False): for inference and fine-tuning, which
    # compiles anew; restoring a saved optimizer into a fresh one only made Keras warn.
    model = keras.saving.load_model(model_file, compile=False)
    check_consistent(model, metadata, str(folder))
    return P3DModel(model=model, metadata=metadata, path=str(folder))


def preset_model(name):
    """The `P3DModel` of the preset `name`: `P3DResNet(weights=name)` and the preset row's metadata.
    Raises ModelFolderError for an inflated preset (an initialisation, not a trained model)."""
    preset = PRESETS[name]
    if preset.inflated:
        raise ModelFolderError(f"Expected a trained model. Received: {name!r}, an ImageNet initialisation with a new "
                               f"classifier: fine-tune it first (p3d-train --depth 63 --weights {name})")
    model = P3DResNet(preset.depth, weights=name, width=preset.width, input_shape=preset.input_shape)
    evaluation = None if preset.reported == "-" else {"protocol": {"source": "reported by the authors"},
                                                      "results": {"reported": preset.reported}}
    metadata = describe_model(model, normalization=preset.normalization, class_names=load_labels(preset.labels),
                              evaluation=evaluation,
                              provenance={"preset": name, "original_file": preset.original_file,
                                          "published_at": preset.published_at, "url": preset.url,
                                          "preset_sha256": preset.sha256})
    return P3DModel(model=model, metadata=metadata, path=None)


def bare_keras_model(path):
    """The `P3DModel` of a `.keras` file without metadata: the modality's default normalisation
    and resize rule are assumed (logged as a warning), no class names."""
    model = keras.saving.load_model(path)
    channels = input_spec(model, str(path))[2]
    normalization = DEFAULT_NORMALIZATION[modality_of_channels(channels)]
    log.warning("%s has no %s: preprocessing defaults are assumed (normalization=%r, resize rule of the paper); "
                "save it as a model folder (save_model_folder) to record how it was trained",
                path, METADATA_FILE, normalization)
    metadata = describe_model(model, normalization=normalization,
                              provenance={"original_file": os.path.abspath(path), "assumed_defaults": True})
    return P3DModel(model=model, metadata=metadata, path=None)


def load_model(path_or_handle):
    """The `P3DModel` that `path_or_handle` names: a model folder (`read_model_folder`), a bare
    `.keras` file (defaults assumed, with a warning), a preset name (`PRESETS`), or a hub handle
    `"hf://owner/name[@revision]"` (downloaded by `hub.fetch_model_folder`, then read as a folder).
    The custom layers are registered on import, so nothing else of p3d_keras need be imported.

    Raises ModelFolderError (a ValueError) naming `path_or_handle` for anything else, and the
    errors of the loader it picks.

    Example:
        p3d = p3d_keras.load_model("runs/x/best")
        p3d.metadata.normalization, p3d.model.predict(clips)
    """
    text = os.fspath(path_or_handle)
    if text.startswith(hub.HANDLE_PREFIX):
        return read_model_folder(hub.fetch_model_folder(text))
    if os.path.isdir(text):
        return read_model_folder(text)
    if text.endswith(".keras") and os.path.isfile(text):
        return bare_keras_model(text)
    if text in PRESETS:
        return preset_model(text)
    raise ModelFolderError(f"Expected a model folder, a .keras file, a preset name (one of {sorted(PRESETS)}) or a "
                           f"hub handle {hub.HANDLE_PREFIX}owner/name[@revision]. Received: {text!r}, which is none "
                           "of them")
