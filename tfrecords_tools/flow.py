"""TV-L1 optical flow between consecutive frames, stored as the released P3D flow models expect.

The flow is OpenCV's Dual TV-L1 (`cv2.optflow.DualTVL1OpticalFlow`, package
`opencv-contrib-python-headless`, the `flow` extra): the maintained implementation of the TV-L1
that TSN's and I3D's `denseflow` tools compute (the CPU build of the same algorithm, with the
same default parameters). It runs on the grey levels of two frames (ITU-R 601 luma).

Conventions (those of the released two-stream models): each of x and y (pixels per frame, x to
the right, y downwards) is clipped to `[-bound, bound]` (bound 20) and mapped linearly to 0..255,
`round((clip(f, -bound, bound) + bound) * 255 / (2 * bound))` (`to_uint8`), so no motion is 128
(127.5 rounded half to even) and the `flow` normalisation (minus 128) centres it. A stored flow
frame is a JPEG whose first two channels are x and y (`stored_frame`: the third channel is 0,
as `p3d_keras.jobs.export.encode_record` pads two-channel frames), encoded without chroma
subsampling (`encode_jpeg`): readers with `modality="flow"` decode three channels and keep the
first two. N frames give N-1 flow frames; flow frame i is the motion from frame i to frame i+1.

No TensorFlow here: the converter's workers and a video-inference path compute flow with this
module. OpenCV and Pillow are imported when first used (optional extras).
"""
import dataclasses
import io

import numpy as np

from p3d_keras.core.checks import expect

__all__ = ["FlowOptions", "compute_flow", "encode_jpeg", "flow_frames", "from_uint8", "stored_frame", "to_uint8",
           "uint8_flow"]

BOUND = 20.0  # pixels per frame: the released flow models' clipping bound
THIRD_CHANNEL = 0  # the value of a stored flow frame's unused third channel


@dataclasses.dataclass(frozen=True)
class FlowOptions:
    """How flow frames are computed: the clipping `bound` (pixels per frame) and the parameters of
    OpenCV's `DualTVL1OpticalFlow_create`, named as there (their defaults, which are also
    denseflow's). A converter output folder records them (`manifest.json`, `params.decode.flow`)."""
    bound: float = BOUND
    tau: float = 0.25
    lambda_: float = 0.15
    theta: float = 0.3
    nscales: int = 5
    warps: int = 5
    epsilon: float = 0.01
    inner_iterations: int = 30
    outer_iterations: int = 10
    scale_step: float = 0.8
    gamma: float = 0.0
    median_filtering: int = 5

    def __post_init__(self):
        expect(self.bound > 0, "bound > 0", bound=self.bound)
        for name in ("nscales", "warps", "inner_iterations", "outer_iterations", "median_filtering"):
            expect(isinstance(getattr(self, name), int) and getattr(self, name) >= 1,
                   f"{name} to be a positive int", **{name: getattr(self, name)})
        expect(0 < self.scale_step < 1, "0 < scale_step < 1", scale_step=self.scale_step)

    def algorithm(self):
        """A new `cv2.optflow.DualTVL1OpticalFlow` with these parameters (not thread-safe: one per
        thread). Raises ImportError, saying what to install, without OpenCV's contrib modules."""
        try:
            import cv2  # noqa: PLC0415 (optional extra: [flow])

            create = cv2.optflow.DualTVL1OpticalFlow_create
        except (ImportError, AttributeError) as error:
            raise ImportError(f"Expected OpenCV with its contrib modules for TV-L1 flow: pip install "
                              f"'p3d_keras[flow]' (opencv-contrib-python-headless, and no other OpenCV "
                              f"package). Received: {type(error).__name__}: {error}") from error
        return create(
            tau=self.tau, lambda_=self.lambda_, theta=self.theta, nscales=self.nscales, warps=self.warps,
            epsilon=self.epsilon, innnerIterations=self.inner_iterations, outerIterations=self.outer_iterations,
            scaleStep=self.scale_step, gamma=self.gamma, medianFiltering=self.median_filtering,
            useInitialFlow=False)

    def jpegs(self, frames, quality=90):
        """Stream the flow JPEGs (`encode_jpeg`) of the consecutive `frames` (`flow_frames`)."""
        return (encode_jpeg(xy, quality) for xy in flow_frames(frames, self))


def _grey(frame, argument):
    """The uint8 grey levels `[H, W]` of a uint8 frame `[H, W]` or RGB `[H, W, 3]` (an array, or
    what `np.asarray` makes one of, e.g. a PIL image)."""
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or not (frame.ndim == 2 or (frame.ndim == 3 and frame.shape[-1] in (1, 3))):
        raise ValueError(f"Expected {argument} to be a uint8 frame [H, W] or RGB [H, W, 3]. Received: "
                         f"{argument} of shape {frame.shape} and dtype {frame.dtype}")
    if frame.ndim == 2:
        return frame
    if frame.shape[-1] == 1:
        return frame[..., 0]
    import cv2  # noqa: PLC0415 (optional extra: [flow])

    return cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)


def compute_flow(first, second, options=FlowOptions(), algorithm=None):
    """The TV-L1 flow from the uint8 frame `first` to `second` (grey `[H, W]` or RGB `[H, W, 3]`,
    one size): float32 `[H, W, 2]`, x then y, in pixels (a point at `(x, y)` in `first` is near
    `(x + u, y + v)` in `second`), not clipped. `algorithm`: an `options.algorithm()` to reuse.
    Raises ValueError for frames of another dtype, rank or size."""
    first, second = _grey(first, "first"), _grey(second, "second")
    if first.shape != second.shape:
        raise ValueError(f"Expected two frames of one size. Received: first of {first.shape} and second of "
                         f"{second.shape}")
    algorithm = options.algorithm() if algorithm is None else algorithm
    return algorithm.calc(first, second, None)


def to_uint8(flow, bound=BOUND):
    """`round((clip(flow, -bound, bound) + bound) * 255 / (2 * bound))` as uint8 (half to even)."""
    scaled = (np.clip(np.asarray(flow, np.float64), -bound, bound) + bound) * (255.0 / (2 * bound))
    return np.rint(scaled).astype(np.uint8)


def from_uint8(values, bound=BOUND):
    """The flow (float32, pixels) that `to_uint8` stored as `values` (within `bound / 255`)."""
    return (np.asarray(values, np.float32) * np.float32(2 * bound / 255) - np.float32(bound)).astype(np.float32)


def uint8_flow(first, second, options=FlowOptions(), algorithm=None):
    """`to_uint8(compute_flow(first, second))`: uint8 `[H, W, 2]`, as a flow model reads it."""
    return to_uint8(compute_flow(first, second, options, algorithm), options.bound)


def flow_frames(frames, options=FlowOptions()):
    """Stream the uint8 flow `[H, W, 2]` (`uint8_flow`) of each pair of consecutive frames of the
    iterable `frames` (uint8 grey or RGB, one size, as `compute_flow` takes them; PIL images too):
    N frames give N-1, each computed as soon as its second frame arrives; only the previous frame
    is held. A frame that is the same object as the previous one (a repeated frame, e.g.
    frame-rate upsampling) gives no motion (128) without computing."""
    algorithm = options.algorithm()
    previous = previous_grey = None
    for frame in frames:
        grey = previous_grey if frame is previous else _grey(frame, "frames")
        if previous is not None:
            if frame is previous:
                yield np.full(grey.shape + (2,), to_uint8(0.0, options.bound), np.uint8)
            else:
                yield uint8_flow(previous_grey, grey, options, algorithm)
        previous, previous_grey = frame, grey


def stored_frame(xy):
    """The three-channel uint8 frame `[H, W, 3]` storing the flow `xy` (`[H, W, 2]` uint8): x, y, then
    `THIRD_CHANNEL`; a reader keeps the first two channels."""
    xy = np.asarray(xy)
    if xy.dtype != np.uint8 or xy.ndim < 1 or xy.shape[-1] != 2:
        raise ValueError(f"Expected uint8 flow [..., 2]. Received: shape {xy.shape} and dtype {xy.dtype}")
    return np.concatenate([xy, np.full(xy.shape[:-1] + (1,), THIRD_CHANNEL, np.uint8)], axis=-1)


def encode_jpeg(xy, quality=90):
    """The JPEG bytes (no chroma subsampling, so x and y keep full resolution) of the uint8 flow
    `xy` (`[H, W, 2]`) stored as `stored_frame`."""
    from PIL import Image  # noqa: PLC0415 (optional extra: [video])

    buffer = io.BytesIO()
    Image.fromarray(stored_frame(xy), "RGB").save(buffer, format="JPEG", quality=quality, subsampling=0)
    return buffer.getvalue()
