"""applications/presets.py: the preset table and how a preset name is told from a file."""
import pytest

from p3d_keras.applications import PRESETS, P3DResNet, P3DResNet199, WeightPreset, get_preset


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"Expected one of \['imagenet', .*'sports1m'\].*Received: weights='ucf'"):
        P3DResNet199(weights="ucf")
    with pytest.raises(ValueError, match="is a depth=199 model. Received: depth=63"):
        P3DResNet(63, weights="kinetics400")


def test_preset_table_is_complete():
    assert set(PRESETS) == {"sports1m", "kinetics400", "kinetics400_flow", "kinetics400_pytorch",
                            "kinetics400_flow_pytorch", "imagenet", "imagenet_gaussian"}
    for preset in PRESETS.values():
        assert preset.origin in ("released", "inflated") and preset.modality in ("rgb", "flow")
        assert preset.graph in ((None,) if preset.inflated else ("caffe", "pytorch"))
        assert preset.input_shape[-1] == (3 if preset.modality == "rgb" else 2)
        assert get_preset(preset.name) is preset


def test_preset_rows_take_keywords_only():
    fields = {field: getattr(PRESETS["kinetics400"], field) for field in ("name", "description", "original_file",
                                                                         "published_at", "graph", "modality",
                                                                         "classes", "labels", "normalization",
                                                                         "dropout_rate")}
    assert WeightPreset(**fields) == PRESETS["kinetics400"]
    with pytest.raises(TypeError):
        WeightPreset(*fields.values())
