"""Weight presets: one row per released P3D model. Weights are data, not code.

A preset says where its original was published, which graph and input it was trained with, how
frames must be normalised, and (once a maintainer publishes the Keras weights file) the URL and
sha256 of that file. See `p3d_keras.weights.cache` for how a preset is found, downloaded or mapped
from its original file.
"""
import dataclasses
import os

from p3d_keras.weights.hub import HANDLE_PREFIX


@dataclasses.dataclass(frozen=True, kw_only=True)
class WeightPreset:
    """One released model: where its original file is, how it was trained, how to feed it.
    Fields are keyword-only, so that every row reads without counting positions."""

    name: str
    description: str
    original_file: str        # the file name as released
    published_at: str         # where the original was published
    graph: str                # "caffe" or "pytorch"
    modality: str             # "rgb" or "flow"
    classes: int
    labels: str               # label file in p3d_keras/applications/labels/ (without .txt)
    normalization: str        # a key of p3d_keras.core.normalization.NORMALIZATIONS
    dropout_rate: float       # head dropout of the released deploy graph
    reported: str = "-"       # accuracy the authors report for this model
    depth: object = 199
    width: int = 64
    input_shape: tuple = (16, 160, 160, 3)
    url: str = None           # the Keras weights file, once published
    sha256: str = None

    @property
    def filename(self):
        """The name of the Keras weights file, in the cache and on the mirror."""
        return f"p3d_keras_{self.name}.weights.h5"


_CAFFE = "authors' OneDrive (github.com/ZhaofanQiu/pseudo-3d-residual-networks)"
_PORT = "PyTorch port's Google Drive (github.com/qijiezhao/pseudo-3d-pytorch)"

PRESETS = {
    p.name: p
    for p in (
        WeightPreset(name="sports1m", description="P3D ResNet-199, RGB, Sports-1M (the paper's model)",
                     original_file="p3d_resnet_sports1m.caffemodel", published_at=_CAFFE, graph="caffe",
                     modality="rgb", classes=487, labels="sports1m", normalization="caffe", dropout_rate=0.1,
                     reported="Sports-1M: clip hit@1 47.9 %, video hit@1 66.4 %, video hit@5 87.4 % (paper, Table 3)"),
        WeightPreset(name="kinetics400", description="P3D ResNet-199, RGB, Kinetics-400",
                     original_file="p3d_resnet_kinetics.caffemodel", published_at=_CAFFE, graph="caffe",
                     modality="rgb", classes=400, labels="kinetics400", normalization="caffe", dropout_rate=0.5),
        WeightPreset(name="kinetics400_flow", description="P3D ResNet-199, TV-L1 flow, Kinetics-400",
                     original_file="p3d_resnet_kinetics_flow.caffemodel", published_at=_CAFFE, graph="caffe",
                     modality="flow", classes=400, labels="kinetics400", normalization="flow", dropout_rate=0.7,
                     input_shape=(16, 160, 160, 2)),
        # The port ships ImageNet mean/std in its training script; which normalisation its files
        # expect is not settled upstream (see README, "Pretrained weights").
        WeightPreset(name="kinetics400_pytorch", description="P3D-199, RGB, Kinetics-400, PyTorch port",
                     original_file="p3d_rgb_199.checkpoint.pth.tar", published_at=_PORT, graph="pytorch",
                     modality="rgb", classes=400, labels="kinetics400", normalization="imagenet", dropout_rate=0.5),
        WeightPreset(name="kinetics400_flow_pytorch", description="P3D-199, flow, Kinetics-400, PyTorch port",
                     original_file="p3d_flow_199.checkpoint.pth.tar", published_at=_PORT, graph="pytorch",
                     modality="flow", classes=400, labels="kinetics400", normalization="flow", dropout_rate=0.5,
                     input_shape=(16, 160, 160, 2)),
    )
}


def find_preset(weights):
    """The `WeightPreset` that `weights` names, or None when `weights` is None, an existing file or
    an `hf://owner/name[@revision]` handle of a model folder. A preset name is a preset whatever
    files exist; anything else raises ValueError naming it and listing the presets."""
    if weights is None or (isinstance(weights, str) and weights.startswith(HANDLE_PREFIX)):
        return None
    if isinstance(weights, str) and weights in PRESETS:
        return PRESETS[weights]
    if os.path.isfile(weights):
        return None
    raise ValueError(f"Unknown weights. Expected one of {sorted(PRESETS)} (the presets), an existing weights file "
                     f"(.weights.h5 or an original checkpoint) or a {HANDLE_PREFIX} handle. Received: "
                     f"weights={weights!r}, which is none of these")


def get_preset(name):
    """The `WeightPreset` called `name`; raises ValueError listing the known presets."""
    if name not in PRESETS:
        raise ValueError(f"Unknown weights preset. Expected one of {sorted(PRESETS)}, a Keras weights file "
                         f"(.weights.h5) or an original checkpoint path. Received: weights={name!r}")
    return PRESETS[name]
