"""`p3d-convert-weights`: an original P3D checkpoint as a Keras weights file
(`jobs.original_weights.save_as_keras_weights`)."""
import argparse
import sys
import logging

from p3d_keras.cli import common
from p3d_keras.jobs import original_weights

log = logging.getLogger("p3d-convert-weights")


def build_parser():
    p = argparse.ArgumentParser(prog="p3d-convert-weights", description="Load an original P3D checkpoint (PyTorch "
                                "port .pth/.pth.tar/.npz, or the authors' .caffemodel; detected from the file) into "
                                "a P3D ResNet and save a Keras weights file.")
    p.add_argument("src", help="original checkpoint")
    p.add_argument("dst", help="output Keras weights file, ending in .weights.h5")
    p.add_argument("--depth", type=int, default=199, choices=(63, 131, 199))
    p.add_argument("--modality", default="rgb", choices=("rgb", "flow"))
    p.add_argument("--graph", default=None, choices=("caffe", "pytorch"),
                   help="graph the weights were trained with (default: caffe for .caffemodel, else pytorch)")
    p.add_argument("--classes", type=common.positive_int, default=400)
    return p


def main(argv=None):
    """`p3d-convert-weights SRC DST.weights.h5 --depth 199 --modality rgb --graph pytorch --classes 400`."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.dst.endswith(".weights.h5"):
        parser.error(f"DST must end in .weights.h5. Received: dst={args.dst!r}")

    def job():
        return original_weights.save_as_keras_weights(args.src, args.dst, depth=args.depth, modality=args.modality,
                                                      graph=args.graph, classes=args.classes)

    def done(graph):
        log.info("wrote %s (depth %d, %s, graph %s, %d classes)", args.dst, args.depth, args.modality, graph,
                 args.classes)

    return common.run("p3d-convert-weights", job, done=done)


if __name__ == "__main__":
    sys.exit(main())
