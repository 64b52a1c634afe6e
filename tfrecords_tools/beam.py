"""The same records, beyond one machine: an Apache Beam pipeline (`pip install p3d_keras[beam]`).

Each item becomes the record `writer.convert_item` makes (same bytes as the local converter; flow
records with `decode.flow`, when the workers have `p3d_keras[flow]` too);
failures go to `<output_prefix>-failures*.jsonl`. Record order and shard assignment are the
runner's (Beam does not promise an order), so compare record sets, not shard bytes.

Uncompressed shards written to a local folder get their window index (`index.write_index`, for
`reads="windows"`) as the pipeline's last step, one shard per worker call. The windows reader
reads local files only, so shards written elsewhere (`gs://...`) get none: copy them to the
training machine and run `p3d-tfrecords index` there.
"""
import dataclasses
import json

from . import compression as compression_lib
from . import index
from . import video as video_lib
from . import writer
from .sources import VideoItem


class _ConvertFn:
    """A picklable callable for `beam.FlatMap` on `VideoItem` tuples: yields `("ok", record)` or `("failed", json)`."""

    def __init__(self, label_map, decode):
        self.label_map, self.decode = label_map, decode

    def __call__(self, row):
        item = VideoItem(*row)
        try:
            record, _ = writer.convert_item(item, self.label_map[item.label], self.decode)
        except Exception as error:  # noqa: BLE001 - one bad file must not stop the pipeline
            reason = str(error) if isinstance(error, video_lib.VideoError) else repr(error)
            yield "failed", json.dumps({"path": item.path, "media_id": item.media_id,
                                        "reason": reason}, ensure_ascii=False, sort_keys=True)
        else:
            yield "ok", record


def _index_shard(shard):
    """Write the window index of a written shard; returns the index's path (not the index, which
    the pipeline need not carry)."""
    index.write_index(shard)
    return index.index_path(shard)


def writes_indexes(output_prefix, compression):
    """Whether the pipeline indexes its shards: uncompressed ones in a local folder."""
    return compression is None and index.is_local(output_prefix)


def build_pipeline(pipeline, items, label_map, output_prefix, *, decode=video_lib.DecodeOptions(),
                   num_shards=0, compression=None):
    """Add the conversion to `pipeline` (a `beam.Pipeline`). `num_shards=0` lets the runner pick.
    Shards are `<output_prefix>-SSSSS-of-NNNNN.tfrecord`, with their window indexes when
    `writes_indexes`."""
    import apache_beam as beam  # noqa: PLC0415 (optional extra: [beam])
    from apache_beam.io.filesystem import CompressionTypes  # noqa: PLC0415 (optional extra: [beam])

    if compression not in writer.COMPRESSIONS:
        raise ValueError(f"Expected compression in {writer.COMPRESSIONS}. Received: compression={compression!r}")
    if decode.flow is not None:
        decode.flow.algorithm()  # OpenCV's TV-L1 is there (the workers need p3d_keras[beam,flow] too)
    rows = [dataclasses.astuple(item) for item in items]  # plain tuples pickle on every runner
    results = (
        pipeline
        | "Items" >> beam.Create(rows)
        | "Reshuffle" >> beam.Reshuffle()  # spread videos over workers
        | "Convert" >> beam.FlatMap(_ConvertFn(label_map, decode))
    )
    records = results | "Ok" >> beam.Filter(lambda kv: kv[0] == "ok") | "Record" >> beam.Map(lambda kv: kv[1])
    failures = results | "Failed" >> beam.Filter(lambda kv: kv[0] == "failed") | "Reason" >> beam.Map(lambda kv: kv[1])
    shards = records | "Write" >> beam.io.WriteToTFRecord(
        output_prefix, file_name_suffix=writer.shard_suffix(compression), num_shards=num_shards,
        shard_name_template="-SSSSS-of-NNNNN",
        compression_type=CompressionTypes.GZIP if compression == compression_lib.GZIP else CompressionTypes.UNCOMPRESSED,
    )
    if writes_indexes(output_prefix, compression):
        shards | "Index" >> beam.Map(_index_shard)
    failures | "WriteFailures" >> beam.io.WriteToText(
        output_prefix + "-failures", file_name_suffix=".jsonl", num_shards=1,
        shard_name_template="")
    return pipeline


def run(items, label_map, output_prefix, *, pipeline_args=(), **kwargs):
    """Build and run the pipeline with `pipeline_args` (e.g. `["--runner=DataflowRunner", ...]`)."""
    import apache_beam as beam  # noqa: PLC0415 (optional extra: [beam])
    from apache_beam.options.pipeline_options import PipelineOptions  # noqa: PLC0415 (optional extra: [beam])

    with beam.Pipeline(options=PipelineOptions(list(pipeline_args))) as pipeline:
        build_pipeline(pipeline, items, label_map, output_prefix, **kwargs)
