"""`collection`: the one shard discovery (`shard_files`), and a converter folder's labels and size."""
import json
import pathlib
import subprocess
import sys

import pytest

from p3d_keras.tfrecords_tools import shards as shards_lib
from p3d_keras.tfrecords_tools import collection, index
from shard_fixtures import write_shards


@pytest.fixture
def folder(tmp_path):
    """A converter-like folder: two shards (one GZIP), an index, an unfinished write, labels and a
    manifest."""
    plain = write_shards(tmp_path, [(3, 0), (4, 1)], prefix="a")[0]
    gz = write_shards(tmp_path, [(5, 0)], compression="GZIP", prefix="b")[0]
    index.write_index(plain)
    (tmp_path / "c-00000-of-00001.tfrecord.tmp").write_bytes(b"an interrupted write")
    (tmp_path / collection.LABELS).write_text("jump\nrun\n")
    (tmp_path / collection.FAILURES).write_text("")
    return tmp_path, plain, gz


def test_shard_files_takes_a_folder_a_glob_a_file_or_a_list(folder):
    root, plain, gz = folder
    assert collection.shard_files(str(root)) == [plain, gz]
    assert collection.shard_files(root) == [plain, gz]  # os.PathLike
    assert collection.shard_files(str(root / "*")) == [plain, gz]  # no index, .tmp, labels or failures
    assert collection.shard_files(gz) == [gz]
    assert collection.shard_files([gz, str(root / "a-*"), plain]) == [plain, gz]  # sorted, each once


@pytest.mark.parametrize("bad", ["missing-folder", "*.nothing", "a-00000-of-00001.tfrecord.tfindex"])
def test_shard_files_names_a_path_that_holds_no_shard(folder, bad):
    root, plain, _ = folder
    with pytest.raises(ValueError, match=r"Expected file_pattern to name shards.*Received: file_pattern=.*"
                                         + bad.replace("*", r"\*").replace(".", r"\.")):
        collection.shard_files([plain, str(root / bad)], argument="file_pattern")
    with pytest.raises(ValueError, match=r"Received: path=\[\]"):
        collection.shard_files([])


def test_shard_files_reads_urls_through_tf_io_gfile(folder):
    root, plain, gz = folder
    # The local file system through tf.io.gfile's URL form, as gs:// paths are.
    assert collection.shard_files("file://" + str(root)) == ["file://" + plain, "file://" + gz]


def test_labels_and_size(folder):
    root, plain, gz = folder
    assert collection.collection_labels(str(root)) == ["jump", "run"]
    assert shards_lib.count_records(str(root)) == 3  # no manifest: the records are counted
    (root / collection.MANIFEST).write_text(json.dumps({"totals": {"records": 7}}))
    assert shards_lib.count_records(str(root)) == 7


def test_the_converters_modules_do_not_import_tensorflow():
    # The converter's program and every module its spawned workers import (a console script's
    # workers import the script's module, p3d_keras.cli.tfrecords, again).
    modules = [f"p3d_keras.tfrecords_tools.{m}" for m in
               ("beam", "collection", "compression", "framing", "index", "schema", "sources", "video", "writer")]
    modules += ["p3d_keras.cli.common", "p3d_keras.cli.tfrecords"]
    code = ("import sys\n" + "".join(f"import {m}\n" for m in modules)
            + "from p3d_keras.tfrecords_tools.collection import shard_files\n"
            + f"shard_files({str(pathlib.Path(__file__).parent)!r} + '/*.py')\n"
            + "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TensorFlow or Keras imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True)
