"""`p3d-transfer`: a linear SVM on extracted video features, the paper's transfer protocol
(`jobs.transfer.transfer`; needs the [transfer] extra).

    p3d-transfer --train ucf_train.npz --test ucf_test.npz --labels classInd.txt --out svm/
    p3d-transfer --train features/train/ --test features/test/ --layer pool5 --out svm/
"""
import argparse
import logging
import sys

from p3d_keras.cli import common
from p3d_keras.jobs import transfer

PROG = "p3d-transfer"
log = logging.getLogger(PROG)


def build_parser():
    p = argparse.ArgumentParser(prog=PROG, description="Train a linear SVM on L2-normalised video features of "
                                "p3d-extract-features (train/test split given by the files) and report accuracy, "
                                "per-class accuracy, a confusion matrix and a t-SNE picture of the features.")
    p.add_argument("--train", required=True, help="training features: a shard-mode .npz file or a video-mode folder")
    p.add_argument("--test", required=True, help="test features, as --train")
    p.add_argument("--out", required=True, help="folder for report.json, confusion_matrix.png and tsne.png")
    p.add_argument("--c", type=common.positive_float, default=1.0, help="the SVM's penalty C (default 1.0)")
    p.add_argument("--layer", help="video mode: which features/<layer> (default: the only one, else pool5)")
    p.add_argument("--labels-csv", help="video mode: media_id,label rows (default: a video's folder is its class)")
    common.add_labels_argument(p, "shard mode: class numbers; video mode: sorted names")
    p.add_argument("--tsne", choices=transfer.TSNE_SETS, default="test",
                   help="the features of the t-SNE picture (default test)")
    p.add_argument("--max-iter", type=common.positive_int, default=10000,
                   help="LinearSVC iterations at most (default 10000)")
    p.add_argument("--seed", type=common.non_negative_int, default=0, help="SVM and t-SNE seed (default 0)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)

    def job():
        return transfer.transfer(args.train, args.test, out=args.out, c=args.c, layer=args.layer,
                                 labels_csv=args.labels_csv, labels_file=args.labels, tsne=args.tsne,
                                 max_iter=args.max_iter, seed=args.seed)

    def done(report):
        log.info("linear SVM (C=%g) on %d videos, %d-d features: accuracy %.4f on %d test videos of %d classes; "
                 "report in %s", report["svm"]["C"], report["num_train"], report["feature_size"],
                 report["accuracy"], report["num_test"], len(report["classes"]), args.out)

    return common.run(PROG, job, done=done, expected=(ImportError,))


if __name__ == "__main__":
    sys.exit(main())
