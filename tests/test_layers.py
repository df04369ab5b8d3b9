"""lfm2_onnx.layers: the layer kinds, and the export spec and the runtime layout reading them alike."""

from __future__ import annotations

from lfm2_onnx.builder.spec import load_spec
from lfm2_onnx.layers import ATTENTION_LAYER, CONV_LAYER, LAYER_TYPES, attention_layers, conv_layers
from lfm2_onnx.session import ModelLayout

MIXED = ("full_attention", "conv", "conv", "full_attention", "conv")


def test_kinds_are_spelled_as_transformers_spells_them():
    from transformers import Lfm2Config

    derived = Lfm2Config(num_hidden_layers=4, full_attn_idxs=[1, 3]).layer_types  # transformers names the kinds
    assert list(derived) == [CONV_LAYER, ATTENTION_LAYER, CONV_LAYER, ATTENTION_LAYER]
    assert sorted(LAYER_TYPES) == sorted(set(derived))


def test_indices_of_each_kind():
    assert attention_layers(MIXED) == attention_layers(list(MIXED)) == [0, 3]
    assert conv_layers(MIXED) == [1, 2, 4]
    assert attention_layers(()) == conv_layers(()) == []
    assert conv_layers((ATTENTION_LAYER,) * 3) == []


def test_spec_and_layout_agree(tiny_checkpoint, tiny_export):
    spec, layout = load_spec(tiny_checkpoint)[0], ModelLayout.from_folder(tiny_export)
    assert layout.layer_types == spec.layer_types
    assert layout.attention_layers == spec.attention_layers == attention_layers(spec.layer_types)
    assert layout.conv_layers == spec.conv_layers == conv_layers(spec.layer_types)
    assert spec.attention_layers and spec.conv_layers  # the tiny model has both kinds
    assert sorted(spec.attention_layers + spec.conv_layers) == list(range(spec.num_layers))
