"""Look at shards: their records parsed as numpy values (`iter_records`), a summary (record count,
label histogram, frame counts and sizes: `summarize`) and a contact sheet of one record's frames
(`contact_sheet`), for `p3d-tfrecords inspect`. Every function takes what `collection.shard_files`
takes (a folder, a glob, a shard file, or a list of these) and reads each shard as its bytes say
(`compression="auto"`) or as the caller insists (`None` / `GZIP`).
"""
import collections
import io
import re

import tensorflow as tf

from . import schema
from .collection import shard_files
from .shards import shard_compression

__all__ = ["contact_sheet", "iter_records", "summarize"]


def _records(paths, compression="auto"):
    """`(path, number, serialized)` of each record of the shards `paths` (`collection.shard_files`),
    shard after shard, each read as its bytes say (`compression="auto"`, or `None` / `GZIP` to
    insist: `shards.shard_compression`). A corrupt or truncated record raises a `ValueError`
    naming its shard and the record before it."""
    for path in shard_files(paths, argument="paths"):
        number = -1
        try:
            records = tf.data.TFRecordDataset(path, compression_type=shard_compression(path, compression))
            for number, serialized in enumerate(records):
                yield path, number, serialized
        except tf.errors.OpError as error:
            raise ValueError(f"Expected intact TFRecord records. Received: {_op_message(error)}, after record "
                             f"{number} of shard={path}") from None


def _op_message(error):
    """A TensorFlow error's message without its function and op names."""
    message = re.sub(r"\{\{[^}]*\}\}\s*", "", error.message)
    return re.sub(r"\s*\[Op:.*$", "", message, flags=re.DOTALL).strip()


def iter_records(paths, compression="auto"):
    """Yield each record parsed by `schema.parse_record`, as numpy values. A corrupt or truncated
    record, or one that is not a video of the schema, raises a `ValueError` naming the record and
    its shard."""
    for path, number, serialized in _records(paths, compression):
        name = tf.constant(f"record {number} of shard={path}")
        try:
            parsed, missing = schema.parse_record(serialized, name)
        except tf.errors.InvalidArgumentError as error:
            raise ValueError(_op_message(error)) from None
        if missing.numpy():
            raise ValueError(schema.missing_message(missing, name).numpy().decode())
        yield {k: v.numpy() for k, v in parsed.items()}


def summarize(paths, compression="auto"):
    """`{"records", "modalities": {modality: count}, "labels": {string: count}, "frames": {min, max,
    mean, total}, "sizes": {"HxW": count}, "jpeg_bytes": {mean per frame}}` over all records of `paths`."""
    labels, sizes, modalities = collections.Counter(), collections.Counter(), collections.Counter()
    frame_counts, jpeg_bytes = [], 0
    for record in iter_records(paths, compression):
        labels[f"{record[schema.LABEL_INDEX]} {record[schema.LABEL_STRING].decode()}"] += 1
        sizes[f"{record[schema.HEIGHT]}x{record[schema.WIDTH]}"] += 1
        modalities[record[schema.MODALITY].decode()] += 1
        frame_counts.append(len(record[schema.ENCODED]))
        jpeg_bytes += sum(len(f) for f in record[schema.ENCODED])
    total = sum(frame_counts)
    return {
        "records": len(frame_counts),
        "modalities": dict(sorted(modalities.items())),
        "labels": dict(sorted(labels.items())),
        "frames": {"min": min(frame_counts, default=0), "max": max(frame_counts, default=0),
                   "mean": total / len(frame_counts) if frame_counts else 0.0, "total": total},
        "sizes": dict(sorted(sizes.items())),
        "jpeg_bytes_per_frame": jpeg_bytes / total if total else 0.0,
    }


def contact_sheet(paths, output_png, *, record=0, max_frames=16, columns=4, compression="auto"):
    """Save a grid of up to `max_frames` evenly spaced frames of record number `record` to
    `output_png`; returns that record's media id."""
    from PIL import Image  # noqa: PLC0415 (optional extra: Pillow)

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
