"""The routed feed-forward of Lfm2MoeForCausalLM, through com.microsoft MoE (float) / QMoE (int4/int8).

LFM2-MoE routes with sigmoid scores (transformers' Lfm2MoeTopKRouter):
    s = sigmoid(x @ gate.T);  chosen = topk(s + expert_bias, k);  w = s[chosen]
    w = w / (sum(w) + 1e-6) if norm_topk_prob;  w = w * routed_scaling_factor
    y = sum_j w_j * w2_j(silu(w1_j x) * w3_j x)
The fused ops only weight experts by a softmax over the top-k of their `router_probs` input. So the
router runs here, in fp32 whatever the export's precision (its [H, E] matrix is tiny; fp32 keeps the
choice among near-equal scores the same as transformers'), and hands the op
    router_probs = log(w) at the chosen experts, -inf elsewhere,
whose top-k is exactly the chosen set and whose softmax is w / sum(w). What the softmax cannot
express is applied to the op's output, per token:
    sum(w) / (sum(w) + 1e-6) * scaling   (norm_topk_prob)   or   sum(w) * scaling   (not)
(the 1e-6 correction only in fp32 exports: _route says why).
This one formulation serves every EP and precision: QMoE's separate `router_weights` input would
carry w directly, but onnxruntime's CUDA QMoE ignores it (1.31), and one graph shape is easier to
trust than two.

Experts' gate/up weights are fused and interleaved (rows g0, u0, g1, u1, ...: swiglu_fusion=1, the
only fused layout onnxruntime's CPU kernel takes); down is [E, H, I] as transformers stores it.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import torch

from lfm2_onnx.errors import UserError

from .blocks import MS, Context
from .quantize import Scheme, OneQuantization, quantize_blockwise
from .weights import to_numpy

_FLOOR = 1e-30
_NORM_EPS = 1e-6  # transformers' Lfm2MoeTopKRouter
# onnxruntime-gpu 1.31's QMoE tiles the interleaved weights' K by 64 (it refuses other widths at run time).
CUDA_QMOE_INTER_MULTIPLE = 64


def moe(ctx: Context, i: int, h: ir.Value) -> ir.Value:
    """h [B, S, H] -> the routed experts' weighted sum [B, S, H]."""
    g, spec = ctx.g, ctx.spec
    p = f"model.layers.{i}.feed_forward"
    rows = g.op("Reshape", h, g.i64(-1, spec.hidden_size), name="tokens")  # [T, H]
    with g.scope("router"):
        router_probs, output_scale = _route(ctx, rows, p)
    with g.scope("experts"):
        mixed = _experts(ctx, rows, router_probs, p)
    scaled = mixed if output_scale is None else g.op("Mul", mixed, output_scale, name="route_scale")
    shape = g.op("Shape", h)
    return g.op("Reshape", scaled, shape, name="unflatten")


def _route(ctx: Context, rows: ir.Value, p: str) -> tuple[ir.Value, ir.Value | None]:
    """(router_probs [T, E] in the op's dtype, per-token output factor [T, 1] in the io dtype, or None).

    Decode is latency-bound: at batch 1 each of these nodes is one small kernel, and on the H200 the
    router's ~22 kernels per layer took a third of a q4f16 step (BENCHMARKS.md, MoE kernel profile).
    So the chosen set is a mask (scores at or above the k-th largest biased score), not a gather and
    a scatter, and the output factor is left out where the export's precision can't see it.

    Variants (BuildOptions.moe_router): lean, rank and gemm are the default (options.DEFAULT_MOE_ROUTER:
    the same choice as TopK in fp32, 2.61 -> 2.41 ms fp16 and 1.85 -> 1.61 ms q4f16 TPOT on the H200,
    BENCHMARKS.md MoE round 3); LFM2_ONNX_MOE_ROUTER=base builds the graph without them.
      lean    the op gets log(w) at the chosen experts, not log(w / sum w): its softmax normalises
              anyway; the Div, the floor and (unless the output factor needs it) the sum go
              (3 kernels a layer). fp16 rounds log(w) of a weight in (0.05, 1) to <= 2^-10, i.e.
              <= 0.1% of that weight, about two fp16 roundings of the expert output (bf16: 8x
              coarser, as everything else in a bf16 export). With rank and gemm, fp16 exports of
              tests/test_moe.py's four configs were as close to transformers as the default graph
              (the same max |dlogit|, mean KL and top-1, CPU).
      rank    the chosen set without TopK: an expert is chosen when fewer than k biased scores
              are strictly above it (Greater over [T, E, E], Cast, ReduceSum, Less), which is the
              same set as ">= the k-th largest", ties included; 4 tiny kernels instead of TopK
              (4.5 us on the H200), its Slice and GreaterOrEqual.
      gemm    the gate as Gemm(x, W[E, H], transB=1) instead of MatMul(x, W.T): cuBLAS ran the
              fp32 [1, H] x [H, E] MatMul as a dot kernel plus a reduce kernel.
      gate16  the gate in the export's float dtype (fp16/bf16), its logits cast to fp32: drops the
              input Cast and runs an fp16 GEMV; the choice then sees fp16-rounded logits, so near
              ties may pick other experts than transformers in fp32 (fp32 exports are unaffected);
              on one CPU test config it moved decode's max |dlogit| from 0.08 to 1.8 and the greedy
              tokens.
    """
    g, moe = ctx.g, ctx.spec.moe
    variants = ctx.opts.moe_router
    fp32, io = ir.DataType.FLOAT, ctx.opts.io_dtype
    scores = g.op("Sigmoid", _gate_logits(ctx, rows, p), name="scores")  # [T, E] fp32
    choosing = scores
    if moe.use_expert_bias:
        bias = g.weight(f"{p}.expert_bias", fp32, (moe.num_experts,),
                        lambda: to_numpy(ctx.w.ckpt.load(f"{p}.expert_bias"), "fp32"))
        choosing = g.op("Add", scores, bias, name="biased_scores")  # the bias selects, it never weights
    chosen = _chosen(g, choosing, moe.experts_per_token, by_rank="rank" in variants)
    # sum(w) / (sum(w) + 1e-6) is within 1e-6 / sum(w) of 1: below fp16/bf16's rounding of the
    # output unless the chosen scores sum below ~2e-3, so only fp32 exports spend kernels on it.
    needs_total = not moe.norm_topk_prob or io == fp32
    if "lean" in variants:
        # log(0) = -inf at the other experts; a chosen score of exactly 0 (logit < -88 in fp32) gets
        # weight 0, its limit, unless all k do (NaN): not a state a trained router reaches.
        weights = g.op("Where", chosen, scores, g.const(np.float32(0.0)), name="chosen_weights")
        total = g.op("ReduceSum", weights, g.i64(-1), keepdims=1, name="total") if needs_total else None
        probs = g.op("Log", weights, name="router_probs")
    else:
        floored = g.op("Max", scores, g.const(np.float32(_FLOOR)), name="floored_scores")
        weights = g.op("Where", chosen, floored, g.const(np.float32(0.0)), name="chosen_weights")  # w, 0 elsewhere
        total = g.op("ReduceSum", weights, g.i64(-1), keepdims=1, name="total")  # sum(w) [T, 1]
        # log(w / sum(w)): the op's softmax of it is w / sum(w); -inf (log 0) at the other experts, which
        # neither top-k nor softmax can pick; and the largest is at least -log(k), where fp16 resolves it
        # finely (fp16 spacing on a plain log(w) of small scores is up to 0.1% of a weight).
        probs = g.op("Log", g.op("Div", weights, total), name="router_probs")
    if io != fp32:
        probs = g.op("Cast", probs, to=io, name="router_probs_cast")

    # What the op's softmax (w / sum(w)) leaves out, per token.
    factor = None
    if not moe.norm_topk_prob:
        factor = total  # the op's softmax divided by sum(w): multiply it back
    elif io == fp32:
        factor = g.op("Div", total, g.op("Add", total, g.const(np.float32(_NORM_EPS))), name="norm_correction")
    if moe.routed_scaling_factor != 1.0:
        scaling = g.const(np.float32(moe.routed_scaling_factor))
        factor = scaling if factor is None else g.op("Mul", factor, scaling, name="scaling")
    if factor is not None and io != fp32:
        factor = g.op("Cast", factor, to=io, name="scale_cast")
    return probs, factor


def _gate_logits(ctx: Context, rows: ir.Value, p: str) -> ir.Value:
    """x @ gate.T as [T, E] fp32. The gate stays fp32 whatever the export's precision (its [H, E]
    matrix is tiny; fp32 keeps the choice among near-equal scores the same as transformers'),
    unless the gate16 variant asks for the export's float dtype."""
    g, spec, opts = ctx.g, ctx.spec, ctx.opts
    fp32, e, hs = ir.DataType.FLOAT, spec.moe.num_experts, spec.hidden_size
    in_io = "gate16" in opts.moe_router and opts.io_dtype != fp32
    dtype, precision = (opts.io_dtype, opts.float_precision) if in_io else (fp32, "fp32")
    x = rows if opts.io_dtype == dtype else g.op("Cast", rows, to=dtype)
    load = lambda: ctx.w.ckpt.load(f"{p}.gate.weight")  # noqa: E731  [E, H]
    if "gemm" in opts.moe_router:
        gate = g.weight(f"{p}.gate.weight", dtype, (e, hs), lambda: to_numpy(load(), precision))
        logits = g.op("Gemm", x, gate, transB=1, name="gate")
    else:
        gate = g.weight(f"{p}.gate.weight.T", dtype, (hs, e), lambda: to_numpy(load().T, precision))
        logits = g.op("MatMul", x, gate, name="gate")
    return logits if dtype == fp32 else g.op("Cast", logits, to=fp32, name="logits_fp32")


def _chosen(g, choosing: ir.Value, k: int, by_rank: bool) -> ir.Value:
    """[T, E] bool: the experts at or above the k-th largest of `choosing`. Only an exact tie with
    the k-th score marks more than k (torch.topk's pick among exact ties is unspecified too)."""
    if by_rank:
        # above[t, i, j] = choosing[t, j] > choosing[t, i]; chosen when fewer than k are above.
        above = g.op("Greater", g.op("Unsqueeze", choosing, g.i64(-2)), g.op("Unsqueeze", choosing, g.i64(-1)),
                     name="pairwise_above")
        count = g.op("ReduceSum", g.op("Cast", above, to=ir.DataType.FLOAT), g.i64(-1), keepdims=0, name="rank")
        return g.op("Less", count, g.const(np.float32(k)), name="chosen")
    top, _ = g.op("TopK", choosing, g.i64(k), axis=-1, largest=1, sorted=1, outputs=2, name="top_k")
    kth = g.op("Slice", top, g.i64(k - 1), g.i64(k), g.i64(1), name="kth_score")  # [T, 1]
    return g.op("GreaterOrEqual", choosing, kth, name="chosen")


def _interleave_gate_up(gate_up: torch.Tensor) -> torch.Tensor:
    """[E, 2I, H] with gate rows then up rows -> rows g0, u0, g1, u1, ... (swiglu_fusion=1)."""
    e, two_i, h = gate_up.shape
    gate, up = gate_up.reshape(e, 2, two_i // 2, h).unbind(1)
    return torch.stack([gate, up], dim=2).reshape(e, two_i, h)


def _experts(ctx: Context, rows: ir.Value, router_probs: ir.Value, p: str) -> ir.Value:
    g, spec, opts = ctx.g, ctx.spec, ctx.opts
    moe = spec.moe
    e, hs, ff = moe.num_experts, spec.hidden_size, moe.intermediate_size
    gate_up, down = f"{p}.experts.gate_up_proj", f"{p}.experts.down_proj"
    load_fc1 = lambda: _interleave_gate_up(ctx.w.ckpt.load(gate_up))  # noqa: E731
    load_fc2 = lambda: ctx.w.ckpt.load(down)  # noqa: E731
    common = dict(k=moe.experts_per_token, activation_type="swiglu", swiglu_fusion=1, normalize_routing_weights=1,
                  activation_alpha=1.0, activation_beta=0.0)  # swiglu: g * sigmoid(1.0 * g) * (u + 0) = silu(g) * u
    if opts.bits is None:
        fc1 = g.weight(f"{p}.experts.fc1", opts.io_dtype, (e, 2 * ff, hs),
                       lambda: to_numpy(load_fc1(), opts.float_precision))
        fc2 = g.weight(f"{p}.experts.fc2", opts.io_dtype, (e, hs, ff), lambda: to_numpy(load_fc2(), opts.float_precision))
        return g.op("MoE", rows, router_probs, fc1, None, fc2, domain=MS, name="moe", **common)
    scheme = Scheme(opts.bits, opts.block_size, opts.symmetric)
    fc1 = _quantized_experts(ctx, f"{p}.experts.fc1", e, 2 * ff, hs, scheme, load_fc1)
    fc2 = _quantized_experts(ctx, f"{p}.experts.fc2", e, hs, ff, scheme, load_fc2)
    zero_points = [fc1[2], fc2[2], None] if not scheme.symmetric else []
    return g.op("QMoE", rows, router_probs, fc1[0], fc1[1], None, fc2[0], fc2[1], None, None, None, None,
                *zero_points, domain=MS, name="qmoe", expert_weight_bits=scheme.bits,
                block_size=None if scheme.bits == 8 else scheme.block_size,  # int8: per channel
                accuracy_level=opts.accuracy_level or None, **common)


def _quantized_experts(ctx: Context, name: str, e: int, n: int, k: int, scheme: Scheme, load):
    """QMoE's [E, N, K * bits / 8] weights, their scales and (asymmetric) zero points.

    int4: blocks along K, each expert quantized by onnxruntime's block quantizer (the bytes of a
    MatMulNBits B with the block axis flattened). int8: one scale per output channel, because
    onnxruntime 1.32's CPU QMoE computes block-wise 8-bit experts on int8-quantized activations at
    every accuracy level (~1% off the dequantized weights), while per-channel int8 is exact.
    """
    g, opts = ctx.g, ctx.opts
    per_channel = scheme.bits == 8
    if opts.ep == "cuda" and ctx.spec.moe.intermediate_size % CUDA_QMOE_INTER_MULTIPLE:
        raise UserError(f"moe_intermediate_size {ctx.spec.moe.intermediate_size} is not a multiple of "
                        f"{CUDA_QMOE_INTER_MULTIPLE}, which onnxruntime's CUDA QMoE needs; export -p fp16 -e cuda, "
                        "or -e cpu for int8/int4")
    if not per_channel and k % scheme.block_size:
        raise UserError(f"--block-size {scheme.block_size} does not divide the experts' input width {k} "
                        "(QMoE needs whole blocks); choose a smaller --block-size")
    blocks = 1 if per_channel else k // scheme.block_size

    def quantize() -> tuple:
        experts = to_numpy(load(), opts.float_precision)
        if per_channel:
            parts = [quantize_per_channel_int8(expert, scheme.symmetric) for expert in experts]
        else:
            parts = [quantize_blockwise(expert, scheme) for expert in experts]
        packed = np.stack([q[0].reshape(n, -1) for q in parts])
        scales = np.stack([q[1].reshape(n, blocks) for q in parts])
        zero_points = None if scheme.symmetric else np.stack([q[2].reshape(n, -1) for q in parts])
        if per_channel:
            scales = scales[..., 0]
            zero_points = None if zero_points is None else zero_points[..., 0]
        return packed, scales, zero_points

    once = OneQuantization(quantize)
    scale_shape = (e, n) if per_channel else (e, n, blocks)
    packed = g.weight(f"{name}_Q{scheme.bits}", ir.DataType.UINT8, (e, n, k * scheme.bits // 8), lambda: once.take(0))
    scales = g.weight(f"{name}_scales", opts.io_dtype, scale_shape, lambda: once.take(1))
    zero_points = None
    if not scheme.symmetric:
        zp_shape = (e, n) if per_channel else (e, n, scheme.zero_point_columns(k))
        zero_points = g.weight(f"{name}_zero_points", ir.DataType.UINT8, zp_shape, lambda: once.take(2))
    return packed, scales, zero_points


def quantize_per_channel_int8(weight_nk: np.ndarray, symmetric: bool):
    """One scale (and zero point) per row of an [N, K] weight: (q - zero_point) * scale, q uint8.

    Symmetric weights use QMoE's default zero point 128, as onnxruntime's 8-bit quantizer does.
    """
    w = weight_nk.astype(np.float32)
    if symmetric:
        scale = (np.abs(w).max(axis=1) / 127.0).astype(weight_nk.dtype)
        safe = np.where(scale == 0, 1, scale).astype(np.float32)
        q = np.clip(np.rint(w / safe[:, None]), -128, 127) + 128
        return q.astype(np.uint8), scale[:, None], None
    low, high = np.minimum(w.min(axis=1), 0), np.maximum(w.max(axis=1), 0)
    scale = ((high - low) / 255.0).astype(weight_nk.dtype)
    safe = np.where(scale == 0, 1, scale).astype(np.float32)
    zero = np.clip(np.rint(-low / safe), 0, 255)
    q = np.clip(np.rint(w / safe[:, None]) + zero[:, None], 0, 255)
    return q.astype(np.uint8), scale[:, None], zero.astype(np.uint8)[:, None]
