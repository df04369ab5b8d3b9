"""Real LFM2 shapes (configs from ../shared/models) with seeded random weights, built on the CPU.

Graph I/O and op counts against the spec, genai_config.json equal to the golden file, and for the
350M shape a CPU parity run against transformers. Slow (a minute or two): marked `slow`.
"""

from __future__ import annotations

import json

import pytest

from conftest import REPO, shared_model
from lfm2_onnx.builder.export import export
from lfm2_onnx.builder.options import BuildOptions
from lfm2_onnx.builder.random_checkpoint import write_random_checkpoint
from lfm2_onnx.builder.spec import load_spec
from lfm2_onnx.builder.parity import compare, tokenize_prompts
from test_graph_contract import check_io, check_ops, load_graph

pytestmark = pytest.mark.slow

CASES = [("LFM2-350M", "fp32", "cpu"), ("LFM2-1.2B", "fp16", "cpu")]


@pytest.fixture(scope="module", params=CASES, ids=[c[0] for c in CASES])
def real_export(request, tmp_path_factory):
    name, precision, ep = request.param
    source = shared_model(name)
    root = tmp_path_factory.mktemp(name)
    checkpoint = write_random_checkpoint(source, root / "ckpt", std=0.1, seed=0)
    folder = export(checkpoint, root / "export", BuildOptions(precision, ep), progress=False).folder
    return name, checkpoint, folder, precision, ep


def test_graph_io_and_op_counts(real_export):
    name, checkpoint, folder, precision, ep = real_export
    spec = load_spec(checkpoint)[0]
    model = load_graph(folder)
    check_io(model, spec, precision)
    check_ops(model, spec, ep)


def test_genai_config_is_the_golden_one(real_export):
    name, _, folder, precision, ep = real_export
    golden = REPO / "genai_configs" / name / f"{ep}-{precision}.json"
    assert json.loads((folder / "genai_config.json").read_text()) == json.loads(golden.read_text())


# 1.2B parity runs on the GPU (benchmarks/build_compare.py, BENCHMARKS.md): too slow for 2 CPU cores.
@pytest.mark.parametrize("real_export", [CASES[0]], ids=[CASES[0][0]], indirect=True)
def test_350m_parity_on_cpu(real_export):
    name, checkpoint, folder, precision, _ = real_export
    prompts = tokenize_prompts(folder, ["The capital of France is", "Liquid neural networks adapt to"])
    report = compare(folder, checkpoint, prompts, steps=8)
    assert report.passed, report.table()
    assert all(report.greedy_match), report.table()
