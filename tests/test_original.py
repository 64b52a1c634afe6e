"""Converting original checkpoints: the CLI, and every way a checkpoint can fail to fit."""
import keras
import numpy as np
import pytest

import checkpoint_fixtures as cf
from p3d_keras.cli import convert_weights
from p3d_keras.weights import original
from p3d_keras.applications import P3DResNet
from p3d_keras.weights.untrusted import CheckpointError


@pytest.fixture(scope="module")
def p3d63_npz(tmp_path_factory, reference):
    path = tmp_path_factory.mktemp("convert") / "p3d63.npz"
    np.savez(path, **reference.build_state_dict(0, depth=63))
    return path


def test_cli_writes_keras_weights_that_match_direct_loading(p3d63_npz, tmp_path, reference):
    dst = tmp_path / "p3d63.weights.h5"
    assert convert_weights.main([str(p3d63_npz), str(dst), "--depth", "63", "--graph", "pytorch"]) == 0
    clip = reference.reference_input(0)
    direct = P3DResNet(63, graph="pytorch", weights=p3d63_npz).predict(clip, verbose=0)
    converted = P3DResNet(63, graph="pytorch", weights=dst).predict(clip, verbose=0)
    np.testing.assert_array_equal(direct, converted)


def test_cli_reports_bad_input(tmp_path, caplog, capsys):
    bogus = tmp_path / "notes.pth"
    bogus.write_text("not a checkpoint")
    assert convert_weights.main([str(bogus), str(tmp_path / "x.weights.h5"), "--depth", "63"]) == 2
    assert "notes.pth" in caplog.text
    with pytest.raises(SystemExit) as info:
        convert_weights.main([str(bogus), str(tmp_path / "x.h5")])
    assert info.value.code == 2
    assert "DST must end in .weights.h5. Received: dst=" in capsys.readouterr().err


@pytest.mark.parametrize("case", list(cf.HOSTILE))
def test_cli_refuses_each_hostile_file_with_exit_2_and_one_message(tmp_path, caplog, capsys, case):
    build, fragment = cf.HOSTILE[case]
    path = build(str(tmp_path))
    assert convert_weights.main([path, str(tmp_path / "x.weights.h5"), "--depth", "63"]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and path in errors[0] and fragment in errors[0], errors
    assert "Traceback" not in caplog.text + capsys.readouterr().err
    assert not (tmp_path / "x.weights.h5").exists() and not (tmp_path / "pwned").exists()


def tiny_model(seed):
    keras.utils.set_random_seed(seed)
    return P3DResNet((1, 1, 1, 1), width=4, input_shape=(16, 32, 32, 3), classes=3, graph="pytorch")


@pytest.mark.parametrize("bad, received", [
    (np.array(["1", "x", "2"]), "fc.bias: <U1"),
    (np.array([1.0, None, 2.0], dtype=object), "fc.bias: object"),
    (np.array([1 + 2j, 0, 1]), "fc.bias: complex128"),
], ids=["strings", "objects", "complex"])
def test_a_bad_last_tensor_changes_no_weight(bad, received):
    model = tiny_model(0)
    state = original.original_tensors(tiny_model(1), "pytorch")
    assert list(state)[-1] == "fc.bias"  # the last tensor assigned
    state["fc.bias"] = bad
    before = [w.numpy().copy() for w in model.weights]
    with pytest.raises(CheckpointError, match=f"checkpoint holds tensors that are not real numbers.*{received}"):
        original.assign_original(model, state, "pytorch")
    for b, w in zip(before, model.weights):
        np.testing.assert_array_equal(b, w.numpy(), err_msg=w.path)


def test_a_file_with_a_bad_last_tensor_changes_no_weight(tmp_path):
    model = tiny_model(0)
    state = original.original_tensors(tiny_model(1), "pytorch")
    state["fc.bias"] = state["fc.bias"].astype(np.complex64)
    np.savez(tmp_path / "late.npz", **state)
    before = [w.numpy().copy() for w in model.weights]
    with pytest.raises(CheckpointError, match=r"late.npz holds tensors that are not real numbers.*fc.bias: complex64"):
        original.load_original_weights(model, tmp_path / "late.npz")
    for b, w in zip(before, model.weights):
        np.testing.assert_array_equal(b, w.numpy(), err_msg=w.path)
    state["fc.bias"] = state["fc.bias"].real
    np.savez(tmp_path / "good.npz", **state)
    original.load_original_weights(model, tmp_path / "good.npz")
    assert not all(np.array_equal(b, w.numpy()) for b, w in zip(before, model.weights))


def test_include_top_false_ignores_the_classifier(p3d63_npz, reference):
    model = P3DResNet(63, include_top=False, pooling="avg", graph="caffe", weights=p3d63_npz)
    features = model.predict(reference.reference_input(0), verbose=0)
    assert features.shape == (1, 2048) and np.isfinite(features).all()


def test_conflicting_classes_name_the_classifier(p3d63_npz):
    with pytest.raises(ValueError, match=r"fc.weight: \(400, 2048\) in the file.*\(2048, 487\)"):
        P3DResNet(63, classes=487, weights=p3d63_npz)


def test_flow_model_rejects_an_rgb_checkpoint(p3d63_npz):
    with pytest.raises(ValueError, match=r"mis-shaped \(1\): conv1_custom.weight: \(64, 3, 1, 7, 7\)"):
        P3DResNet(63, modality="flow", weights=p3d63_npz)


def test_another_architecture_lists_missing_and_unexpected(p3d63_npz):
    with pytest.raises(ValueError) as info:
        P3DResNet((3, 4, 6, 4), weights=p3d63_npz)
    message = str(info.value)
    assert str(p3d63_npz) in message
    assert "missing (15): layer4.3.bn1.bias" in message
    with pytest.raises(ValueError, match=r"unexpected \(230\): layer1.1.bn1.bias.*and 218 more"):
        P3DResNet((1, 1, 1, 1), width=64, weights=p3d63_npz)


def test_nothing_changes_when_a_checkpoint_does_not_fit(p3d63_npz, tmp_path):
    state = dict(np.load(p3d63_npz))
    del state["layer2.1.conv3.weight"]
    np.savez(tmp_path / "broken.npz", **state)
    model = P3DResNet(63)
    before = [v.numpy().copy() for v in model.weights[:3]]
    with pytest.raises(ValueError, match=r"missing \(1\): layer2.1.conv3.weight"):
        original.load_original_weights(model, tmp_path / "broken.npz")
    for b, v in zip(before, model.weights[:3]):
        np.testing.assert_array_equal(b, v.numpy())


def test_layouts():
    conv = np.arange(2 * 3 * 1 * 2 * 5).reshape(2, 3, 1, 2, 5)
    assert original.to_keras_layout(conv).shape == (1, 2, 5, 3, 2)
    assert original.to_keras_layout(conv)[0, 1, 4, 2, 1] == conv[1, 2, 0, 1, 4]
    assert original.to_keras_layout(np.zeros((7, 3))).shape == (3, 7)


def test_original_tensors_round_trip(small_clip):
    model = P3DResNet((1, 1, 1, 1), width=4, input_shape=(16, 32, 32, 3), classes=3)
    for naming in ("pytorch", "caffe"):
        state = original.original_tensors(model, naming)
        assert state["conv1_custom.weight" if naming == "pytorch" else "conv1.weight"].shape == (4, 3, 1, 7, 7)
        clone = P3DResNet((1, 1, 1, 1), width=4, input_shape=(16, 32, 32, 3), classes=3)
        original.assign_original(clone, state, naming)
        np.testing.assert_array_equal(clone(small_clip), model(small_clip))


def test_an_original_checkpoint_as_a_model_folder(tmp_path, caplog):
    """`save_as_model_folder` (`p3d-convert-weights --model-folder`): the network, with what such
    files were trained with (the port's graph: ImageNet normalisation) and the given class names."""
    from p3d_keras.jobs import original_weights
    from p3d_keras.jobs.model_folder import read_model_folder

    source = P3DResNet((1, 1, 1, 1), classes=3, graph="pytorch", classifier_activation=None)
    np.savez(tmp_path / "orig.npz", **original.original_tensors(source, "pytorch"))
    folder = original_weights.save_as_model_folder(tmp_path / "orig.npz", tmp_path / "folder", depth=(1, 1, 1, 1),
                                                   classes=3, class_names=["a", "b", "c"])
    loaded = read_model_folder(folder)
    meta = loaded.metadata
    assert (meta.normalization, meta.class_names, meta.architecture["graph"]) == ("imagenet", ("a", "b", "c"), "pytorch")
    assert meta.provenance["original_file"] == "orig.npz"
    for a, b in zip(loaded.model.weights, source.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # The program: a folder for a checkpoint of another depth is one message naming the file, exit 2.
    assert convert_weights.main([str(tmp_path / "orig.npz"), str(tmp_path / "f2"), "--model-folder", "--depth",
                                 "63"]) == 2
    assert "orig.npz" in caplog.text and not (tmp_path / "f2").exists()
