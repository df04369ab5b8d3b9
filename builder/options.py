"""Precision and execution-provider choices, decided once before any graph is built."""

from __future__ import annotations

import os
from dataclasses import dataclass

import onnx_ir as ir

from lfm2_onnx.errors import UserError
from lfm2_onnx.variants import EXECUTION_PROVIDERS, PRECISIONS


# onnxruntime's CPU kernels for GroupQueryAttention/CausalConvWithState have no bfloat16 version, and
# its CUDA GroupQueryAttention has no float32 one (the node would fall back to the CPU, copying every
# layer's activations across and losing the fused Q/K norms).
VALID_COMBINATIONS = (
    ("fp32", "cpu"),
    ("fp16", "cpu"),
    ("fp16", "cuda"),
    ("bf16", "cuda"),
    ("int8", "cpu"),
    ("int4", "cpu"),
    ("int8", "cuda"),
    ("int4", "cuda"),
)
_WHY_NOT = {
    ("bf16", "cpu"): "onnxruntime's CPU attention and conv kernels have no bfloat16",
    ("fp32", "cuda"): "onnxruntime's CUDA GroupQueryAttention has no float32",
}

# Weight-only quantization (MatMulNBits / GatherBlockQuantized): weights in blocks of block_size
# along the input dimension, each block with its own scale (and zero point when asymmetric).
QUANTIZED_BITS = {"int8": 8, "int4": 4}
# MatMulNBits and GatherBlockQuantized take any power of two >= 16; onnxruntime's CPU kernels
# (MLAS) and onnxruntime-genai's builder go up to 256.
BLOCK_SIZES = (16, 32, 64, 128, 256)
DEFAULT_BLOCK_SIZE = 32
LM_HEAD_PRECISIONS = ("int8", "int4", "float")
# MatMulNBits accuracy_level: the least precise type its CPU kernel may compute in. 0 unset,
# 1 fp32, 2 fp16, 3 bf16, 4 int8 (activations quantized per block to int8: the fast integer
# kernels). 4 is the CPU default, as in onnxruntime-genai's builder; 1 computes exactly on the
# dequantized weights, for checks: on 2 cores, LFM2-350M decodes int4 at ~40 tokens/s at level 1
# vs ~90 at 4, and int8 at ~1 token/s (onnxruntime 1.32 has no fast fp32 kernel for 8 bits) vs
# ~65. The CUDA kernels ignore it, so CUDA exports leave it unset.
ACCURACY_LEVELS = (0, 1, 2, 3, 4)
DEFAULT_CPU_ACCURACY_LEVEL = 4

# MoE router formulations (builder/moe.py _route says what each does). The default is the exact set
# measured fastest on the H200 (BENCHMARKS.md, MoE rounds 3-4); this environment variable replaces it
# for experiments (comma-separated; "base" names none of them: the TopK/MatMul/Div graph), e.g.
# benchmarks/moe_variants_gpu.py. Hidden from the CLI on purpose (gate16 is not exact; the rest choose as TopK).
MOE_ROUTER_ENV = "LFM2_ONNX_MOE_ROUTER"
MOE_ROUTER_VARIANTS = ("lean", "rank", "gemm", "gate16")
DEFAULT_MOE_ROUTER = ("gemm", "lean", "rank")

_DTYPES = {"fp32": ir.DataType.FLOAT, "fp16": ir.DataType.FLOAT16, "bf16": ir.DataType.BFLOAT16}
# transformers.js picks the file by dtype (src/utils/dtypes.js): model.onnx (fp32), model_fp16.onnx,
# model_bf16.onnx, model_quantized.onnx (q8), model_q4.onnx (q4), model_q4f16.onnx (q4f16). It has
# no 8-bit dtype with fp16 activations; q8f16 follows the q4f16 pattern (transformers.js can't load it).
_JS_DTYPE = {
    ("fp32", "cpu"): "fp32", ("fp16", "cpu"): "fp16", ("fp16", "cuda"): "fp16", ("bf16", "cuda"): "bf16",
    ("int8", "cpu"): "q8", ("int4", "cpu"): "q4", ("int8", "cuda"): "q8f16", ("int4", "cuda"): "q4f16",
}
_FILE_SUFFIX = {"fp32": "", "fp16": "_fp16", "bf16": "_bf16", "q8": "_quantized", "q4": "_q4",
                "q8f16": "_q8f16", "q4f16": "_q4f16"}


def file_suffix(js_dtype: str) -> str:
    """transformers.js's file name suffix for a dtype: "" (fp32), "_fp16", "_q4", ..."""
    return _FILE_SUFFIX[js_dtype]


@dataclass(frozen=True)
class BuildOptions:
    precision: str = "fp32"
    ep: str = "cpu"
    # Quantized precisions only; None means the default, filled in by __post_init__.
    block_size: int | None = None
    symmetric: bool | None = None
    lm_head: str | None = None  # the vocabulary tables (LM head and embedding): int8, int4 or float
    accuracy_level: int | None = None  # CPU only
    # MoE router variants (MOE_ROUTER_VARIANTS); None: MOE_ROUTER_ENV if set, else DEFAULT_MOE_ROUTER.
    moe_router: tuple[str, ...] | None = None

    def __post_init__(self):
        self._decide_moe_router()
        if self.precision not in PRECISIONS:
            raise UserError(f"unknown precision {self.precision!r}; choose one of: {', '.join(PRECISIONS)}")
        if self.ep not in EXECUTION_PROVIDERS:
            raise UserError(f"unknown execution provider {self.ep!r}; choose one of: {', '.join(EXECUTION_PROVIDERS)}")
        if (self.precision, self.ep) not in VALID_COMBINATIONS:
            valid = ", ".join(f"-p {p} -e {e}" for p, e in VALID_COMBINATIONS)
            why = _WHY_NOT.get((self.precision, self.ep), "not supported")
            raise UserError(f"-p {self.precision} -e {self.ep}: {why}; valid combinations: {valid}")
        if self.quantized:
            self._decide_quantization()
        else:
            self._refuse_quantization_options()

    def _decide_moe_router(self) -> None:
        chosen = self.moe_router
        if chosen is None:
            named = os.environ.get(MOE_ROUTER_ENV, "").strip()
            chosen = tuple(v.strip() for v in named.split(",") if v.strip() not in ("", "base")) if named \
                else DEFAULT_MOE_ROUTER
        unknown = [v for v in chosen if v not in MOE_ROUTER_VARIANTS]
        if unknown:
            raise UserError(f"{MOE_ROUTER_ENV}: unknown router variant {', '.join(unknown)}; "
                            f"choose from: {', '.join(MOE_ROUTER_VARIANTS)}, or base")
        object.__setattr__(self, "moe_router", tuple(sorted(set(chosen))))

    def _decide_quantization(self) -> None:
        if self.block_size is None:
            object.__setattr__(self, "block_size", DEFAULT_BLOCK_SIZE)
        if self.block_size not in BLOCK_SIZES:
            raise UserError(f"--block-size {self.block_size} is not supported by MatMulNBits; "
                            f"valid block sizes: {', '.join(map(str, BLOCK_SIZES))}")
        if self.symmetric is None:
            object.__setattr__(self, "symmetric", True)
        if self.lm_head is None:
            object.__setattr__(self, "lm_head", self.precision)
        if self.lm_head not in LM_HEAD_PRECISIONS:
            raise UserError(f"--lm-head {self.lm_head}: unknown; choose one of: {', '.join(LM_HEAD_PRECISIONS)}")
        if self.ep == "cuda" and self.accuracy_level is not None:
            raise UserError(f"--accuracy-level applies to -e cpu only (onnxruntime's CUDA MatMulNBits ignores it); "
                            f"drop it for -e cuda")
        if self.accuracy_level is None and self.ep == "cpu":
            object.__setattr__(self, "accuracy_level", DEFAULT_CPU_ACCURACY_LEVEL)
        if self.accuracy_level is not None and self.accuracy_level not in ACCURACY_LEVELS:
            raise UserError(f"--accuracy-level {self.accuracy_level}: valid levels: "
                            f"{', '.join(map(str, ACCURACY_LEVELS))} (1 fp32, 4 int8)")

    def _refuse_quantization_options(self) -> None:
        given = {"--block-size": self.block_size, "--asymmetric": self.symmetric, "--lm-head": self.lm_head,
                 "--accuracy-level": self.accuracy_level}
        flags = [flag for flag, value in given.items() if value is not None]
        if flags:
            verb, pronoun = ("applies", "it") if len(flags) == 1 else ("apply", "them")
            raise UserError(f"{', '.join(flags)} {verb} to quantized precisions only (-p int8, -p int4); "
                            f"drop {pronoun} for -p {self.precision}")

    @property
    def quantized(self) -> bool:
        return self.precision in QUANTIZED_BITS

    @property
    def bits(self) -> int | None:
        """Bits of the projection weights (None: float weights)."""
        return QUANTIZED_BITS.get(self.precision)

    @property
    def lm_head_bits(self) -> int | None:
        """Bits of the LM head and embedding tables (None: float tables)."""
        return QUANTIZED_BITS.get(self.lm_head) if self.quantized else None

    @property
    def float_precision(self) -> str:
        """The precision of activations, caches and every weight left unquantized."""
        if self.quantized:
            return "fp16" if self.ep == "cuda" else "fp32"
        return self.precision

    @property
    def io_dtype(self) -> ir.DataType:
        """Activations, KV/conv caches, float weights and quantization scales."""
        return _DTYPES[self.float_precision]

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
    def js_dtype(self) -> str:
        """transformers.js's name for this export's dtype (config.json's transformers.js_config)."""
        return _JS_DTYPE[(self.precision, self.ep)]

    @property
    def file_stem(self) -> str:
        return "model" + _FILE_SUFFIX[self.js_dtype]

    @property
    def onnx_file(self) -> str:
        return f"onnx/{self.file_stem}.onnx"

    def onnx_file_beside(self, taken) -> str:
        """The file in a folder whose other variants hold the files `taken`: transformers.js's name,
        or, when another EP's variant holds it (fp16 is model_fp16 on cpu and cuda), the EP appended."""
        return self.onnx_file if self.onnx_file not in taken else f"onnx/{self.file_stem}_{self.ep}.onnx"

    def summary(self) -> dict:
        """The choices made, for the folder's variants.json (and the model card)."""
        keys = ("block_size", "symmetric", "lm_head", "accuracy_level") if self.quantized else ()
        router = {"moe_router": list(self.moe_router)} if self.moe_router != DEFAULT_MOE_ROUTER else {}
        return {"js_dtype": self.js_dtype, **{k: getattr(self, k) for k in keys}, **router}
