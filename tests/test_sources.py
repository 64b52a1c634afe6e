import os

import pytest

from p3d_keras.tfrecords_tools import sources


def _touch(root, *names):
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def test_folder_layout_sorted_labels_and_media_ids(tmp_path):
    _touch(tmp_path, "walk/b.mp4", "walk/a.avi", "jump/sub/c.mp4", "jump/notes.txt", "été/d.webm")
    items, label_map = sources.list_videos("folder", tmp_path)
    assert label_map == {"jump": 0, "walk": 1, "été": 2}
    assert [(i.media_id, i.label) for i in items] == [
        ("jump/sub/c", "jump"), ("walk/a", "walk"), ("walk/b", "walk"), ("été/d", "été")]


def test_ucf101_split_files(tmp_path):
    _touch(tmp_path, "Archery/v_Archery_g01_c01.avi", "Archery/v_Archery_g08_c01.avi", "Biking/v_Biking_g01_c01.avi")
    (tmp_path / "classInd.txt").write_text("1 Biking\n2 Archery\n")
    (tmp_path / "trainlist01.txt").write_text("Archery/v_Archery_g08_c01.avi 2\nBiking/v_Biking_g01_c01.avi 1\n")
    (tmp_path / "testlist01.txt").write_text("Archery/v_Archery_g01_c01.avi\n")
    train, label_map = sources.list_videos("ucf101", tmp_path, split_dir=tmp_path, split="train")
    test, _ = sources.list_videos("ucf101", tmp_path, split_dir=tmp_path, split="test")
    assert label_map == {"Biking": 0, "Archery": 1}  # classInd order, not sorted
    assert [i.media_id for i in train] == ["Archery/v_Archery_g08_c01", "Biking/v_Biking_g01_c01"]
    assert [i.label for i in test] == ["Archery"]


def test_hmdb51_split(tmp_path):
    _touch(tmp_path / "videos", "run/a.avi", "run/b.avi", "sit/c.avi")
    (tmp_path / "run_test_split1.txt").write_text("a.avi 1\nb.avi 2\n")
    (tmp_path / "sit_test_split1.txt").write_text("c.avi 1\n")
    items, label_map = sources.list_videos("hmdb51", tmp_path / "videos", split_dir=tmp_path, split="train")
    assert [i.media_id for i in items] == ["run/a", "sit/c"] and label_map == {"run": 0, "sit": 1}


def test_kinetics_csv_missing_file_kept(tmp_path):
    _touch(tmp_path, "train/abseiling/abc_000010_000020.mp4")
    csv_path = tmp_path / "train.csv"
    csv_path.write_text("label,youtube_id,time_start,time_end,split\n"
                        "abseiling,abc,10,20,train\nzumba,zzz,0,10,train\nzumba,vvv,0,10,val\n")
    items, label_map = sources.list_videos("kinetics", tmp_path, csv_path=csv_path, split="train")
    assert label_map == {"abseiling": 0, "zumba": 1}
    assert [i.media_id for i in items] == ["train/abseiling/abc_000010_000020", "zzz_000000_000010"]


def test_generic_csv_with_segments_and_label_file(tmp_path):
    (tmp_path / "list.csv").write_text("path,label,start,end\nv/x.mp4,b,1.5,3\nv/x.mp4,a,,\nv/y.mp4,a,0,2\n")
    (tmp_path / "labels.txt").write_text("b\na\nc\n")
    items, label_map = sources.list_videos("csv", csv_path=tmp_path / "list.csv", label_file=tmp_path / "labels.txt")
    assert label_map == {"b": 0, "a": 1, "c": 2}
    assert [(i.media_id, i.start, i.end) for i in items] == [
        ("v/x", None, None), ("v/x@1.500-3.000", 1.5, 3.0), ("v/y@0.000-2.000", 0.0, 2.0)]


def test_errors_name_the_argument(tmp_path):
    (tmp_path / "bad.csv").write_text("a.mp4,x,1\n")
    with pytest.raises(ValueError, match=r"Expected CSV rows .* Received: line 1"):
        sources.list_videos("csv", csv_path=tmp_path / "bad.csv")
    with pytest.raises(ValueError, match=r"Received: layout='ucf'"):
        sources.list_videos("ucf", tmp_path)
    (tmp_path / "ok.csv").write_text("a.mp4,x\n")
    (tmp_path / "labels.txt").write_text("y\n")
    with pytest.raises(ValueError, match=r"unknown labels \['x'\]"):
        sources.list_videos("csv", csv_path=tmp_path / "ok.csv", label_file=tmp_path / "labels.txt")


def test_folder_lists_every_video_named_entry_even_dangling_or_behind_symlinked_folders(tmp_path):
    _touch(tmp_path / "elsewhere", "x.mp4")
    _touch(tmp_path / "root", "walk/a.mp4", "jump/b.mp4")
    root = tmp_path / "root"
    (root / "walk" / "dangling.mp4").symlink_to(tmp_path / "gone.mp4")  # a video that was moved
    os.mkfifo(root / "walk" / "fifo.mp4")
    (root / "walk" / "moved").symlink_to(tmp_path / "elsewhere")  # a symlinked folder of videos
    (root / "jump" / "loop").symlink_to(root)  # a symlink loop: never walked forever
    (root / "jump" / "again").symlink_to(root / "walk")  # a second way into a class: listed once
    items, _ = sources.list_videos("folder", root)
    assert [(i.media_id, i.label) for i in items] == [
        ("jump/b", "jump"), ("walk/a", "walk"), ("walk/dangling", "walk"), ("walk/fifo", "walk"),
        ("walk/moved/x", "walk")]


def test_folder_refuses_what_it_cannot_list_or_place(tmp_path, monkeypatch):
    _touch(tmp_path, "walk/a.mp4", "walk/private/b.mp4")
    real_scandir = os.scandir

    def scandir(path="."):  # an unreadable folder (chmod 000 does not stop root)
        if os.fspath(path).endswith("private"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(PermissionError, match=r"Permission denied: '.*walk/private'"):
        sources.list_videos("folder", tmp_path)
    monkeypatch.undo()
    (tmp_path / "walk" / "private" / "b.mp4").unlink()
    _touch(tmp_path, "stray.mp4")
    with pytest.raises(ValueError, match=r"Expected only class folders .* Received: 'stray.mp4', not in a class"):
        sources.list_videos("folder", tmp_path)
    (tmp_path / "stray.mp4").unlink()
    (tmp_path / "run").symlink_to(tmp_path / "gone")
    with pytest.raises(ValueError, match=r"Received: 'run', a dangling symlink"):
        sources.list_videos("folder", tmp_path)


def test_kinetics_finds_a_dangling_symlink_in_a_subfolder(tmp_path):
    (tmp_path / "train" / "abseiling").mkdir(parents=True)
    (tmp_path / "train" / "abseiling" / "abc_000010_000020.mp4").symlink_to(tmp_path / "gone.mp4")
    (tmp_path / "train.csv").write_text("label,youtube_id,time_start,time_end,split\nabseiling,abc,10,20,train\n")
    items, _ = sources.list_videos("kinetics", tmp_path, csv_path=tmp_path / "train.csv")
    assert [i.path for i in items] == [str(tmp_path / "train" / "abseiling" / "abc_000010_000020.mp4")]
