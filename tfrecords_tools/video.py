"""PyAV decode -> upright, resized RGB frames -> JPEG bytes + timestamps, streaming frame by frame.

Decoded frames are encoded and dropped one at a time; `stream_clip` hands each JPEG to a callback
(the converter writes it to a file), so memory does not grow with the video's length, and
`encode_clip` keeps the JPEGs of a clip in memory. Frames are turned upright as they are
displayed: a display matrix (a phone video's 90 degree rotation, a mirror) is applied
(`upright_image`, also what `p3d_keras.jobs.video_inference.video_frames` reads frames with).
"""
import dataclasses
import io
import math
import os
import stat
import struct

from p3d_keras.core.checks import expect

PAPER_SIZE = (182, 242)  # (height, width) the P3D paper resizes frames to
INTERPOLATION = "BILINEAR"
# FFmpeg demuxers that turn files which are not videos into frames: `tty` renders a .txt/.nfo/.asc
# file as ANSI art.
NOT_VIDEO_DEMUXERS = {"tty": "a text file (FFmpeg would render it as ANSI art)"}
# The reason of a video whose frames give no flow (N frames give N - 1): the converter's and the video inference's.
TOO_SHORT_FOR_FLOW = "too short for flow: 1 frame decoded (flow needs 2)"


class VideoError(Exception):
    """A video that cannot be converted; `str(error)` is the reason written to failures.jsonl."""


class _CannotSeek(Exception):
    """A stream's seek failed, before any frame was decoded: decode it from its beginning."""


@dataclasses.dataclass(frozen=True)
class DecodeOptions:
    """How frames are decoded and encoded.

    size: `(height, width)` to resize to; ignored when `short_side` is given.
    short_side: resize so the shorter side is this many pixels, keeping the aspect ratio.
    fps: resample to this frame rate (None keeps every decoded frame).
    jpeg_quality: 1..95. max_frames: keep at most this many frames.
    min_frames: fewer decoded frames is a failure.
    threads: threads per video for the decoder and the scaler; 0 = automatic: cores/N in each
        of the converter's N worker processes, else FFmpeg picks (up to all cores). FFmpeg's own
        choice in every worker would oversubscribe the cores (the scaler alone starts a thread
        per core), which is slower per frame (`bench/README.md`). Does not change the output.
    flow: None stores the frames (RGB); a `flow.FlowOptions` stores the TV-L1 flow between
        consecutive frames instead (`flow`), computed on the frames at the stored size (after
        the resize: `size` or `short_side`) and after fps resampling; `max_frames` and
        `min_frames` count the decoded frames (N of them give N-1 flow frames). This module
        calls its methods and never imports `flow` (nor NumPy): RGB conversions load neither.
    """
    size: tuple = PAPER_SIZE
    short_side: int | None = None
    fps: float | None = None
    jpeg_quality: int = 90
    max_frames: int | None = None
    min_frames: int = 1
    threads: int = 0
    flow: object = None  # a flow.FlowOptions

    @property
    def modality(self):
        """`rgb` or `flow`: what the records' frames hold (`schema.MODALITIES`)."""
        return "rgb" if self.flow is None else "flow"

    def __post_init__(self):
        expect(self.size is not None and len(self.size) == 2 and min(self.size) > 0,
               "size to be (height, width) with positive sides", size=self.size)
        expect(self.short_side is None or self.short_side > 0,
               "short_side to be a positive int or None", short_side=self.short_side)
        expect(self.fps is None or self.fps > 0, "fps to be positive or None", fps=self.fps)
        expect(1 <= self.jpeg_quality <= 95, "jpeg_quality in 1..95", jpeg_quality=self.jpeg_quality)
        expect(self.max_frames is None or self.max_frames > 0,
               "max_frames to be a positive int or None", max_frames=self.max_frames)
        expect(self.min_frames >= 1, "min_frames >= 1", min_frames=self.min_frames)
        expect(self.threads >= 0, "threads >= 0", threads=self.threads)
        flow_like = dataclasses.is_dataclass(self.flow) and callable(getattr(self.flow, "jpegs", None))
        expect(self.flow is None or flow_like, "flow to be None or a flow.FlowOptions", flow=self.flow)

    def output_size(self, height, width):
        """`(height, width)` of the encoded frames for a source of `height x width`."""
        if self.short_side is None:
            return tuple(int(s) for s in self.size)
        scale = self.short_side / min(height, width)
        return max(1, round(height * scale)), max(1, round(width * scale))


@dataclasses.dataclass
class ClipInfo:
    """What `stream_clip` learnt about one video or segment; its JPEGs went to a callback."""
    timestamps_us: list
    height: int
    width: int
    frame_rate: float
    start_us: int
    end_us: int


@dataclasses.dataclass
class Clip(ClipInfo):
    """The encoded frames of one video or segment, in memory."""
    encoded_frames: list = dataclasses.field(kw_only=True)


def iter_frames(path, decode, start=None, end=None):
    """Yield `(timestamp_us from the clip start, av.VideoFrame)`, after segment selection, fps
    resampling and the frame cap. Also returns the source frame rate through `.frame_rate`."""
    return _FrameIterator(path, decode, start, end)


class _FrameIterator:
    def __init__(self, path, decode, start, end):
        self.path, self.decode = str(path), decode
        self.start_us = int(round((start or 0.0) * 1e6))
        self.end_us = None if end is None else int(round(end * 1e6))
        self.frame_rate = None
        self.duration_us = None
        self.decoded_us = None  # the last decoded frame's time from the clip start (before fps resampling)

    def __iter__(self):
        """The frames; any OSError while reading is the input's, raised as a `VideoError` (so an
        OSError from a caller's work between frames is never mistaken for the video's)."""
        try:
            yield from self._open_and_decode()
        except OSError as error:  # also PyAV's errors of that kind, e.g. closing the container
            raise VideoError(f"unreadable: {error}") from error

    def _open_and_decode(self, seek=True):
        """Open and decode; a stream that cannot seek to the segment's start is opened again and
        decoded from its beginning (a failed seek leaves FFmpeg's demuxer at the end)."""
        import av  # noqa: PLC0415 (optional extra: [video])

        _check_regular_file(self.path)
        try:
            container = av.open(self.path)
        except (av.error.FFmpegError, UnicodeDecodeError) as error:
            raise VideoError(f"unreadable: {error}") from error
        try:
            yield from self._decode_container(container, seek)
        except _CannotSeek:
            yield from self._open_and_decode(seek=False)

    def _decode_container(self, container, seek):
        with container:
            if container.format.name in NOT_VIDEO_DEMUXERS:
                raise VideoError(f"not a video: {NOT_VIDEO_DEMUXERS[container.format.name]}")
            if not container.streams.video:
                raise VideoError("not a video: no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            stream.codec_context.thread_count = self.decode.threads
            self.frame_rate = float(stream.average_rate or stream.guessed_rate or 0) or None
            self.duration_us = _duration_us(container, stream)
            yield from self._select(self._decode(container, stream, seek))

    def _decode(self, container, stream, seek):
        """(timestamp from the clip start in us, frame) of every decoded frame in the segment. A
        frame without a timestamp (a bare .h264 stream has none) follows the one before it, at that
        one's duration (else the stream's frame rate); without either, it is dropped. A stream that
        cannot seek to the segment's start (`seek`) raises `_CannotSeek` before any frame."""
        import av  # noqa: PLC0415 (optional extra: [video])

        origin, seek = stream.start_time or 0, seek and self.start_us > 0
        if seek:
            try:
                container.seek(int(self.start_us / 1e6 / stream.time_base) + origin, stream=stream)
            except av.error.FFmpegError as error:  # a stream that cannot seek (a bare .h264)
                raise _CannotSeek from error
        next_us = None if seek else 0  # where a frame without a timestamp goes
        try:
            for frame in container.decode(stream):
                if frame.pts is not None:
                    t_us = int(round(float((frame.pts - origin) * stream.time_base) * 1e6))
                elif next_us is None:
                    continue
                else:
                    t_us = next_us
                step_us = float(frame.duration * frame.time_base) * 1e6 if frame.duration and frame.time_base else \
                    (1e6 / self.frame_rate if self.frame_rate else None)
                next_us = None if step_us is None else t_us + int(round(step_us))
                if t_us < self.start_us:
                    continue
                if self.end_us is not None and t_us >= self.end_us:
                    return
                yield t_us - self.start_us, frame
        except av.error.FFmpegError as error:
            raise VideoError(f"decode error: {error}") from error

    def _select(self, frames):
        """Fps resampling (each target time takes the first frame at or after it) + frame cap."""
        fps, cap = self.decode.fps, self.decode.max_frames
        count = 0
        target = 0
        for t_us, frame in frames:
            self.decoded_us = t_us
            if fps is None:
                emitted = [t_us]
            else:
                emitted = []
                while round(target * 1e6 / fps) <= t_us:
                    emitted.append(round(target * 1e6 / fps))
                    target += 1
            for out_us in emitted:
                yield out_us, frame
                count += 1
                if cap is not None and count >= cap:
                    return


def _check_regular_file(path):
    """Raise `VideoError` unless `path` is a non-empty regular file (after symlinks): a dangling
    symlink, a folder, a FIFO or a device is a failed input, never opened (a FIFO would block)."""
    try:
        status = os.stat(path)
    except OSError as error:
        if os.path.islink(path):
            raise VideoError(f"dangling symlink to {os.readlink(path)!r}: {error.strerror}") from error
        raise VideoError(f"unreadable: {error.strerror}") from error
    if not stat.S_ISREG(status.st_mode):
        raise VideoError("not a regular file (a folder, FIFO, socket or device)")
    if status.st_size == 0:
        raise VideoError("empty file (0 bytes)")


def _duration_us(container, stream):
    if stream.duration is not None:
        return int(float(stream.duration * stream.time_base) * 1e6)
    if container.duration is not None:
        return int(container.duration)  # av.time_base is microseconds
    return None


@dataclasses.dataclass(frozen=True)
class Orientation:
    """How a decoded frame is turned to be displayed upright (a right-angle display matrix):
    `transpose` swaps rows and columns, then `flip_rows` / `flip_columns` reverse them."""
    transpose: bool = False
    flip_rows: bool = False
    flip_columns: bool = False


_PIL_TRANSPOSE = {  # (transpose, flip_rows, flip_columns) -> PIL's Image.Transpose member
    (False, False, True): "FLIP_LEFT_RIGHT", (False, True, False): "FLIP_TOP_BOTTOM",
    (False, True, True): "ROTATE_180", (True, False, False): "TRANSPOSE",
    (True, True, False): "ROTATE_90", (True, False, True): "ROTATE_270", (True, True, True): "TRANSVERSE",
}


def orientation(frame):
    """The `Orientation` of a decoded `av.VideoFrame` from its display matrix (FFmpeg's
    `AV_FRAME_DATA_DISPLAYMATRIX`: a point `(x, y)` of the frame is displayed at
    `(a*x + c*y, b*x + d*y)` plus a translation); as decoded when there is none. Raises
    `VideoError` for a matrix that is not a right-angle rotation and/or mirror."""
    import av  # noqa: PLC0415 (optional extra: [video])

    for side_data in frame.side_data:
        if side_data.type == av.sidedata.sidedata.Type.DISPLAYMATRIX:
            a, b, _, c, d = struct.unpack_from("<5i", bytes(side_data))
            break
    else:
        return Orientation()
    if bool(a) == bool(b) or bool(c) == bool(d) or bool(a) != bool(d):
        degrees = -math.degrees(math.atan2(b, a))  # counter-clockwise, as av_display_rotation_get
        raise VideoError(f"unsupported display matrix (not a right-angle rotation): {degrees:.0f} degrees")
    if b:  # rows become columns: the displayed x is c*y, the displayed y is b*x
        return Orientation(transpose=True, flip_rows=b < 0, flip_columns=c < 0)
    return Orientation(flip_rows=d < 0, flip_columns=a < 0)


def display_size(frame, turn=None):
    """`(height, width)` of `frame` as displayed (swapped by a 90 or 270 degree rotation)."""
    turn = orientation(frame) if turn is None else turn
    return (frame.width, frame.height) if turn.transpose else (frame.height, frame.width)


def upright_image(frame, height=None, width=None, threads=0):
    """`frame` as an RGB `PIL.Image`, upright as displayed (`orientation`), resized to
    `height x width` (the displayed size; default: the frame's own) with `threads` scaler
    threads (0: one per core). Deterministic, whatever the threads. Raises `VideoError`."""
    from PIL import Image  # optional extra ([video])

    turn = orientation(frame)
    height, width = display_size(frame, turn) if height is None else (height, width)
    if turn.transpose:
        height, width = width, height  # resized as decoded, then turned
    try:
        image = frame.reformat(width=width, height=height, format="rgb24",
                               interpolation=INTERPOLATION, threads=threads).to_image()
    except (OSError, ValueError) as error:  # also PyAV's errors of these kinds
        raise VideoError(f"cannot convert a frame: {error}") from error
    method = _PIL_TRANSPOSE.get(dataclasses.astuple(turn))
    return image if method is None else image.transpose(Image.Transpose[method])


def encode_jpeg(frame, height, width, quality, threads=0):
    """JPEG bytes of `frame`, upright, resized to `height x width` (`upright_image`); deterministic
    for a fixed quality, whatever the threads."""
    buffer = io.BytesIO()
    image = upright_image(frame, height, width, threads)
    try:
        image.save(buffer, format="JPEG", quality=quality)
    except (OSError, ValueError) as error:
        raise VideoError(f"cannot encode a frame: {error}") from error
    return buffer.getvalue()


def stream_clip(path, on_frame, decode=DecodeOptions(), start=None, end=None):
    """Decode `path` (optionally the segment `[start, end)` seconds), call `on_frame(jpeg)` with
    each stored frame's JPEG bytes in order as soon as it is encoded, and return a `ClipInfo`.

    The stored frames are the decoded frames, or with `decode.flow` the flow between each two
    consecutive ones (`flow.flow_frames`), each with the timestamp of its first frame; the clip's
    `start_us` and `end_us` are the decoded frames' either way. Nothing here keeps the JPEGs:
    memory does not grow with the video's length unless `on_frame` keeps them. Raises
    `VideoError` (with the reason) for unreadable, non-video, truncated, empty or too short
    inputs (possibly after some frames went to `on_frame`); an OSError raised here is
    `on_frame`'s (e.g. the converter's disk is full), never the video's."""
    frames = iter_frames(path, decode, start, end)
    decoded, size = [], []  # the decoded frames' timestamps; the stored (height, width)

    def sized():
        for t_us, frame in frames:
            if not size:
                size.extend(decode.output_size(*display_size(frame)))
            decoded.append(t_us)
            yield t_us, frame

    stored = _rgb_jpegs(sized(), decode, size) if decode.flow is None else _flow_jpegs(sized(), decode, size)
    timestamps = []
    for t_us, jpeg in stored:
        on_frame(jpeg)
        timestamps.append(t_us)
    check_complete(frames, decode, len(decoded), decoded[-1] if decoded else None, end)
    if not timestamps:  # frames were decoded (check_complete), so this is flow's: N frames give N-1
        raise VideoError(TOO_SHORT_FOR_FLOW)
    frame_rate = decode.fps or frames.frame_rate or 0.0
    start_us = frames.start_us
    end_us = start_us + (decoded[-1] + round(1e6 / frame_rate) if frame_rate else decoded[-1])
    return ClipInfo(timestamps, size[0], size[1], float(frame_rate), start_us, end_us)


def _rgb_jpegs(frames, decode, size):
    """`(timestamp, JPEG)` of each `(timestamp, av.VideoFrame)` of `frames`, upright, at `size`."""
    last_jpeg, last_frame = None, None
    for t_us, frame in frames:
        if frame is not last_frame:  # fps upsampling repeats a frame: encode it once
            last_jpeg, last_frame = encode_jpeg(frame, *size, decode.jpeg_quality, decode.threads), frame
        yield t_us, last_jpeg


def _flow_jpegs(frames, decode, size):
    """`(timestamp of its first frame, JPEG)` of the flow between each two consecutive
    `(timestamp, av.VideoFrame)` of `frames`, upright, at `size` (`flow.FlowOptions.jpegs`)."""
    timestamps = []

    def images():
        last_frame = last_image = None
        for t_us, frame in frames:
            timestamps.append(t_us)
            if frame is not last_frame:  # a repeated frame stays the same object: no motion, not computed
                last_image, last_frame = upright_image(frame, *size, decode.threads), frame
            yield last_image

    for number, jpeg in enumerate(decode.flow.jpegs(images(), decode.jpeg_quality)):
        yield timestamps[number], jpeg


def encode_clip(path, decode=DecodeOptions(), start=None, end=None):
    """`stream_clip` keeping the JPEGs: a `Clip` with `encoded_frames`."""
    encoded = []
    info = stream_clip(path, encoded.append, decode, start, end)
    return Clip(**vars(info), encoded_frames=encoded)


def check_complete(frames, decode, count, last_us, end=None):
    """Raise `VideoError` when the `count` frames that `frames` (an `iter_frames` iterator, run to
    its end) gave, the last at `last_us` from the clip start, are none, fewer than
    `decode.min_frames`, or stop well before the container's duration (a truncated file; not
    checked for a segment with an `end`, or at the frame cap). How far the file was decoded is
    its last decoded frame's time, not `last_us`: resampling to a low `decode.fps` emits the last
    frame well before the end of a complete file."""
    if not count:
        raise VideoError("zero frames decoded")
    if count < decode.min_frames:
        raise VideoError(f"too short: {count} frames < min_frames={decode.min_frames}")
    capped = decode.max_frames is not None and count >= decode.max_frames
    expected_us = frames.duration_us if end is None else None
    if capped or not expected_us or not frames.frame_rate:
        return
    decoded_us = last_us if frames.decoded_us is None else max(last_us, frames.decoded_us)
    reached_us = frames.start_us + decoded_us + 1e6 / frames.frame_rate
    if reached_us < 0.9 * expected_us - 2e6 / frames.frame_rate:
        raise VideoError(
            f"truncated: decoded up to {reached_us / 1e6:.2f}s of {expected_us / 1e6:.2f}s"
        )
