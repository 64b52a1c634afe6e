"""An original P3D checkpoint (the PyTorch port's `.pth`/`.pth.tar`/`.npz`, the authors'
`.caffemodel`) saved as a Keras weights file (`save_as_keras_weights`; `p3d-convert-weights`)."""
from p3d_keras.applications import P3DResNet
from p3d_keras.weights.original import assign_original, read_original


def save_as_keras_weights(src, dst, *, depth=199, modality="rgb", graph=None, classes=400):
    """Read the original checkpoint `src` (format detected from its bytes), load it into a
    P3DResNet of `depth`, `modality`, `classes` and `graph` (default: the file's own: caffe for a
    `.caffemodel`, else pytorch), and save its weights to `dst` (ending in `.weights.h5`).
    Returns the graph. Raises ValueError (a `CheckpointError` for the file) naming what is wrong;
    nothing is written then."""
    if not str(dst).endswith(".weights.h5"):
        raise ValueError(f"Expected dst to end in .weights.h5. Received: dst={dst!r}")
    naming, tensors = read_original(src)
    model = P3DResNet(depth, classes=classes, modality=modality, graph=graph or naming, classifier_activation=None)
    assign_original(model, tensors, naming, source=src)
    model.save_weights(dst)
    return graph or naming
