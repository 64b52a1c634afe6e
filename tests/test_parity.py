"""Numerical parity with the original P3D code on the shared reference fixtures.

The expected logits and stage fingerprints were computed by the PyTorch port's own code under
both graphs. Logits must land within the float32 tolerances the reference README derives; stage
fingerprints are single activations rather than averages, so they get four times that.
"""
import keras
import numpy as np
import pytest

from p3d_keras.applications import P3DResNet
from p3d_keras.cli import convert_weights
from p3d_keras.weights import original
from p3d_keras.weights.caffemodel import write_caffemodel

STAGE_FACTOR = 4
# Reference stage name -> the last Keras layer of that stage (None: the model output).
STAGES = {"maxpool": "pool1", "layer1": "res2", "layer2": "res3", "layer3": "res4", "layer4": "res5",
          "avgpool": "pool5"}


def fingerprint(x):
    """Mean, std, then 16 values at np.linspace(0, size - 1, 16) of the flattened tensor."""
    flat = np.asarray(x, "float64").reshape(-1)
    return np.concatenate([[flat.mean(), flat.std()], flat[np.linspace(0, flat.size - 1, 16).astype(int)]])


def stage_outputs(model, clip):
    """Outputs of each reference stage (a stage's output is taken before its temporal max pool)."""
    names = [layer.name for layer in model.layers]
    last = {key: name if name in names else [n for n in names if n.startswith(name)][-1]
            for key, name in STAGES.items()}
    probe = keras.Model(model.input, [model.get_layer(n).output for n in last.values()] + [model.output])
    *stages, logits = probe.predict(clip, verbose=0)
    return dict(zip(STAGES, stages)), logits


def check_parity(model, graph, depth, reference, expected, tol):
    exp = expected(depth)
    stages, logits = stage_outputs(model, reference.reference_input(0))
    for key, out in stages.items():
        assert out.size == np.prod(exp[f"shape_{graph}_{key}"]), key
        np.testing.assert_allclose(fingerprint(out), exp[f"fp_{graph}_{key}"], rtol=0, atol=STAGE_FACTOR * tol,
                                   err_msg=f"stage {key} ({graph} graph, P3D-{depth})")
    np.testing.assert_allclose(logits, exp[f"logits_{graph}"], rtol=0, atol=tol, err_msg=f"{graph} logits")
    # The other graph's logits differ by 28-44 % (relative L2): the test tells the graphs apart.
    other = exp[f"logits_{'caffe' if graph == 'pytorch' else 'pytorch'}"]
    assert np.linalg.norm(logits - other) / np.linalg.norm(other) > 0.2


@pytest.fixture(scope="module")
def p3d63_file(tmp_path_factory, reference, torch_checkpoint):
    """`p3d63_file(fmt)`: the reference P3D-63 weights as an npz, or as a torch file (which needs
    torch), written once."""
    state = reference.build_state_dict(0, depth=63)
    root = tmp_path_factory.mktemp("p3d63")
    writers = {"npz": lambda path: np.savez(path, **state),
               "zip": lambda path: torch_checkpoint(state, path),
               "legacy-module": lambda path: torch_checkpoint(state, path, legacy=True, prefix="module.")}

    def file(fmt):
        path = root / {"npz": "p3d63.npz", "zip": "p3d63.pth.tar", "legacy-module": "p3d63_legacy.pth"}[fmt]
        if not path.exists():
            writers[fmt](path)
        return path

    return file


@pytest.mark.parametrize("graph", ["pytorch", "caffe"])
@pytest.mark.parametrize("fmt", ["npz", "zip", "legacy-module"])
def test_p3d63_parity(graph, fmt, p3d63_file, reference, expected, parity_tolerance):
    model = P3DResNet(63, graph=graph, classifier_activation=None, weights=p3d63_file(fmt))
    check_parity(model, graph, 63, reference, expected, parity_tolerance[63])


@pytest.mark.slow
@pytest.mark.parametrize("graph", ["pytorch", "caffe"])
def test_p3d199_parity(graph, tmp_path_factory, reference, expected, parity_tolerance, torch_checkpoint):
    path = tmp_path_factory.getbasetemp() / "p3d199_legacy.pth.tar"
    if not path.exists():  # the released 2017 files use torch's legacy serialization
        torch_checkpoint(reference.build_state_dict(0, depth=199), path, legacy=True)
    model = P3DResNet(199, graph=graph, classifier_activation=None, weights=path)
    check_parity(model, graph, 199, reference, expected, parity_tolerance[199])


def caffe_blobs(state, model):
    """The port-named reference tensors as Caffe layers with their blobs (BN: scale, shift,
    mean, variance, stored as (1, C) blobs)."""
    original.assign_original(model, state, "pytorch")
    flat = original.original_tensors(model, "caffe")
    layers = {}
    for name, value in flat.items():
        layer = name.rsplit(".", 1)[0]
        is_bn = f"{layer}.running_mean" in flat
        layers.setdefault(layer, []).append(value.reshape(1, -1) if is_bn else value)
    return layers


@pytest.mark.parametrize("depth", [63, pytest.param(199, marks=pytest.mark.slow)])
def test_caffemodel_reproduces_the_caffe_graph(depth, reference, expected, parity_tolerance, tmp_path):
    model = P3DResNet(depth, classifier_activation=None)
    path = tmp_path / f"p3d{depth}.caffemodel"
    write_caffemodel(path, caffe_blobs(reference.build_state_dict(0, depth=depth), model))
    model = P3DResNet(depth, classifier_activation=None)  # fresh weights: only the file can make it pass
    assert convert_weights.main([str(path), str(tmp_path / "c.weights.h5"), "--depth", str(depth)]) == 0
    model.load_weights(tmp_path / "c.weights.h5")
    logits = model.predict(reference.reference_input(0), verbose=0)
    np.testing.assert_allclose(logits, expected(depth)["logits_caffe"], rtol=0, atol=parity_tolerance[depth])
