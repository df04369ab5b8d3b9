"""Block-wise weight quantization for com.microsoft MatMulNBits and GatherBlockQuantized.

Each weight is quantized by onnxruntime's own quantizer (the C++ kernels behind
onnxruntime.quantization.MatMulNBitsQuantizer's default weight-only config), called one tensor at a
time from the streaming writer. MatMulNBitsQuantizer itself can't be run on our export: it takes a
whole ModelProto (a 2.6B model's fp32 weights in memory, several times over while it rewrites
them), it only rewrites MatMul/Gather nodes (our float LM head is a Gemm), and it would quantize a
tied table twice, once per node, in two layouts (and refuses 8-bit Gathers). Calling its per-weight
step instead gives the same bytes, streamed, with one table for both ends of a tied model.

Layout (MatMulNBits' B, the HF [out, in] orientation, so an embedding table is one as it stands):
    packed       uint8 [N, k_blocks, block_size * bits / 8], K padded with zeros to whole blocks
    scales       float [N, k_blocks] (the activations' dtype)
    zero_points  uint8 [N, ceil(k_blocks * bits / 8)] when asymmetric, packed like B; symmetric
                 weights have none and use the kernels' default 2^(bits-1)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx_ir as ir

from .graph_builder import GraphBuilder


@dataclass(frozen=True)
class Scheme:
    bits: int
    block_size: int
    symmetric: bool

    def k_blocks(self, k: int) -> int:
        return -(-k // self.block_size)

    @property
    def blob_size(self) -> int:
        return self.block_size * self.bits // 8

    def zero_point_columns(self, k: int) -> int:
        return -(-self.k_blocks(k) * self.bits // 8)


@dataclass(frozen=True)
class QuantizedMatrix:
    """The graph values of one quantized [N, K] weight, and what the nodes need to know about it."""

    packed: ir.Value
    scales: ir.Value
    zero_points: ir.Value | None
    n: int
    k: int
    scheme: Scheme

    @property
    def padded_k(self) -> int:
        return self.scheme.k_blocks(self.k) * self.scheme.block_size

    @property
    def inputs(self) -> list[ir.Value]:
        """B, scales[, zero_points]: the quantization inputs of both MatMulNBits and GatherBlockQuantized."""
        return [self.packed, self.scales] + ([self.zero_points] if self.zero_points is not None else [])


def quantize_blockwise(weight_nk: np.ndarray, scheme: Scheme) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """onnxruntime's block quantizer on one [N, K] weight (fp32 or fp16: the scales take its dtype)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        DefaultWeightOnlyQuantizer,
    )

    config = DefaultWeightOnlyQuantConfig(block_size=scheme.block_size, is_symmetric=scheme.symmetric,
                                          bits=scheme.bits)
    # It reads MatMul's [K, N] orientation and quantizes each column.
    packed, scales, zero_points = DefaultWeightOnlyQuantizer(config).qbits_block_quant(
        np.ascontiguousarray(weight_nk.T))
    return packed, scales, None if scheme.symmetric else zero_points


class OneQuantization:
    """Quantizes a weight once for its two or three initializers, handing each part out once.

    The writer asks for the parts one after another (they are registered together), so one
    weight's result is alive at a time; a part asked for again is recomputed, never kept.
    """

    def __init__(self, compute: Callable[[], tuple]):
        self._compute = compute
        self._parts: list | None = None

    def take(self, index: int) -> np.ndarray:
        if self._parts is None or self._parts[index] is None:
            self._parts = list(self._compute())
        part, self._parts[index] = self._parts[index], None
        if all(p is None for p in self._parts):
            self._parts = None
        return part


def add_quantized_weight(g: GraphBuilder, name: str, n: int, k: int, scheme: Scheme, scale_dtype: ir.DataType,
                         load: Callable[[], np.ndarray]) -> QuantizedMatrix:
    """Register the initializers of one quantized weight; load() gives the float [N, K] matrix at write time.

    Names follow onnxruntime's quantizer: <name>_Q4 / _Q8, <name>_scales, <name>_zero_points.
    """
    once = OneQuantization(lambda: quantize_blockwise(load(), scheme))
    blocks = scheme.k_blocks(k)
    packed = g.weight(f"{name}_Q{scheme.bits}", ir.DataType.UINT8, (n, blocks, scheme.blob_size),
                      lambda: once.take(0))
    scales = g.weight(f"{name}_scales", scale_dtype, (n, blocks), lambda: once.take(1))
    zero_points = None
    if not scheme.symmetric:
        zero_points = g.weight(f"{name}_zero_points", ir.DataType.UINT8, (n, scheme.zero_point_columns(k)),
                               lambda: once.take(2))
    return QuantizedMatrix(packed, scales, zero_points, n, k, scheme)


# --- reading an export back -----------------------------------------------------------------------


def unpack(packed: np.ndarray, bits: int, columns: int) -> np.ndarray:
    """uint8 rows of bit-packed values (low bits first) -> [rows, columns] integers."""
    rows = packed.reshape(packed.shape[0], -1)
    if bits == 8:
        values = rows
    elif bits == 4:
        values = np.stack([rows & 0x0F, rows >> 4], axis=-1).reshape(rows.shape[0], -1)
    else:
        raise ValueError(f"unpack: {bits}-bit values are not produced by this builder")
    return values[:, :columns].astype(np.int32)


def dequantize(packed: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None, bits: int,
               block_size: int, k: int) -> np.ndarray:
    """The float32 [N, K] matrix the kernels compute with: (q - zero_point) * scale, per block."""
    n, blocks = scales.shape
    q = unpack(packed, bits, blocks * block_size).reshape(n, blocks, block_size)
    if zero_points is None:
        zero = np.full((n, blocks), 2 ** (bits - 1), dtype=np.int32)
    else:
        zero = unpack(zero_points, bits, blocks)
    weight = (q - zero[..., None]).astype(np.float32) * scales.astype(np.float32)[..., None]
    return weight.reshape(n, blocks * block_size)[:, :k]


def read_quantized_weights(onnx_path: Path) -> dict[str, np.ndarray]:
    """Dequantized float32 [N, K] weights of an export, by the float weight's name (`<name>_Q4` -> name).

    QMoE experts come as [E, N, K] under their initializer's name (`....experts.fc1`, `.fc2`).

    MatMulNBits weights have their true K; tables only a GatherBlockQuantized reads keep the padding
    to whole blocks (the caller knows the width). Loads the whole model: meant for small exports.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    initializers = {t.name: t for t in model.graph.initializer}
    reshaped = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "Reshape"}
    weights: dict[str, np.ndarray] = {}
    for node in model.graph.node:
        if node.op_type == "QMoE":
            weights.update(_qmoe_experts(node, initializers))
            continue
        if node.op_type not in ("MatMulNBits", "GatherBlockQuantized"):
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        inputs = list(node.input) + ["", ""]  # optional zero points may be absent
        if node.op_type == "MatMulNBits":  # A, B, scales[, zero_points]
            packed_name, scale_name, zp_name = inputs[1:4]
        else:  # data (a Reshape view of B), indices, scales[, zero_points]
            packed_name, scale_name, zp_name = reshaped.get(inputs[0], inputs[0]), inputs[2], inputs[3]
        name = packed_name.rsplit("_Q", 1)[0]
        if name in weights and node.op_type == "GatherBlockQuantized":
            continue  # a tied table: the MatMulNBits reading has the exact K
        arrays = [numpy_helper.to_array(initializers[n]) if n else None for n in (packed_name, scale_name, zp_name)]
        k = attrs.get("K", arrays[1].shape[1] * attrs["block_size"])
        weights[name] = dequantize(*arrays, attrs["bits"], attrs["block_size"], k)
    return weights


def _qmoe_experts(node, initializers) -> dict[str, np.ndarray]:
    """A QMoE node's fc1/fc2 experts, dequantized: each expert's bytes are MatMulNBits' B."""
    import onnx
    from onnx import numpy_helper

    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    bits = attrs.get("expert_weight_bits", 4)
    inputs = list(node.input) + [""] * 14
    experts = {}
    for packed_name, scale_name, zp_name in ((inputs[2], inputs[3], inputs[11]), (inputs[5], inputs[6], inputs[12])):
        packed, scales = (numpy_helper.to_array(initializers[n]) for n in (packed_name, scale_name))
        zero_points = numpy_helper.to_array(initializers[zp_name]) if zp_name else None
        k = packed.shape[2] * 8 // bits
        block_size = attrs.get("block_size", k)  # none: one scale per output channel
        if scales.ndim == 2:
            scales = scales[..., None]
            zero_points = None if zero_points is None else zero_points[..., None]
        experts[packed_name.rsplit("_Q", 1)[0]] = np.stack([
            dequantize(packed[e], scales[e], None if zero_points is None else zero_points[e], bits, block_size, k)
            for e in range(packed.shape[0])])
    return experts
