"""One video's feature file, as `p3d-extract-features` writes it for videos (`jobs.video_features`,
`jobs.beam_features`) and `p3d-transfer` reads it: NumPy only, so a program that only reads
features never loads Keras or TensorFlow. `np.load` without pickles: a file cannot run code."""
import io
import json

import numpy as np

from p3d_keras.core.files import read_npz

FEATURES = "features/"  # npz key prefix: features/<layer>
SUFFIX = ".npz"


def encode_features(item, features, timestamps, decoded, looped, provenance_json):
    """The bytes of one video's file (the module docstring says what it holds): `features`
    `{layer: [N, D]}`, `timestamps` `[N, 2]` seconds, `decoded` a `window_workers.Decoded` (its `fps`, `seconds`)."""
    buffer = io.BytesIO()
    np.savez(buffer, **{f"{FEATURES}{name}": np.asarray(value, "float32") for name, value in features.items()},
             timestamps=np.asarray(timestamps, "float64").reshape(-1, 2), fps=np.float64(decoded.fps),
             seconds=np.float64(decoded.seconds), media_id=np.str_(item.media_id), path=np.str_(item.path),
             looped=np.bool_(looped), provenance=np.str_(provenance_json))
    return buffer.getvalue()


def read_features(path):
    """One video's file as a dict: `features` `{layer: [N, D]}`, `timestamps`, `fps`, `seconds`,
    `media_id`, `path`, `looped` (Python values) and `provenance` (parsed). Raises ValueError
    naming `path` when it cannot be read as such a file (missing, truncated, pickled, another .npz)."""
    data = read_npz(path)  # ValueError naming the file: not a zip of arrays, or pickled
    try:
        result = {"features": {k[len(FEATURES):]: data[k] for k in data if k.startswith(FEATURES)},
                  "timestamps": data["timestamps"]}
        result.update(fps=float(data["fps"]), seconds=float(data["seconds"]), media_id=str(data["media_id"]),
                      path=str(data["path"]), looped=bool(data["looped"]),
                      provenance=json.loads(str(data["provenance"])))
    except (KeyError, ValueError, TypeError) as error:
        raise ValueError(f"Expected a per-video feature file of p3d-extract-features. Received: {path} "
                         f"({type(error).__name__}: {error})") from None
    return result
