"""One function per LFM2 block; each emits its nodes into the graph and returns its outputs.

Tensor layouts follow transformers' Lfm2ForCausalLM; the comments give shapes as
[batch, sequence, features] with B, S, H = batch, new tokens, hidden size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
import torch

from .graph_builder import GraphBuilder
from .options import BuildOptions
from .quantize import QuantizedMatrix, Scheme, add_quantized_weight
from .spec import Lfm2Spec
from .weights import Checkpoint, to_numpy

MS = "com.microsoft"

# Projections stored as one matrix: fused name -> the HF weights it stacks along the output dim.
FUSED_LINEARS = {
    "self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "feed_forward.w1_w3": ("feed_forward.w1", "feed_forward.w3"),
}


class Weights:
    """Initializers from the checkpoint, in the layout the graph wants, loaded only when written.

    Asking twice for the same name returns the same initializer (a tied table is stored once).
    """

    def __init__(self, g: GraphBuilder, ckpt: Checkpoint, opts: BuildOptions):
        self.g, self.ckpt, self.opts = g, ckpt, opts
        self._made: dict[str, ir.Value | QuantizedMatrix] = {}

    def _add(self, name: str, shape: tuple[int, ...], load) -> ir.Value:
        return self.g.weight(name, self.opts.io_dtype, shape, lambda: to_numpy(load(), self.opts.float_precision))

    def tensor(self, name: str, as_name: str | None = None) -> ir.Value:
        key = as_name or name
        if key not in self._made:
            self._made[key] = self._add(key, self.ckpt.shape(name), lambda: self.ckpt.load(name))
        return self._made[key]

    def linear(self, as_name: str, *names: str) -> ir.Value:
        """MatMul weight [in, out]: HF stores [out, in]; several names fuse along out (QKV, gate|up)."""
        shape = (self.ckpt.shape(names[0])[1], sum(self.ckpt.shape(n)[0] for n in names))
        return self._add(as_name, shape, lambda: torch.cat([self.ckpt.load(n) for n in names]).T)

    def bias(self, as_name: str, *names: str) -> ir.Value:
        shape = (sum(self.ckpt.shape(n)[0] for n in names),)
        return self._add(as_name, shape, lambda: torch.cat([self.ckpt.load(n) for n in names]))

    def quantized(self, as_name: str, *names: str, bits: int) -> QuantizedMatrix:
        """HF [out, in] weights (several fuse along out), block-quantized along in."""
        key = f"{as_name}_Q{bits}"
        if key not in self._made:
            n, k = sum(self.ckpt.shape(name)[0] for name in names), self.ckpt.shape(names[0])[1]
            scheme = Scheme(bits, self.opts.block_size, self.opts.symmetric)
            self._made[key] = add_quantized_weight(
                self.g, as_name, n, k, scheme, self.opts.io_dtype,
                lambda: to_numpy(torch.cat([self.ckpt.load(name) for name in names]), self.opts.float_precision))
        return self._made[key]


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
    """cos/sin tables [max_positions, head_dim/2], computed by the graph in fp32 as transformers does.

    Nodes, not initializers: onnxruntime folds them into constants when a session loads, and the
    file is smaller by both tables (2 x 16 MB at LFM2's 128k positions: an eighth of a q4 350M file).
    positions x inv_freq is the same fp32 product transformers takes; cos/sin may differ by an ulp.
    """
    spec, g = ctx.spec, ctx.g
    inv_freq = 1.0 / (spec.rope_theta ** (torch.arange(0, spec.head_dim, 2, dtype=torch.float) / spec.head_dim))
    with g.scope("rotary"):
        positions = g.op("Range", g.const(np.float32(0)), g.const(np.float32(spec.max_position_embeddings)),
                         g.const(np.float32(1)), name="positions")
        freqs = g.op("Mul", g.op("Unsqueeze", positions, g.i64(1)), g.const(inv_freq.numpy()[None, :]), name="freqs")
        caches = [g.op(fn, freqs, name=fn.lower()) for fn in ("Cos", "Sin")]
        if ctx.opts.io_dtype != ir.DataType.FLOAT:
            caches = [g.op("Cast", c, to=ctx.opts.io_dtype, name=f"{fn.lower()}_io") for c, fn in zip(caches, ("Cos", "Sin"))]
    ctx.cos_cache, ctx.sin_cache = caches


def token_grid_of_embeddings(ctx: Context, inputs_embeds: ir.Value) -> tuple[ir.Value, ir.Value]:
    """What a decoder on inputs_embeds [B, S, H] uses in place of input_ids: the shape [B, S] (host
    side, for reshapes and slices) and an int64 [B, S] tensor of ones made on the device (for
    conv_state_index's device-side token count)."""
    g = ctx.g
    with g.scope("token_grid"):
        token_shape = g.op("Slice", g.op("Shape", inputs_embeds), g.i64(0), g.i64(2), name="token_shape")
        ones = g.op("ConstantOfShape", token_shape, value=ir.tensor(np.array([1], dtype=np.int64)), name="token_ones")
    return token_shape, ones


def conv_state_index(ctx: Context, token_shape: ir.Value, tokens: ir.Value, attention_mask: ir.Value) -> None:
    """Index of each row's carried conv state inside concat(past_state, new inputs) along time.

    A right-padded row with n real new tokens must carry the L-1 inputs ending at its last real
    token, not at the padding: the state window starts at n, counted from the mask's last S
    columns. A single new token (decode) is always real, so n is 1 there whatever the mask says:
    CUDA-graph runtimes feed a fixed-width mask whose last column is not the current one.
    token_shape: [B, S] of the new tokens; tokens: any int64 [B, S] tensor on the device (input_ids).
    """
    g, spec = ctx.g, ctx.spec
    with g.scope("conv_metadata"):
        new_len = g.op("Slice", token_shape, g.i64(1), g.i64(2), name="new_tokens")
        new_mask = g.op("Slice", attention_mask, g.op("Neg", new_len), g.i64(np.iinfo(np.int64).max), g.i64(1))
        counted = g.op("ReduceSum", new_mask, g.i64(1), keepdims=1, name="real_new_tokens")  # [B, 1]
        # S counted on the device (not taken from Shape, which lives on the host): a host-side
        # condition feeding Where would need a copy, and copies forbid CUDA graph capture.
        ones = g.op("Cast", g.op("Equal", tokens, tokens), to=ir.DataType.INT64)
        width = g.op("ReduceSum", ones, g.i64(1), keepdims=1, name="new_tokens_on_device")  # [B, 1]
        decoding = g.op("Equal", width, g.i64(1), name="is_decode_step")
        real_new = g.op("Where", decoding, g.i64(1), counted, name="state_shift")
        start = g.op("Unsqueeze", real_new, g.i64(2))  # [B, 1, 1]
        window = g.const(np.arange(spec.conv_state_size, dtype=np.int64).reshape(1, 1, -1))
        index = g.op("Add", start, window)  # [B, 1, L-1]
        ctx.conv_state_index = g.op("Expand", index, g.i64(1, spec.hidden_size, spec.conv_state_size),
                                    name="state_index")


def linear(ctx: Context, x: ir.Value, prefix: str, proj: str, name: str) -> ir.Value:
    """x @ W.T for the projection `prefix.proj` (fused ones per FUSED_LINEARS): MatMul, or MatMulNBits."""
    names = [f"{prefix}.{part}.weight" for part in FUSED_LINEARS.get(proj, (proj,))]
    as_name = f"{prefix}.{proj}.weight"
    if ctx.opts.bits is None:
        return ctx.g.op("MatMul", x, ctx.w.linear(as_name, *names), name=name)
    return matmul_nbits(ctx, x, ctx.w.quantized(as_name, *names, bits=ctx.opts.bits), name)


def matmul_nbits(ctx: Context, x: ir.Value, weight: QuantizedMatrix, name: str) -> ir.Value:
    # accuracy_level 0 is "unset": left out, as onnxruntime's quantizer does (not every EP knows it).
    return ctx.g.op("MatMulNBits", x, *weight.inputs, domain=MS, K=weight.k, N=weight.n, bits=weight.scheme.bits,
                    block_size=weight.scheme.block_size, accuracy_level=ctx.opts.accuracy_level or None, name=name)


def _vocab_table(ctx: Context, name: str) -> QuantizedMatrix:
    """A quantized [vocab, hidden] table: already MatMulNBits' B orientation, so one table serves both ends."""
    return ctx.w.quantized(name, name, bits=ctx.opts.lm_head_bits)


def embeddings(ctx: Context, input_ids: ir.Value) -> ir.Value:
    name = "model.embed_tokens.weight"
    if ctx.opts.lm_head_bits is None:
        return ctx.g.op("Gather", ctx.w.tensor(name), input_ids, axis=0, name="embed_tokens")
    return _gather_quantized_rows(ctx, _vocab_table(ctx, name), input_ids)


def _gather_quantized_rows(ctx: Context, table: QuantizedMatrix, input_ids: ir.Value) -> ir.Value:
    """GatherBlockQuantized over MatMulNBits' B viewed as [vocab, blocks * blob] (a Reshape: same bytes)."""
    g = ctx.g
    rows = g.op("Reshape", table.packed, g.i64(table.n, -1), name="table_rows")
    hidden = g.op("GatherBlockQuantized", rows, input_ids, *table.inputs[1:], domain=MS, bits=table.scheme.bits,
                  block_size=table.scheme.block_size, gather_axis=0, quantize_axis=1, name="embed_tokens")
    if table.padded_k != table.k:  # rows are padded to whole blocks
        hidden = g.op("Slice", hidden, g.i64(0), g.i64(table.k), g.i64(-1), name="unpad")
    return hidden


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
    qkv = linear(ctx, h, f"model.layers.{i}", "self_attn.qkv_proj", name="qkv_proj")
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
    return linear(ctx, out, p, "out_proj", name="out_proj"), present_key, present_value


def short_conv(ctx: Context, i: int, h: ir.Value, past_conv: ir.Value):
    """in_proj -> B, C, x -> B*x -> causal depthwise conv with carried state -> C* -> out_proj."""
    g, spec, w = ctx.g, ctx.spec, ctx.w
    p = f"model.layers.{i}.conv"
    hs = spec.hidden_size
    bcx = linear(ctx, h, p, "in_proj", name="in_proj")
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
    out = linear(ctx, y, p, "out_proj", name="out_proj")
    if spec.conv_bias:
        out = g.op("Add", out, w.bias(f"{p}.out_proj.bias", f"{p}.out_proj.bias"), name="out_proj_bias")
    return out, present_conv


def mlp(ctx: Context, i: int, h: ir.Value) -> ir.Value:
    """SwiGLU: w2(silu(w1 x) * w3 x), with w1|w3 fused into one MatMul."""
    g = ctx.g
    ff = ctx.spec.intermediate_size
    gate_up = linear(ctx, h, f"model.layers.{i}", "feed_forward.w1_w3", name="gate_up")
    gate, up = g.op("Split", gate_up, g.i64(ff, ff), axis=-1, outputs=2)
    act = g.op("QuickGelu", gate, domain=MS, alpha=1.0, name="silu")  # x * sigmoid(1.0 * x)
    return linear(ctx, g.op("Mul", act, up), f"model.layers.{i}.feed_forward", "w2", name="down")


def lm_head(ctx: Context, h: ir.Value, token_shape: ir.Value) -> ir.Value:
    """h @ table.T over the [vocab, hidden] table: tied models share it with the embedding.

    Quantized: MatMulNBits over the same quantized table the embedding gathers from. Float: Gemm
    with transB (MatMul would need the table transposed, a second copy).
    """
    g, spec = ctx.g, ctx.spec
    name = "model.embed_tokens.weight" if spec.tie_word_embeddings else "lm_head.weight"
    if ctx.opts.lm_head_bits is not None:
        return matmul_nbits(ctx, h, _vocab_table(ctx, name), name="lm_head")
    table = ctx.w.tensor(name)
    rows = g.op("Reshape", h, g.i64(-1, spec.hidden_size))
    logits = g.op("Gemm", rows, table, transB=1, name="lm_head")
    shape = g.op("Concat", token_shape, g.i64(spec.vocab_size), axis=0)
    logits = g.op("Reshape", logits, shape)
    if ctx.opts.logits_dtype != ctx.opts.io_dtype:
        logits = g.op("Cast", logits, to=ctx.opts.logits_dtype)
    return logits
