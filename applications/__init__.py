"""The P3D ResNet family in the style of keras.applications (installed as p3d_keras.applications)."""
from .inflation import inflate_resnet
from .ops2d import as_2d_ops
from .p3d_resnet import P3DResNet, P3DResNet63, P3DResNet131, P3DResNet199
from .preprocessing import decode_predictions, load_labels, preprocess_input, top_classes
from .presets import PRESETS, WeightPreset, find_preset, get_preset

__all__ = ["P3DResNet", "P3DResNet63", "P3DResNet131", "P3DResNet199", "PRESETS", "WeightPreset", "find_preset",
           "get_preset",
           "preprocess_input", "decode_predictions", "load_labels", "top_classes", "as_2d_ops",
           "inflate_resnet"]
