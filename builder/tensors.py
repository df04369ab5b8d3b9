"""The checkpoint's tensor table: every tensor name an LFM2-family checkpoint holds, with its shape.

One table per layer part; validation (Checkpoint.validate), random checkpoints and verify's
weight mapping all derive from it, and the blocks read the same names.

Mixture-of-experts layers are named as transformers 5 saves them (experts packed per layer:
gate_up_proj [E, 2I, H] with w1's rows before w3's, down_proj [E, H, I]); LiquidAI's original
checkpoints name each expert (experts.N.w1|w2|w3.weight), which weights.Checkpoint presents under
the packed names.
"""

from __future__ import annotations

import re

from lfm2_onnx.layers import ATTENTION_LAYER, CONV_LAYER

from .spec import Lfm2Spec

EMBED_TOKENS = "model.embed_tokens.weight"
FINAL_NORM = "model.embedding_norm.weight"
LM_HEAD = "lm_head.weight"

# A per-expert tensor of an original LiquidAI checkpoint: (layer prefix, expert, w1|w2|w3).
PER_EXPERT = re.compile(r"^(.*\.feed_forward\.experts)\.(\d+)\.(w1|w2|w3)\.weight$")


def layer_prefix(i: int) -> str:
    return f"model.layers.{i}"


def attention_tensors(spec: Lfm2Spec, i: int) -> dict[str, tuple[int, ...]]:
    a, h, d = f"{layer_prefix(i)}.self_attn", spec.hidden_size, spec.head_dim
    q, kv = spec.num_attention_heads * d, spec.num_key_value_heads * d
    return {f"{a}.q_proj.weight": (q, h), f"{a}.k_proj.weight": (kv, h), f"{a}.v_proj.weight": (kv, h),
            f"{a}.out_proj.weight": (h, q), f"{a}.q_layernorm.weight": (d,), f"{a}.k_layernorm.weight": (d,)}


def conv_tensors(spec: Lfm2Spec, i: int) -> dict[str, tuple[int, ...]]:
    c, h = f"{layer_prefix(i)}.conv", spec.hidden_size
    shapes = {f"{c}.in_proj.weight": (3 * h, h), f"{c}.conv.weight": (h, 1, spec.conv_kernel),
              f"{c}.out_proj.weight": (h, h)}
    if spec.conv_bias:
        shapes.update({f"{c}.in_proj.bias": (3 * h,), f"{c}.conv.bias": (h,), f"{c}.out_proj.bias": (h,)})
    return shapes


def mlp_tensors(spec: Lfm2Spec, i: int) -> dict[str, tuple[int, ...]]:
    f, h, ff = f"{layer_prefix(i)}.feed_forward", spec.hidden_size, spec.intermediate_size
    return {f"{f}.w1.weight": (ff, h), f"{f}.w3.weight": (ff, h), f"{f}.w2.weight": (h, ff)}


def moe_tensors(spec: Lfm2Spec, i: int) -> dict[str, tuple[int, ...]]:
    f, h = f"{layer_prefix(i)}.feed_forward", spec.hidden_size
    e, ff = spec.moe.num_experts, spec.moe.intermediate_size
    shapes = {f"{f}.gate.weight": (e, h), f"{f}.experts.gate_up_proj": (e, 2 * ff, h),
              f"{f}.experts.down_proj": (e, h, ff)}
    if spec.moe.use_expert_bias:
        shapes[f"{f}.expert_bias"] = (e,)
    return shapes


FEED_FORWARD_TENSORS = {"mlp": mlp_tensors, "moe": moe_tensors}
MIXER_TENSORS = {ATTENTION_LAYER: attention_tensors, CONV_LAYER: conv_tensors}


def expected_shapes(spec: Lfm2Spec) -> dict[str, tuple[int, ...]]:
    """Every tensor of the checkpoint (lm_head.weight included, even when tied) with its shape."""
    h = spec.hidden_size
    shapes = {EMBED_TOKENS: (spec.vocab_size, h), FINAL_NORM: (h,)}
    for i, (mixer, feed_forward) in enumerate(zip(spec.layer_types, spec.feed_forward_types)):
        p = layer_prefix(i)
        shapes[f"{p}.operator_norm.weight"] = (h,)
        shapes[f"{p}.ffn_norm.weight"] = (h,)
        shapes.update(FEED_FORWARD_TENSORS[feed_forward](spec, i))
        shapes.update(MIXER_TENSORS[mixer](spec, i))
    shapes[LM_HEAD] = (spec.vocab_size, h)
    return shapes


def per_expert_names(packed: str, experts: int) -> dict[str, list[str]]:
    """The original per-expert tensors behind a packed name, in packing order."""
    base = packed.rsplit(".", 1)[0]  # ....feed_forward.experts
    if packed.endswith(".gate_up_proj"):
        return {"w1": [f"{base}.{n}.w1.weight" for n in range(experts)],
                "w3": [f"{base}.{n}.w3.weight" for n in range(experts)]}
    return {"w2": [f"{base}.{n}.w2.weight" for n in range(experts)]}


def is_norm(name: str) -> bool:
    return name.endswith(("norm.weight", "layernorm.weight"))
