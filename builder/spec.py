"""One typed description of an LFM2 checkpoint, normalised from any vintage of its config.json.

LiquidAI's configs exist in several spellings (full_attn_idxs vs layer_types, block_ff_dim vs
intermediate_size, tie_embedding vs tie_word_embeddings, rope_theta vs rope_parameters). Everything
downstream reads Lfm2Spec only, so the spelling question is answered here, once, exactly the way
transformers answers it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from lfm2_onnx.errors import UserError
from lfm2_onnx.layers import ATTENTION_LAYER, CONV_LAYER, LAYER_TYPES, attention_layers, conv_layers
VL_ARCHITECTURE = "Lfm2VlForConditionalGeneration"


@dataclass(frozen=True)
class MoeSpec:
    """The sparse feed-forward of Lfm2MoeForCausalLM (transformers' modeling_lfm2_moe.py).

    Router: s = sigmoid(gate(x)); experts = topk(s + expert_bias, k) when use_expert_bias (the
    bias only selects); weights = the chosen s, divided by (sum + 1e-6) when norm_topk_prob, times
    routed_scaling_factor. Experts are SwiGLU: w2(silu(w1 x) * w3 x).
    """

    num_experts: int
    experts_per_token: int
    intermediate_size: int  # moe_intermediate_size: each expert's SwiGLU width
    num_dense_layers: int  # layers below this index keep the dense MLP
    use_expert_bias: bool
    norm_topk_prob: bool
    routed_scaling_factor: float


@dataclass(frozen=True)
class Lfm2Spec:
    vocab_size: int
    hidden_size: int
    intermediate_size: int  # the MLP width actually used, after block_auto_adjust_ff_dim
    layer_types: tuple[str, ...]
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rope_theta: float
    norm_eps: float
    conv_kernel: int  # conv_L_cache; the carried conv state holds conv_kernel - 1 positions
    conv_bias: bool  # biases on in_proj, the depthwise conv and out_proj
    tie_word_embeddings: bool
    max_position_embeddings: int
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    architecture: str = "Lfm2ForCausalLM"
    source_dtype: str = "float32"
    moe: MoeSpec | None = None  # Lfm2MoeForCausalLM only
    image_token_id: int | None = None  # Lfm2VlForConditionalGeneration only: where image features go
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def is_vl(self) -> bool:
        return self.architecture == VL_ARCHITECTURE

    @property
    def num_layers(self) -> int:
        return len(self.layer_types)

    @property
    def attention_layers(self) -> list[int]:
        return attention_layers(self.layer_types)

    @property
    def conv_layers(self) -> list[int]:
        return conv_layers(self.layer_types)

    @property
    def conv_state_size(self) -> int:
        return self.conv_kernel - 1

    @property
    def feed_forward_types(self) -> tuple[str, ...]:
        """Per layer: "mlp" (dense SwiGLU) or "moe" (routed experts)."""
        dense = self.num_layers if self.moe is None else self.moe.num_dense_layers
        return tuple("mlp" if i < dense else "moe" for i in range(self.num_layers))

    @property
    def moe_layers(self) -> list[int]:
        return [i for i, t in enumerate(self.feed_forward_types) if t == "moe"]

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("extra")
        return d


def dense_ff_dim(config: dict) -> int:
    """Lfm2ForCausalLM's MLP width, auto-adjusted the way transformers' Lfm2MLP does."""
    # transformers: block_ff_dim (legacy) wins over intermediate_size when both are present.
    size = config.get("block_ff_dim", config.get("intermediate_size", 12288))
    if config.get("block_auto_adjust_ff_dim", True):
        size = int(2 * size / 3)
        multiplier = config.get("block_ffn_dim_multiplier", 1.0)
        if multiplier is not None:
            size = int(multiplier * size)
            multiple_of = config.get("block_multiple_of", 256)
            size = multiple_of * ((size + multiple_of - 1) // multiple_of)
    return size


def _layer_types(config: dict, num_layers: int) -> tuple[str, ...]:
    types = config.get("layer_types")
    if types is None:
        full = config.get("full_attn_idxs")
        full = list(range(num_layers)) if full is None else full
        types = [ATTENTION_LAYER if i in full else CONV_LAYER for i in range(num_layers)]
    unknown = sorted({t for t in types if t not in LAYER_TYPES})
    if unknown:
        raise UserError(f"config.json: layer_types has {unknown}; LFM2 layers are one of {list(LAYER_TYPES)}")
    if len(types) != num_layers:
        raise UserError(
            f"config.json: layer_types lists {len(types)} layers but num_hidden_layers is {num_layers}"
        )
    return tuple(types)


def _rope_theta(config: dict) -> float:
    params = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling") or {}
    rope_type = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type != "default":
        raise UserError(
            f"config.json: rope type {rope_type!r} is not supported; the builder implements default RoPE only"
        )
    return float(params.get("rope_theta", config.get("rope_theta", config.get("theta", 1_000_000.0))))


def _token_ids(value) -> tuple[int, ...]:
    if value is None:
        return ()
    return tuple(int(v) for v in (value if isinstance(value, list) else [value]))


def spec_from_config(config: dict, generation_config: dict | None = None) -> Lfm2Spec:
    """Normalise an LFM2 config.json dict (any vintage) into an Lfm2Spec, or raise UserError."""
    from .architectures import architecture_of  # the registry imports this module

    arch = architecture_of(config)
    if arch.name == VL_ARCHITECTURE:
        return _vl_spec(config, generation_config)
    if config.get("quantization_config"):
        raise UserError("config.json: pre-quantized checkpoints are not supported; export from the bf16/fp32 weights")
    if config.get("block_use_swiglu") is False:
        raise UserError("config.json: block_use_swiglu=false is not supported (LFM2 MLPs are SwiGLU)")
    feed_forward = arch.read_feed_forward(config)

    try:
        hidden = int(config.get("hidden_size", config.get("block_dim", 2560)))
        num_layers = int(config.get("num_hidden_layers", 32))
        heads = int(config.get("num_attention_heads", config.get("num_heads", 32)))
        kv_heads = int(config.get("num_key_value_heads", 8))
        head_dim = int(config.get("head_dim") or hidden // heads)
    except (TypeError, ValueError) as e:
        raise UserError(f"config.json: a size field is not an integer ({e})") from None
    if heads % kv_heads:
        raise UserError(
            f"config.json: num_attention_heads={heads} is not a multiple of num_key_value_heads={kv_heads}"
        )
    conv_kernel = int(config.get("conv_L_cache", 3))
    if conv_kernel < 2:
        raise UserError(f"config.json: conv_L_cache={conv_kernel}; it must be at least 2")

    gen = generation_config or {}
    eos = _token_ids(gen.get("eos_token_id", config.get("eos_token_id", 2)))
    for extra in _token_ids(config.get("eos_token_id")):
        if extra not in eos:
            eos += (extra,)
    tie = config.get("tie_embedding", config.get("tie_word_embeddings", True))
    return Lfm2Spec(
        vocab_size=int(config.get("vocab_size", 65536)),
        hidden_size=hidden,
        intermediate_size=feed_forward.intermediate_size,
        layer_types=_layer_types(config, num_layers),
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        rope_theta=_rope_theta(config),
        norm_eps=float(config.get("norm_eps", config.get("block_norm_eps", 1e-5))),
        conv_kernel=conv_kernel,
        conv_bias=bool(config.get("conv_bias", False)),
        tie_word_embeddings=bool(tie),
        max_position_embeddings=int(config.get("max_position_embeddings", 128_000)),
        bos_token_id=gen.get("bos_token_id", config.get("bos_token_id", 1)),
        eos_token_ids=eos,
        pad_token_id=gen.get("pad_token_id", config.get("pad_token_id", 0)),
        architecture=arch.name,
        source_dtype=str(config.get("dtype") or config.get("torch_dtype") or "float32"),
        moe=feed_forward.moe,
    )


def _vl_spec(config: dict, generation_config: dict | None) -> Lfm2Spec:
    """An LFM2-VL config: its decoder is text_config (any LFM2 spelling), the tying and the image
    token are the VL config's (image_token_id; LiquidAI's remote-code config says image_token_index)."""
    text = config.get("text_config")
    if not isinstance(text, dict):
        raise UserError("config.json: an LFM2-VL config needs a text_config object (the LFM2 decoder's config)")
    text = {**text, "architectures": ["Lfm2ForCausalLM"], "model_type": "lfm2"}
    if config.get("quantization_config"):
        text["quantization_config"] = config["quantization_config"]
    for key in ("tie_embedding", "tie_word_embeddings"):  # the VL config's own word, when it has one, wins
        if key in config:
            text.pop("tie_embedding", None)
            text["tie_word_embeddings"] = config[key]
    spec = spec_from_config(text, generation_config)
    image_token = config.get("image_token_id", config.get("image_token_index", 396))
    if isinstance(image_token, bool) or not isinstance(image_token, int) or not 0 <= image_token < spec.vocab_size:
        raise UserError(f"config.json: image_token_id={image_token!r}; it must be a token id below "
                        f"vocab_size={spec.vocab_size}")
    return replace(spec, architecture=VL_ARCHITECTURE, image_token_id=image_token,
                   source_dtype=str(config.get("dtype") or config.get("torch_dtype") or spec.source_dtype))


def read_json(path: Path, what: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise UserError(f"{path.parent}: no {path.name}; {what}") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    return data


def load_spec(checkpoint_dir: Path) -> tuple[Lfm2Spec, dict, dict]:
    """Spec plus the raw config.json and generation_config.json dicts of a checkpoint folder."""
    config = read_json(checkpoint_dir / "config.json", "is this a Hugging Face checkpoint folder?")
    gen_path = checkpoint_dir / "generation_config.json"
    generation = read_json(gen_path, "") if gen_path.exists() else {}
    return spec_from_config(config, generation), config, generation
