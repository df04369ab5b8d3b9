"""int8/int4 exports (MatMulNBits, GatherBlockQuantized): exact to their own dequantized weights.

* Exactness: the export's quantized weights, read back and dequantized into transformers' model,
  give the export's logits to fp32 rounding (MatMulNBits accuracy_level 1: fp32 compute), prefill
  and decode, over int8/int4, symmetric/asymmetric, tied/untied, conv_bias, block sizes, LM head.
* Distance from the unquantized model (default options: accuracy_level 4), KL and top-1, with
  the thresholds measured on the tiny checkpoints recorded below.
* The folder: file names, one shared table for tied models, config.json/genai_config.json.
* Clients: onnxruntime-genai and transformers.js pick the same greedy tokens as our ReferenceDriver, compared
  through EOS (tests/test_clients.py: before_eos), so a random model may stop anywhere on any CPU.
* Bad input: unsupported block sizes and option combinations are one-line errors.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import onnx
import pytest

torch = pytest.importorskip("torch")

from lfm2_onnx.builder.export import export  # noqa: E402
from lfm2_onnx.builder.options import BLOCK_SIZES, BuildOptions  # noqa: E402
from lfm2_onnx.builder.spec import load_spec  # noqa: E402
from lfm2_onnx.builder.parity import compare, dequantized_reference, load_reference  # noqa: E402
from lfm2_onnx.errors import UserError  # noqa: E402
from lfm2_onnx.reference_driver import ReferenceDriver  # noqa: E402

import test_clients as clients  # noqa: E402  (a module import: its tests are not collected twice)
from test_clients import node  # noqa: E402, F401  (fixture: node binary, or skip)

PROMPTS = [[1, 45, 300, 17, 98, 412, 23, 77, 5, 640, 31], [1, 250, 9], [1, 88, 120, 700, 66, 15, 402]]
STEPS = 16
CHECKPOINTS = {"default": {}, "untied": {"tie_word_embeddings": False}, "conv_bias": {"conv_bias": True}}


@pytest.fixture(scope="module")
def build(factory):
    """build(config, precision, **options) -> export folder, each combination built once."""
    made: dict[tuple, Path] = {}

    def get(config: str, precision: str, ep: str = "cpu", **options) -> Path:
        key = (config, precision, ep, tuple(sorted(options.items())))
        if key not in made:
            out = factory.root / f"quant{len(made)}_{config}_{precision}_{ep}"
            opts = BuildOptions(precision, ep, **options)
            made[key] = export(factory.checkpoint(**CHECKPOINTS[config]), out, opts, progress=False).folder
        return made[key]

    return get


def load_graph(folder: Path) -> onnx.ModelProto:
    filename = json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]["filename"]
    return onnx.load(str(folder / filename), load_external_data=False)


# --- exactness against the dequantized weights ---------------------------------------------------

# (checkpoint, precision, options): every bits x symmetry on the default checkpoint, tied and untied,
# conv_bias, the block sizes (256 > hidden 64 pads every row), and the LM head choices.
EXACT_CASES = [
    ("default", "int4", {}),
    ("default", "int4", {"symmetric": False}),
    ("default", "int8", {}),
    ("default", "int8", {"symmetric": False}),
    ("untied", "int4", {}),
    ("untied", "int8", {"symmetric": False}),
    ("untied", "int4", {"symmetric": False, "block_size": 256}),
    ("conv_bias", "int4", {"symmetric": False}),
    ("conv_bias", "int8", {"block_size": 128}),
    ("default", "int4", {"block_size": 16, "lm_head": "int8"}),
    ("default", "int8", {"block_size": 64, "lm_head": "int4"}),
    ("untied", "int4", {"block_size": 64, "lm_head": "float"}),
]


def _case_id(case) -> str:
    config, precision, options = case
    return "-".join([config, precision, *(f"{k}={v}" for k, v in options.items())])


@pytest.mark.parametrize("case", EXACT_CASES, ids=_case_id)
def test_logits_equal_dequantized_transformers(build, factory, case):
    config, precision, options = case
    checkpoint = factory.checkpoint(**CHECKPOINTS[config])
    folder = build(config, precision, accuracy_level=1, **options)
    model, replaced = dequantized_reference(folder, checkpoint)

    # Every projection (and, unless the head is float, the vocabulary table) came from the export.
    modules = {name for name, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Embedding))}
    projections = modules - {"model.embed_tokens", "lm_head"}
    if options.get("lm_head") == "float":
        tables = set()
    elif load_spec(checkpoint)[0].tie_word_embeddings:
        tables = {"model.embed_tokens"}  # one parameter for both ends
    else:
        tables = {"model.embed_tokens", "lm_head"}
    assert {n.removesuffix(".weight") for n in replaced} == projections | tables
    original = load_reference(checkpoint).state_dict()
    changed = [n for n in replaced if not torch.equal(original[n], model.state_dict()[n])]
    assert changed == replaced  # quantization moved every one of them

    report = compare(folder, checkpoint, PROMPTS, steps=STEPS, reference=model)
    for phase in report.phases:
        assert phase.max_abs <= 1e-4, report.table()
    assert all(report.greedy_match), report.table()
    assert report.precision == "fp32" and report.passed, report.table()


# --- distance from the unquantized model ---------------------------------------------------------

# Measured on the tiny checkpoints (6 layers, random weights: logits with a std of ~0.85 and no
# margin, the hardest case for quantization), default options (block 32, symmetric, accuracy level 4):
#   int8: mean KL 6e-4..1e-3, top-1 89-95%, 100% where the reference leads by 0.25 std
#   int4: mean KL 0.07..0.10, top-1 24-43%
# A broken layout or graph gives KL of whole nats and top-1 near 1/768.
UNQUANTIZED_LIMITS = {
    "int8": {"mean_kl": 3e-3, "top1": 0.8, "decisive_top1": 1.0, "tie_margin": 0.25},
    "int4": {"mean_kl": 0.2, "top1": 0.2, "decisive_top1": None, "tie_margin": None},
}


@pytest.fixture(scope="module")
def unquantized(factory):
    return {config: load_reference(factory.checkpoint(**overrides)) for config, overrides in CHECKPOINTS.items()}


@pytest.mark.parametrize("config", sorted(CHECKPOINTS))
def test_kl_and_top1_against_unquantized(build, factory, unquantized, config):
    checkpoint = factory.checkpoint(**CHECKPOINTS[config])
    kl = {}
    for precision, limits in UNQUANTIZED_LIMITS.items():
        report = compare(build(config, precision), checkpoint, PROMPTS, steps=32, reference=unquantized[config])
        print(f"{config} {precision} against the unquantized model:\n{report.table(verdict=False)}")  # -rP shows it
        for phase in report.phases:
            assert phase.mean_kl <= limits["mean_kl"], report.table(verdict=False)
            assert phase.top1 >= limits["top1"], report.table(verdict=False)
            if limits["decisive_top1"] is not None:
                margin = limits["tie_margin"] * max(1.0, phase.scale)
                assert phase.decisive_top1(margin) >= limits["decisive_top1"], report.table(verdict=False)
        kl[precision] = max(phase.mean_kl for phase in report.phases)
    assert kl["int8"] < kl["int4"] / 10


# --- the folder ----------------------------------------------------------------------------------


@pytest.mark.parametrize("precision,ep,file,js_dtype", [
    ("int4", "cpu", "onnx/model_q4.onnx", "q4"),
    ("int8", "cpu", "onnx/model_quantized.onnx", "q8"),
    ("int4", "cuda", "onnx/model_q4f16.onnx", "q4f16"),
    ("int8", "cuda", "onnx/model_q8f16.onnx", "q8f16"),
])
def test_files_named_the_transformers_js_way(build, precision, ep, file, js_dtype):
    folder = build("default", precision, ep)
    assert sorted(p.name for p in (folder / "onnx").iterdir()) == [Path(file).name, Path(file).name + "_data"]
    assert json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]["filename"] == file
    js = json.loads((folder / "config.json").read_text())["transformers.js_config"]
    assert js["dtype"] == js_dtype
    assert js["use_external_data_format"] == {Path(file).name: 1}


def _initializer_users(model: onnx.ModelProto) -> dict[str, list[str]]:
    users: dict[str, list[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node.op_type)
    return users


@pytest.mark.parametrize("precision,bits", [("int4", 4), ("int8", 8)])
def test_tied_table_is_one_quantized_table(build, precision, bits):
    model = load_graph(build("default", precision))
    users = _initializer_users(model)
    names = {t.name for t in model.graph.initializer}
    table = f"model.embed_tokens.weight_Q{bits}"
    # MatMulNBits (LM head) reads it as B; a Reshape views the same bytes as the gather's rows.
    assert sorted(users[table]) == ["MatMulNBits", "Reshape"]
    assert not {"model.embed_tokens.weight", "lm_head.weight"} & names
    assert not any(n.startswith("lm_head") for n in names)
    gathers = [n for n in model.graph.node if n.op_type == "GatherBlockQuantized"]
    assert len(gathers) == 1 and gathers[0].input[2] == "model.embed_tokens.weight_scales"
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["MatMul"] == ops["Gemm"] == 0


def test_untied_tables_and_float_head(build):
    untied = load_graph(build("untied", "int4"))
    names = {t.name for t in untied.graph.initializer}
    assert {"model.embed_tokens.weight_Q4", "lm_head.weight_Q4"} <= names
    float_head = load_graph(build("untied", "int4", block_size=64, lm_head="float"))
    ops = Counter(n.op_type for n in float_head.graph.node)
    assert ops["Gemm"] == 1 and ops["GatherBlockQuantized"] == 0 and ops["MatMul"] == 0
    assert {"model.embed_tokens.weight", "lm_head.weight"} <= {t.name for t in float_head.graph.initializer}


def test_projection_nodes_and_attributes(build, tiny_checkpoint):
    spec = load_spec(tiny_checkpoint)[0]
    cpu, cuda = load_graph(build("default", "int4")), load_graph(build("default", "int4", "cuda"))
    projections = 2 * len(spec.attention_layers) + 2 * len(spec.conv_layers) + 2 * spec.num_layers
    for model, level in ((cpu, 4), (cuda, None)):
        nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
        assert len(nbits) == projections + 1  # + the LM head
        for node in nbits:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            assert (attrs["bits"], attrs["block_size"], attrs.get("accuracy_level")) == (4, 32, level)
            assert len(node.input) == 3  # symmetric: no zero points
    scales = {t.name: t.data_type for t in cuda.graph.initializer if t.name.endswith("_scales")}
    assert set(scales.values()) == {onnx.TensorProto.FLOAT16}  # q4f16: fp16 activations and scales
    assert cuda.graph.input[2].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16


# --- clients -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def eos_ids(tiny_checkpoint) -> set[int]:
    return set(load_spec(tiny_checkpoint)[0].eos_token_ids)


@pytest.fixture(scope="module")
def driver_tokens(build, eos_ids):
    """Our ReferenceDriver's greedy tokens per (precision, prompt name) on the default int4/int8 CPU folders."""
    tokens = {}
    for precision in ("int4", "int8"):
        driver = ReferenceDriver(build("default", precision))
        for name, prompt in clients.PROMPTS.items():
            tokens[precision, name] = clients.driver_greedy(driver, prompt, clients.NEW_TOKENS, eos_ids)
    return tokens


@pytest.mark.parametrize("precision", ["int4", "int8"])
def test_genai_matches_reference_driver(build, driver_tokens, eos_ids, precision):
    model = clients.load_genai(build("default", precision))
    for name, prompt in clients.PROMPTS.items():
        genai = clients.genai_greedy(model, prompt, clients.NEW_TOKENS)  # stops before EOS, our driver after it
        assert clients.before_eos(genai, eos_ids) == clients.before_eos(driver_tokens[precision, name], eos_ids), name


@pytest.mark.parametrize("precision", ["int4", "int8"])
def test_transformers_js_matches_reference_driver(node, build, driver_tokens, eos_ids, precision):
    # No dtype: config.json's transformers.js_config (q4 / q8) must pick the file by itself.
    generated = clients.run_transformers_js(node, build("default", precision), list(clients.PROMPTS.values()))
    assert {n: clients.before_eos(t, eos_ids) for n, t in zip(clients.PROMPTS, generated)} \
        == {n: clients.before_eos(driver_tokens[precision, n], eos_ids) for n in clients.PROMPTS}


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize("block_size", [0, 8, 48, 512])
def test_unsupported_block_size_lists_the_valid_ones(block_size):
    with pytest.raises(UserError, match=f"--block-size {block_size} .* valid block sizes: 16, 32, 64, 128, 256"):
        BuildOptions("int4", "cpu", block_size=block_size)
    assert BLOCK_SIZES == (16, 32, 64, 128, 256)


@pytest.mark.parametrize("options,needles", [
    ({"precision": "fp16", "block_size": 64}, ["--block-size applies to quantized precisions only", "-p int8, -p int4"]),
    ({"precision": "fp32", "symmetric": False, "lm_head": "int8"}, ["--asymmetric, --lm-head apply to quantized", "drop them"]),
    ({"precision": "int4", "ep": "cuda", "accuracy_level": 1}, ["--accuracy-level applies to -e cpu only"]),
    ({"precision": "int8", "accuracy_level": 5}, ["--accuracy-level 5", "valid levels: 0, 1, 2, 3, 4"]),
    ({"precision": "int4", "lm_head": "int2"}, ["--lm-head int2", "int8, int4, float"]),
])
def test_bad_combinations_are_refused(options, needles):
    with pytest.raises(UserError) as error:
        BuildOptions(**{"ep": "cpu", **options})
    message = str(error.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message


def test_cli_refuses_bad_block_size_and_leaves_nothing(tmp_path, capsys):
    from lfm2_onnx import build as build_cli

    out = tmp_path / "out"
    rc = build_cli.main(["-m", "lfm2-tiny-random", "-p", "int4", "--block-size", "100", "-o", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert err[0].startswith("error: --block-size 100") and "16, 32, 64, 128, 256" in err[0]
    assert not out.exists() and list(tmp_path.iterdir()) == []
