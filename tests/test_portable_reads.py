"""`reads="windows"` (and `reads="auto"`, which picks it) on a platform without `os.pread`
(Windows): the same clips from a seek and a read."""
import os

import numpy as np

from p3d_keras.tfrecords_tools import index, reader
from shard_fixtures import write_shards

SMALL = dict(clip_length=4, crop_size=24, normalization="unit")


def test_windows_reads_without_pread_give_the_same_clips(tmp_path, monkeypatch):
    shards = write_shards(tmp_path, [(10, 0), (3, 1), (20, 2), (6, 1)], num_shards=2)
    for shard in shards:
        index.write_index(shard)

    def epoch():
        dataset = reader.training_dataset(shards, batch_size=2, deterministic=True, seed=4, **SMALL)
        return [[t.numpy() for t in batch] for batch in dataset]

    assert reader.resolve_reads(shards, compression="auto", skip_corrupt=False, cycle_length=None) == "windows"
    with_pread = epoch()
    monkeypatch.delattr(os, "pread")
    assert reader.resolve_reads(shards, compression="auto", skip_corrupt=False, cycle_length=None) == "windows"
    without_pread = epoch()
    assert len(with_pread) == len(without_pread) == 2
    for a, b in zip(with_pread, without_pread):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
