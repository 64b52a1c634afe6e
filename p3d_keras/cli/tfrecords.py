"""`p3d-tfrecords`: convert a video collection into sharded TFRecords, index or inspect shards.

    p3d-tfrecords convert --layout folder --root videos/ --output shards/ --workers 8
    p3d-tfrecords convert --layout folder --root videos/ --output flow_shards/ --modality flow
    p3d-tfrecords beam --layout csv --csv list.csv --output gs://bucket/shards/data -- --runner=DataflowRunner ...
    p3d-tfrecords index shards/        # window indexes of other shards (convert, and beam into a local folder, write them)
    p3d-tfrecords inspect shards/ --contact-sheet sheet.png
"""
import argparse
import json
import logging
import pathlib
import sys

from p3d_keras.cli import common
from p3d_keras.cli.progress import ProgressDisplay
from p3d_keras.tfrecords_tools import beam, collection, index, sources, video, writer

logger = logging.getLogger("p3d_keras.tfrecords_tools")


def _size(text):
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"Expected HEIGHTxWIDTH, e.g. 182x242. Received: --size={text!r}")
    return height, width


def _add_input_args(parser):
    common.add_video_list_arguments(parser)
    group = parser.add_argument_group("frames")
    group.add_argument("--size", type=_size, default=video.PAPER_SIZE,
                       help="HEIGHTxWIDTH to resize to (default 182x242, the paper's)")
    group.add_argument("--short-side", type=common.positive_int, help="resize the short side to N, keep aspect")
    group.add_argument("--fps", type=common.positive_float, help="resample to this frame rate")
    group.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality 1..95 (default 90)")
    group.add_argument("--max-frames", type=common.positive_int, help="keep at most N frames per video")
    group.add_argument("--min-frames", type=common.positive_int, default=1,
                       help="fewer frames is a failure (default 1)")
    group.add_argument("--modality", choices=("rgb", "flow"), default="rgb",
                       help="store the frames (rgb, default) or the TV-L1 optical flow between consecutive frames "
                            "at the stored size (flow: x, y in the first two channels; needs p3d_keras[flow])")
    group.add_argument("--flow-bound", type=common.positive_float, default=20.0,
                       help="flow: clip x, y to +-BOUND pixels per frame, mapped to 0..255 (default 20)")
    group = parser.add_argument_group("output")
    group.add_argument("--output", "-o", required=True, help="output folder (beam: file prefix)")
    group.add_argument("--shards", type=common.positive_int, help="number of shards")
    group.add_argument("--videos-per-shard", type=common.positive_int, default=100,
                       help="sets the shard count when --shards is not given (default 100)")
    group.add_argument("--gzip", action="store_true", help="GZIP-compress the shards")


def build_parser():
    parser = argparse.ArgumentParser(prog="p3d-tfrecords", description=__doc__.split("\n")[0])
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser("convert", help="convert videos into sharded TFRecords (resumable)")
    _add_input_args(convert)
    convert.add_argument("--prefix", default="data", help="shard file prefix (default 'data')")
    convert.add_argument("--workers", type=common.non_negative_int, help="worker processes (default: all cores; 0: in-process)")
    convert.add_argument("--threads", type=common.non_negative_int, help="decoder and scaler threads per video (default: cores/workers)")
    convert.add_argument("--strict", action="store_true", help="exit 1 if any video failed")
    convert.add_argument("--no-progress", action="store_true", help="plain log lines even on a terminal")
    beam = commands.add_parser("beam", help="the same conversion as an Apache Beam pipeline; "
                                            "arguments after -- go to the Beam runner")
    _add_input_args(beam)
    inspect = commands.add_parser("inspect", help="summarise shards and draw a contact sheet")
    inspect.add_argument("paths", nargs="+", help="shard files or folders of shards")
    inspect.add_argument("--gzip", action="store_true",
                         help="insist that the shards are GZIP-compressed (by default each is read as its bytes say)")
    inspect.add_argument("--contact-sheet", help="save a PNG grid of one record's frames here")
    inspect.add_argument("--record", type=common.non_negative_int, default=0, help="record for the contact sheet")
    index = commands.add_parser("index", help="write the window index of uncompressed shards (for "
                                              "training_dataset(reads='windows'), p3d-train --reads windows)")
    index.add_argument("paths", nargs="+", help="shard files or folders of shards")
    return parser


def _decode_options(args, threads=0):
    flow_options = None
    if args.modality == "flow":
        # here, not at the top: the converter's spawned workers import this module, and RGB ones load no NumPy
        from p3d_keras.tfrecords_tools import flow  # noqa: PLC0415

        flow_options = flow.FlowOptions(bound=args.flow_bound)
    return video.DecodeOptions(size=args.size, short_side=args.short_side, fps=args.fps,
                               jpeg_quality=args.jpeg_quality, max_frames=args.max_frames,
                               min_frames=args.min_frames, threads=threads, flow=flow_options)


def _describe(p):
    """The progress text of a conversion (`writer.Progress`)."""
    videos_s = (p.converted + p.failed) / p.elapsed_s if p.elapsed_s else 0.0
    eta = (p.total - p.done) / videos_s if videos_s else float("nan")
    return (f"{p.done}/{p.total} videos ({p.failed} failed) | {videos_s:.2f} videos/s | "
            f"{p.frames / max(p.elapsed_s, 1e-9):.0f} frames/s | ETA {eta:.0f}s")


def _convert(args):
    """`p3d-tfrecords convert`; an error of the input listing or of the output side (no space
    left, an output that is a file, a folder another run holds) is one message and exit 2."""
    display = ProgressDisplay(sys.stderr, sys.stderr.isatty() and not args.no_progress, _describe, logger)
    try:
        items, label_map = common.video_list(args)
        num_shards = args.shards or writer.default_num_shards(len(items), args.videos_per_shard)
        summary = writer.convert(items, label_map, args.output, decode=_decode_options(args, args.threads or 0),
                                 num_shards=num_shards, compression="GZIP" if args.gzip else None,
                                 prefix=args.prefix, workers=args.workers, on_progress=display)
    finally:
        display.close()
    totals = summary.manifest["totals"]
    logger.info("Done in %.1fs: %d records (%d frames, %.1f MB) in %d shards, %d failed, %d shards "
                "kept from an earlier run. Manifest: %s", summary.elapsed_s, totals["records"],
                totals["frames"], totals["bytes"] / 1e6, len(summary.manifest["shards"]),
                summary.failed, summary.resumed_shards, pathlib.Path(args.output) / collection.MANIFEST)
    if summary.failed:
        logger.warning("%d videos failed; see %s", summary.failed, pathlib.Path(args.output) / collection.FAILURES)
    if summary.converted == 0 or (args.strict and summary.failed):
        return 1
    return 0


def _beam(args, pipeline_args):
    items, label_map = common.video_list(args)
    compression = "GZIP" if args.gzip else None
    beam.run(items, label_map, args.output, pipeline_args=pipeline_args,
             decode=_decode_options(args), num_shards=args.shards or 0, compression=compression)
    if not beam.writes_indexes(args.output, compression):
        logger.info("No window indexes written for %s (GZIP or not a local folder): reads='windows' needs local, "
                    "uncompressed shards indexed with `p3d-tfrecords index`", args.output)
    return 0


def _inspect(args):
    # imports TensorFlow: kept out of `convert`, whose spawned workers import this module
    from p3d_keras.tfrecords_tools import inspection  # noqa: PLC0415

    paths = collection.shard_files(args.paths, argument="paths")
    compression = "GZIP" if args.gzip else "auto"
    print(json.dumps(inspection.summarize(paths, compression), indent=1, ensure_ascii=False))
    if args.contact_sheet:
        media_id = inspection.contact_sheet(paths, args.contact_sheet, record=args.record, compression=compression)
        print(f"Contact sheet of {media_id!r}: {args.contact_sheet}")
    return 0


def _index(args):
    failed = 0
    for path in collection.shard_files(args.paths, argument="paths"):
        if index.is_index_file(path):
            logger.info("Not a shard, left as it is: %s", path)
            continue
        try:
            written = index.write_index(path)
        except (ValueError, OSError) as error:
            failed += 1
            logger.error("Skipped %s: %s", path, error)
            continue
        logger.info("Indexed %s: %d records, %d frames -> %s", path, len(written.num_frames),
                    len(written.frame_offsets), index.index_path(path))
    if failed:
        logger.error("%d shards could not be indexed", failed)
    return 1 if failed else 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    argv, pipeline_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    args = build_parser().parse_args(argv)
    commands = {"convert": _convert, "beam": lambda a: _beam(a, pipeline_args), "index": _index, "inspect": _inspect}
    return common.run("p3d-tfrecords", lambda: commands[args.command](args), done=lambda code: code,
                      expected=(writer.OutputError, ImportError), log_level=args.log_level)


if __name__ == "__main__":
    sys.exit(main())
