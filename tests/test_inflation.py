"""ImageNet inflation (`applications.inflation`, `weights="imagenet"`): a clip of identical frames
through the inflated P3D gives the 2D ResNet's pooled features, block by block and for P3D-63 in
both graphs; the Gaussian option; bad inputs; `p3d-train --weights imagenet`. No network: the
keras.applications ResNets are built with random weights (biases and BatchNorm statistics too)."""
import dataclasses

import keras
import numpy as np
import pytest

from p3d_keras.applications import PRESETS, P3DResNet, inflation
from p3d_keras.applications.p3d_resnet import fit_unit_axes
from p3d_keras.cli import common
from p3d_keras.cli import train as train_cli
from p3d_keras.core.layers import P3DBottleneck
from p3d_keras.core.normalization import normalize
from p3d_keras.jobs import model_folder, models, training
from program_fixtures import SPEC

FRAMES, SIZE = 16, 64
# float32 rounding of two summation orders through ~50 layers: max |delta| 1.8e-7 observed on pooled
# features up to 0.8; the Caffe graph against the unshifted ResNet differs by 4.7e-4.
RTOL, ATOL = 1e-5, 2e-6
REAL_RESNET50 = keras.applications.ResNet50


def randomize(model, seed=0):
    """Random conv biases and well-conditioned BatchNorm parameters and statistics (a weights=None
    ResNet has zero biases and identity statistics, which would hide a wrong fold)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel, rng.normal(0, 0.1, bias.shape)])
        elif isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            gamma = rng.uniform(0.2, 0.5, n) if layer.name.endswith(("_3_bn", "_0_bn")) else rng.uniform(0.5, 1.5, n)
            layer.set_weights([gamma, rng.normal(0, 0.1, n), rng.normal(0, 0.1, n), rng.uniform(0.5, 2.0, n)])
    return model


def random_resnet50(**kwargs):
    return randomize(REAL_RESNET50(**{**kwargs, "weights": None}))


def static_clip(seed=0, frames=FRAMES, size=SIZE):
    frame = np.random.default_rng(seed).normal(size=(2, 1, size, size, 3)).astype("float32")
    return np.repeat(frame, frames, axis=1)


def caffe_aligned(resnet):
    """`resnet` with pool1 windows starting at 0 (pad ((0, 1), (0, 1)), as the Caffe graph): its
    stem, then Caffe's pool1, then its own layers from res2 on."""
    frames = keras.Input((SIZE, SIZE, 3))
    stem = keras.Model(resnet.inputs, resnet.get_layer("conv1_relu").output)(frames)
    pooled = keras.layers.MaxPooling2D(3, 2)(keras.layers.ZeroPadding2D(((0, 1), (0, 1)))(stem))
    rest = keras.Model(resnet.get_layer("pool1_pool").output, resnet.output)
    return keras.Model(frames, rest(pooled))


@pytest.fixture(scope="module")
def resnet50():
    return random_resnet50(include_top=False, pooling="avg", input_shape=(SIZE, SIZE, 3))


def p3d63(graph, **kwargs):
    return P3DResNet(63, include_top=False, pooling="avg", graph=graph, input_shape=(FRAMES, SIZE, SIZE, 3), **kwargs)


@pytest.mark.parametrize("graph", ["caffe", "pytorch"])
@pytest.mark.parametrize("kind", ["A", "B", "C"])
def test_each_block_equals_its_2d_bottleneck_on_identical_frames(kind, graph):
    rng = np.random.default_rng(1)
    clip = np.repeat(rng.uniform(0, 1, (2, 1, 8, 8, 16)).astype("float32"), 4, axis=1)
    block, plain = P3DBottleneck(4, kind, graph, projection=True), P3DBottleneck(4, "2D", graph, projection=True)
    block.build(clip.shape)
    plain.build(clip.shape)
    for sublayer in ("reduce", "spatial", "expand", "shortcut"):
        for part in ("conv", "bn"):
            layer, mine = getattr(plain, f"{part}_{sublayer}"), getattr(block, f"{part}_{sublayer}")
            values = [rng.uniform(0.5, 1.5, w.shape) if w.path.endswith(("gamma", "variance")) else
                      rng.normal(0, 0.3, w.shape) for w in layer.weights]
            layer.set_weights(values)
            mine.set_weights([fit_unit_axes(v, w.shape, w.path) for v, w in zip(values, mine.weights)])
    expected = np.asarray(plain(clip))
    assert (expected > 0).mean() > 0.3  # not a degenerate block
    kernel = inflation.TEMPORAL_KERNEL[graph][kind]
    inflation.set_temporal(block, kernel, None)
    np.testing.assert_allclose(np.asarray(block(clip)), expected, rtol=1e-6, atol=1e-6)
    inflation.set_temporal(block, {"identity": "zero", "zero": "identity"}[kernel], None)  # the other one
    assert np.abs(np.asarray(block(clip)) - expected).max() > 1e-2


@pytest.mark.parametrize("graph", ["pytorch", "caffe"])
def test_inflated_p3d63_gives_the_2d_resnet_features_on_a_static_clip(resnet50, graph):
    """The port's graph pools like Keras' ResNet: it equals the ResNet itself; the Caffe graph's
    pool1 windows start one pixel later: it equals the ResNet with that pool1."""
    model = inflation.inflate_resnet(resnet50, p3d63(graph))
    clip = static_clip()
    reference = resnet50 if graph == "pytorch" else caffe_aligned(resnet50)
    expected = np.asarray(reference(clip[:, 0]))
    features = np.asarray(model(clip))
    assert np.abs(expected).max() > 0.1  # not a degenerate network
    np.testing.assert_allclose(features, expected, rtol=RTOL, atol=ATOL)
    if graph == "caffe":  # the alignment matters: the Caffe graph is not the ResNet itself
        assert np.abs(features - np.asarray(resnet50(clip[:, 0]))).max() > 100 * ATOL


def test_gaussian_temporal_init_is_the_papers(resnet50):
    identity = inflation.inflate_resnet(resnet50, p3d63("pytorch"))
    gaussian = inflation.inflate_resnet(resnet50, p3d63("pytorch"), temporal_init="gaussian", seed=3)
    again = inflation.inflate_resnet(resnet50, p3d63("pytorch"), temporal_init="gaussian", seed=3)
    kernels = []
    for a, b, c in zip(identity.layers, gaussian.layers, again.layers):
        for v, w, x in zip(a.weights, b.weights, c.weights):
            np.testing.assert_array_equal(w, x)  # seeded
            if "branch2b_t/" in w.path and "kernel" in w.path:
                kernels.append(np.asarray(w).ravel())
            else:
                np.testing.assert_array_equal(v, w)  # only the temporal kernels differ
    kernels = np.concatenate(kernels)
    assert abs(kernels.std() - inflation.GAUSSIAN_STDDEV) < 1e-5 and abs(kernels.mean()) < 1e-5
    clip = static_clip()
    expected, features = np.asarray(identity(clip)), np.asarray(gaussian(clip))
    # differs, but stays close: the shortcuts carry what the A blocks (u ~ 0) drop (4 % here)
    assert 1e-3 < np.linalg.norm(features - expected) / np.linalg.norm(expected) < 0.2


def test_bad_inputs_are_named(resnet50):
    with pytest.raises(ValueError, match=r"stage table of 'p3d_resnet', \(1, 1, 1, 1\) blocks.*Received: .*"
                                         r"\(3, 4, 6, 3\)"):
        inflation.inflate_resnet(resnet50, P3DResNet((1, 1, 1, 1), width=4, input_shape=(16, 32, 32, 3), classes=3))
    tiny = P3DResNet((1, 1, 1, 1), width=4, input_shape=(16, 32, 32, 3), classes=3)
    with pytest.raises(ValueError, match="Expected a keras.applications ResNet50/101/152.*Received: 'p3d_resnet'"):
        inflation.inflate_resnet(tiny, tiny)
    with pytest.raises(ValueError, match="Expected a keras.applications ResNet .a keras.Model.. Received: .*str"):
        inflation.inflate_resnet("resnet50", tiny)
    with pytest.raises(ValueError, match="Expected a P3D ResNet built by P3DResNet. Received: 'resnet50'"):
        inflation.inflate_resnet(resnet50, resnet50)
    with pytest.raises(ValueError, match=r"Expected temporal_init in \('identity', 'gaussian'\). Received: .*'xavier'"):
        inflation.inflate_resnet(resnet50, tiny, temporal_init="xavier")
    with pytest.raises(ValueError, match=r"Expected depth in \[63, 131, 199\]. Received: depth=\(1, 1, 1, 1\)"):
        P3DResNet((1, 1, 1, 1), weights="imagenet", input_shape=(16, 32, 32, 3))
    with pytest.raises(ValueError, match="is a modality='rgb' model. Received: modality='flow'"):
        P3DResNet(63, weights="imagenet", modality="flow")
    with pytest.raises(ValueError, match="is a width=64 model. Received: width=32"):
        P3DResNet(63, weights="imagenet", width=32)
    with pytest.raises(model_folder.ModelFolderError, match="Expected a trained model. Received: 'imagenet'"):
        model_folder.load_model("imagenet")


@pytest.fixture
def no_download(monkeypatch, resnet50):
    """keras.applications.ResNet50 asked for its ImageNet weights without classifier gives the
    random `resnet50` (any input size inflates the same)."""
    def load(weights, include_top):
        assert (weights, include_top) == ("imagenet", False)
        return resnet50

    monkeypatch.setattr(keras.applications, "ResNet50", load)


def test_weights_imagenet_builds_the_inflated_network(no_download, resnet50):
    model = P3DResNet(63, weights="imagenet", graph="pytorch", classes=7, input_shape=(FRAMES, SIZE, SIZE, 3),
                      classifier_activation=None)
    assert model.output_shape == (None, 7)
    features = keras.Model(model.input, model.get_layer("pool5").output)
    np.testing.assert_allclose(np.asarray(features(static_clip())), np.asarray(resnet50(static_clip()[:, 0])),
                               rtol=RTOL, atol=ATOL)


def test_p3d_train_weights_imagenet(no_download, resnet50):
    """The flags of `p3d-train --depth 63 --weights imagenet` give the inflated network to train."""
    args = train_cli.build_parser().parse_args(["--train", "t", "--out", "o", "--depth", "63", "--weights", "imagenet",
                                                "--size", "32"])
    spec = common.model_spec(args)
    assert spec == dataclasses.replace(SPEC, depth=63, width=64, weights="imagenet", size=32)
    loaded = training.model_for_classes(spec, classes=3, class_names=["jump", "run", "sit"])
    np.testing.assert_array_equal(loaded.model.get_layer("conv1").get_weights()[0][0],
                                  resnet50.get_layer("conv1_conv").get_weights()[0])
    assert loaded.model.output_shape == (None, 3) and loaded.metadata.normalization == "imagenet_caffe"
    assert loaded.metadata.provenance["preset"] == "imagenet" and models.class_names(spec) is None


def test_inflated_rows_in_the_preset_table():
    for name, init in (("imagenet", "identity"), ("imagenet_gaussian", "gaussian")):
        preset = PRESETS[name]
        assert preset.inflated and preset.temporal_init == init and preset.labels is None
        assert preset.normalization == "imagenet_caffe" and preset.modality == "rgb"


def test_imagenet_caffe_normalization_is_keras_resnet_preprocessing():
    frames = np.random.default_rng(2).uniform(0, 255, (2, 5, 5, 3)).astype("float32")
    np.testing.assert_allclose(normalize(frames, PRESETS["imagenet"].normalization),
                               keras.applications.resnet.preprocess_input(frames.copy()), rtol=1e-6, atol=1e-5)


def test_inflated_p3d63_2d_ops_form(no_download, resnet50):
    model = P3DResNet(63, weights="imagenet", graph="caffe", include_top=False, pooling="avg", ops="2d",
                      input_shape=(FRAMES, SIZE, SIZE, 3))
    clip = static_clip()
    np.testing.assert_allclose(np.asarray(model(clip)), np.asarray(caffe_aligned(resnet50)(clip[:, 0])),
                               rtol=RTOL, atol=ATOL)


def test_inflated_p3d131_from_resnet101():
    resnet = randomize(keras.applications.ResNet101(weights=None, include_top=False, pooling="avg",
                                                    input_shape=(32, 32, 3)))
    model = inflation.inflate_resnet(resnet, P3DResNet(131, include_top=False, pooling="avg", graph="pytorch",
                                                       input_shape=(16, 32, 32, 3)))
    clip = static_clip(size=32)
    np.testing.assert_allclose(np.asarray(model(clip)), np.asarray(resnet(clip[:, 0])), rtol=RTOL, atol=ATOL)


@pytest.mark.slow
def test_p3d_train_program_weights_imagenet(no_download, resnet50, shards, tmp_path):
    code = train_cli.main(["--train", str(shards / "train"), "--out", str(tmp_path), "--epochs", "1",
                           "--batch-size", "4", "--verbose", "0", "--depth", "63", "--weights", "imagenet",
                           "--graph", "pytorch", "--frames", "16", "--size", "32"])
    assert code == 0
    saved = model_folder.read_model_folder(tmp_path / "best")
    assert saved.metadata.normalization == "imagenet_caffe" and saved.metadata.class_names == ("jump", "run", "sit")
    assert saved.metadata.provenance["preset"] == "imagenet" and saved.model.output_shape == (None, 3)
    # partial BN: every BatchNorm but the first kept its inflated statistics
    np.testing.assert_allclose(saved.model.get_layer("res5c").bn_expand.moving_mean.numpy(),
                               resnet50.get_layer("conv5_block3_3_bn").moving_mean.numpy()
                               - resnet50.get_layer("conv5_block3_3_conv").bias.numpy(), rtol=1e-6, atol=1e-7)
