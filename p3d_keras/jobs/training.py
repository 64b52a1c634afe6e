"""Fine-tuning a P3D ResNet on TFRecord shards (`train`; the `p3d-train` program calls it).

SGD with momentum (or AdamW, for training small networks from scratch), a step or cosine
learning-rate schedule, "partial BN" (only the first
BatchNorm keeps training, as the authors fine-tuned), mixed precision, XLA, checkpoints with
resume after an interruption, TensorBoard and CSV logs. Several devices: `MirroredStrategy` on the
TensorFlow backend, `keras.distribution.DataParallel` on the JAX backend.

Input: by default the reader hands out uint8 clips and the model normalises them on its device
(`input_dtype="uint8"`): the network is trained inside `with_input_normalization`, a model that
adds `p3d_keras.core.layers.Normalize` in front of it, which keeps the CPU pipeline near the JPEG-decode
limit (`bench/README.md`). The saved model folders (`last/`, `best/`) and the returned
History's model are the network alone, taking normalised float input, as every other program
expects. `input_dtype="float32"` normalises on the CPU in the reader instead.
"""
import contextlib
import dataclasses
import logging
import os

import keras
import tensorflow as tf

from p3d_keras.applications.p3d_resnet import copy_weights
from p3d_keras.core.layers import Normalize
from p3d_keras.jobs import model_folder, models
from p3d_keras.tfrecords_tools import collection, reader, shards

log = logging.getLogger(__name__)

SCHEDULES = ("step", "cosine", "constant")
DISTRIBUTIONS = ("none", "mirrored", "data-parallel")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
OPTIMIZERS = ("sgd", "adamw")
INPUT_DTYPES = ("uint8", "float32")
LAST, BEST = "last", "best"  # the model folders in a run's output folder


def batch_norm_layers(model):
    """Every BatchNormalization of `model`, in build order, depth first: those inside blocks and
    nested models (`with_input_normalization`) too. (Keras' recursive `_flatten_layers` lists a
    nested model's layers in reverse order, which would make another layer "the first".)"""
    found = []
    for layer in model._flatten_layers(include_self=False, recursive=False):
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        else:
            found += batch_norm_layers(layer)
    return found


def apply_partial_bn(model):
    """Freeze every BatchNormalization but the first (TSN's partial BN, used by the authors):
    frozen layers keep their statistics and scale/shift. Returns how many were frozen."""
    frozen = batch_norm_layers(model)[1:]
    for layer in frozen:
        layer.trainable = False
    return len(frozen)


def learning_rate_schedule(kind, base_lr, steps_per_epoch, epochs, step_epochs=None, gamma=0.1):
    """`step`: multiply by `gamma` at each epoch in `step_epochs` (default: 2/3 and 8/9 of
    training); `cosine`: cosine decay to 0 over all steps; `constant`."""
    if kind not in SCHEDULES:
        raise ValueError(f"Unknown schedule. Expected one of {SCHEDULES}. Received: schedule={kind!r}")
    total = steps_per_epoch * epochs
    if kind == "cosine":
        return keras.optimizers.schedules.CosineDecay(base_lr, decay_steps=max(total, 1))
    if kind == "constant":
        return base_lr
    step_epochs = sorted(step_epochs or {max(1, round(epochs * 2 / 3)), max(1, round(epochs * 8 / 9))})
    boundaries = [e * steps_per_epoch for e in step_epochs]
    return keras.optimizers.schedules.PiecewiseConstantDecay(
        boundaries, [base_lr * gamma ** i for i in range(len(boundaries) + 1)])


@contextlib.contextmanager
def distribution_scope(kind):
    """Build and compile the model inside this: `mirrored` (TF backend: every GPU, else every
    logical CPU), `data-parallel` (JAX backend: every device), or `none`."""
    if kind not in DISTRIBUTIONS:
        raise ValueError(f"Unknown distribution. Expected one of {DISTRIBUTIONS}. Received: distribute={kind!r}")
    backend = keras.backend.backend()
    if kind == "none":
        yield None
    elif kind == "mirrored":
        if backend != "tensorflow":
            raise ValueError(f"distribute='mirrored' needs the TensorFlow backend. Received: backend={backend!r}")
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        strategy = tf.distribute.MirroredStrategy([d.name for d in devices])
        with strategy.scope():
            yield strategy
    else:
        if backend != "jax":
            raise ValueError(f"distribute='data-parallel' needs the JAX backend. Received: backend={backend!r}")
        previous = keras.distribution.distribution()
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=keras.distribution.list_devices()))
        try:
            yield keras.distribution.distribution()
        finally:
            keras.distribution.set_distribution(previous)


def make_optimizer(kind, schedule, *, momentum=0.9, weight_decay=5e-4):
    """`sgd`: SGD with momentum, as the authors fine-tuned; `adamw`: AdamW (momentum unused),
    which trains a small network from scratch in far fewer steps (the demo)."""
    if kind == "sgd":
        return keras.optimizers.SGD(schedule, momentum=momentum, weight_decay=weight_decay or None)
    if kind == "adamw":
        return keras.optimizers.AdamW(schedule, weight_decay=weight_decay or 0.0)
    raise ValueError(f"Unknown optimizer. Expected one of {OPTIMIZERS}. Received: optimizer={kind!r}")


def with_input_normalization(network, normalization):
    """A model taking uint8 clips of `network`'s input shape (the reader's `output_dtype="uint8"`)
    that normalises them with `p3d_keras.core.layers.Normalize(normalization)` and runs `network`,
    whose layers and variables it shares."""
    clips = keras.Input(network.input_shape[1:], dtype="uint8", name="uint8_clips")
    outputs = network(Normalize(normalization, name="normalize")(clips))
    return keras.Model(clips, outputs, name=f"{network.name}_with_normalize")


def compile_for_training(model, *, schedule, optimizer="sgd", momentum=0.9, weight_decay=5e-4, jit_compile=False,
                         partial_bn=True):
    """Compile `model` for fine-tuning with `make_optimizer(optimizer, ...)` and sparse categorical
    cross-entropy; on the TensorFlow backend its training step runs `without_remapper`."""
    if partial_bn:
        log.info("partial BN: froze %d of %d BatchNormalization layers", apply_partial_bn(model),
                 len(batch_norm_layers(model)))
    from_logits = not models.outputs_probabilities(model)
    model.compile(
        optimizer=make_optimizer(optimizer, schedule, momentum=momentum, weight_decay=weight_decay),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
                 keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5")],
        jit_compile=jit_compile,
    )
    if keras.backend.backend() == "tensorflow":
        model.make_train_function()
        model.train_function = without_remapper(model.train_function)
    return model


def without_remapper(function):
    """`function` called with TensorFlow's grappler remapper off.

    With oneDNN on (TensorFlow's default on AVX-512 CPUs; `p3d-demo` turns it on), the remapper
    fuses the `Pad` of `conv1_pad` into `conv1`'s `Conv3D` and removes the `Pad`, which the
    gradient still reads (its `ShapeN` and `Conv3DBackpropFilterV2`): the pass then fails on every
    training graph, TensorFlow logs `remapper failed: INVALID_ARGUMENT: Mutation::Apply error`
    and keeps the graph as it was before the pass. Turning the pass off for the training step
    gives that same graph (the same weights after training, bit for bit) without the error line;
    the other graphs (evaluation, prediction), whose `Pad` has one reader, keep it."""
    def call(*args, **kwargs):
        before = tf.config.optimizer.get_experimental_options().get("remapping")
        tf.config.optimizer.set_experimental_options({"remapping": False})
        try:
            return function(*args, **kwargs)
        finally:
            tf.config.optimizer.set_experimental_options({"remapping": before})

    return call


class ModelFolderCheckpoint(keras.callbacks.Callback):
    """Save `network` (a part of the model being trained: the network inside
    `with_input_normalization`) as a P3D model folder with `metadata` after every epoch, or with
    `monitor` only when that epoch's value beats the best so far. The best value is recorded in the
    folder's `evaluation`, so a resumed run keeps comparing against it."""

    def __init__(self, folder, network, metadata, monitor=None, protocol=None):
        super().__init__()
        self.folder, self.network, self.metadata = folder, network, metadata
        self.monitor, self.protocol = monitor, protocol
        self.best = self._recorded_best()

    def _recorded_best(self):
        if self.monitor is None or not os.path.isdir(self.folder):
            return None
        evaluation = model_folder.read_metadata(self.folder).evaluation or {}  # the JSON alone: no network load
        return evaluation.get("results", {}).get(self.monitor)

    def on_epoch_end(self, epoch, logs=None):
        self.model  # noqa: B018 (on JAX, reading it copies the training state into the variables)
        value = (logs or {}).get(self.monitor) if self.monitor else None
        if self.monitor is not None and (value is None or (self.best is not None and value <= self.best)):
            return
        self.best = value
        evaluation = {"protocol": self.protocol, "results": {self.monitor: float(value), "epoch": epoch + 1}} \
            if self.monitor else None
        model_folder.save_model_folder(self.folder, self.network,
                                       dataclasses.replace(self.metadata, evaluation=evaluation))


def training_callbacks(out_dir, network, metadata, *, monitor_val, protocol=None):
    """Resume state (BackupAndRestore, of the whole model being trained), the `last` and `best`
    model folders of `network` with its `metadata`, TensorBoard and CSV logs."""
    os.makedirs(out_dir, exist_ok=True)
    monitor = "val_accuracy" if monitor_val else "accuracy"
    return [
        keras.callbacks.BackupAndRestore(os.path.join(out_dir, "backup")),
        ModelFolderCheckpoint(os.path.join(out_dir, LAST), network, metadata),
        ModelFolderCheckpoint(os.path.join(out_dir, BEST), network, metadata, monitor=monitor, protocol=protocol),
        keras.callbacks.TensorBoard(os.path.join(out_dir, "tensorboard")),
        keras.callbacks.CSVLogger(os.path.join(out_dir, "log.csv"), append=True),
    ]


def model_for_classes(spec, classes, *, normalization=None, class_names=None):
    """The network to fine-tune with its metadata (`models.load`). A weights preset trained on
    another number of classes keeps every layer but the classifier, which starts afresh (e.g.
    Kinetics-400 weights for UCF101); an inflated preset (`imagenet`) is built with `classes`. A
    model folder's normalisation decides (a contradicting `normalization` raises)."""
    preset = spec.preset
    if spec.model or preset is None or preset.inflated or classes in (None, preset.classes):
        loaded = models.load(spec, classes=classes, normalization=normalization)
        return dataclasses.replace(loaded, metadata=dataclasses.replace(
            loaded.metadata, class_names=tuple(class_names) if class_names else loaded.metadata.class_names))
    source = spec.build()
    model = spec.build(classes=classes, weights=None, graph=preset.graph, modality=preset.modality)
    copy_weights(source, model, skip=("fc",))
    log.info("%s: kept every layer but the classifier (%d -> %d classes)", preset.name, preset.classes, classes)
    metadata = model_folder.describe_model(
        model, normalization=models.normalization_for(spec, models.model_modality(model), normalization),
        class_names=class_names, provenance=models.provenance(spec))
    return model_folder.P3DModel(model, metadata, None)


def train(spec, *, train, out, val=None, classes=None, epochs=10, batch_size=8, optimizer="sgd", lr=0.001,
          momentum=0.9, weight_decay=5e-4, schedule="step", step_epochs=None, partial_bn=True, precision="float32",
          jit_compile=False, distribute="none", frame_stride=1, flip=True, normalization=None, input_dtype="uint8",
          reads="auto", decoder="auto", seed=None, verbose=1):
    """Fine-tune the network of `spec` (`models.ModelSpec`) on the shards `train` (a converter
    output folder, a glob or a file) and return the Keras `History`, whose model is the network
    as saved. Writes to the folder `out`: the P3D model folders `last/` and `best/` (by validation
    accuracy on one centre clip per video of `val`, else training accuracy; each says how it was
    trained: normalisation, clip spec, class names, the run), `log.csv`, TensorBoard logs and the
    resume state (rerunning the same call resumes).

    classes: default the number of names in `labels.txt` beside the shards (required without
        one, unless `spec.model` is a saved model). A preset of another class count keeps every
        layer but the classifier (`model_for_classes`).
    optimizer, lr, momentum, weight_decay, schedule, step_epochs: `make_optimizer` and
        `learning_rate_schedule`. partial_bn: freeze every BatchNormalization but the first.
    precision: a Keras dtype policy (`PRECISIONS`). distribute: `DISTRIBUTIONS`.
    frame_stride, flip, normalization, reads, decoder: the reader's (`reader.training_dataset`);
        normalization None means the model folder's, the preset's or the modality's default.
    input_dtype: `uint8` (the reader hands out uint8 clips, the model normalises them on its
        device) or `float32` (the reader normalises). seed: initial weights, dropout and a
        deterministic input pipeline.
    Raises ValueError for bad arguments or shards (naming them).
    """
    labels = collection.collection_labels(train)
    classes = classes or (len(labels) if labels else None)
    if classes is None and not spec.model:
        raise ValueError("Expected classes, or a labels.txt beside the training shards. Received neither for "
                         f"train={train!r}")
    keras.mixed_precision.set_dtype_policy(precision)
    if seed is not None:
        keras.utils.set_random_seed(seed)
    with distribution_scope(distribute):
        loaded = model_for_classes(spec, classes, normalization=normalization, class_names=labels)
        model = loaded.model
        data = dict(batch_size=batch_size, output_dtype=input_dtype,
                    **models.clip_options(loaded.metadata, frame_stride=frame_stride, decoder=decoder))
        run = dict(train=str(train), val=None if val is None else str(val), epochs=epochs, batch_size=batch_size,
                   optimizer=optimizer, lr=lr, schedule=schedule, frame_stride=frame_stride, flip=flip, seed=seed)
        metadata = dataclasses.replace(loaded.metadata, provenance={**loaded.metadata.provenance, "training": run})
        # best/ is chosen by accuracy on one centre clip per validation video (else training accuracy)
        protocol = dict(data=run["val"], num_clips=1, crops="center", frame_stride=frame_stride) if val else None
        trained = model
        if input_dtype == "uint8":
            trained = with_input_normalization(model, data.pop("normalization"))
        train_data = reader.training_dataset(collection.shard_files(train), deterministic=seed is not None, seed=seed,
                                             flip=flip, reads=reads, **data).repeat()
        val_data = reader.evaluation_dataset(collection.shard_files(val), num_clips=1, **data).map(
            lambda clips, labels, ids: (clips, labels)) if val else None
        steps = max(1, shards.count_records(train) // batch_size)
        compile_for_training(trained, schedule=learning_rate_schedule(schedule, lr, steps, epochs, step_epochs),
                             optimizer=optimizer, momentum=momentum, weight_decay=weight_decay,
                             jit_compile=jit_compile, partial_bn=partial_bn)
        log.info("training %s: %d steps per epoch, %d epochs, batch %d, %s input", model.name, steps, epochs,
                 batch_size, input_dtype)
        # Without validation_steps, Keras warns that the (finite) validation data "ran out" each epoch.
        val_steps = -(-shards.count_records(val) // batch_size) if val else None
        history = trained.fit(train_data, validation_data=val_data, epochs=epochs, steps_per_epoch=steps,
                              validation_steps=val_steps,
                              callbacks=training_callbacks(out, model, metadata, monitor_val=val_data is not None,
                                                           protocol=protocol),
                              verbose=verbose, shuffle=False)  # the reader shuffles; Keras would warn it cannot
    history.set_model(model)  # the network, as saved, not the training wrapper
    return history
