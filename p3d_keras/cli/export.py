"""`p3d-export`: export a P3D ResNet classifier as a SavedModel for TF Serving (`jobs.export.export_model`)."""
import argparse
import sys
import logging

from p3d_keras.cli import common
from p3d_keras.jobs import export

log = logging.getLogger("p3d-export")


def build_parser():
    p = argparse.ArgumentParser(
        prog="p3d-export",
        description="Export a P3D ResNet classifier as a SavedModel for TF Serving under "
                    "BASE_DIR/NAME/VERSION (uint8 frames in; probabilities, top-k and features out).")
    p.add_argument("--base-dir", required=True, help="model base directory (TF Serving's model_base_path parent)")
    p.add_argument("--name", default="p3d", help="model name (default: p3d)")
    p.add_argument("--version", type=common.non_negative_int, default=None, help="version (default: next integer)")
    common.add_labels_argument(p, "the preset's class names")
    common.add_normalization_argument(p)
    p.add_argument("--resize-short-side", type=common.positive_int, default=None,
                   help="short side before the centre crop (default: crop * 182 / 160)")
    p.add_argument("--top-k", type=common.positive_int,
                   help="top classes the serving signature returns (default: 5, or every class if fewer)")
    p.add_argument("--no-warmup", action="store_true", help="do not write assets.extra warmup requests")
    common.add_model_arguments(p, classes=True)
    return p


def main(argv=None):
    """`p3d-export --model model.keras --base-dir /models --name p3d [--labels labels.txt]`."""
    args = build_parser().parse_args(argv)

    def job():
        return export.export_model(common.model_spec(args), base_dir=args.base_dir, classes=args.classes,
                                   labels_file=args.labels, normalization=args.normalization, name=args.name,
                                   version=args.version, resize_short_side=args.resize_short_side, top_k=args.top_k,
                                   warmup=not args.no_warmup)

    return common.run("p3d-export", job, done=lambda path: log.info("p3d-export: wrote %s", path))


if __name__ == "__main__":
    sys.exit(main())
