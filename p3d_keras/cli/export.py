"""`p3d-export`: export a P3D ResNet classifier as a SavedModel for TF Serving (`jobs.export.export_model`),
or for ONNX Runtime, OpenVINO or LiteRT (`jobs.portable.export_portable_model`)."""
import argparse
import sys
import logging

from p3d_keras.cli import common
from p3d_keras.jobs import export, portable

log = logging.getLogger("p3d-export")

SAVED_MODEL = "saved_model"
PRECISIONS = sorted({p for fmt in portable.FORMATS.values() for p in fmt.precisions})


def build_parser():
    p = argparse.ArgumentParser(
        prog="p3d-export",
        description="Export a P3D ResNet classifier under BASE_DIR/NAME/VERSION: a SavedModel for TF Serving "
                    "(uint8 frames in; probabilities, top-k and features out), or model.onnx, model.xml (OpenVINO) "
                    "or model.tflite (LiteRT), taking uint8 clips of the model's clip shape.")
    p.add_argument("--base-dir", required=True, help="model base directory (TF Serving's model_base_path parent)")
    p.add_argument("--name", default="p3d", help="model name (default: p3d)")
    p.add_argument("--version", type=common.non_negative_int, default=None, help="version (default: next integer)")
    p.add_argument("--format", default=SAVED_MODEL, choices=[SAVED_MODEL, *portable.FORMATS],
                   help="what to export (default: saved_model)")
    p.add_argument("--precision", choices=PRECISIONS,
                   help="onnx: float32; openvino: float32 or auto (OpenVINO's defaults); litert: float32, float16, "
                        "int8-dynamic or int8 (needs --calibration-data). Default: float32")
    p.add_argument("--features", action="store_true",
                   help="onnx/openvino/litert: also output 'features' (pool5); the SavedModel always has them")
    p.add_argument("--calibration-data", metavar="SHARDS",
                   help="litert int8: TFRecord shards (file, folder or pattern) to calibrate on, one clip per video")
    common.add_labels_argument(p, "the preset's class names")
    common.add_normalization_argument(p)
    p.add_argument("--resize-short-side", type=common.positive_int, default=None,
                   help="short side before the centre crop (default: crop * 182 / 160)")
    p.add_argument("--top-k", type=common.positive_int,
                   help="saved_model: top classes the serving signature returns (default: 5, or every class if fewer)")
    p.add_argument("--no-warmup", action="store_true", help="saved_model: do not write assets.extra warmup requests")
    common.add_model_arguments(p, classes=True)
    return p


def main(argv=None):
    """`p3d-export --model model.keras --base-dir /models --name p3d [--labels labels.txt] [--format onnx]`."""
    parser = build_parser()
    args = parser.parse_args(argv)
    portable_only = {"--precision": args.precision, "--features": args.features,
                     "--calibration-data": args.calibration_data}
    saved_model_only = {"--top-k": args.top_k, "--no-warmup": args.no_warmup}
    wrong = [flag for flag, value in (portable_only if args.format == SAVED_MODEL else saved_model_only).items()
             if value]
    if wrong:
        parser.error(f"{', '.join(wrong)} cannot be used with --format {args.format}")
    common_options = dict(base_dir=args.base_dir, classes=args.classes, labels_file=args.labels,
                          normalization=args.normalization, name=args.name, version=args.version,
                          resize_short_side=args.resize_short_side)

    def job():
        if args.format == SAVED_MODEL:
            return export.export_model(common.model_spec(args), top_k=args.top_k, warmup=not args.no_warmup,
                                       **common_options)
        return portable.export_portable_model(common.model_spec(args), format=args.format, precision=args.precision,
                                              features=args.features, calibration_data=args.calibration_data,
                                              **common_options)

    return common.run("p3d-export", job, done=lambda path: log.info("p3d-export: wrote %s", path))


if __name__ == "__main__":
    sys.exit(main())
