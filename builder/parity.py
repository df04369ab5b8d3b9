"""Compare an export with transformers: prefill, then decode steps through the caches.

The prompts go through the export as one right-padded batch and through transformers one at a
time, so a pass also shows that padding does not leak between rows. Decode steps feed both sides
the reference's greedy token (teacher forcing), so every step compares logits for the same inputs;
agreeing argmaxes at every step mean free-running greedy decoding yields the same tokens.
`python -m lfm2_onnx.verify` and `build --verify` run this.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lfm2_onnx.errors import UserError
from lfm2_onnx.layers import attention_layers
from lfm2_onnx.reference_driver import ReferenceDriver, read_genai_config
from lfm2_onnx.variants import write_manifest

from .architectures import hf_classes
from .blocks import FUSED_LINEARS
from .quantize import read_quantized_weights
from .spec import load_spec
from .vl import vl_tensor_name

DEFAULT_PROMPTS = (
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "Liquid neural networks adapt",
)

# Pass thresholds per precision: fp32 must match to rounding; reduced precisions by distribution.
# max_abs is for logits of spread (std) up to 1, as tiny random checkpoints give; fp32 rounding
# grows with the logits, so for wider ones the limit is max_abs * std.
# top1 counts positions where the reference's best logit leads the second by at least
# tie_margin * max(1, std): random weights give near-ties that reduced precision may legitimately
# flip, and its rounding, like fp32's, grows with the logits.
THRESHOLDS = {
    "fp32": {"max_abs": 1e-4, "mean_kl": 1e-6, "top1": 1.0, "tie_margin": 0.0},
    "fp16": {"max_abs": None, "mean_kl": 5e-3, "top1": 1.0, "tie_margin": 0.1},
    "bf16": {"max_abs": None, "mean_kl": 3e-2, "top1": 0.99, "tie_margin": 0.5},
    # MatMulNBits accuracy_level 4 (the CPU default): activations quantized to int8 per block.
    # Measured against the export's own dequantized weights: mean KL 5e-4 (tiny), 3.5e-2
    # (LFM2-350M-shaped random weights), top-1 100% wherever the lead exceeds 0.25 std.
    "int8_act": {"max_abs": None, "mean_kl": 0.1, "top1": 1.0, "tie_margin": 0.25},
}
# Quantized exports are judged against transformers running the export's own dequantized weights
# (dequantized_reference), so what is left to judge is the arithmetic: MatMulNBits accuracy_level
# -> its compute type; fp16 activations (q4f16, q8f16) take fp16's thresholds whatever the level.
_ACCURACY_LEVEL_KEYS = {0: "fp32", 1: "fp32", 2: "fp16", 3: "bf16", 4: "int8_act"}
_RULE_NAMES = {"int8_act": "int8 activations (MatMulNBits accuracy level 4)"}


@dataclass
class PhaseStats:
    label: str
    max_abs: float = 0.0
    scale: float = 0.0  # largest std of the reference logits over positions
    kl: list[float] = field(default_factory=list)
    agree: list[bool] = field(default_factory=list)
    margin: list[float] = field(default_factory=list)  # reference top-1 minus top-2 logit

    def add(self, reference: np.ndarray, export: np.ndarray) -> None:
        reference, export = reference.astype(np.float64), export.astype(np.float64)
        self.max_abs = max(self.max_abs, float(np.abs(reference - export).max()))
        self.scale = max(self.scale, float(reference.std(-1).max()))
        log_p, log_q = _log_softmax(reference), _log_softmax(export)
        self.kl.extend((np.exp(log_p) * (log_p - log_q)).sum(-1).ravel().tolist())
        self.agree.extend((reference.argmax(-1) == export.argmax(-1)).ravel().tolist())
        top2 = np.sort(reference, axis=-1)[..., -2:]
        self.margin.extend((top2[..., 1] - top2[..., 0]).ravel().tolist())

    @property
    def mean_kl(self) -> float:
        return float(np.mean(self.kl)) if self.kl else 0.0

    @property
    def top1(self) -> float:
        return float(np.mean(self.agree)) if self.agree else 1.0

    def decisive_top1(self, tie_margin: float) -> float:
        """Top-1 agreement over positions whose reference leader is clear by tie_margin."""
        kept = [a for a, m in zip(self.agree, self.margin) if m >= tie_margin]
        return float(np.mean(kept)) if kept else 1.0


@dataclass
class Report:
    precision: str
    phases: list[PhaseStats]
    greedy_match: list[bool]
    steps: int

    @property
    def passed(self) -> bool:
        t = THRESHOLDS[self.precision]
        for phase in self.phases:
            if t["max_abs"] is not None and phase.max_abs > t["max_abs"] * max(1.0, phase.scale):
                return False
            if phase.mean_kl > t["mean_kl"] or phase.decisive_top1(_margin(t, phase)) < t["top1"]:
                return False
        return self.precision != "fp32" or all(self.greedy_match)

    def summary(self) -> dict:
        """The numbers of table(), machine-readable (variants.json, the model card)."""
        phases = {p.label.split(" ")[0]: {"max_abs_logit_diff": p.max_abs, "logit_std": p.scale, "mean_kl": p.mean_kl,
                                          "top1": p.top1} for p in self.phases}
        return {"passed": self.passed, "thresholds": self.precision, **phases,
                "greedy_match": [sum(self.greedy_match), len(self.greedy_match)], "steps": self.steps}

    def table(self, verdict: bool = True) -> str:
        t = THRESHOLDS[self.precision]
        lines = [f"{'phase':<22}{'max|Δlogit|':>13}{'logit std':>11}{'mean KL':>12}{'top-1':>9}{'top-1*':>9}"]
        for p in self.phases:
            lines.append(f"{p.label:<22}{p.max_abs:>13.3e}{p.scale:>11.2f}{p.mean_kl:>12.3e}{p.top1:>9.1%}"
                         f"{p.decisive_top1(_margin(t, p)):>9.1%}")
        matched = sum(self.greedy_match)
        lines.append(f"greedy match: {matched}/{len(self.greedy_match)} prompts identical over {self.steps} tokens")
        if not verdict:
            return "\n".join(lines)
        names = {"max_abs": "max|Δ|/max(1, std)", "mean_kl": "mean KL", "top1": "top-1*"}
        limits = ", ".join(f"{names[k]} {'≥' if k == 'top1' else '≤'} {v:g}" for k, v in t.items()
                           if v is not None and k in names)
        limits += f" (top-1*: where the reference leads by ≥ {t['tie_margin']:g} × max(1, std))"
        limits += "; identical greedy tokens" if self.precision == "fp32" else "; greedy match not judged"
        lines.append(f"{'PASS' if self.passed else 'FAIL'} ({_RULE_NAMES.get(self.precision, self.precision)}: "
                     f"{limits})")
        return "\n".join(lines)


def _margin(thresholds: dict, phase: PhaseStats) -> float:
    return thresholds["tie_margin"] * max(1.0, phase.scale)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@contextlib.contextmanager
def quiet_transformers():
    """transformers' own chatter while verify uses it (the weight-loading bar, the note that the
    optional causal_conv1d kernels are not installed): the report is what the user asked for."""
    from transformers.utils import logging as hf_logging

    verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()


def load_reference(checkpoint: Path):
    """transformers' model for the checkpoint's architecture, in fp32."""
    model_class, _ = hf_classes(load_spec(Path(checkpoint))[0].architecture)
    # fp32 reference on the GPU when there is one (a 1.2B model's 32 steps are slow on 2 cores).
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with quiet_transformers():
        return model_class.from_pretrained(checkpoint, dtype=torch.float32).to(device).eval()


def _cache_argument(model) -> str:
    """The name forward() takes the cache by: `cache` since transformers 5.x renamed `past_key_values`."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def reference_run(model, prompt: list[int], steps: int) -> tuple[np.ndarray, list[np.ndarray], list[int]]:
    """transformers with its own cache: prefill logits, per-step logits, greedy tokens."""
    device, cache_name = model.device, _cache_argument(model)
    with torch.no_grad(), quiet_transformers():
        out = model(torch.tensor([prompt], device=device), use_cache=True)
        prefill = out.logits[0].float().cpu().numpy()
        cache, token = out[cache_name], int(out.logits[0, -1].argmax())
        step_logits, tokens = [], [token]
        for _ in range(steps):
            out = model(torch.tensor([[token]], device=device), **{cache_name: cache}, use_cache=True)
            cache = out[cache_name]
            step_logits.append(out.logits[0, -1].float().cpu().numpy())
            token = int(out.logits[0, -1].argmax())
            tokens.append(token)
    return prefill, step_logits, tokens


def _matmulnbits_levels(onnx_path: Path) -> list[int] | None:
    """accuracy_level of every MatMulNBits (None: not a quantized graph)."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    nodes = [n for n in graph.node if n.op_type == "MatMulNBits"]
    if not nodes:
        return None
    return [a.i for n in nodes for a in n.attribute if a.name == "accuracy_level"]


def _thresholds_key(driver: ReferenceDriver) -> str:
    """Float exports: their activation precision. Quantized ones: MatMulNBits' compute type."""
    levels = _matmulnbits_levels(driver.path)
    if levels is None or driver.precision == "fp16":  # q4f16, q8f16: fp16 activations, fp16's limits
        return driver.precision
    return _ACCURACY_LEVEL_KEYS[max(levels, default=0)]


def dequantized_reference(folder: Path, checkpoint: Path, onnx_file: str | None = None):
    """transformers' model with each quantized weight replaced by the export's dequantized value.

    The export computes with exactly these weights, so at MatMulNBits accuracy_level 1 (fp32
    compute) it must match this model to fp32 rounding. Returns (model, names of the replaced
    parameters).
    """
    model = load_reference(checkpoint)
    state = model.state_dict()  # shares storage with the parameters (and ties embed/lm_head)
    # The graph's weight names are an LFM2 checkpoint's; an LFM2-VL model's decoder is under
    # model.language_model (vl_tensor_name maps back; LFM2's own names map to themselves).
    names = {vl_tensor_name(k): k for k in state}
    onnx_path = Path(folder) / (onnx_file or read_genai_config(folder)["model"]["decoder"]["filename"])
    weights = _split_fused(read_quantized_weights(onnx_path), {n: tuple(state[k].shape) for n, k in names.items()})
    with torch.no_grad():
        for name, weight in weights.items():
            target = state[names[name]]
            value = torch.from_numpy(np.ascontiguousarray(weight[..., : target.shape[-1]]))  # drop block padding
            if tuple(value.shape) != tuple(target.shape):
                raise AssertionError(f"{name}: export holds {tuple(value.shape)}, model has {tuple(target.shape)}")
            target.copy_(value)
    return model, sorted(weights)


def _split_fused(weights: dict[str, np.ndarray], shapes: dict[str, tuple]) -> dict[str, np.ndarray]:
    """Fused projections (qkv_proj, w1_w3) back into the HF weights they stack along the output dim,
    and QMoE's experts (fc1: gate/up rows interleaved, fc2) back into transformers' packed ones."""
    split = {}
    for name, weight in weights.items():
        if name.endswith(".experts.fc1"):
            e, two_i, h = weight.shape
            gate_up = weight.reshape(e, two_i // 2, 2, h).transpose(0, 2, 1, 3).reshape(e, two_i, h)
            split[name.removesuffix(".fc1") + ".gate_up_proj"] = gate_up
            continue
        if name.endswith(".experts.fc2"):
            split[name.removesuffix(".fc2") + ".down_proj"] = weight
            continue
        base = name.removesuffix(".weight")
        fused = next((f for f in FUSED_LINEARS if base.endswith("." + f)), None)
        if fused is None:
            split[name] = weight
            continue
        prefix = base[: -len(fused) - 1]
        names = [f"{prefix}.{part}.weight" for part in FUSED_LINEARS[fused]]
        bounds = np.cumsum([shapes[n][0] for n in names])[:-1]
        split.update(zip(names, np.split(weight, bounds)))
    return split


def compare(folder: Path, checkpoint: Path, prompts: list[list[int]], *, steps: int = 32, ep: str = "cpu",
            reference=None, onnx_file: str | None = None) -> Report:
    driver = ReferenceDriver(folder, ep=ep, model_file=onnx_file)
    precision = _thresholds_key(driver)
    model = reference if reference is not None else load_reference(checkpoint)
    refs = [reference_run(model, p, steps) for p in prompts]

    prefill_logits, state = driver.prefill(prompts)
    prefill = PhaseStats("prefill")
    for row, (prompt, (ref_prefill, _, _)) in enumerate(zip(prompts, refs)):
        prefill.add(ref_prefill, prefill_logits[row, : len(prompt)])
    decode = PhaseStats(f"decode ({steps} steps)")
    greedy = [ref_prefill[-1].argmax() == prefill_logits[row, len(p) - 1].argmax()
              for row, (p, (ref_prefill, _, _)) in enumerate(zip(prompts, refs))]
    for step in range(steps):
        tokens = np.array([ref_tokens[step] for _, _, ref_tokens in refs])
        logits = driver.decode(tokens, state)[:, -1]
        for row, (_, ref_steps, _) in enumerate(refs):
            decode.add(ref_steps[step], logits[row])
            greedy[row] = greedy[row] and ref_steps[step].argmax() == logits[row].argmax()
    return Report(precision, [prefill, decode], [bool(g) for g in greedy], steps)


def tokenize_prompts(folder: Path, texts) -> list[list[int]]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    return [tokenizer.encode(t).ids for t in texts]


# The spec fields that fix the weights' shapes and the arithmetic: a reference that differs in one
# of them is another model, whose logits can't be compared (or don't even have the same shape).
SAME_MODEL_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "layer_types", "num_attention_heads",
                     "num_key_value_heads", "head_dim", "conv_kernel", "conv_bias", "tie_word_embeddings",
                     "rope_theta", "norm_eps")


def check_same_model(folder: Path, checkpoint: Path) -> None:
    """UserError naming the config fields in which the export and the reference differ."""
    if not (Path(folder) / "config.json").is_file():
        return  # not our folder layout (config.json is written by every lfm2_onnx build)
    ours, reference = load_spec(Path(folder))[0], load_spec(Path(checkpoint))[0]
    diffs = []
    for name in SAME_MODEL_FIELDS:
        a, b = getattr(ours, name), getattr(reference, name)
        if a != b:
            if name == "layer_types":
                a, b = (f"[{len(t)} layers, {len(attention_layers(t))} attention]" for t in (a, b))
            diffs.append(f"{name} {a} vs {b}")
    if diffs:
        raise UserError(f"{folder} was not built from {checkpoint}: their configs differ in {'; '.join(diffs)} "
                        "(export vs reference); give --reference the checkpoint the export was built from")


def run_verification(folder: Path, checkpoint: Path, *, ep: str = "cpu", texts=DEFAULT_PROMPTS,
                     steps: int = 32, variant: str | None = None) -> int:
    """Print the comparison; exit code 0 on pass. variant: which of the folder's variants (its name in
    variants.json, where its result is recorded); None: the folder's default genai_config.json."""
    check_same_model(folder, checkpoint)  # before loading anything
    from lfm2_onnx.variants import read_manifest

    manifest = read_manifest(folder)
    entry = manifest.get(variant) if manifest is not None and variant is not None else None
    onnx_file = entry.onnx_file if entry is not None else None
    prompts = tokenize_prompts(folder, texts)
    onnx_path = Path(folder) / (onnx_file or read_genai_config(folder)["model"]["decoder"]["filename"])
    if _matmulnbits_levels(onnx_path) is None:
        report, unquantized = compare(folder, checkpoint, prompts, steps=steps, ep=ep, onnx_file=onnx_file), None
        print(report.table())
    else:
        report, unquantized = _verify_quantized(folder, checkpoint, prompts, ep=ep, steps=steps, onnx_file=onnx_file)
    sys.stdout.flush()
    if entry is not None:
        entry.verify = {**report.summary(), "ep": ep, "prompts": len(prompts),
                        "judged_against": "checkpoint" if unquantized is None else "dequantized weights",
                        **({"unquantized": _unjudged(unquantized.summary())} if unquantized is not None else {})}
        write_manifest(folder, manifest)
    return 0 if report.passed else 1


def _unjudged(summary: dict) -> dict:
    """The quantization's own error is information, not a verdict."""
    return {k: v for k, v in summary.items() if k not in ("passed", "thresholds")}


def _verify_quantized(folder: Path, checkpoint: Path, prompts: list[list[int]], *, ep: str, steps: int,
                      onnx_file: str | None) -> tuple[Report, Report]:
    """Judge the export against its own dequantized weights; report the quantization error beside it.

    How far int4 weights move the logits depends on the weights (random ones, with no margin in
    their logits, lose almost every argmax at LFM2-350M's depth), so only the export's arithmetic
    is judged; the distance from the unquantized model is printed for information.
    """
    model, _ = dequantized_reference(folder, checkpoint, onnx_file)
    report = compare(folder, checkpoint, prompts, steps=steps, ep=ep, reference=model, onnx_file=onnx_file)
    del model
    print("against transformers running the export's dequantized weights (judged):")
    print(report.table())
    unquantized = compare(folder, checkpoint, prompts, steps=steps, ep=ep, reference=load_reference(checkpoint),
                          onnx_file=onnx_file)
    print("\nagainst the unquantized checkpoint (the quantization's own error; not judged):")
    print(unquantized.table(verdict=False))
    return report, unquantized
