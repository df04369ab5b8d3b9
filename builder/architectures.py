"""The architecture registry: what differs between members of the LFM2 family, one entry each.

An entry names the Hugging Face architecture, reads its feed-forward fields from config.json and
says what onnxruntime-genai and transformers call it. Everything the members share (embeddings,
conv and attention layers, norms, the LM head, the cache contract) is read by spec.py and built by
blocks.py once; the per-layer feed-forward kind ("mlp" or "moe", Lfm2Spec.feed_forward_types)
picks its tensor table (tensors.py) and its block (model.FEED_FORWARD_BLOCKS).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lfm2_onnx.errors import UserError

from .spec import VL_ARCHITECTURE, MoeSpec, dense_ff_dim


@dataclass(frozen=True)
class FeedForwardConfig:
    intermediate_size: int  # the dense MLP's width
    moe: MoeSpec | None = None


@dataclass(frozen=True)
class Architecture:
    name: str  # config.json architectures[0]
    model_type: str  # config.json model_type (names the architecture when `architectures` is absent)
    genai_type: str  # genai_config.json model.type, as onnxruntime-genai 0.18 spells it
    hf_model_class: str  # the transformers class verify and the tiny checkpoints use
    hf_config_class: str
    read_feed_forward: Callable[[dict], FeedForwardConfig]


def _dense(config: dict) -> FeedForwardConfig:
    return FeedForwardConfig(dense_ff_dim(config))


def _int_field(config: dict, key: str, default: int, low: int, high: int | None = None) -> int:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise UserError(f"config.json: {key}={value!r}; it must be an integer {bound}")
    return value


def _bool_field(config: dict, key: str, default: bool) -> bool:
    value = config.get(key, default)
    if not isinstance(value, bool):
        raise UserError(f"config.json: {key}={value!r}; it must be true or false")
    return value


def _moe(config: dict) -> FeedForwardConfig:
    """Lfm2MoeConfig's fields, with its defaults; the dense layers' width is intermediate_size as is."""
    num_layers = int(config.get("num_hidden_layers", 32))
    experts = _int_field(config, "num_experts", 32, 1)
    scaling = config.get("routed_scaling_factor", 1.0)
    if isinstance(scaling, bool) or not isinstance(scaling, (int, float)) or not scaling > 0:
        raise UserError(f"config.json: routed_scaling_factor={scaling!r}; it must be a positive number")
    for key in ("n_group", "topk_group"):  # DeepSeek-style grouped routing: not part of LFM2-MoE
        if config.get(key) not in (None, 1):
            raise UserError(f"config.json: {key}={config[key]!r} (grouped expert routing) is not supported; "
                            "Lfm2MoeForCausalLM routes over all experts")
    moe = MoeSpec(
        num_experts=experts,
        experts_per_token=_int_field(config, "num_experts_per_tok", 4, 1, experts),
        intermediate_size=_int_field(config, "moe_intermediate_size", 1792, 1),
        num_dense_layers=_int_field(config, "num_dense_layers", 2, 0, num_layers),
        use_expert_bias=_bool_field(config, "use_expert_bias", True),
        norm_topk_prob=_bool_field(config, "norm_topk_prob", True),
        routed_scaling_factor=float(scaling),
    )
    return FeedForwardConfig(_int_field(config, "intermediate_size", 7168, 1), moe)


ARCHITECTURES = {
    arch.name: arch
    for arch in (
        Architecture("Lfm2ForCausalLM", "lfm2", "lfm2", "Lfm2ForCausalLM", "Lfm2Config", _dense),
        Architecture("Lfm2MoeForCausalLM", "lfm2_moe", "lfm2_moe", "Lfm2MoeForCausalLM", "Lfm2MoeConfig", _moe),
        # LFM2-VL: an LFM2 decoder (text_config, read by spec.py) behind a SigLIP2 vision tower;
        # exported as three graphs (vl.py). Its feed-forward fields are text_config's.
        Architecture(VL_ARCHITECTURE, "lfm2_vl", "lfm2_vl", "Lfm2VlForConditionalGeneration", "Lfm2VlConfig",
                     _dense),
    )
}
_BY_MODEL_TYPE = {arch.model_type: arch for arch in ARCHITECTURES.values()}
_BY_MODEL_TYPE["lfm2-vl"] = ARCHITECTURES[VL_ARCHITECTURE]  # LiquidAI's remote-code config spelling


def architecture_of(config: dict) -> Architecture:
    """The registry entry for a config.json, or a UserError naming what is supported."""
    architectures = config.get("architectures") or []
    name = architectures[0] if architectures else None
    if name is None and config.get("model_type") in _BY_MODEL_TYPE:
        return _BY_MODEL_TYPE[config["model_type"]]
    if name not in ARCHITECTURES:
        raise UserError(
            f"unsupported architecture {name!r} (model_type {config.get('model_type')!r}); "
            f"supported: {', '.join(ARCHITECTURES)}"
        )
    return ARCHITECTURES[name]


def hf_classes(architecture: str):
    """(model class, config class) from transformers, imported on demand (export time only)."""
    import transformers

    arch = ARCHITECTURES[architecture]
    return getattr(transformers, arch.hf_model_class), getattr(transformers, arch.hf_config_class)
