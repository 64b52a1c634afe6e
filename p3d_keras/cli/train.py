"""`p3d-train`: fine-tune a P3D ResNet on TFRecord shards (`jobs.training.train`)."""
import argparse
import sys
import logging
import math

from p3d_keras.cli import common
from p3d_keras.jobs import training

log = logging.getLogger("p3d-train")


def build_parser():
    p = argparse.ArgumentParser(prog="p3d-train", description="Fine-tune a P3D ResNet on TFRecord shards "
                                "(from scratch, a weights preset, a checkpoint, or a saved .keras model).")
    p.add_argument("--train", required=True, help="training shards: a p3d-tfrecords output folder or a glob")
    p.add_argument("--val", help="validation shards (evaluated on one centre clip per video each epoch)")
    p.add_argument("--out", required=True, help="output folder: the model folders last/ and best/, logs, resume state")
    p.add_argument("--classes", type=common.positive_int,
                   help="number of classes (default: labels.txt beside the shards)")
    common.add_model_arguments(p)
    common.add_clip_arguments(p)
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=common.positive_int, default=10)
    g.add_argument("--optimizer", choices=training.OPTIMIZERS, default="sgd",
                   help="sgd: SGD with --momentum (default, as the authors); adamw: AdamW")
    g.add_argument("--lr", type=common.positive_float, default=0.001, help="base learning rate (default 0.001)")
    g.add_argument("--momentum", type=common.non_negative_float, default=0.9, help="SGD momentum")
    g.add_argument("--weight-decay", type=common.non_negative_float, default=5e-4)
    g.add_argument("--schedule", choices=training.SCHEDULES, default="step")
    g.add_argument("--step-epochs", type=common.positive_int, nargs="*",
                   help="epochs at which the step schedule divides by 10")
    g.add_argument("--no-partial-bn", action="store_true", help="train every BatchNormalization layer")
    g.add_argument("--precision", choices=training.PRECISIONS, default="float32")
    g.add_argument("--jit-compile", action="store_true", help="XLA-compile the training step")
    g.add_argument("--distribute", choices=training.DISTRIBUTIONS, default="none")
    g.add_argument("--no-flip", action="store_true",
                   help="no random horizontal flip (when left/right or cw/ccw are different classes)")
    g.add_argument("--input-dtype", choices=training.INPUT_DTYPES, default="uint8",
                   help="uint8 (default): the reader hands out uint8 clips and the model normalises them on "
                        "its device; float32: the reader normalises on the CPU (slower)")
    g.add_argument("--reads", choices=("auto", "records", "windows"), default="auto",
                   help="windows: read only each clip's frames, at the offsets in the shards' window indexes "
                        "(written by p3d-tfrecords convert or index; local uncompressed shards), much less reading "
                        "for long videos; records: stream each training video's whole record; auto (default): "
                        "windows when every training shard has an index, else records")
    g.add_argument("--seed", type=common.non_negative_int,
                   help="seed for the initial weights, dropout and a deterministic input pipeline")
    g.add_argument("--verbose", type=common.non_negative_int, default=1, choices=(0, 1, 2),
                   help="Keras progress output")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)

    def job():
        return training.train(
            common.model_spec(args), train=args.train, out=args.out, val=args.val, classes=args.classes,
            epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
            momentum=args.momentum, weight_decay=args.weight_decay, schedule=args.schedule,
            step_epochs=args.step_epochs, partial_bn=not args.no_partial_bn, precision=args.precision,
            jit_compile=args.jit_compile, distribute=args.distribute, flip=not args.no_flip,
            input_dtype=args.input_dtype, reads=args.reads, seed=args.seed, verbose=args.verbose,
            **common.clip_arguments(args))

    def done(history):
        final = {k: round(v[-1], 4) for k, v in history.history.items() if v and not math.isnan(v[-1])}
        log.info("done: %s; models in %s", final, args.out)

    return common.run("p3d-train", job, done=done)


if __name__ == "__main__":
    sys.exit(main())
