"""Label files: class names in index order, one per line (`labels.txt`, the shipped label sets),
or UCF101's `classInd.txt` (`<index> <name>` lines). The one reader of every label file."""
import pathlib


def parse_labels(text, source):
    """Class names in index order from a label file's `text` (`source` names it in errors): one
    name per line (blank lines skipped), or, when every line is `<index> <name>` with the indices
    1..N or 0..N-1 in order (UCF101's `classInd.txt`), the names. Raises ValueError naming
    `source` for duplicate names or an empty file."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    split = [line.partition(" ") for line in lines]
    indices = [int(first) if first.isdigit() and rest.strip() else None for first, _, rest in split]
    if lines and indices in (list(range(1, len(lines) + 1)), list(range(len(lines)))):
        lines = [rest.strip() for _, _, rest in split]
    if not lines:
        raise ValueError(f"Expected class names, one per line. Received: an empty label file {source}")
    duplicates = sorted({name for name in lines if lines.count(name) > 1})
    if duplicates:
        raise ValueError(f"Expected unique class names in the label file. Received: {source} repeats "
                         f"{duplicates[:5]}")
    return lines


def read_label_file(path):
    """`parse_labels` of the UTF-8 file `path`."""
    return parse_labels(pathlib.Path(path).read_text(encoding="utf-8"), path)
