"""The 2D-ops form (`as_2d_ops`, `P3DResNet(ops="2d")`): the same outputs as the 3D form on every
wiring (tiny networks) and on P3D-63 / P3D-199 with the reference weights, no 3D layer or
TensorFlow op, a LiteRT model of builtin operators only (the 3D form needs Flex ops), weights
files and `.keras` round trips, and bad input."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from p3d_keras.applications import P3DResNet, as_2d_ops
from p3d_keras.applications.p3d_resnet import p3d_arguments
from p3d_keras.core.layers import ClipMaxPooling, Framewise, P3DBottleneck

TINY = dict(depth=(1, 1, 1, 1), width=4, input_shape=(16, 32, 32, 3), classes=3, classifier_activation=None)
# Exact in principle (the same products and sums); float32 summation order may differ.
TINY_TOLERANCE = 1e-5
LITERT_TOLERANCE = 1e-4
# Layers of the 3D form with no place in the 2D one. The global 3D pools stay: they are a mean or a
# max over time and space (TensorFlow `Mean` / `Max`, LiteRT `MEAN` / `REDUCE_MAX`), not 3D windows.
GLOBAL_POOLS = ("GlobalAveragePooling3D", "GlobalMaxPooling3D")


def calibrate(model, seed=0):
    """Give the BatchNorm layers non-trivial statistics, so that a misplaced BN or a swapped axis shows."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        leaf = weight.path.rsplit("/", 1)[-1]
        if leaf in ("gamma", "moving_variance"):
            weight.assign(rng.uniform(0.5, 1.5, weight.shape))
        elif leaf in ("beta", "moving_mean"):
            weight.assign(rng.normal(0, 0.2, weight.shape))
    return model


def clips(model, batch=2, seed=1):
    shape = (batch, *model.input_shape[1:])
    rng = np.random.default_rng(seed)
    if model.input.dtype == "uint8":
        return rng.integers(0, 256, shape).astype("uint8")
    return rng.normal(size=shape).astype("float32")


def all_layers(model):
    return model._flatten_layers(include_self=False, recursive=True)


def graph_op_types(model):
    """Op types of `model`'s traced TensorFlow graph, its functions included."""
    spec = tf.TensorSpec((None, *model.input_shape[1:]), model.input.dtype)
    graph = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec).graph.as_graph_def()
    return {node.op for node in graph.node} | {node.op for f in graph.library.function for node in f.node_def}


COMBINATIONS = [
    dict(graph=graph, temporal=temporal, **top)
    for graph in ("caffe", "pytorch") for temporal in (True, False)
    for top in (dict(include_top=True), dict(include_top=False), dict(include_top=False, pooling="avg"),
                dict(include_top=False, pooling="max"))
] + [
    dict(include_top=True, include_preprocessing=True),
    dict(include_top=True, include_preprocessing=True, normalization="imagenet", graph="pytorch"),
    dict(include_top=True, modality="flow", include_preprocessing=True, input_shape=(16, 32, 32, 2)),
    dict(include_top=True, depth=(2, 2, 3, 2), dropout_rate=0.0, classifier_activation="softmax"),
    dict(include_top=False, input_shape=(32, 33, 47, 3)),
    dict(include_top=False, pooling="avg", input_shape=(48, 64, 40, 2), modality="flow", width=8),
]


@pytest.mark.parametrize("kwargs", COMBINATIONS)
def test_tiny_networks_give_the_same_outputs(kwargs):
    model = calibrate(P3DResNet(**{**TINY, **kwargs}))
    flat = as_2d_ops(model)
    x = clips(model)
    assert flat.input_shape == model.input_shape and flat.inputs[0].dtype == model.inputs[0].dtype
    assert flat.inputs[0].name == model.inputs[0].name and flat.name == model.name
    assert flat.output_shape == model.output_shape
    assert [layer.name for layer in flat.layers] == [layer.name for layer in model.layers]
    for layer in model.layers:
        assert flat.get_layer(layer.name).output.shape == layer.output.shape, layer.name
    np.testing.assert_allclose(flat.predict(x, verbose=0), model.predict(x, verbose=0), rtol=0, atol=TINY_TOLERANCE)
    assert {**p3d_arguments(flat), "ops": "3d"} == p3d_arguments(model)


def test_kinds_a_b_c_each_match():
    """One P3D block of each kind, alone, on both graphs: a clip of 4 steps, so the (3, 1) temporal
    kernel sees both borders."""
    x = np.random.default_rng(2).normal(size=(2, 4, 6, 5, 16)).astype("float32")
    for graph in ("caffe", "pytorch"):
        for kind in "ABC":
            blocks = [P3DBottleneck(4, kind, graph, strides=2, projection=True, ops=ops) for ops in ("3d", "2d")]
            for block in blocks:
                block.build(x.shape)
            blocks[1].set_weights([w.reshape(v.shape) for w, v in zip(blocks[0].get_weights(), blocks[1].weights)])
            np.testing.assert_allclose(blocks[1](x), blocks[0](x), rtol=0, atol=TINY_TOLERANCE, err_msg=kind)


@pytest.mark.parametrize("pool_size, strides", [((2, 3, 3), (2, 2, 2)), ((2, 1, 1), (2, 1, 1)), ((3, 2, 1), (1, 2, 1))])
def test_clip_max_pooling_is_max_pooling_3d(pool_size, strides):
    x = np.random.default_rng(3).normal(size=(2, 6, 9, 8, 3)).astype("float32")
    expected = keras.layers.MaxPooling3D(pool_size, strides)(x)
    pooled = ClipMaxPooling(pool_size, strides)
    np.testing.assert_array_equal(pooled(x), expected)
    assert pooled.compute_output_shape(x.shape) == tuple(expected.shape)


def test_the_2d_form_has_no_3d_layer_or_op():
    model = P3DResNet(**TINY, include_preprocessing=True)
    flat = as_2d_ops(model)
    names = {type(layer).__name__ for layer in all_layers(flat)}
    assert {"Conv2D", "Framewise", "ClipMaxPooling"} <= names
    assert not [name for name in names if name.endswith("3D") and name not in GLOBAL_POOLS], names
    assert not [op for op in graph_op_types(flat) if "3D" in op]
    assert {"Conv3D", "MaxPool3D"} <= graph_op_types(model)  # the check can see them


@pytest.fixture(scope="module")
def reference_weights(tmp_path_factory, reference):
    """`reference_weights(depth)`: the reference checkpoint of P3D-`depth` as an npz, written once."""
    root = tmp_path_factory.mktemp("reference_weights")

    def path(depth):
        file = root / f"p3d{depth}.npz"
        if not file.exists():
            np.savez(file, **reference.build_state_dict(0, depth=depth))
        return str(file)

    return path


@pytest.mark.parametrize("depth", [63, pytest.param(199, marks=pytest.mark.slow)])
@pytest.mark.parametrize("graph", ["caffe", "pytorch"])
def test_full_networks_match_the_3d_form_and_the_reference(depth, graph, reference_weights, reference, expected,
                                                          parity_tolerance):
    """P3D-63 / P3D-199 with the reference checkpoint (random but well-conditioned weights) on its
    16x160x160 clip: the 2D form against the 3D form, and against the original code's logits."""
    model = P3DResNet(depth, graph=graph, classifier_activation=None, weights=reference_weights(depth))
    flat = as_2d_ops(model)
    clip = reference.reference_input(0)
    logits, flat_logits = model.predict(clip, verbose=0), flat.predict(clip, verbose=0)
    tol = parity_tolerance[depth]
    np.testing.assert_allclose(flat_logits, logits, rtol=0, atol=tol)
    np.testing.assert_allclose(flat_logits, expected(depth)[f"logits_{graph}"], rtol=0, atol=tol)


def test_builder_switch_reads_weights_files(tmp_path):
    """`P3DResNet(ops="2d", weights=...)` reads a 3D weights file (kernels reshaped)."""
    model = calibrate(P3DResNet(**TINY))
    path = tmp_path / "tiny.weights.h5"
    model.save_weights(path)
    flat = P3DResNet(**TINY, ops="2d", weights=str(path))
    assert flat.get_layer("conv1").weights[0].shape == (7, 7, 3, 4)
    assert flat.get_layer("res2a").conv_temporal.kernel.shape == (3, 1, 4, 4)
    x = clips(model)
    np.testing.assert_allclose(flat.predict(x, verbose=0), model.predict(x, verbose=0), rtol=0, atol=TINY_TOLERANCE)


def test_keras_file_round_trip(tmp_path):
    flat = as_2d_ops(calibrate(P3DResNet(**TINY, include_preprocessing=True)))
    flat.save(tmp_path / "flat.keras")
    loaded = keras.saving.load_model(tmp_path / "flat.keras")
    x = clips(flat)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), flat.predict(x, verbose=0))
    assert p3d_arguments(loaded)["ops"] == "2d"
    np.testing.assert_array_equal(as_2d_ops(loaded).predict(x, verbose=0), flat.predict(x, verbose=0))


def test_keeps_trainable_flags_and_mixed_precision():
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        model = P3DResNet(**TINY)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    model.get_layer("res2a").trainable = False
    flat = as_2d_ops(model)
    assert not flat.get_layer("res2a").trainable and flat.get_layer("res3a").trainable
    assert flat.get_layer("res2a").compute_dtype == "float16"
    assert flat.get_layer("pool1").compute_dtype == "float32"
    assert keras.config.dtype_policy().name == "float32"


# LiteRT: the converter, and a runtime (ai_edge_litert, or TensorFlow's own interpreter without it).

def litert_model(model, flex=False):
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if flex:
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    return converter.convert()


def operator_codes(flatbuffer):
    """`(builtin operator name, custom code)` of each operator code of a LiteRT flatbuffer, from its schema."""
    try:
        from ai_edge_litert import schema_py_generated as schema  # noqa: PLC0415 (optional: the litert extra)
    except ImportError:
        from tensorflow.lite.python import schema_py_generated as schema  # noqa: PLC0415 (the same schema, in TF)
    names = {value: name for name, value in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    model = schema.ModelT.InitFromPackedBuf(flatbuffer, 0)
    return [(names[max(code.builtinCode, code.deprecatedBuiltinCode)],
             code.customCode.decode() if code.customCode else None) for code in model.operatorCodes]


def run_litert(flatbuffer, x):
    try:
        from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415 (optional: the litert extra)
    except ImportError:
        Interpreter = tf.lite.Interpreter
    interpreter = Interpreter(model_content=flatbuffer)
    interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


@pytest.mark.parametrize("kwargs", [dict(include_preprocessing=True, graph="caffe"),
                                    dict(include_top=False, pooling="max", graph="pytorch")])
def test_litert_model_has_builtin_operators_only(kwargs):
    model = calibrate(P3DResNet(**{**TINY, **kwargs}))
    flatbuffer = litert_model(as_2d_ops(model))
    codes = operator_codes(flatbuffer)
    assert ("CONV_2D", None) in codes and ("MAX_POOL_2D", None) in codes
    assert all(custom is None and name != "CUSTOM" for name, custom in codes), codes
    assert not [name for name, _ in codes if "3D" in name], codes
    x = clips(model, batch=2)
    np.testing.assert_allclose(run_litert(flatbuffer, x), model.predict(x, verbose=0), rtol=0, atol=LITERT_TOLERANCE)


def test_the_3d_form_needs_flex_operators():
    """With Select TF ops allowed, the 3D form's max pools become Flex ops (builtins only, the
    converter refuses it); its Conv3Ds are the builtin CONV_3D, which mobile GPU delegates lack."""
    codes = operator_codes(litert_model(P3DResNet(**TINY), flex=True))
    assert {custom for _, custom in codes if custom} == {"FlexMaxPool3D"}
    assert ("CONV_3D", None) in codes


# Bad input.

def test_not_a_p3d_model_is_refused():
    inputs = keras.Input((16, 32, 32, 3))
    other = keras.Model(inputs, keras.layers.Conv3D(4, 3, name="conv1")(inputs), name="other")
    with pytest.raises(ValueError, match="Expected a P3D ResNet built by P3DResNet.*other"):
        as_2d_ops(other)
    with pytest.raises(ValueError, match="Expected a keras.Model.*Conv3D"):
        as_2d_ops(keras.layers.Conv3D(4, 3))


def test_a_p3d_model_changed_by_hand_is_refused():
    model = P3DResNet(**TINY, include_top=False)
    changed = keras.Model(model.input, keras.layers.Dense(5, name="extra")(model.output), name="changed")
    with pytest.raises(ValueError, match="Expected the layers P3DResNet builds.*'extra'"):
        as_2d_ops(changed)
    inputs = keras.Input((16, 32, 32, 3))
    x = keras.layers.Conv3D(4, (1, 7, 7), strides=(1, 2, 2), name="conv1")(keras.layers.ZeroPadding3D(
        (0, 3, 3), name="conv1_pad")(inputs))
    x = keras.layers.BatchNormalization(name="bn_conv1")(x)  # Keras' epsilon, not the originals'
    x = keras.layers.Activation("relu", name="conv1_relu")(x)
    x = keras.layers.ZeroPadding3D(((0, 0), (0, 1), (0, 1)), name="pool1_pad")(x)
    x = keras.layers.MaxPooling3D((2, 3, 3), (2, 2, 2), name="pool1")(x)
    for stage in range(4):
        x = P3DBottleneck(4 * 2 ** stage, "2D" if stage == 3 else "ABC"[stage], strides=2 if stage else 1,
                          projection=True, name=f"res{stage + 2}a")(x)
        if stage < 3:
            x = keras.layers.MaxPooling3D((2, 1, 1), (2, 1, 1), name=f"pool{stage + 2}")(x)
    with pytest.raises(ValueError, match="layer 'bn_conv1'.*epsilon=0.001"):
        as_2d_ops(keras.Model(inputs, x))


def test_bad_arguments_of_the_2d_layers():
    with pytest.raises(ValueError, match="Invalid ops"):
        P3DResNet(**TINY, ops="3D")
    with pytest.raises(ValueError, match="Invalid ops"):
        P3DBottleneck(4, ops="1d")
    with pytest.raises(ValueError, match=r"T, H, W and C fixed.*\(None, None, 8, 8, 16\)"):
        P3DBottleneck(4, "A", projection=True, ops="2d").build((None, None, 8, 8, 16))
    with pytest.raises(ValueError, match=r"expects a clip.*\(None, 8, 8, 3\)"):
        Framewise(keras.layers.Conv2D(4, 3)).build((None, 8, 8, 3))
    with pytest.raises(ValueError, match="pool_size to be three positive ints"):
        ClipMaxPooling((2, 2), (2, 2, 2))
