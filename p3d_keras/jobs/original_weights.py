"""An original P3D checkpoint (the PyTorch port's `.pth`/`.pth.tar`/`.npz`, the authors'
`.caffemodel`) saved as a Keras weights file (`save_as_keras_weights`), or a preset or an original
checkpoint saved as a P3D model folder (`save_as_model_folder`); `p3d-convert-weights` does both."""
import os

from p3d_keras.applications import P3DResNet, PRESETS
from p3d_keras.core.normalization import DEFAULT_NORMALIZATION
from p3d_keras.jobs import model_folder
from p3d_keras.weights.original import assign_original, read_original

# What the original files were trained with, by graph and modality: what their presets say.
ORIGINAL_NORMALIZATION = {(p.graph, p.modality): p.normalization for p in PRESETS.values() if not p.inflated}


def save_as_keras_weights(src, dst, *, depth=199, modality="rgb", graph=None, classes=400):
    """Read the original checkpoint `src` (format detected from its bytes), load it into a
    P3DResNet of `depth`, `modality`, `classes` and `graph` (default: the file's own: caffe for a
    `.caffemodel`, else pytorch), and save its weights to `dst` (ending in `.weights.h5`).
    Returns the graph. Raises ValueError (a `CheckpointError` for the file) naming what is wrong;
    nothing is written then."""
    if not str(dst).endswith(".weights.h5"):
        raise ValueError(f"Expected dst to end in .weights.h5. Received: dst={dst!r}")
    model, graph = _mapped(src, depth=depth, modality=modality, graph=graph, classes=classes)
    model.save_weights(dst)
    return graph


def _mapped(src, *, depth, modality, graph, classes):
    naming, tensors = read_original(src)
    model = P3DResNet(depth, classes=classes, modality=modality, graph=graph or naming, classifier_activation=None)
    assign_original(model, tensors, naming, source=src)
    return model, graph or naming


def save_as_model_folder(src, folder, *, depth=199, modality="rgb", graph=None, classes=400, normalization=None,
                         class_names=None):
    """Save the preset `src` (its network, class names and normalisation) or the original
    checkpoint `src` (loaded as `save_as_keras_weights` does; normalisation default: what such
    files were trained with, `ORIGINAL_NORMALIZATION`) as the P3D model folder `folder`.
    Returns the folder. Raises ValueError naming what is wrong; nothing is written then."""
    if src in PRESETS:
        loaded = model_folder.load_model(src)
        return model_folder.save_model_folder(folder, loaded.model, loaded.metadata)
    model, graph = _mapped(src, depth=depth, modality=modality, graph=graph, classes=classes)
    normalization = normalization or ORIGINAL_NORMALIZATION.get((graph, modality), DEFAULT_NORMALIZATION[modality])
    return model_folder.save_model_folder(folder, model, normalization=normalization, class_names=class_names,
                                          provenance={"original_file": os.path.basename(str(src)), "graph": graph})
