"""Which network a job runs (`ModelSpec`: a model folder, a saved model, or an architecture with
optional weights), the network with the metadata that says how to use it (`load`), and what
follows from a model: its modality, whether it outputs probabilities, the reader arguments that
match its input."""
import dataclasses
import logging
import os

import keras

from p3d_keras.applications import P3DResNet, find_preset, load_labels
from p3d_keras.core.labels import read_label_file
from p3d_keras.core.layers import Normalize
from p3d_keras.core.normalization import DEFAULT_NORMALIZATION, MODALITY_CHANNELS, modality_of_channels
from p3d_keras.jobs import model_folder
from p3d_keras.jobs.model_folder import P3DModel
from p3d_keras.weights.hub import HANDLE_PREFIX
from p3d_keras.tfrecords_tools import collection, reader


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A saved network (`model`: a P3D model folder, an `hf://owner/name[@revision]` handle of one,
    or a plain `.keras` file) or a new `P3DResNet` of `depth` (63, 131, 199 or four block counts)
    with optional `weights` (a preset name, a `.weights.h5` file or an original checkpoint); the
    other fields are `P3DResNet`'s arguments (None: the preset's, or the default). `p3d-train`,
    `p3d-evaluate`, ... fill it from their model flags."""
    model: str | None = None
    depth: int | tuple = 199
    width: int = 64
    weights: str | None = None
    graph: str | None = None
    modality: str | None = None
    frames: int = 16
    size: int = 160
    dropout: float | None = None
    temporal: bool = True

    @property
    def preset(self):
        """The `WeightPreset` that `weights` names, or None (`applications.find_preset`). With a
        saved `model` too, the preset still says its labels and normalisation (a model fine-tuned
        from it)."""
        return find_preset(self.weights)

    @property
    def is_folder(self):
        """Whether `model` is a P3D model folder (or a hub handle of one), whose metadata decides."""
        return bool(self.model) and (str(self.model).startswith(HANDLE_PREFIX) or os.path.isdir(self.model))

    def build(self, classes=None, **overrides):
        """The `keras.Model`: the saved `model`, or a new P3DResNet with `classes` (None: the
        preset's, or 400) and `weights` loaded; `overrides` replace P3DResNet arguments."""
        if self.is_folder:
            return model_folder.load_model(self.model).model
        if self.model:
            if not str(self.model).endswith(".keras") or not os.path.isfile(self.model):
                raise ValueError(f"Expected model to be a model folder, an hf:// handle or an existing .keras file. "
                                 f"Received: model={self.model!r}")
            return keras.saving.load_model(self.model)
        channels = MODALITY_CHANNELS[self.modality or "rgb"]
        kwargs = dict(weights=self.weights, classes=classes, graph=self.graph, modality=self.modality,
                      dropout_rate=self.dropout, width=self.width, temporal=self.temporal,
                      input_shape=(self.frames, self.size, self.size, channels))
        kwargs.update(overrides)
        return P3DResNet(self.depth, **kwargs)


log = logging.getLogger(__name__)


def load(spec, classes=None, *, normalization=None, labels_file=None, resize_short_side=None, **overrides):
    """The network of `spec` with the metadata a job uses (`model_folder.P3DModel`).

    A model folder (or hub handle) brings its own: its normalisation, class names and clip spec
    decide, and a `normalization`, `labels_file` or `resize_short_side` that contradicts them raises
    a ValueError naming both. Otherwise (a plain `.keras` file, or a new network with `classes` and
    `overrides`) the model is described with `normalization` (default: the preset's, else the
    modality's, with a warning for a plain `.keras` file, which does not say), `resize_short_side`
    (default: the paper's ratio) and the class names of `labels_file` or the preset."""
    if spec.is_folder:
        loaded = model_folder.load_model(spec.model)
        _check_agrees(loaded, normalization=normalization, labels_file=labels_file,
                      resize_short_side=resize_short_side)
        return loaded
    model = spec.build(classes=classes, **overrides)
    if spec.model and normalization is None and spec.preset is None:
        log.warning("%s is a plain .keras file, which does not say how its frames were normalised: assuming %r "
                    "(pass normalization=..., or use a model folder)", spec.model,
                    DEFAULT_NORMALIZATION[model_modality(model)])
    metadata = model_folder.describe_model(
        model, normalization=normalization_for(spec, model_modality(model), normalization),
        class_names=class_names(spec, labels_file), resize_short_side=resize_short_side, provenance=provenance(spec))
    return P3DModel(model, metadata, None)


def _check_agrees(loaded, *, normalization, labels_file, resize_short_side):
    """Raise ValueError when a given `normalization`, `labels_file` or `resize_short_side`
    contradicts the folder's."""
    meta = loaded.metadata
    if resize_short_side is not None and resize_short_side != meta.resize_short_side:
        raise ValueError(f"Expected resize_short_side={meta.resize_short_side}, as the model folder {loaded.path} "
                         f"says. Received: resize_short_side={resize_short_side}")
    if normalization is not None and normalization != meta.normalization:
        raise ValueError(f"Expected normalization={meta.normalization!r}, as the model folder {loaded.path} says. "
                         f"Received: normalization={normalization!r} (leave it out to use the folder's)")
    if labels_file and meta.class_names is not None and tuple(read_label_file(labels_file)) != tuple(meta.class_names):
        raise ValueError(f"Expected the class names of the model folder {loaded.path} ({len(meta.class_names)} "
                         f"classes). Received: a different list in {labels_file} (leave it out to use the folder's)")


def provenance(spec):
    """Where a network of `spec` comes from: its preset or weights file, or the saved model."""
    preset = spec.preset
    return {"preset": preset.name if preset else None,
            "original_file": preset.original_file if preset else None,
            "weights": None if preset else spec.weights, "model": spec.model}


def parse_depth(text):
    """`"199"` -> 199; `"1,1,1,1"` -> (1, 1, 1, 1)."""
    parts = [int(p) for p in str(text).split(",")]
    return parts[0] if len(parts) == 1 else tuple(parts)


def model_modality(model):
    """`"rgb"` or `"flow"`, from the channel count of `model`'s clip input."""
    return modality_of_channels(model.input_shape[-1])


def class_names(spec, labels_file=None):
    """Class names from the file `labels_file`, else the preset's of `spec` (an inflated preset has
    none), else None."""
    if labels_file:
        return read_label_file(labels_file)
    preset = spec.preset
    return list(load_labels(preset.labels)) if preset and preset.labels else None


def normalization_for(spec, modality, normalization=None):
    """`normalization` if given, else the preset's of `spec`, else the modality's default."""
    preset = spec.preset
    return normalization or (preset.normalization if preset else DEFAULT_NORMALIZATION[modality])


def clip_options(metadata, *, frame_stride=1, decoder="auto"):
    """The reader arguments (`training_dataset` / `evaluation_dataset`) matching a network's
    `metadata` (`model_folder.ModelMetadata`): clip length, crop size, modality, normalisation;
    with `frame_stride` and `decoder`."""
    return dict(clip_length=metadata.clip_length, crop_size=metadata.crop_size, frame_stride=frame_stride,
                modality=metadata.modality, normalization=metadata.normalization, decoder=decoder)


def clip_dataset(metadata, data, *, num_clips, crops="center", batch_size=8, frame_stride=1, decoder="auto"):
    """The `reader.evaluation_dataset` of the shards `data` matching a network's `metadata`."""
    return reader.evaluation_dataset(collection.shard_files(data), batch_size=batch_size, num_clips=num_clips,
                                     crops=crops, **clip_options(metadata, frame_stride=frame_stride, decoder=decoder))


def output_layer(model):
    """The layer making `model`'s output, looking inside nested models (a model wrapping a network)."""
    layer = model.layers[-1]
    return output_layer(layer) if isinstance(layer, keras.Model) else layer


def outputs_probabilities(model):
    """True if `model` ends in softmax (an activation or a `Softmax` layer), False if it returns
    logits; raises ValueError for anything else."""
    if isinstance(output_layer(model), keras.layers.Softmax):
        return True
    activation = getattr(output_layer(model), "activation", None)
    name = getattr(activation, "__name__", None)
    if name not in ("softmax", "linear"):
        raise ValueError("Expected a classifier ending in softmax or returning logits (classifier_activation="
                         f"'softmax' or None). Received: classifier_activation={name!r}")
    return name == "softmax"


def inside_normalization(model):
    """The normalisation preset `model` applies itself (a `p3d_keras.core.layers.Normalize` right
    after its input, as `P3DResNet(include_preprocessing=True)` and a training model have: it takes
    raw 0-255 frames), or None when it expects normalised clips."""
    found = [layer.normalization for layer in model.layers[:2] if isinstance(layer, Normalize)]
    return found[0] if found else None


FEATURE_LAYER = "pool5"


def feature_model(model):
    """`model` up to its pooled clip descriptor (`pool5`: 2048-d for the full networks), sharing
    its weights."""
    if FEATURE_LAYER not in [layer.name for layer in model.layers]:
        raise ValueError(f"Expected a P3D ResNet with a pooled output (include_top=True, or pooling='avg'). "
                         f"Received: model={model.name!r} without a {FEATURE_LAYER!r} layer")
    return keras.Model(model.inputs, model.get_layer(FEATURE_LAYER).output, name=f"{model.name}_features")
