"""Video collections -> a sorted list of `VideoItem`s and a label map.

Layouts: a folder per class (also HMDB51), UCF101 with its official split files, a Kinetics CSV
(`label,youtube_id,time_start,time_end,split`) and a generic CSV of `path,label[,start,end]`.
Labels map to indices deterministically: sorted class names, or the order of a label file.
"""
import csv
import dataclasses
import os
import pathlib

from p3d_keras.core.labels import read_label_file

VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".webm", ".mov", ".mpg", ".mpeg", ".m4v", ".flv")
LAYOUTS = ("folder", "ucf101", "hmdb51", "kinetics", "csv")


@dataclasses.dataclass(frozen=True)
class VideoItem:
    """One video (or one segment of it, `start`/`end` in seconds) to convert."""
    path: str
    label: str
    media_id: str
    start: float | None = None
    end: float | None = None


def _media_id(path, root, start=None, end=None):
    """A stable id: the path relative to `root` without extension, plus the segment if any."""
    path, root = pathlib.Path(path), pathlib.Path(root)
    try:
        rel = path.relative_to(root)
    except ValueError:
        rel = pathlib.Path(path.name)
    media_id = rel.with_suffix("").as_posix()
    if start is not None or end is not None:
        media_id += f"@{_fmt_seconds(start)}-{_fmt_seconds(end)}"
    return media_id


def _fmt_seconds(value):
    return "" if value is None else f"{float(value):.3f}"


def _is_video(path, extensions):
    return path.suffix.lower() in extensions and not path.is_dir()


def walk_videos(folder, extensions=VIDEO_EXTENSIONS, seen=None):
    """Sorted paths of everything under `folder` (recursively, following symlinked folders) that
    has a video extension and is not a folder: also dangling symlinks, FIFOs and unreadable
    files, so that the converter lists them as failures instead of their vanishing. A folder
    is walked once: one in `seen` (a set of `(st_dev, st_ino)`, updated; a symlink loop, or a
    second way into a folder listed elsewhere) is skipped. Raises OSError (naming it) for a
    folder that cannot be listed."""
    found, seen = [], set() if seen is None else seen
    status = os.stat(folder)
    seen.add((status.st_dev, status.st_ino))

    def fail(error):
        raise error

    for parent, folders, files in os.walk(folder, onerror=fail, followlinks=True):
        folders.sort()
        for name in list(folders):
            status = os.stat(os.path.join(parent, name))
            if (status.st_dev, status.st_ino) in seen:
                folders.remove(name)
            seen.add((status.st_dev, status.st_ino))
        found.extend(path for path in map(pathlib.Path(parent).joinpath, files) if _is_video(path, extensions))
    return sorted(found)


def list_folder(root, extensions=VIDEO_EXTENSIONS):
    """`root/<class>/**/<video>`: the class is the first folder under `root` (also HMDB51).
    Every video-named entry is listed once (see `walk_videos`); a video or a dangling symlink
    directly in `root` (no class) raises ValueError naming it."""
    root = pathlib.Path(root)
    for path in sorted(root.iterdir()):
        if (path.is_symlink() and not path.exists()) or _is_video(path, extensions):
            raise ValueError(f"Expected only class folders of videos in root={str(root)!r}. Received: "
                             f"{path.name!r}, {'a dangling symlink' if not path.exists() else 'not in a class folder'}")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    seen = {(s.st_dev, s.st_ino) for s in map(os.stat, [root, *class_dirs])}
    items = []
    for class_dir in class_dirs:
        for path in walk_videos(class_dir, extensions, seen):
            items.append(VideoItem(str(path), class_dir.name, _media_id(path, root)))
    return items


def list_ucf101(root, split_dir, split="train", fold=1):
    """UCF101: `root/<class>/<video>.avi` plus `classInd.txt`, `trainlist0F.txt` and
    `testlist0F.txt` in `split_dir`. Returns the items of one split and the class list."""
    if split not in ("train", "test"):
        raise ValueError(f"Expected split 'train' or 'test'. Received: split={split!r}")
    root, split_dir = pathlib.Path(root), pathlib.Path(split_dir)
    classes = read_label_file(split_dir / "classInd.txt")
    list_file = split_dir / f"{split}list{int(fold):02d}.txt"
    items = []
    for line in list_file.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        rel = line.split()[0]
        label = rel.split("/")[0]
        items.append(VideoItem(str(root / rel), label, _media_id(root / rel, root)))
    return items, classes


def list_hmdb51(root, split_dir=None, split=None, fold=1):
    """HMDB51: `root/<class>/<video>.avi`; with `split_dir`, keep the videos that
    `<class>_test_split<fold>.txt` marks 1 (train) or 2 (test)."""
    items = list_folder(root)
    if split is None:
        return items
    wanted = {"train": "1", "test": "2"}.get(split)
    if wanted is None or split_dir is None:
        raise ValueError(
            f"Expected split 'train' or 'test' together with split_dir. "
            f"Received: split={split!r}, split_dir={split_dir!r}"
        )
    keep = set()
    for list_file in pathlib.Path(split_dir).glob(f"*_test_split{int(fold)}.txt"):
        for line in list_file.read_text(encoding="utf-8").splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1] == wanted:
                keep.add(parts[0])
    return [item for item in items if pathlib.Path(item.path).name in keep]


def kinetics_file_name(youtube_id, time_start, time_end, extension=".mp4"):
    return f"{youtube_id}_{int(float(time_start)):06d}_{int(float(time_end)):06d}{extension}"


def list_kinetics(csv_path, root, split=None):
    """Kinetics: CSV rows `label,youtube_id,time_start,time_end,split`; the (already trimmed)
    files `<youtube_id>_<start:06d>_<end:06d>.mp4` anywhere under `root` (`walk_videos`). A row
    whose file is missing is kept, so it is reported as a failure rather than silently dropped."""
    root = pathlib.Path(root)
    found = {p.name: p for p in walk_videos(root, (".mp4",))}
    items = []
    with open(csv_path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if split is not None and row.get("split") != split:
                continue
            name = kinetics_file_name(row["youtube_id"], row["time_start"], row["time_end"])
            path = found.get(name, root / name)
            items.append(VideoItem(str(path), row["label"], _media_id(path, root)))
    return items


def list_csv(csv_path, root=None):
    """Generic CSV rows `path,label[,start,end]` (a header line `path,label,...` is allowed);
    relative paths are resolved against `root`, by default the CSV's folder."""
    csv_path = pathlib.Path(csv_path)
    root = pathlib.Path(root) if root is not None else csv_path.parent
    items = []
    with open(csv_path, newline="", encoding="utf-8") as f:
        for line_number, row in enumerate(csv.reader(f), start=1):
            row = [cell.strip() for cell in row]
            if not row or (line_number == 1 and row[:2] == ["path", "label"]):
                continue
            if len(row) not in (2, 4):
                raise ValueError(
                    f"Expected CSV rows `path,label[,start,end]`. "
                    f"Received: line {line_number} of {csv_path}: {row}"
                )
            start, end = (_optional_float(v) for v in row[2:4]) if len(row) == 4 else (None, None)
            path = root / row[0]
            items.append(VideoItem(str(path), row[1], _media_id(path, root, start, end), start, end))
    return items


def _optional_float(value):
    return None if value == "" else float(value)


def build_label_map(items, classes=None):
    """`{class name: index}`: sorted class names of `items`, or the order of `classes`."""
    names = list(classes) if classes is not None else sorted({item.label for item in items})
    label_map = {name: index for index, name in enumerate(names)}
    unknown = sorted({item.label for item in items} - set(label_map))
    if unknown:
        raise ValueError(
            f"Expected every label to be in the label file. Received: unknown labels {unknown[:10]}"
        )
    return label_map


def list_path(path, extensions=VIDEO_EXTENSIONS):
    """Unlabelled items (label "") of `path`: a file gives one, its name without extension as
    media id; a folder every video under it at any depth (`walk_videos`), media ids relative to
    it. Sorted by media id. Raises ValueError for a path that does not exist or a folder without
    videos."""
    path = pathlib.Path(path)
    if path.is_dir():
        items = [VideoItem(str(p), "", _media_id(p, path)) for p in walk_videos(path, extensions)]
        if not items:
            raise ValueError(f"Expected videos ({', '.join(extensions)}) in {str(path)!r}. Received: none")
        return sorted(items, key=lambda item: item.media_id)
    if not path.exists():
        raise ValueError(f"Expected a video file or a folder of videos. Received: {str(path)!r}, which does not exist")
    return [VideoItem(str(path), "", path.stem)]


def list_videos(layout, root=None, *, csv_path=None, split_dir=None, split=None, fold=1,
                label_file=None):
    """Items sorted by media id and the label map, for one of `LAYOUTS`."""
    classes = None
    if layout == "folder":
        items = list_folder(root)
    elif layout == "ucf101":
        items, classes = list_ucf101(root, split_dir, split or "train", fold)
    elif layout == "hmdb51":
        items = list_hmdb51(root, split_dir, split, fold)
    elif layout == "kinetics":
        items = list_kinetics(csv_path, root, split)
    elif layout == "csv":
        items = list_csv(csv_path, root)
    else:
        raise ValueError(f"Expected layout to be one of {LAYOUTS}. Received: layout={layout!r}")
    if label_file is not None:
        classes = read_label_file(label_file)
    ids = [item.media_id for item in items]
    if len(set(ids)) != len(ids):
        raise ValueError(f"Expected unique videos. Received: duplicate media ids in {layout!r} input")
    return sorted(items, key=lambda item: item.media_id), build_label_map(items, classes)
