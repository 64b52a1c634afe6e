"""`p3d-extract-features`: features of videos, from TFRecord shards or straight from video files.

    p3d-extract-features --data shards/ --out features.npz --model runs/p3d/best        # shards
    p3d-extract-features --videos talks/ --out features/ --model runs/p3d/best \\
        --layers pool5,res5c --stride 0.5s --workers 4                                # videos
    p3d-extract-features --csv list.csv --out /nfs/features/ --model hf://me/p3d --beam \\
        -- --runner=FlinkRunner --flink_master=host:8081                              # videos, Beam

Shard mode (`--data`): pool5 features per clip and their per-video mean into one .npz file
(`jobs.features.extract_features`). Video mode (`--videos` a file or a folder, or `--csv` and
`--layout` as p3d-tfrecords lists a collection): one file per video with each window's features
and times, an index and failures.jsonl in the folder `--out`, resumable
(`jobs.video_features.extract_video_features`). With `--beam`, the same video mode as an Apache
Beam pipeline (`jobs.beam_features.run`); the arguments after `--` go to the Beam runner.

The jobs are imported when they run: the decoding processes of the video mode import this module
(spawn) and must not load TensorFlow.
"""
import argparse
import logging
import sys

from p3d_keras.cli import common
from p3d_keras.cli.progress import ProgressDisplay
from p3d_keras.core.output_folder import OutputError
from p3d_keras.tfrecords_tools.collection import FAILURES

PROG = "p3d-extract-features"
log = logging.getLogger(PROG)


def build_parser():
    p = argparse.ArgumentParser(prog=PROG, description="Features of videos: pool5 per clip and per video from "
                                "shards (--data) into an .npz file, or per window of video files (--videos, --csv) "
                                "into a folder of .npz files.")
    common.add_shard_reading_arguments(p, out_help="output: an .npz file (--data), a folder (videos)",
                                       data_required=False)
    common.add_video_list_arguments(p, layout_default=None, root_names=("--videos", "--root"),
                                    root_help="a video file, or a folder of videos (any depth; with --layout, that "
                                              "layout's root; with --csv, where its relative paths start)")
    group = p.add_argument_group("video mode")
    group.add_argument("--layers", type=_names, default=("pool5",),
                       help="comma-separated outputs: pool5, probabilities or layer names, e.g. pool5,res5c "
                            "(default pool5)")
    group.add_argument("--workers", type=common.non_negative_int, default=2,
                       help="decoding processes (default 2; 0: a thread of this process)")
    group.add_argument("--retry-failed", action="store_true", help="decode again the videos that failed before")
    group.add_argument("--strict", action="store_true", help="exit 1 if any video failed")
    group.add_argument("--no-progress", action="store_true", help="plain log lines even on a terminal")
    group.add_argument("--beam", action="store_true",
                       help="run as an Apache Beam pipeline (the [beam] extra; --out a folder every worker sees); "
                            "arguments after -- go to the Beam runner (default DirectRunner); --workers and "
                            "--no-progress are the local run's")
    common.add_window_arguments(p)
    return p


def _names(text):
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"Expected comma-separated output names, e.g. pool5,res5c. Received: {text!r}")
    return names


def _videos(args):
    """The items of the video flags: a layout's listing, a CSV's, or every video of `--videos`."""
    from p3d_keras.tfrecords_tools import sources  # noqa: PLC0415 (with the jobs, at run time)

    if args.layout is None and args.csv is not None:
        args.layout = "csv"
    if args.layout is None:
        if args.root is None:
            raise ValueError("Expected --videos (a video file or folder) or --csv. Received: none")
        return sources.list_path(args.root)
    return common.video_list(args)[0]


def _describe(p):
    """The progress text of a feature extraction (`video_features.Progress`)."""
    return (f"{p.done}/{p.total} videos ({p.failed} failed, {p.looped} looped) | {p.videos_per_s:.2f} videos/s | "
            f"{p.windows_per_s:.1f} windows/s | ETA {p.eta_s:.0f}s")


def _video_mode(args):
    # Keras and TensorFlow: kept out of the decoding processes, which import this module
    from p3d_keras.jobs import features, video_features  # noqa: PLC0415

    items = _videos(args)
    model = features.feature_network(common.model_spec(args), args.normalization)
    display = ProgressDisplay(sys.stderr, sys.stderr.isatty() and not args.no_progress, _describe, log)
    try:
        summary = video_features.extract_video_features(
            model, items, args.out, layers=args.layers, batch_size=args.batch_size, workers=args.workers,
            retry_failed=args.retry_failed, on_progress=display, **common.window_arguments(args))
    finally:
        display.close()
    return _report(summary, args)


def _beam_mode(args, pipeline_args):
    from p3d_keras.jobs import beam_features  # noqa: PLC0415 (Keras and Beam: at run time, as the other modes)

    summary = beam_features.run(_videos(args), common.model_spec(args), args.out, layers=args.layers,
                                batch_size=args.batch_size, normalization=args.normalization,
                                retry_failed=args.retry_failed, pipeline_args=pipeline_args,
                                **common.window_arguments(args))
    return _report(summary, args)


def _report(summary, args):
    """Print what a video run did (a `video_features.Summary`); the exit code."""
    p = summary.progress
    print(f"{p.written} videos written ({p.windows} windows, {p.looped} looped: shorter than a window), "
          f"{p.resumed} done before, {len(summary.failures)} failed -> {summary.out}")
    if summary.failures:
        log.warning("%d videos failed; see %s", len(summary.failures), f"{summary.out}/{FAILURES}")
    return 1 if args.strict and summary.failures else 0


def _shard_mode(args):
    from p3d_keras.jobs import features  # noqa: PLC0415 (Keras: kept out of the video mode's decoding processes)

    result = features.extract_features(common.model_spec(args), **common.shard_reading_arguments(args))
    log.info("%d clips, %d videos, %d-d features -> %s", len(result["clip_labels"]), len(result["video_ids"]),
             result["video_features"].shape[1], args.out)
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    argv, pipeline_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    args = build_parser().parse_args(argv)

    def job():
        videos = args.root is not None or args.csv is not None or args.layout is not None
        if (args.data is not None) == videos:
            raise ValueError(f"Expected either --data (shards) or --videos/--csv (video files). Received: "
                             f"{'both' if videos else 'neither'}")
        if pipeline_args and not args.beam:
            raise ValueError(f"Expected runner arguments after -- only with --beam. Received: {pipeline_args}")
        if args.beam and not videos:
            raise ValueError("Expected --beam with --videos/--csv (video files). Received: --data (shards)")
        if args.beam:
            return _beam_mode(args, pipeline_args)
        return _video_mode(args) if videos else _shard_mode(args)

    return common.run(PROG, job, done=lambda code: code, expected=(OutputError,))


if __name__ == "__main__":
    sys.exit(main())
