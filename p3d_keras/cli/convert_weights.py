"""`p3d-convert-weights`: an original P3D checkpoint as a Keras weights file
(`jobs.original_weights.save_as_keras_weights`)."""
import argparse
import sys
import logging

from p3d_keras.cli import common
from p3d_keras.core.labels import read_label_file
from p3d_keras.jobs import original_weights

log = logging.getLogger("p3d-convert-weights")


def build_parser():
    p = argparse.ArgumentParser(prog="p3d-convert-weights", description="Load an original P3D checkpoint (PyTorch "
                                "port .pth/.pth.tar/.npz, or the authors' .caffemodel; detected from the file) into "
                                "a P3D ResNet and save a Keras weights file, or (--model-folder) save a preset or an "
                                "original checkpoint as a P3D model folder.")
    p.add_argument("src", help="original checkpoint (or, with --model-folder, also a preset name)")
    p.add_argument("dst", help="output Keras weights file, ending in .weights.h5 (or, with --model-folder, the folder)")
    p.add_argument("--model-folder", action="store_true",
                   help="write a P3D model folder (network + how to use it) instead of a weights file")
    p.add_argument("--depth", type=int, default=199, choices=(63, 131, 199))
    p.add_argument("--modality", default="rgb", choices=("rgb", "flow"))
    p.add_argument("--graph", default=None, choices=("caffe", "pytorch"),
                   help="graph the weights were trained with (default: caffe for .caffemodel, else pytorch)")
    p.add_argument("--classes", type=common.positive_int, default=400)
    g = p.add_argument_group("model folder (original checkpoints)")
    common.add_normalization_argument(g)
    common.add_labels_argument(g, "none: class numbers")
    return p


def main(argv=None):
    """`p3d-convert-weights SRC DST.weights.h5 --depth 199 --modality rgb --graph pytorch --classes 400`."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.model_folder and not args.dst.endswith(".weights.h5"):
        parser.error(f"DST must end in .weights.h5. Received: dst={args.dst!r} (or pass --model-folder)")

    def job():
        if args.model_folder:
            return original_weights.save_as_model_folder(
                args.src, args.dst, depth=args.depth, modality=args.modality, graph=args.graph, classes=args.classes,
                normalization=args.normalization, class_names=read_label_file(args.labels) if args.labels else None)
        return original_weights.save_as_keras_weights(args.src, args.dst, depth=args.depth, modality=args.modality,
                                                      graph=args.graph, classes=args.classes)

    def done(result):
        log.info("wrote %s (%s)", args.dst, "a model folder" if args.model_folder else
                 f"depth {args.depth}, {args.modality}, graph {result}, {args.classes} classes")

    return common.run("p3d-convert-weights", job, done=done)


if __name__ == "__main__":
    sys.exit(main())
