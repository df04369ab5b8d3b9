"""One function per LFM2 block; each emits its nodes into the graph and returns its outputs.

Tensor layouts follow transformers' Lfm2ForCausalLM; the comments give shapes as
[batch, sequence, features] with B, S, H = batch, new tokens, hidden size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
import torch

from .graph import GraphBuilder
from .options import BuildOptions
from .spec import Lfm2Spec
from .weights import Checkpoint, to_numpy

MS = "com.microsoft"


class Weights:
    """Initializers from the checkpoint, in the layout the graph wants, loaded only when written."""

    def __init__(self, g: GraphBuilder, ckpt: Checkpoint, opts: BuildOptions):
        self.g, self.ckpt, self.opts = g, ckpt, opts

    def _add(self, name: str, shape: tuple[int, ...], load) -> ir.Value:
        return self.g.weight(name, self.opts.io_dtype, shape, lambda: to_numpy(load(), self.opts.precision))

    def tensor(self, name: str, as_name: str | None = None) -> ir.Value:
        return self._add(as_name or name, self.ckpt.shape(name), lambda: self.ckpt.load(name))

    def linear(self, as_name: str, *names: str) -> ir.Value:
        """MatMul weight [in, out]: HF stores [out, in]; several names fuse along out (QKV, gate|up)."""
        shape = (self.ckpt.shape(names[0])[1], sum(self.ckpt.shape(n)[0] for n in names))
        return self._add(as_name, shape, lambda: torch.cat([self.ckpt.load(n) for n in names]).T)

    def bias(self, as_name: str, *names: str) -> ir.Value:
        shape = (sum(self.ckpt.shape(n)[0] for n in names),)
        return self._add(as_name, shape, lambda: torch.cat([self.ckpt.load(n) for n in names]))


@dataclass
class Context:
    """What every block needs: the graph, the model, the choices, and values shared by layers."""

    g: GraphBuilder
    spec: Lfm2Spec
    opts: BuildOptions
    w: Weights
    seqlens_k: ir.Value | None = None  # int32 [B]: tokens in the cache after this step, minus one
    total_length: ir.Value | None = None  # int32 scalar: attention_mask width
    cos_cache: ir.Value | None = None
    sin_cache: ir.Value | None = None
    conv_state_index: ir.Value | None = None  # int64 [B, H, L-1]: where each row's new state starts


def attention_metadata(ctx: Context, attention_mask: ir.Value) -> None:
    """GroupQueryAttention reads per-row lengths from the mask, so right-padded rows stay separate."""
    g = ctx.g
    with g.scope("attention_metadata"):
        lengths = g.op("ReduceSum", attention_mask, g.i64(1), keepdims=0, name="tokens_per_row")
        ctx.seqlens_k = g.op("Cast", g.op("Sub", lengths, g.i64(1)), to=ir.DataType.INT32, name="seqlens_k")
        width = g.op("Gather", g.op("Shape", attention_mask), g.const(np.int64(1)), axis=0)
        ctx.total_length = g.op("Cast", width, to=ir.DataType.INT32, name="total_length")


def rotary_caches(ctx: Context) -> None:
    """cos/sin tables [max_positions, head_dim/2], computed in fp32 as transformers does, then cast."""
    spec = ctx.spec
    inv_freq = 1.0 / (spec.rope_theta ** (torch.arange(0, spec.head_dim, 2, dtype=torch.float) / spec.head_dim))
    freqs = torch.arange(spec.max_position_embeddings, dtype=torch.float)[:, None] * inv_freq[None, :]
    shape = tuple(freqs.shape)
    ctx.cos_cache = ctx.g.weight("rotary.cos_cache", ctx.opts.io_dtype, shape,
                                 lambda: to_numpy(freqs.cos(), ctx.opts.precision))
    ctx.sin_cache = ctx.g.weight("rotary.sin_cache", ctx.opts.io_dtype, shape,
                                 lambda: to_numpy(freqs.sin(), ctx.opts.precision))


def conv_state_index(ctx: Context, input_ids: ir.Value, attention_mask: ir.Value) -> None:
    """Index of each row's carried conv state inside concat(past_state, new inputs) along time.

    A right-padded row with n real new tokens must carry the L-1 inputs ending at its last real
    token, not at the padding: the state window starts at n, counted from the mask's last S
    columns. A single new token (decode) is always real, so n is 1 there whatever the mask says:
    CUDA-graph runtimes feed a fixed-width mask whose last column is not the current one.
    """
    g, spec = ctx.g, ctx.spec
    with g.scope("conv_metadata"):
        new_len = g.op("Slice", g.op("Shape", input_ids), g.i64(1), g.i64(2), name="new_tokens")
        new_mask = g.op("Slice", attention_mask, g.op("Neg", new_len), g.i64(np.iinfo(np.int64).max), g.i64(1))
        counted = g.op("ReduceSum", new_mask, g.i64(1), keepdims=1, name="real_new_tokens")  # [B, 1]
        # S counted on the device (not taken from Shape, which lives on the host): a host-side
        # condition feeding Where would need a copy, and copies forbid CUDA graph capture.
        ones = g.op("Cast", g.op("Equal", input_ids, input_ids), to=ir.DataType.INT64)
        width = g.op("ReduceSum", ones, g.i64(1), keepdims=1, name="new_tokens_on_device")  # [B, 1]
        decoding = g.op("Equal", width, g.i64(1), name="is_decode_step")
        real_new = g.op("Where", decoding, g.i64(1), counted, name="state_shift")
        start = g.op("Unsqueeze", real_new, g.i64(2))  # [B, 1, 1]
        window = g.const(np.arange(spec.conv_state_size, dtype=np.int64).reshape(1, 1, -1))
        index = g.op("Add", start, window)  # [B, 1, L-1]
        ctx.conv_state_index = g.op("Expand", index, g.i64(1, spec.hidden_size, spec.conv_state_size),
                                    name="state_index")


def embeddings(ctx: Context, input_ids: ir.Value) -> ir.Value:
    table = ctx.w.tensor("model.embed_tokens.weight")
    return ctx.g.op("Gather", table, input_ids, axis=0, name="embed_tokens")


def rms_norm(ctx: Context, x: ir.Value, weight: str) -> ir.Value:
    return ctx.g.op("SimplifiedLayerNormalization", x, ctx.w.tensor(weight), axis=-1,
                    epsilon=ctx.spec.norm_eps, name="norm")


def skip_rms_norm(ctx: Context, x: ir.Value, residual: ir.Value, weight: str) -> tuple[ir.Value, ir.Value]:
    """residual + x, and its RMSNorm, in one kernel. Returns (normed, sum)."""
    name = ctx.g._unique("skip_norm")
    normed, _, _, total = ctx.g.op(
        "SkipSimplifiedLayerNormalization", x, residual, ctx.w.tensor(weight), domain=MS,
        epsilon=ctx.spec.norm_eps, name="skip_norm", outputs=[f"{name}:normed", None, None, f"{name}:sum"])
    return normed, total


def _per_head_rms_norm(ctx: Context, x: ir.Value, heads: int, weight: str) -> ir.Value:
    g, d = ctx.g, ctx.spec.head_dim
    per_head = g.op("Reshape", x, g.i64(0, 0, heads, d))
    normed = g.op("SimplifiedLayerNormalization", per_head, ctx.w.tensor(weight), axis=-1,
                  epsilon=ctx.spec.norm_eps)
    return g.op("Reshape", normed, g.i64(0, 0, heads * d))


def attention(ctx: Context, i: int, h: ir.Value, past_key: ir.Value, past_value: ir.Value):
    """Fused QKV MatMul, per-head Q/K RMSNorm, RoPE and GQA over the KV cache, then out_proj."""
    g, spec, w = ctx.g, ctx.spec, ctx.w
    p = f"model.layers.{i}.self_attn"
    q_size, kv_size = spec.num_attention_heads * spec.head_dim, spec.num_key_value_heads * spec.head_dim
    qkv = g.op("MatMul", h, w.linear(f"{p}.qkv_proj.weight", f"{p}.q_proj.weight", f"{p}.k_proj.weight",
                                     f"{p}.v_proj.weight"), name="qkv_proj")
    if ctx.opts.fuse_qk_norm:
        # Packed QKV; GQA applies the per-head norms before rotary.
        query, key, value = qkv, None, None
        norms = [w.tensor(f"{p}.q_layernorm.weight"), w.tensor(f"{p}.k_layernorm.weight")]
    else:
        query, key, value = g.op("Split", qkv, g.i64(q_size, kv_size, kv_size), axis=-1, outputs=3)
        with g.scope("q_norm"):
            query = _per_head_rms_norm(ctx, query, spec.num_attention_heads, f"{p}.q_layernorm.weight")
        with g.scope("k_norm"):
            key = _per_head_rms_norm(ctx, key, spec.num_key_value_heads, f"{p}.k_layernorm.weight")
        norms = []
    out, present_key, present_value = g.op(
        "GroupQueryAttention", query, key, value, past_key, past_value, ctx.seqlens_k, ctx.total_length,
        # inputs 9-13 (position_ids, attention_bias, head_sink, k_scale, v_scale) stay empty
        ctx.cos_cache, ctx.sin_cache, *([None] * 5 + norms if norms else []), domain=MS, outputs=3,
        num_heads=spec.num_attention_heads, kv_num_heads=spec.num_key_value_heads, do_rotary=1,
        rotary_interleaved=0, qk_norm_epsilon=spec.norm_eps if norms else None, name="gqa")
    return g.op("MatMul", out, w.linear(f"{p}.out_proj.weight", f"{p}.out_proj.weight"),
                name="out_proj"), present_key, present_value


def short_conv(ctx: Context, i: int, h: ir.Value, past_conv: ir.Value):
    """in_proj -> B, C, x -> B*x -> causal depthwise conv with carried state -> C* -> out_proj."""
    g, spec, w = ctx.g, ctx.spec, ctx.w
    p = f"model.layers.{i}.conv"
    hs = spec.hidden_size
    bcx = g.op("MatMul", h, w.linear(f"{p}.in_proj.weight", f"{p}.in_proj.weight"), name="in_proj")
    if spec.conv_bias:
        bcx = g.op("Add", bcx, w.bias(f"{p}.in_proj.bias", f"{p}.in_proj.bias"), name="in_proj_bias")
    b, c, x = g.op("Split", bcx, g.i64(hs, hs, hs), axis=-1, outputs=3, name="split_bcx")
    bx = g.op("Transpose", g.op("Mul", b, x, name="gate_b"), perm=[0, 2, 1], name="to_channels_first")
    conv_bias = w.tensor(f"{p}.conv.bias") if spec.conv_bias else None
    conv, _ = g.op("CausalConvWithState", bx, w.tensor(f"{p}.conv.weight"), conv_bias, past_conv,
                   domain=MS, outputs=2, activation="none", name="conv")
    # The op's own carried state ends at the last position, which is padding for short rows of a
    # right-padded batch; take each row's window ending at its last real token instead.
    history = g.op("Concat", past_conv, bx, axis=2, name="state_history")
    present_conv = g.op("GatherElements", history, ctx.conv_state_index, axis=2, name="present_state")
    y = g.op("Mul", c, g.op("Transpose", conv, perm=[0, 2, 1], name="to_channels_last"), name="gate_c")
    out = g.op("MatMul", y, w.linear(f"{p}.out_proj.weight", f"{p}.out_proj.weight"), name="out_proj")
    if spec.conv_bias:
        out = g.op("Add", out, w.bias(f"{p}.out_proj.bias", f"{p}.out_proj.bias"), name="out_proj_bias")
    return out, present_conv


def mlp(ctx: Context, i: int, h: ir.Value) -> ir.Value:
    """SwiGLU: w2(silu(w1 x) * w3 x), with w1|w3 fused into one MatMul."""
    g, w = ctx.g, ctx.w
    p = f"model.layers.{i}.feed_forward"
    ff = ctx.spec.intermediate_size
    gate_up = g.op("MatMul", h, w.linear(f"{p}.w1_w3.weight", f"{p}.w1.weight", f"{p}.w3.weight"), name="gate_up")
    gate, up = g.op("Split", gate_up, g.i64(ff, ff), axis=-1, outputs=2)
    act = g.op("QuickGelu", gate, domain=MS, alpha=1.0, name="silu")  # x * sigmoid(1.0 * x)
    return g.op("MatMul", g.op("Mul", act, up), w.linear(f"{p}.w2.weight", f"{p}.w2.weight"), name="down")


def lm_head(ctx: Context, h: ir.Value, input_ids: ir.Value) -> ir.Value:
    """Gemm with transB over the [vocab, hidden] table: tied models share it with the embedding."""
    g, spec = ctx.g, ctx.spec
    name = "model.embed_tokens.weight" if spec.tie_word_embeddings else "lm_head.weight"
    table = next((v for v in g.graph.initializers.values() if v.name == name), None) or ctx.w.tensor(name)
    rows = g.op("Reshape", h, g.i64(-1, spec.hidden_size))
    logits = g.op("Gemm", rows, table, transB=1, name="lm_head")
    shape = g.op("Concat", g.op("Shape", input_ids), g.i64(spec.vocab_size), axis=0)
    logits = g.op("Reshape", logits, shape)
    if ctx.opts.logits_dtype != ctx.opts.io_dtype:
        logits = g.op("Cast", logits, to=ctx.opts.logits_dtype)
    return logits
