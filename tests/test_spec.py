"""builder/spec.py: every config spelling normalises the way transformers reads it."""

from __future__ import annotations

import json

import pytest
from transformers import Lfm2Config
from transformers.models.lfm2.modeling_lfm2 import Lfm2MLP

from conftest import SHARED_MODELS
from lfm2_onnx.builder.spec import load_spec, spec_from_config
from lfm2_onnx.errors import UserError

REAL_CONFIGS = sorted(p.parent.name for p in SHARED_MODELS.glob("*/config.json"))


def transformers_view(config: dict) -> dict:
    """What transformers itself makes of a config: the facts the spec must agree with."""
    cfg = Lfm2Config(**config)
    mlp = Lfm2MLP(cfg) if cfg.hidden_size * cfg.intermediate_size < 3e7 else None
    return {
        "layer_types": tuple(cfg.layer_types),
        "tie": cfg.tie_word_embeddings,
        "theta": cfg.rope_parameters["rope_theta"],
        "ff": mlp.w1.out_features if mlp else None,
        "heads": (cfg.num_attention_heads, cfg.num_key_value_heads),
        "conv": (cfg.conv_L_cache, cfg.conv_bias),
    }


@pytest.mark.parametrize("name", REAL_CONFIGS or ["(none)"])
def test_real_configs_normalise_like_transformers(name):
    if name == "(none)":
        pytest.skip("../shared/models not present")
    folder = SHARED_MODELS / name
    config = json.loads((folder / "config.json").read_text())
    if config["architectures"] == ["Lfm2MoeForCausalLM"]:
        pytest.skip("MoE configs: tests/test_moe.py compares them with transformers' Lfm2MoeConfig")
    spec, _, _ = load_spec(folder)
    if config["architectures"] == ["Lfm2VlForConditionalGeneration"]:
        config = config["text_config"]  # LFM2-VL's decoder: the same normalisation of its text_config
    assert config["architectures"] == ["Lfm2ForCausalLM"]
    expected = transformers_view(config)
    assert spec.layer_types == expected["layer_types"]
    assert spec.tie_word_embeddings == expected["tie"]
    assert spec.rope_theta == expected["theta"]
    assert (spec.num_attention_heads, spec.num_key_value_heads) == expected["heads"]
    assert (spec.conv_kernel, spec.conv_bias) == expected["conv"]
    # The MLP width transformers builds, computed without allocating the 2.6B-scale layer.
    cfg = Lfm2Config(**config)
    small = Lfm2Config(**{**config, "hidden_size": 8, "num_attention_heads": 1, "num_key_value_heads": 1})
    assert spec.intermediate_size == Lfm2MLP(small).w1.out_features
    assert cfg.intermediate_size == config.get("block_ff_dim", config.get("intermediate_size"))


KNOWN_WIDTHS = {"LFM2-350M": 4608, "LFM2-1.2B": 8192, "LFM2-2.6B": 10752, "LFM2.5-1.2B-Base": 8192}


@pytest.mark.parametrize("name,width", sorted(KNOWN_WIDTHS.items()))
def test_real_mlp_widths(name, width):
    folder = SHARED_MODELS / name
    if not folder.is_dir():
        pytest.skip(f"{folder} not present")
    assert load_spec(folder)[0].intermediate_size == width


BASE = {"architectures": ["Lfm2ForCausalLM"], "model_type": "lfm2", "hidden_size": 64, "num_hidden_layers": 4,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100}


def test_legacy_and_new_spellings_agree():
    legacy = {**BASE, "full_attn_idxs": [1, 3], "block_ff_dim": 256, "tie_embedding": False, "rope_theta": 5e5}
    new = {**BASE, "layer_types": ["conv", "full_attention", "conv", "full_attention"], "intermediate_size": 256,
           "tie_word_embeddings": False, "rope_parameters": {"rope_type": "default", "rope_theta": 5e5}}
    assert spec_from_config(legacy) == spec_from_config(new)
    for config in (legacy, new):
        view = transformers_view(config)
        spec = spec_from_config(config)
        assert (spec.layer_types, spec.tie_word_embeddings, spec.rope_theta, spec.intermediate_size) == (
            view["layer_types"], view["tie"], view["theta"], view["ff"])


def test_block_ff_dim_wins_like_transformers():
    config = {**BASE, "block_ff_dim": 512, "intermediate_size": 256, "block_auto_adjust_ff_dim": False}
    assert spec_from_config(config).intermediate_size == transformers_view(config)["ff"] == 512


def test_no_layer_types_means_all_attention():
    assert spec_from_config(BASE).layer_types == ("full_attention",) * 4 == transformers_view(BASE)["layer_types"]


def test_eos_ids_from_generation_config_first():
    spec = spec_from_config({**BASE, "eos_token_id": 7}, {"eos_token_id": [7, 2]})
    assert spec.eos_token_ids == (7, 2)
    assert spec_from_config({**BASE, "eos_token_id": 2}, {"eos_token_id": 7}).eos_token_ids == (7, 2)


@pytest.mark.parametrize("change,message", [
    ({"architectures": ["Lfm2VlForConditionalGeneration"]}, "an LFM2-VL config needs a text_config object"),
    ({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}, "supported: Lfm2ForCausalLM, Lfm2MoeForCausalLM"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0}}, "rope type 'yarn'"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope type 'linear'"),
    ({"layer_types": ["conv", "mamba", "conv", "conv"]}, r"layer_types has \['mamba'\]"),
    ({"layer_types": ["conv", "conv"]}, "lists 2 layers but num_hidden_layers is 4"),
    ({"num_key_value_heads": 3}, "not a multiple of num_key_value_heads=3"),
    ({"conv_L_cache": 1}, "conv_L_cache=1"),
    ({"quantization_config": {"quant_method": "gptq"}}, "pre-quantized"),
    ({"block_use_swiglu": False}, "block_use_swiglu"),
])
def test_unsupported_fields_are_named(change, message):
    with pytest.raises(UserError, match=message):
        spec_from_config({**BASE, **change})
