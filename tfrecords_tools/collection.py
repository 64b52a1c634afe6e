"""A converter output folder as a whole: its shards (`shard_files`, the one shard discovery of the
package), its class names (`labels.txt`) and the names of the files beside them, as
`p3d-tfrecords convert` writes them and every program reads them (`shards.count_records` reads
the record count in `manifest.json`).

No TensorFlow at import (the converter's workers import this module for the file names): local
paths are listed with `glob` and `os`; paths with a scheme (`gs://...`) with `tf.io.gfile`,
imported then.
"""
import glob
import os

from p3d_keras.core.labels import read_label_file

from .index import INDEX_SUFFIX, SHARD_SUFFIX, is_local

__all__ = ["FAILURES", "LABELS", "MANIFEST", "SHARD_SUFFIXES", "collection_labels",
           "shard_files"]

MANIFEST = "manifest.json"  # beside the shards: parameters, per-shard counts and sha256, totals
LABELS = "labels.txt"  # beside the shards: class names in index order
FAILURES = "failures.jsonl"  # beside the shards: the inputs that could not be converted, and why
PLAIN_SUFFIX, GZIP_SUFFIX = SHARD_SUFFIX, SHARD_SUFFIX + ".gz"  # the converter's names (readers go by the bytes)
SHARD_SUFFIXES = (PLAIN_SUFFIX, GZIP_SUFFIX)  # the shards of a folder, GZIP or not
# Never shards, whatever a glob matches: window indexes, unfinished atomic writes, the collection's files.
_NOT_SHARDS = (INDEX_SUFFIX, ".tmp", MANIFEST, LABELS, FAILURES)


def _filesystem(path):
    """`(glob, isdir)` for `path`: `glob` and `os.path` for a local path, `tf.io.gfile` for a URL."""
    if is_local(path):
        return glob.glob, os.path.isdir
    import tensorflow as tf  # noqa: PLC0415 (only for URLs: the converter's workers never import TensorFlow)

    return tf.io.gfile.glob, tf.io.gfile.isdir


def _shards_of(path, argument):
    """The sorted shards of one folder, glob or file `path`; raises if there are none."""
    glob_fn, isdir = _filesystem(path)
    if isdir(path):
        found = [p for suffix in SHARD_SUFFIXES for p in glob_fn(os.path.join(path, "*" + suffix))]
    else:
        found = glob_fn(path)
    found = sorted(p for p in found if not p.endswith(_NOT_SHARDS))
    if not found:
        raise ValueError(f"Expected {argument} to name shards: a folder of {' or '.join(SHARD_SUFFIXES)} files "
                         f"(p3d-tfrecords convert output), a glob, a shard file, or a list of these. "
                         f"Received: {argument}={path!r}, which matches no shard")
    return found


def shard_files(paths, *, argument="path"):
    """The shard files named by `paths`: sorted, each once, as strings.

    Takes a folder (its `*.tfrecord` and `*.tfrecord.gz` files), a glob, a shard file, or a list
    of these (`str` or `os.PathLike`); local paths, or `tf.io.gfile` URLs such as `gs://b/x-*`.
    Window index files (`*.tfindex`), unfinished writes (`*.tmp`) and the collection's own files
    (`manifest.json`, `labels.txt`, `failures.jsonl`) are never returned. Raises a `ValueError`
    naming `argument` (the caller's argument name, for the message) and the path when one of the
    paths matches no shard.

        shard_files("shards/ucf101-train")  # -> [".../data-00000-of-00004.tfrecord", ...]
    """
    items = [paths] if isinstance(paths, (str, bytes, os.PathLike)) else list(paths)
    if not items:
        raise ValueError(f"Expected {argument} to name at least one shard. Received: {argument}={paths!r}")
    return sorted({shard for item in items for shard in _shards_of(os.fsdecode(item), argument)})


def collection_labels(path):
    """The class names written by the converter beside the shards of `path`, or None."""
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    labels = os.path.join(folder, LABELS)
    return read_label_file(labels) if os.path.exists(labels) else None
