"""Look at shards: record count, label histogram, frame counts and sizes, and a contact sheet."""
import collections
import io

from . import schema


def iter_records(paths, compression="auto"):
    """Yield each record of the shards `paths` (a path or a list), in order, parsed by
    `schema.parse_example`, as numpy values. Read by `reader.read_records`: each shard as its
    bytes say (`compression="auto"`, or `None` / `GZIP` to insist), a corrupt or truncated record
    an error naming its shard."""
    from .reader import read_records  # noqa: PLC0415 (imports TensorFlow; the converter's CLI does not)

    paths = [str(p) for p in ([paths] if isinstance(paths, (str, bytes)) or hasattr(paths, "__fspath__")
                              else paths)]
    for _, serialized in read_records(paths, compression=compression, cycle_length=1):
        yield {k: v.numpy() for k, v in schema.parse_example(serialized).items()}


def summarize(paths, compression="auto"):
    """`{"records", "labels": {string: count}, "frames": {min, max, mean, total},
    "sizes": {"HxW": count}, "jpeg_bytes": {mean per frame}}` over all records of `paths`."""
    labels, sizes = collections.Counter(), collections.Counter()
    frame_counts, jpeg_bytes = [], 0
    for record in iter_records(paths, compression):
        labels[f"{record[schema.LABEL_INDEX]} {record[schema.LABEL_STRING].decode()}"] += 1
        sizes[f"{record[schema.HEIGHT]}x{record[schema.WIDTH]}"] += 1
        frame_counts.append(len(record[schema.ENCODED]))
        jpeg_bytes += sum(len(f) for f in record[schema.ENCODED])
    total = sum(frame_counts)
    return {
        "records": len(frame_counts),
        "labels": dict(sorted(labels.items())),
        "frames": {"min": min(frame_counts, default=0), "max": max(frame_counts, default=0),
                   "mean": total / len(frame_counts) if frame_counts else 0.0, "total": total},
        "sizes": dict(sorted(sizes.items())),
        "jpeg_bytes_per_frame": jpeg_bytes / total if total else 0.0,
    }


def contact_sheet(paths, output_png, *, record=0, max_frames=16, columns=4, compression="auto"):
    """Save a grid of up to `max_frames` evenly spaced frames of record number `record` to
    `output_png`; returns that record's media id."""
    from PIL import Image

    for index, parsed in enumerate(iter_records(paths, compression)):
        if index == record:
            break
    else:
        raise ValueError(f"Expected record < number of records. Received: record={record}")
    frames = parsed[schema.ENCODED]
    step = max(1, -(-len(frames) // max_frames))
    images = [Image.open(io.BytesIO(f)).convert("RGB") for f in frames[::step][:max_frames]]
    width, height = images[0].size
    rows = -(-len(images) // columns)
    sheet = Image.new("RGB", (width * min(columns, len(images)), height * rows))
    for i, image in enumerate(images):
        sheet.paste(image, ((i % columns) * width, (i // columns) * height))
    sheet.save(output_png, format="PNG")
    return parsed[schema.MEDIA_ID].decode()
