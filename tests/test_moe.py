"""Lfm2MoeForCausalLM: spec, tensor table, MoE/QMoE graphs against transformers, clients, runtime, bad input."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from conftest import shared_model  # noqa: E402
from lfm2_onnx.builder.export import export  # noqa: E402
from lfm2_onnx.builder.model import build_model  # noqa: E402
from lfm2_onnx.builder.options import DEFAULT_MOE_ROUTER, MOE_ROUTER_ENV, BuildOptions  # noqa: E402
from lfm2_onnx.builder.spec import load_spec, spec_from_config  # noqa: E402
from lfm2_onnx.builder.tensors import expected_shapes  # noqa: E402
from lfm2_onnx.builder.tiny import tiny_moe_config  # noqa: E402
from lfm2_onnx.builder.parity import compare, dequantized_reference, load_reference  # noqa: E402
from lfm2_onnx.errors import UserError  # noqa: E402
from lfm2_onnx.reference_driver import ReferenceDriver  # noqa: E402
from test_graph_contract import check_io, load_graph  # noqa: E402

# Varied routing: expert counts, top-k, dense prefix, expert bias, normalisation, scaling, ties.
CONFIGS = {
    "e8_top2": {},
    "e4_top1_no_dense_no_bias": {"num_experts": 4, "num_experts_per_tok": 1, "num_dense_layers": 0,
                                 "use_expert_bias": False},
    "e8_top4_unnormalised_scaled_untied": {"num_experts_per_tok": 4, "num_dense_layers": 2, "norm_topk_prob": False,
                                           "routed_scaling_factor": 2.5, "tie_word_embeddings": False},
    "e4_top2_unnormalised_no_bias": {"num_experts": 4, "norm_topk_prob": False, "use_expert_bias": False,
                                     "routed_scaling_factor": 0.5, "conv_bias": True},
}
PROMPTS = [[1, 45, 300, 17, 98, 412, 23, 77, 5, 640, 31], [1, 250, 9], [1, 88, 120, 700, 66, 15, 402]]
STEPS = 32


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def case(request, factory):
    checkpoint = factory.checkpoint(moe=True, **CONFIGS[request.param])
    return checkpoint, load_reference(checkpoint)


# --- spec -----------------------------------------------------------------------------------------


def test_spec_reads_every_moe_field():
    spec = spec_from_config(tiny_moe_config(num_experts_per_tok=4, num_dense_layers=2, norm_topk_prob=False,
                                            routed_scaling_factor=2.5))
    assert spec.architecture == "Lfm2MoeForCausalLM"
    assert (spec.moe.num_experts, spec.moe.experts_per_token, spec.moe.intermediate_size) == (8, 4, 32)
    assert (spec.moe.use_expert_bias, spec.moe.norm_topk_prob, spec.moe.routed_scaling_factor) == (True, False, 2.5)
    assert spec.feed_forward_types == ("mlp", "mlp", "moe", "moe", "moe", "moe")
    assert spec.intermediate_size == 128  # the dense layers' width, not auto-adjusted as Lfm2ForCausalLM's is


def test_real_8b_a1b_config_is_what_transformers_builds():
    folder = shared_model("LFM2-8B-A1B")
    config = json.loads((folder / "config.json").read_text())
    spec = load_spec(folder)[0]
    hf = transformers.Lfm2MoeConfig(**config)
    assert spec.layer_types == tuple(hf.layer_types)
    assert spec.moe.num_experts == hf.num_experts == 32 and spec.moe.experts_per_token == hf.num_experts_per_tok
    assert spec.moe.num_dense_layers == hf.num_dense_layers and spec.intermediate_size == hf.intermediate_size
    # The tensor table is transformers' own parameter list with its shapes, built on the meta device.
    with torch.device("meta"):
        model = transformers.Lfm2MoeForCausalLM(hf)
    hf_shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    assert expected_shapes(spec) == hf_shapes


@pytest.mark.parametrize("change, needle", [
    ({"num_experts_per_tok": 9}, "num_experts_per_tok=9; it must be an integer from 1 to 8"),
    ({"num_dense_layers": 7}, "num_dense_layers=7"),
    ({"routed_scaling_factor": 0}, "routed_scaling_factor=0; it must be a positive number"),
    ({"norm_topk_prob": "yes"}, "norm_topk_prob='yes'; it must be true or false"),
    ({"n_group": 4}, "grouped expert routing"),
])
def test_moe_fields_it_cannot_honour_are_one_line_errors(change, needle):
    with pytest.raises(UserError, match=needle.replace("(", r"\(").replace(")", r"\)")) as e:
        spec_from_config(tiny_moe_config(**change))
    assert "\n" not in str(e.value)


# --- parity ---------------------------------------------------------------------------------------


def test_fp32_matches_transformers(case, factory):
    """Prefill and 32 decode steps of a right-padded batch, each row against transformers alone."""
    checkpoint, reference = case
    report = compare(factory.export(checkpoint, "fp32"), checkpoint, PROMPTS, steps=STEPS, reference=reference)
    for phase in report.phases:
        assert phase.max_abs <= 1e-4, report.table()
        assert phase.top1 == 1.0, report.table()
    assert all(report.greedy_match), report.table()


def test_fp16_cpu_close_to_transformers(case, factory):
    """fp16 by distribution, and top-1 at nearly every position. Not at every one: routing is
    discontinuous, so fp16 rounding of a hidden state that sits on a router near-tie picks another
    expert and moves that position's logits by far more than rounding (measured on these configs:
    up to 0.7, a flipped argmax at 1-2 of ~100 positions, mean KL ≤ 1.3e-3). A wrong graph or
    cache misses by whole distributions."""
    checkpoint, reference = case
    report = compare(factory.export(checkpoint, "fp16"), checkpoint, PROMPTS, steps=STEPS, reference=reference)
    for phase in report.phases:
        assert phase.mean_kl <= 5e-3 and phase.top1 >= 0.95, report.table()


def test_ragged_batch_rows_equal_single_runs(factory):
    driver = ReferenceDriver(factory.export(factory.checkpoint(moe=True), "fp32"))
    batch_logits, batch_state = driver.prefill(PROMPTS)
    tokens = np.array([int(batch_logits[r, len(p) - 1].argmax()) for r, p in enumerate(PROMPTS)])
    batch_steps = [driver.decode(tokens, batch_state)[:, -1]]
    for row, prompt in enumerate(PROMPTS):
        logits, state = driver.prefill([prompt])
        np.testing.assert_allclose(batch_logits[row, : len(prompt)], logits[0], atol=1e-5)
        np.testing.assert_allclose(batch_steps[0][row], driver.decode(tokens[row:row + 1], state)[0, -1], atol=1e-5)


@pytest.mark.parametrize("precision,asymmetric", [("int4", False), ("int4", True), ("int8", False), ("int8", True)])
def test_quantized_experts_are_exact_to_their_dequantized_weights(tmp_path, factory, precision, asymmetric):
    """QMoE (and MatMulNBits) at accuracy_level 1 compute in fp32 on the stored weights: transformers
    running the export's dequantized weights must agree to fp32 rounding."""
    checkpoint = factory.checkpoint(moe=True)
    opts = BuildOptions(precision, "cpu", accuracy_level=1, symmetric=not asymmetric)
    folder = export(checkpoint, tmp_path / "out", opts, progress=False).folder
    ops = Counter(n.op_type for n in load_graph(folder).graph.node)
    assert ops["QMoE"] == len(load_spec(checkpoint)[0].moe_layers) and ops["MoE"] == 0
    model, replaced = dequantized_reference(folder, checkpoint)
    assert any(name.endswith("experts.gate_up_proj") for name in replaced)
    assert any(name.endswith("experts.down_proj") for name in replaced)
    report = compare(folder, checkpoint, PROMPTS, steps=8, reference=model)
    for phase in report.phases:
        assert phase.max_abs <= 1e-4, report.table()
    assert all(report.greedy_match), report.table()


# --- router variants (builder/moe.py _route): lean, rank, gemm by default; LFM2_ONNX_MOE_ROUTER replaces them --

EXACT_ROUTER_VARIANTS = ("lean", "rank", "gemm")  # the same fp32 choice as the TopK graph


def test_router_variants_default_and_environment(monkeypatch):
    monkeypatch.delenv(MOE_ROUTER_ENV, raising=False)
    assert BuildOptions("fp16", "cuda").moe_router == DEFAULT_MOE_ROUTER == tuple(sorted(EXACT_ROUTER_VARIANTS))
    assert "moe_router" not in BuildOptions("fp16", "cuda").summary()
    monkeypatch.setenv(MOE_ROUTER_ENV, "rank, lean")
    opts = BuildOptions("fp16", "cuda")
    assert opts.moe_router == ("lean", "rank") and opts.summary()["moe_router"] == ["lean", "rank"]
    monkeypatch.setenv(MOE_ROUTER_ENV, "base")
    assert BuildOptions("fp16", "cuda").moe_router == () and BuildOptions("fp16", "cuda").summary()["moe_router"] == []
    monkeypatch.setenv(MOE_ROUTER_ENV, "lean,fast")
    with pytest.raises(UserError, match="LFM2_ONNX_MOE_ROUTER: unknown router variant fast; choose from: lean, rank"):
        BuildOptions("fp16", "cuda")


def test_base_router_matches_transformers_in_fp32(tmp_path, factory):
    """The TopK / MatMul / log(w / sum w) graph, kept for comparison (LFM2_ONNX_MOE_ROUTER=base)."""
    checkpoint = factory.checkpoint(moe=True, **CONFIGS["e8_top4_unnormalised_scaled_untied"])
    folder = export(checkpoint, tmp_path / "out", BuildOptions("fp32", "cpu", moe_router=()), progress=False).folder
    router_ops = Counter(n.op_type for n in load_graph(folder).graph.node if "/router/" in n.name)
    assert router_ops["TopK"] == len(load_spec(checkpoint)[0].moe_layers) and router_ops["Gemm"] == 0
    report = compare(folder, checkpoint, PROMPTS, steps=STEPS)
    for phase in report.phases:
        assert phase.max_abs <= 1e-4 and phase.top1 == 1.0, report.table()
    assert all(report.greedy_match), report.table()


@pytest.mark.parametrize("name", ["e8_top2", "e8_top4_unnormalised_scaled_untied"])
def test_exact_router_variants_match_transformers_in_fp32(tmp_path, factory, name):
    """No TopK (rank), a Gemm gate, no floor (lean): the same experts and weights as transformers."""
    checkpoint = factory.checkpoint(moe=True, **CONFIGS[name])
    opts = BuildOptions("fp32", "cpu", moe_router=EXACT_ROUTER_VARIANTS)
    folder = export(checkpoint, tmp_path / "out", opts, progress=False).folder
    router_ops = Counter(n.op_type for n in load_graph(folder).graph.node if "/router/" in n.name)
    routed = len(load_spec(checkpoint)[0].moe_layers)
    assert (router_ops["TopK"], router_ops["Max"], router_ops["Gemm"], router_ops["Less"]) == (0, 0, routed, routed)
    report = compare(folder, checkpoint, PROMPTS, steps=STEPS)
    for phase in report.phases:
        assert phase.max_abs <= 1e-4 and phase.top1 == 1.0, report.table()
    assert all(report.greedy_match), report.table()


def test_exact_router_variants_keep_qmoe_exact(tmp_path, factory):
    checkpoint = factory.checkpoint(moe=True)
    opts = BuildOptions("int4", "cpu", accuracy_level=1, moe_router=EXACT_ROUTER_VARIANTS)
    folder = export(checkpoint, tmp_path / "out", opts, progress=False).folder
    model, _ = dequantized_reference(folder, checkpoint)
    report = compare(folder, checkpoint, PROMPTS, steps=8, reference=model)
    for phase in report.phases:
        assert phase.max_abs <= 1e-4, report.table()
    assert all(report.greedy_match), report.table()


def test_cuda_qmoe_expert_width_is_checked_at_build_time(tmp_path, factory):
    with pytest.raises(UserError, match="moe_intermediate_size 32 is not a multiple of 64, which onnxruntime's "
                                        "CUDA QMoE needs"):
        export(factory.checkpoint(moe=True), tmp_path / "out", BuildOptions("int4", "cuda"), progress=False)
    assert not (tmp_path / "out").exists()


def test_block_size_that_does_not_divide_the_experts_is_refused(tmp_path, factory):
    checkpoint = factory.checkpoint(moe=True)  # moe_intermediate_size 32
    with pytest.raises(UserError, match="--block-size 64 does not divide the experts' input width 32"):
        export(checkpoint, tmp_path / "out", BuildOptions("int4", "cpu", block_size=64), progress=False)
    assert not (tmp_path / "out").exists()


# --- checkpoints ----------------------------------------------------------------------------------


def _per_expert_copy(checkpoint, dest):
    """The checkpoint as LiquidAI's originals store it: experts.N.w1|w3|w2.weight."""
    from safetensors.torch import load_file, save_file

    dest.mkdir()
    for f in checkpoint.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, dest / f.name)
    state = {}
    for name, tensor in load_file(checkpoint / "model.safetensors").items():
        if name.endswith("experts.gate_up_proj"):
            base = name.removesuffix(".gate_up_proj")
            for n, expert in enumerate(tensor):
                w1, w3 = expert.chunk(2)
                state[f"{base}.{n}.w1.weight"], state[f"{base}.{n}.w3.weight"] = w1.clone(), w3.clone()
        elif name.endswith("experts.down_proj"):
            base = name.removesuffix(".down_proj")
            state.update({f"{base}.{n}.w2.weight": expert.clone() for n, expert in enumerate(tensor)})
        else:
            state[name] = tensor
    save_file(state, dest / "model.safetensors", metadata={"format": "pt"})
    return dest


def test_per_expert_checkpoint_exports_the_same_bytes(tmp_path, factory):
    checkpoint = factory.checkpoint(moe=True)
    legacy = _per_expert_copy(checkpoint, tmp_path / "legacy")
    a = factory.export(checkpoint, "fp32")
    b = export(legacy, tmp_path / "out", BuildOptions(), progress=False).folder
    assert (a / "onnx/model.onnx_data").read_bytes() == (b / "onnx/model.onnx_data").read_bytes()


def test_missing_expert_is_named(tmp_path, factory):
    from safetensors.torch import load_file, save_file

    legacy = _per_expert_copy(factory.checkpoint(moe=True), tmp_path / "legacy")
    state = load_file(legacy / "model.safetensors")
    del state["model.layers.3.feed_forward.experts.5.w3.weight"]
    save_file(state, legacy / "model.safetensors")
    with pytest.raises(UserError, match=r"weights missing for the config: model\.layers\.3\.feed_forward\.experts\.5"
                                        r"\.w3\.weight"):
        export(legacy, tmp_path / "out", BuildOptions(), progress=False)


def test_misshaped_experts_are_named(tmp_path, factory):
    checkpoint = factory.checkpoint(moe=True)
    changed = tmp_path / "changed"
    shutil.copytree(checkpoint, changed)
    config = json.loads((changed / "config.json").read_text())
    (changed / "config.json").write_text(json.dumps({**config, "moe_intermediate_size": 48}))
    with pytest.raises(UserError, match=r"model\.layers\.1\.feed_forward\.experts\.gate_up_proj is \[8, 64, 64\], "
                                        r"config implies \[8, 96, 64\]"):
        export(changed, tmp_path / "out", BuildOptions(), progress=False)


# --- clients and runtime --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moe_greedy(factory):
    """transformers' greedy tokens for each prompt (none reaches EOS: checked)."""
    checkpoint = factory.checkpoint(moe=True)
    model = load_reference(checkpoint).cpu()
    tokens = []
    with torch.no_grad():
        for prompt in PROMPTS:
            out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                 do_sample=False, max_new_tokens=STEPS)
            tokens.append(out[0, len(prompt):].tolist())
    assert all(len(t) == STEPS for t in tokens)
    return tokens


def test_genai_config_names_lfm2_moe(factory):
    config = json.loads((factory.export(factory.checkpoint(moe=True)) / "genai_config.json").read_text())
    assert config["model"]["type"] == "lfm2_moe"


def test_onnxruntime_genai_runs_the_folder(factory, moe_greedy):
    from test_clients import genai_greedy, load_genai

    model = load_genai(factory.export(factory.checkpoint(moe=True)))
    assert [genai_greedy(model, p, STEPS) for p in PROMPTS] == moe_greedy


def test_transformers_js_runs_the_folder(factory, moe_greedy):
    from test_clients import node, run_transformers_js

    generated = run_transformers_js(node.__wrapped__(), factory.export(factory.checkpoint(moe=True)), PROMPTS,
                                    dtype="fp32")
    assert generated == moe_greedy


def test_runtime_generates_transformers_tokens(factory, moe_greedy):
    from lfm2_onnx import Lfm2Model

    model = Lfm2Model.load(factory.export(factory.checkpoint(moe=True)), ep="cpu")
    ids = model.generate_ids(PROMPTS, STEPS)  # one right-padded batch
    assert [row[:STEPS] for row in ids] == moe_greedy


# --- real shape -----------------------------------------------------------------------------------


class _ShapesOnly:
    """A checkpoint that knows shapes only: enough to build the graph (weights load when written)."""

    def __init__(self, spec):
        self._shapes = expected_shapes(spec)

    def shape(self, name):
        return self._shapes[name]

    def load(self, name):
        raise AssertionError(f"{name} was read while only building the graph")


@pytest.mark.parametrize("precision,ep", [("fp16", "cuda"), ("int4", "cuda"), ("int4", "cpu")])
def test_8b_a1b_graph_io_and_op_counts(precision, ep):
    """The LFM2-8B-A1B graph, built from its config without weights: the cache contract and one
    MoE/QMoE per routed layer, a dense MLP on the first num_dense_layers."""
    spec = load_spec(shared_model("LFM2-8B-A1B"))[0]
    opts = BuildOptions(precision, ep)
    model = build_model(spec, _ShapesOnly(spec), opts)
    weights = {name: list(value.shape) for name, value in model.graph.initializers.items()}
    graph = onnx_ir_to_proto(model)
    check_io(graph, spec, opts.float_precision)
    ops = Counter(n.op_type for n in graph.graph.node)
    moe_op = "QMoE" if opts.quantized else "MoE"
    assert ops[moe_op] == len(spec.moe_layers) == 22
    assert ops["QuickGelu"] == spec.moe.num_dense_layers == 2
    # the default router (lean, rank, gemm): a Gemm gate and a rank count instead of TopK
    router = Counter(n.op_type for n in graph.graph.node if "/router/" in n.name)
    assert router["Gemm"] == router["Sigmoid"] == router["Less"] == 22 and ops["TopK"] == 0
    assert ops["GroupQueryAttention"] == 6
    moe = next(n for n in graph.graph.node if n.op_type == moe_op)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in moe.attribute}
    assert (attrs["k"], attrs["activation_type"], attrs["swiglu_fusion"]) == (4, b"swiglu", 1)
    fc1 = weights[moe.input[2]]
    assert fc1 == ([32, 3584, 2048] if not opts.quantized else [32, 3584, 1024])


def onnx_ir_to_proto(model):
    import onnx_ir as ir

    model.graph.initializers.clear()  # shapes only: the lazy weights are never read
    return ir.to_proto(model)


_cuda = pytest.mark.skipif(
    "CUDAExecutionProvider" not in __import__("onnxruntime").get_available_providers(),
    reason="needs onnxruntime-gpu and a CUDA device")


# Measured on the H200 (onnxruntime-gpu 1.31.1, benchmarks/qmoe_cuda_divergence.py): QMoE's single
# runs equal the reference driver's exactly (int4 and int8, two loads each), but a row's greedy tokens
# can change with what else is in the batch: its CUDA int4/int8 kernels are chosen by the tokens each
# expert gets (a GEMV path for few, a grouped GEMM above), so a batch rounds differently and a
# random-weight model's near-ties flip (int8: a row of a batch of two parted from its single run at
# step 3; another round, int4). Not a cache or graph bug: the fp16 MoE holds batch == single.
_QMOE_BATCH = pytest.mark.xfail(reason="CUDA QMoE rounds by tokens per expert: batched rows may part from "
                                       "single runs on a random model (measured 2026-11-30)", strict=False)


def _cuda_moe_folder(factory, precision):
    # CUDA QMoE takes expert widths in multiples of 64.
    return factory.export(factory.checkpoint(moe=True, moe_intermediate_size=64), precision, "cuda")


@_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["fp16", "int8", "int4"])
def test_cuda_runtime_equals_reference_driver(factory, precision):
    """MoE/QMoE on the GPU: the runtime (CUDA graphs, derived graphs) picks the folder graph's tokens."""
    from lfm2_onnx import Lfm2Model
    from test_lfm2_model import _driver_greedy

    folder = _cuda_moe_folder(factory, precision)
    model = Lfm2Model.load(folder, ep="cuda", max_length=128)
    eos = set(model.layout.eos_token_ids)
    expected = [_driver_greedy(folder, p, 24, eos, ep="cuda") for p in PROMPTS]
    assert [model.generate_ids([p], 24)[0] for p in PROMPTS] == expected


@_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["fp16", pytest.param("int8", marks=_QMOE_BATCH),
                                       pytest.param("int4", marks=_QMOE_BATCH)])
def test_cuda_batched_rows_equal_single_runs(factory, precision):
    from lfm2_onnx import Lfm2Model

    model = Lfm2Model.load(_cuda_moe_folder(factory, precision), ep="cuda", max_length=128)
    singles = [model.generate_ids([p], 24)[0] for p in PROMPTS]
    assert model.generate_ids(PROMPTS, 24) == singles
