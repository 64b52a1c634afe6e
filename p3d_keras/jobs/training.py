"""Fine-tuning a P3D ResNet on TFRecord shards, and the `p3d-train` program.

SGD with momentum (or AdamW, for training small networks from scratch), a step or cosine
learning-rate schedule, "partial BN" (only the first
BatchNorm keeps training, as the authors fine-tuned), mixed precision, XLA, checkpoints with
resume after an interruption, TensorBoard and CSV logs. Several devices: `MirroredStrategy` on the
TensorFlow backend, `keras.distribution.DataParallel` on the JAX backend.

Input: by default the reader hands out uint8 clips and the model normalises them on its device
(`--input-dtype uint8`): the network is trained inside `with_input_normalization`, a model that
adds `p3d_keras.core.layers.Normalize` in front of it, which keeps the CPU pipeline near the JPEG-decode
limit (`bench/README.md`). The saved models (`last.keras`, `best.keras`) and the returned
History's model are the network alone, taking normalised float input, as every other program
expects. `--input-dtype float32` normalises on the CPU in the reader instead.
"""
import argparse
import contextlib
import logging
import math
import os

import keras

from p3d_keras.cli import common

log = logging.getLogger(__name__)

SCHEDULES = ("step", "cosine", "constant")
DISTRIBUTIONS = ("none", "mirrored", "data-parallel")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
OPTIMIZERS = ("sgd", "adamw")
INPUT_DTYPES = ("uint8", "float32")


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
        import tensorflow as tf  # noqa: PLC0415

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


def output_layer(model):
    """The layer making `model`'s output, looking inside nested models (`with_input_normalization`)."""
    layer = model.layers[-1]
    return output_layer(layer) if isinstance(layer, keras.Model) else layer


def with_input_normalization(network, normalization):
    """A model taking uint8 clips of `network`'s input shape (the reader's `output_dtype="uint8"`)
    that normalises them with `p3d_keras.core.layers.Normalize(normalization)` and runs `network`,
    whose layers and variables it shares."""
    from p3d_keras.core.layers import Normalize  # noqa: PLC0415

    clips = keras.Input(network.input_shape[1:], dtype="uint8", name="uint8_clips")
    outputs = network(Normalize(normalization, name="normalize")(clips))
    return keras.Model(clips, outputs, name=f"{network.name}_with_normalize")


def compile_for_training(model, *, schedule, optimizer="sgd", momentum=0.9, weight_decay=5e-4, jit_compile=False,
                         partial_bn=True):
    """Compile `model` for fine-tuning with `make_optimizer(optimizer, ...)` and sparse categorical
    cross-entropy."""
    if partial_bn:
        log.info("partial BN: froze %d of %d BatchNormalization layers", apply_partial_bn(model),
                 len(batch_norm_layers(model)))
    from_logits = output_layer(model).get_config().get("activation") in (None, "linear")
    model.compile(
        optimizer=make_optimizer(optimizer, schedule, momentum=momentum, weight_decay=weight_decay),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
                 keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5")],
        jit_compile=jit_compile,
    )
    return model


class NetworkCheckpoint(keras.callbacks.ModelCheckpoint):
    """`ModelCheckpoint` saving `network`, a part of the model being trained (the network inside
    `with_input_normalization`), or the whole model when `network` is None."""

    def __init__(self, filepath, network=None, **kwargs):
        super().__init__(filepath, **kwargs)
        self.network = network

    @property
    def model(self):
        trained = super().model  # on JAX, this copies the training state into the variables
        return trained if self.network is None else self.network


def training_callbacks(out_dir, monitor_val, network=None):
    """Resume state (BackupAndRestore, of the whole model being trained), the last and best models
    (`network`, when the model being trained wraps it), TensorBoard and CSV logs."""
    os.makedirs(out_dir, exist_ok=True)
    monitor = "val_accuracy" if monitor_val else "accuracy"
    return [
        keras.callbacks.BackupAndRestore(os.path.join(out_dir, "backup")),
        NetworkCheckpoint(os.path.join(out_dir, "last.keras"), network),
        NetworkCheckpoint(os.path.join(out_dir, "best.keras"), network, monitor=monitor, mode="max",
                          save_best_only=True),
        keras.callbacks.TensorBoard(os.path.join(out_dir, "tensorboard")),
        keras.callbacks.CSVLogger(os.path.join(out_dir, "log.csv"), append=True),
    ]


def model_for_classes(args, classes):
    """The model to fine-tune. A weights preset trained on another number of classes keeps every
    layer but the classifier, which starts afresh (e.g. Kinetics-400 weights for UCF101)."""
    from p3d_keras.applications.p3d_resnet import copy_weights  # noqa: PLC0415

    preset = common.preset_of(args)
    if args.model or preset is None or classes in (None, preset.classes):
        return common.model_from_args(args, classes=classes)
    source = common.model_from_args(args)
    model = common.model_from_args(args, classes=classes, weights=None, graph=preset.graph,
                                       modality=preset.modality)
    copy_weights(source, model, skip=("fc",))
    log.info("%s: kept every layer but the classifier (%d -> %d classes)", preset.name, preset.classes, classes)
    return model


def build_parser():
    p = argparse.ArgumentParser(prog="p3d-train", description="Fine-tune a P3D ResNet on TFRecord shards "
                                "(from scratch, a weights preset, a checkpoint, or a saved .keras model).")
    p.add_argument("--train", required=True, help="training shards: a p3d-tfrecords output folder or a glob")
    p.add_argument("--val", help="validation shards (evaluated on one centre clip per video each epoch)")
    p.add_argument("--out", required=True, help="output folder: last.keras, best.keras, logs, resume state")
    p.add_argument("--classes", type=common.positive_int,
                   help="number of classes (default: labels.txt beside the shards)")
    common.add_model_arguments(p)
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=common.positive_int, default=10)
    g.add_argument("--batch-size", type=common.positive_int, default=8)
    g.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd",
                   help="sgd: SGD with --momentum (default, as the authors); adamw: AdamW")
    g.add_argument("--lr", type=common.positive_float, default=0.001, help="base learning rate (default 0.001)")
    g.add_argument("--momentum", type=common.non_negative_float, default=0.9, help="SGD momentum")
    g.add_argument("--weight-decay", type=common.non_negative_float, default=5e-4)
    g.add_argument("--schedule", choices=SCHEDULES, default="step")
    g.add_argument("--step-epochs", type=common.positive_int, nargs="*",
                   help="epochs at which the step schedule divides by 10")
    g.add_argument("--no-partial-bn", action="store_true", help="train every BatchNormalization layer")
    g.add_argument("--precision", choices=PRECISIONS, default="float32")
    g.add_argument("--jit-compile", action="store_true", help="XLA-compile the training step")
    g.add_argument("--distribute", choices=DISTRIBUTIONS, default="none")
    g.add_argument("--frame-stride", type=common.positive_int, default=1)
    g.add_argument("--no-flip", action="store_true",
                   help="no random horizontal flip (when left/right or cw/ccw are different classes)")
    g.add_argument("--normalization", help="input normalisation (default: caffe, or the preset's)")
    g.add_argument("--input-dtype", choices=INPUT_DTYPES, default="uint8",
                   help="uint8 (default): the reader hands out uint8 clips and the model normalises them on "
                        "its device; float32: the reader normalises on the CPU (slower)")
    g.add_argument("--reads", choices=("auto", "records", "windows"), default="auto",
                   help="windows: read only each clip's frames, at the offsets in the shards' window indexes "
                        "(written by p3d-tfrecords convert or index; local uncompressed shards), much less reading "
                        "for long videos; records: stream each training video's whole record; auto (default): "
                        "windows when every training shard has an index, else records")
    common.add_decoder_argument(g)
    g.add_argument("--seed", type=common.non_negative_int,
                   help="seed for the initial weights, dropout and a deterministic input pipeline")
    g.add_argument("--verbose", type=common.non_negative_int, default=1, choices=(0, 1, 2),
                   help="Keras progress output")
    return p


def run(args):
    """Train as `p3d-train` describes; returns the Keras History."""
    from p3d_keras.tfrecords_tools import reader  # noqa: PLC0415

    labels = common.collection_labels(args.train)
    classes = args.classes or (len(labels) if labels else None)
    if classes is None and not args.model:
        raise ValueError("Expected --classes, or a labels.txt beside the training shards. Received neither for "
                         f"--train={args.train!r}")
    keras.mixed_precision.set_dtype_policy(args.precision)
    if args.seed is not None:
        keras.utils.set_random_seed(args.seed)
    with distribution_scope(args.distribute):
        model = model_for_classes(args, classes)
        data = dict(batch_size=args.batch_size, output_dtype=args.input_dtype, **common.clip_options(model, args))
        trained = model
        if args.input_dtype == "uint8":
            trained = with_input_normalization(model, data.pop("normalization"))
        train = reader.training_dataset(common.shard_files(args.train), deterministic=args.seed is not None,
                                        seed=args.seed, flip=not args.no_flip, reads=args.reads, **data).repeat()
        val = reader.evaluation_dataset(common.shard_files(args.val), num_clips=1, **data).map(
            lambda clips, labels, ids: (clips, labels)) if args.val else None
        steps = max(1, common.collection_size(args.train) // args.batch_size)
        schedule = learning_rate_schedule(args.schedule, args.lr, steps, args.epochs, args.step_epochs)
        compile_for_training(trained, schedule=schedule, optimizer=args.optimizer, momentum=args.momentum,
                             weight_decay=args.weight_decay, jit_compile=args.jit_compile,
                             partial_bn=not args.no_partial_bn)
        log.info("training %s: %d steps per epoch, %d epochs, batch %d, %s input", model.name, steps, args.epochs,
                 args.batch_size, args.input_dtype)
        history = trained.fit(train, validation_data=val, epochs=args.epochs, steps_per_epoch=steps,
                              callbacks=training_callbacks(args.out, monitor_val=val is not None, network=model),
                              verbose=args.verbose)
    history.set_model(model)  # the network, as saved, not the training wrapper
    return history


def main(argv=None):
    args = build_parser().parse_args(argv)
    common.setup_logging()
    try:
        history = common.run_program("p3d-train", run, args)
    except common.ProgramError:
        return 2
    final = {k: round(v[-1], 4) for k, v in history.history.items() if v and not math.isnan(v[-1])}
    log.info("done: %s; models in %s", final, args.out)
    return 0
