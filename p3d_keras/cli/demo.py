"""`p3d-demo` (`make demo`): the whole job on a synthetic motion dataset (`jobs.demo.run_demo`)."""
import argparse
import sys
import dataclasses
import logging
import os

from p3d_keras.cli import common

log = logging.getLogger("p3d-demo")


def build_parser():
    p = argparse.ArgumentParser(prog="p3d-demo", description="The whole job (render videos, convert, train a P3D "
                                "and a 2D control, evaluate, export, classify) on a synthetic motion dataset.")
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    p.add_argument("--fast", action="store_true", help="a tiny run that checks every step (seconds, not accuracy)")
    p.add_argument("--epochs", type=common.positive_int, help="override the number of training epochs")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    # TensorFlow turns its oneDNN CPU kernels on by default only on CPUs with AVX-512 and newer;
    # elsewhere they train this network much faster (bench/README.md, tf-onednn row). Set before TensorFlow loads.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    from p3d_keras.jobs import demo  # noqa: PLC0415 (imports TensorFlow, which must load after the line above)

    def job():
        log.info("TF_ENABLE_ONEDNN_OPTS=%s", os.environ["TF_ENABLE_ONEDNN_OPTS"])
        cfg = demo.FAST if args.fast else demo.DemoConfig()
        if args.epochs:
            cfg = dataclasses.replace(cfg, epochs=args.epochs)
        return demo.run_demo(args.out, cfg)

    return common.run("p3d-demo", job, done=lambda summary: print(demo.format_summary(summary)))  # noqa: T201


if __name__ == "__main__":
    sys.exit(main())
