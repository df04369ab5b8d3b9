"""Precision and execution-provider choices, decided once before any graph is built."""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

from lfm2_onnx.errors import UserError

PRECISIONS = ("fp32", "fp16", "bf16")
EXECUTION_PROVIDERS = ("cpu", "cuda")

# onnxruntime's CPU kernels for GroupQueryAttention/CausalConvWithState have no bfloat16 version, and
# its CUDA GroupQueryAttention has no float32 one (the node would fall back to the CPU, copying every
# layer's activations across and losing the fused Q/K norms).
VALID_COMBINATIONS = (
    ("fp32", "cpu"),
    ("fp16", "cpu"),
    ("fp16", "cuda"),
    ("bf16", "cuda"),
)
_WHY_NOT = {
    ("bf16", "cpu"): "onnxruntime's CPU attention and conv kernels have no bfloat16",
    ("fp32", "cuda"): "onnxruntime's CUDA GroupQueryAttention has no float32",
}

_DTYPES = {"fp32": ir.DataType.FLOAT, "fp16": ir.DataType.FLOAT16, "bf16": ir.DataType.BFLOAT16}
# transformers.js picks the file by dtype: model.onnx (fp32), model_fp16.onnx, model_bf16.onnx, ...
_FILE_SUFFIX = {"fp32": "", "fp16": "_fp16", "bf16": "_bf16"}


@dataclass(frozen=True)
class BuildOptions:
    precision: str = "fp32"
    ep: str = "cpu"

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise UserError(f"unknown precision {self.precision!r}; choose one of: {', '.join(PRECISIONS)}")
        if self.ep not in EXECUTION_PROVIDERS:
            raise UserError(f"unknown execution provider {self.ep!r}; choose one of: {', '.join(EXECUTION_PROVIDERS)}")
        if (self.precision, self.ep) not in VALID_COMBINATIONS:
            valid = ", ".join(f"-p {p} -e {e}" for p, e in VALID_COMBINATIONS)
            why = _WHY_NOT.get((self.precision, self.ep), "not supported")
            raise UserError(f"-p {self.precision} -e {self.ep}: {why}; valid combinations: {valid}")

    @property
    def io_dtype(self) -> ir.DataType:
        """Activations, KV/conv caches and weights."""
        return _DTYPES[self.precision]

    @property
    def logits_dtype(self) -> ir.DataType:
        # bf16 logits are awkward for every client (numpy has no bfloat16); fp16 logits are what
        # onnxruntime-genai and transformers.js expect of an fp16 model.
        return ir.DataType.FLOAT if self.precision == "bf16" else self.io_dtype

    @property
    def fuse_qk_norm(self) -> bool:
        """Q/K RMSNorm inside GroupQueryAttention: CUDA honours it, the CPU kernel refuses it."""
        return self.ep == "cuda"

    @property
    def file_stem(self) -> str:
        return "model" + _FILE_SUFFIX[self.precision]

    @property
    def onnx_file(self) -> str:
        return f"onnx/{self.file_stem}.onnx"
