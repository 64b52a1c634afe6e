"""A converter output folder as a whole: its shards, its class names (`labels.txt`) and its size
(`manifest.json`), as `p3d-tfrecords convert` writes them and every program reads them."""
import glob
import json
import os

from p3d_keras.core.labels import read_label_file

MANIFEST = "manifest.json"  # beside the shards: parameters, per-shard counts and sha256, totals
LABELS = "labels.txt"  # beside the shards: class names in index order
FAILURES = "failures.jsonl"  # beside the shards: the inputs that could not be converted, and why


def shard_files(path):
    """Shard files from a converter output folder, a glob, or a file; raises if there are none."""
    if os.path.isdir(path):
        files = sorted(glob.glob(os.path.join(path, "*.tfrecord")) + glob.glob(os.path.join(path, "*.tfrecord.gz")))
    else:
        files = sorted(glob.glob(path))
    if not files:
        raise ValueError(f"Expected a folder of .tfrecord[.gz] shards (p3d-tfrecords convert output), a glob or a "
                         f"shard file. Received: {path!r}, which matches no shard")
    return files


def collection_labels(path):
    """The class names written by the converter beside the shards of `path`, or None."""
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    labels = os.path.join(folder, LABELS)
    return read_label_file(labels) if os.path.exists(labels) else None


def collection_size(path):
    """Number of records (videos) in the shards of `path`: from the converter's manifest when
    present, else by counting records (each shard read as its bytes say, GZIP or not)."""
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    manifest = os.path.join(folder, MANIFEST)
    if os.path.isdir(path) and os.path.exists(manifest):
        with open(manifest, encoding="utf-8") as f:
            return int(json.load(f)["totals"]["records"])
    from p3d_keras.tfrecords_tools import reader  # noqa: PLC0415 (TensorFlow: never in the converter's processes)

    return int(reader.read_records(shard_files(path)).reduce(0, lambda n, _: n + 1))
