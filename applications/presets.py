"""Weight presets: one row per released P3D model, and the ImageNet initialisations. Weights are
data, not code.

A released preset says where its original was published, which graph and input it was trained
with, how frames must be normalised, and (once a maintainer publishes the Keras weights file) the
URL and sha256 of that file. See `p3d_keras.weights.cache` for how a preset is found, downloaded or
mapped from its original file.

An inflated preset (`origin="inflated"`: `imagenet`, `imagenet_gaussian`) is built rather than
downloaded: the P3D's 2D layers from keras.applications' ImageNet ResNet of its depth, its
temporal convs as `temporal_init` says (`applications.inflation`). It fixes the modality, width
and normalisation; depth (63, 131, 199), graph and classes are the caller's, the classifier new.
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
    graph: str                # "caffe" or "pytorch" (None: any, for an inflated row)
    modality: str             # "rgb" or "flow"
    classes: int              # None: any (an inflated row's classifier is new)
    labels: str               # None, or the label file in p3d_keras/applications/labels/ (without .txt)
    normalization: str        # a key of p3d_keras.core.normalization.NORMALIZATIONS
    dropout_rate: float       # head dropout of the released deploy graph
    reported: str = "-"       # accuracy the authors report for this model
    depth: object = 199       # None: any of 63, 131, 199 (an inflated row)
    width: int = 64
    input_shape: tuple = (16, 160, 160, 3)
    url: str = None           # the Keras weights file, once published
    sha256: str = None
    origin: str = "released"  # "released" (downloaded or mapped from `original_file`) or "inflated" (built)
    temporal_init: str = None  # an inflated row's `applications.inflation.TEMPORAL_INITS` choice

    @property
    def inflated(self):
        """Whether this row is built from keras.applications' ImageNet ResNet of the P3D's depth
        (`applications.inflation`) rather than loaded from a released P3D model. Such a row has no
        classes, labels, graph or depth of its own (None: any, the classifier is new)."""
        return self.origin == "inflated"

    @property
    def filename(self):
        """The name of the Keras weights file, in the cache and on the mirror."""
        return f"p3d_keras_{self.name}.weights.h5"


_CAFFE = "authors' OneDrive (github.com/ZhaofanQiu/pseudo-3d-residual-networks)"
_KERAS = "Keras' weights store (keras.applications; Keras downloads and caches them)"
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
        *(WeightPreset(name=name, description=f"P3D-63/131/199 inflated from Keras' ImageNet ResNet-50/101/152, "
                                              f"{init} temporal convs, new classifier",
                       original_file="keras.applications.ResNet{50,101,152}(weights='imagenet')",
                       published_at=_KERAS, graph=None, modality="rgb", classes=None, labels=None,
                       normalization="imagenet_caffe", dropout_rate=0.5, depth=None, origin="inflated",
                       temporal_init=init)
          for name, init in (("imagenet", "identity"), ("imagenet_gaussian", "gaussian"))),
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
