"""Which network a job runs (`ModelSpec`: a saved model, or an architecture with optional
weights), and what follows from a model: its modality, whether it outputs probabilities, the
normalisation and reader arguments that match its input."""
import dataclasses
import os

import keras

from p3d_keras.applications import P3DResNet, find_preset, load_labels
from p3d_keras.core.labels import read_label_file
from p3d_keras.core.normalization import DEFAULT_NORMALIZATION, MODALITY_CHANNELS, modality_of_channels
from p3d_keras.tfrecords_tools import collection, reader


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A saved Keras model (`model`, a `.keras` file) or a new `P3DResNet` of `depth` (63, 131,
    199 or four block counts) with optional `weights` (a preset name, a `.weights.h5` file or an
    original checkpoint); the other fields are `P3DResNet`'s arguments (None: the preset's, or
    the default). `p3d-train`, `p3d-evaluate`, ... fill it from their model flags."""
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

    def build(self, classes=None, **overrides):
        """The `keras.Model`: the saved `model`, or a new P3DResNet with `classes` (None: the
        preset's, or 400) and `weights` loaded; `overrides` replace P3DResNet arguments."""
        if self.model:
            if not str(self.model).endswith(".keras") or not os.path.isfile(self.model):
                raise ValueError(f"Expected model to be an existing .keras file. Received: model={self.model!r}")
            return keras.saving.load_model(self.model)
        channels = MODALITY_CHANNELS[self.modality or "rgb"]
        kwargs = dict(weights=self.weights, classes=classes, graph=self.graph, modality=self.modality,
                      dropout_rate=self.dropout, width=self.width, temporal=self.temporal,
                      input_shape=(self.frames, self.size, self.size, channels))
        kwargs.update(overrides)
        return P3DResNet(self.depth, **kwargs)


def parse_depth(text):
    """`"199"` -> 199; `"1,1,1,1"` -> (1, 1, 1, 1)."""
    parts = [int(p) for p in str(text).split(",")]
    return parts[0] if len(parts) == 1 else tuple(parts)


def model_modality(model):
    """`"rgb"` or `"flow"`, from the channel count of `model`'s clip input."""
    return modality_of_channels(model.input_shape[-1])


def class_names(spec, labels_file=None):
    """Class names from the file `labels_file`, else the preset's of `spec`, else None."""
    if labels_file:
        return read_label_file(labels_file)
    preset = spec.preset
    return list(load_labels(preset.labels)) if preset else None


def normalization_for(spec, modality, normalization=None):
    """`normalization` if given, else the preset's of `spec`, else the modality's default."""
    preset = spec.preset
    return normalization or (preset.normalization if preset else DEFAULT_NORMALIZATION[modality])


def clip_options(model, spec, *, normalization=None, frame_stride=1, decoder="auto"):
    """The reader arguments (`training_dataset` / `evaluation_dataset`) matching `model`'s input:
    clip length, crop size, modality and normalisation (`normalization_for`), with `frame_stride`
    and `decoder`."""
    _, frames, size, _, _ = model.input_shape
    modality = model_modality(model)
    return dict(clip_length=frames, crop_size=size, frame_stride=frame_stride, modality=modality,
                normalization=normalization_for(spec, modality, normalization), decoder=decoder)


def clip_dataset(model, spec, data, *, num_clips, crops="center", batch_size=8, frame_stride=1, normalization=None,
                 decoder="auto"):
    """The `reader.evaluation_dataset` of the shards `data` matching `model`'s input (clip
    length, crop size, channels; normalisation from `spec`, see `models.clip_options`)."""
    return reader.evaluation_dataset(
        collection.shard_files(data), batch_size=batch_size, num_clips=num_clips, crops=crops,
        **clip_options(model, spec, normalization=normalization, frame_stride=frame_stride, decoder=decoder))


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


FEATURE_LAYER = "pool5"


def feature_model(model):
    """`model` up to its pooled clip descriptor (`pool5`: 2048-d for the full networks), sharing
    its weights."""
    if FEATURE_LAYER not in [layer.name for layer in model.layers]:
        raise ValueError(f"Expected a P3D ResNet with a pooled output (include_top=True, or pooling='avg'). "
                         f"Received: model={model.name!r} without a {FEATURE_LAYER!r} layer")
    return keras.Model(model.inputs, model.get_layer(FEATURE_LAYER).output, name=f"{model.name}_features")
