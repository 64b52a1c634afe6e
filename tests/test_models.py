"""`jobs.models`: which network a job runs (`ModelSpec`) and what follows from a model."""
import os

import keras
import pytest

from p3d_keras.applications import PRESETS, P3DResNet, find_preset
from p3d_keras.jobs import models
from p3d_keras.jobs.models import ModelSpec

TINY = ModelSpec(depth=(1, 1, 1, 1), width=4, frames=16, size=32)


def test_a_preset_name_is_a_preset_whatever_files_exist(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "kinetics400").write_text("not weights")  # a file called like a preset
    assert find_preset("kinetics400") is PRESETS["kinetics400"]


def test_a_weights_path_that_does_not_exist_is_an_error_naming_it(tmp_path):
    missing = str(tmp_path / "best.weights.h5")
    with pytest.raises(ValueError, match=rf"\(the presets\), an existing weights file.*Received: weights='{missing}'"):
        find_preset(missing)
    with pytest.raises(ValueError, match="Received: weights='kinetics"):
        P3DResNet((1, 1, 1, 1), width=4, input_shape=(16, 32, 32, 3), weights="kinetics")  # a typo
    weights = tmp_path / "w.weights.h5"
    weights.write_bytes(b"")
    assert find_preset(str(weights)) is None and find_preset(None) is None


def test_spec_builds_the_network_or_loads_the_saved_model(tmp_path):
    model = TINY.build(classes=3)
    assert model.input_shape == (None, 16, 32, 32, 3) and model.output_shape == (None, 3)
    assert models.model_modality(model) == "rgb" and models.outputs_probabilities(model)
    flow = ModelSpec(depth=(1, 1, 1, 1), width=4, size=32, modality="flow").build(classes=2)
    assert models.model_modality(flow) == "flow" and flow.input_shape[-1] == 2
    model.save(tmp_path / "m.keras")
    loaded = ModelSpec(model=str(tmp_path / "m.keras")).build()
    assert [w.shape for w in loaded.weights] == [w.shape for w in model.weights]
    with pytest.raises(ValueError, match=r"Expected model to be a model folder, .* or an existing .keras file. "
                                         r"Received: model='nope.keras'"):
        ModelSpec(model="nope.keras").build()


def test_outputs_probabilities_is_one_answer_for_every_job():
    logits = TINY.build(classes=3, classifier_activation=None)
    assert not models.outputs_probabilities(logits)
    wrapped = keras.Sequential([keras.Input((16, 32, 32, 3)), TINY.build(classes=3)])  # a model inside a model
    assert models.outputs_probabilities(wrapped)
    with pytest.raises(ValueError, match="Received: classifier_activation='sigmoid'"):
        models.outputs_probabilities(TINY.build(classes=3, classifier_activation="sigmoid"))
    softmax_layer = keras.Sequential([keras.Input((16, 32, 32, 3)), logits, keras.layers.Softmax()])
    assert models.outputs_probabilities(softmax_layer)


def test_normalization_and_class_names_follow_the_preset_unless_given(tmp_path):
    spec = ModelSpec(weights="kinetics400_pytorch")
    assert models.normalization_for(spec, "rgb") == "imagenet"
    assert models.normalization_for(spec, "rgb", "caffe") == "caffe"
    assert models.normalization_for(TINY, "flow") == "flow" and models.normalization_for(TINY, "rgb") == "caffe"
    assert models.class_names(spec)[0] == "abseiling" and models.class_names(TINY) is None
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\n")
    assert models.class_names(spec, str(labels)) == ["a", "b"]
    fine_tuned = ModelSpec(model="ft.keras", weights="kinetics400_pytorch")  # a model fine-tuned from a preset
    assert models.normalization_for(fine_tuned, "rgb") == "imagenet" and models.class_names(fine_tuned)
    assert os.path.exists(labels)
