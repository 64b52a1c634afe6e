from p3d_keras.core.labels import parse_labels, read_label_file

import pytest


def test_one_name_per_line_blank_lines_skipped(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("jump\n\nrun fast\n  sit  \n", encoding="utf-8")
    assert read_label_file(path) == ["jump", "run fast", "sit"]


@pytest.mark.parametrize("text", ["1 ApplyEyeMakeup\n2 ApplyLipstick\n3 Archery\n", "0 a\n1 b\n2 c\n"])
def test_indexed_lines_in_order_are_a_class_index_file(text):
    assert len(parse_labels(text, "classInd.txt")) == 3
    assert not any(name[0].isdigit() for name in parse_labels(text, "classInd.txt"))


def test_names_that_merely_start_with_a_number_are_kept():
    # Not 1..N in order: names, not an index file.
    assert parse_labels("10 pin bowling\n3 point shot\n", "x") == ["10 pin bowling", "3 point shot"]


@pytest.mark.parametrize("text, match", [("a\nb\na\n", r"labels.txt repeats \['a'\]"), ("\n \n", "empty label file")])
def test_bad_label_files_name_the_file(text, match):
    with pytest.raises(ValueError, match=match):
        parse_labels(text, "labels.txt")


def test_every_reader_of_label_files_is_this_one():
    # The converter's --label-file, the programs' --labels and labels.txt, the shipped label sets.
    from p3d_keras.applications import load_labels
    from p3d_keras.tfrecords_tools import collection, sources

    assert sources.read_label_file is read_label_file and collection.read_label_file is read_label_file
    assert load_labels("kinetics400")[:2] == ("abseiling", "air drumming")
