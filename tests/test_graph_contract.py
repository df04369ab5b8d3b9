"""The graph contract: I/O names, dtypes and shapes, op choices per EP, shared tables, op counts."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import onnx
import pytest

from lfm2_onnx.builder.spec import load_spec

SYMBOLIC = {"batch_size", "sequence_length", "total_sequence_length", "past_sequence_length"}
ONNX_FLOAT = {"fp32": onnx.TensorProto.FLOAT, "fp16": onnx.TensorProto.FLOAT16, "bf16": onnx.TensorProto.BFLOAT16}
# Attributes of CausalConvWithState that onnxruntime 1.30 (onnxruntime-node in transformers.js) knows.
CONV_ATTRIBUTES_1_30 = {"activation", "ndim"}


def load_graph(folder: Path) -> onnx.ModelProto:
    filename = json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]["filename"]
    return onnx.load(str(folder / filename), load_external_data=False)


def dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def expected_io(spec, precision: str):
    f = ONNX_FLOAT[precision]
    kv = ["batch_size", spec.num_key_value_heads, "past_sequence_length", spec.head_dim]
    conv = ["batch_size", spec.hidden_size, spec.conv_kernel - 1]
    inputs = [("input_ids", onnx.TensorProto.INT64, ["batch_size", "sequence_length"]),
              ("attention_mask", onnx.TensorProto.INT64, ["batch_size", "total_sequence_length"])]
    logits_type = onnx.TensorProto.FLOAT if precision == "bf16" else f
    outputs = [("logits", logits_type, ["batch_size", "sequence_length", spec.vocab_size])]
    for i, kind in enumerate(spec.layer_types):
        if kind == "full_attention":
            inputs += [(f"past_key_values.{i}.key", f, kv), (f"past_key_values.{i}.value", f, kv)]
            present = [kv[0], kv[1], "total_sequence_length", kv[3]]
            outputs += [(f"present.{i}.key", f, present), (f"present.{i}.value", f, present)]
        else:
            inputs.append((f"past_conv.{i}", f, conv))
            outputs.append((f"present_conv.{i}", f, conv))
    return inputs, outputs


def check_io(model: onnx.ModelProto, spec, precision: str) -> None:
    inputs, outputs = expected_io(spec, precision)
    got_in = [(v.name, v.type.tensor_type.elem_type, dims(v)) for v in model.graph.input]
    got_out = [(v.name, v.type.tensor_type.elem_type, dims(v)) for v in model.graph.output]
    assert got_in == inputs
    assert got_out == outputs
    for _, _, shape in got_in + got_out:  # every dim is a number or one of the symbolic names
        assert all(isinstance(d, int) and d > 0 or d in SYMBOLIC for d in shape), shape


def expected_op_counts(spec) -> dict[str, int]:
    layers, attn, conv = spec.num_layers, len(spec.attention_layers), len(spec.conv_layers)
    return {
        "MatMul": 2 * attn + 2 * conv + 2 * layers,  # qkv+out / in+out, then gate_up+down
        "GroupQueryAttention": attn,
        "CausalConvWithState": conv,
        "SkipSimplifiedLayerNormalization": 2 * layers,  # ffn norm + next operator norm / final norm
        "QuickGelu": layers,
        "Gemm": 1,
        "Gather": 1 + (1 if attn else 0),  # embedding + total-length lookup
        "GatherElements": conv,
    }


def check_ops(model: onnx.ModelProto, spec, ep: str) -> None:
    ops = Counter(n.op_type for n in model.graph.node)
    for op, count in expected_op_counts(spec).items():
        assert ops[op] == count, (op, ops[op], count)
    attn = len(spec.attention_layers)
    # First operator norm; on CPU two per-head Q/K norms per attention layer.
    assert ops["SimplifiedLayerNormalization"] == 1 + (2 * attn if ep == "cpu" else 0)
    for node in model.graph.node:
        if node.op_type == "CausalConvWithState":
            assert {a.name for a in node.attribute} <= CONV_ATTRIBUTES_1_30
        if node.op_type == "GroupQueryAttention":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            assert attrs["do_rotary"] == 1 and attrs["num_heads"] == spec.num_attention_heads
            assert attrs["kv_num_heads"] == spec.num_key_value_heads
            if ep == "cuda":  # packed QKV with the Q/K norm weights as inputs 14 and 15
                assert node.input[1] == node.input[2] == "" and node.input[14] and node.input[15]
                assert attrs["qk_norm_epsilon"] == pytest.approx(spec.norm_eps)
            else:
                assert len(node.input) == 9 and "qk_norm_epsilon" not in attrs


@pytest.mark.parametrize("precision,ep", [("fp32", "cpu"), ("fp16", "cpu"), ("fp16", "cuda"), ("bf16", "cuda")])
def test_tiny_graph_contract(factory, tiny_checkpoint, precision, ep):
    folder = factory.export(tiny_checkpoint, precision, ep)
    spec = load_spec(tiny_checkpoint)[0]
    model = load_graph(folder)
    check_io(model, spec, precision)
    check_ops(model, spec, ep)


def test_tied_table_is_stored_once(tiny_export):
    model = load_graph(tiny_export)
    table = "model.embed_tokens.weight"
    users = [n.op_type for n in model.graph.node if table in n.input]
    assert sorted(users) == ["Gather", "Gemm"]
    assert "lm_head.weight" not in {t.name for t in model.graph.initializer}


def test_untied_head_has_its_own_table(factory):
    model = load_graph(factory.export(factory.checkpoint(tie_word_embeddings=False)))
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    assert gemm.input[1] == "lm_head.weight"


def test_external_data_named_for_transformers_js(tiny_export):
    config = json.loads((tiny_export / "config.json").read_text())
    assert config["transformers.js_config"]["use_external_data_format"] == {"model.onnx": 1}
    assert config["transformers.js_config"]["dtype"] == "fp32"
    assert (tiny_export / "onnx" / "model.onnx_data").is_file()
    locations = {e.value for t in load_graph(tiny_export).graph.initializer for e in t.external_data
                 if e.key == "location"}
    assert locations == {"model.onnx_data"}


def test_large_initializers_are_split_into_chunks(tmp_path, tiny_checkpoint):
    """Chunks stay under the limit, are named .onnx_data, .onnx_data_1, ... and load in onnxruntime."""
    import numpy as np
    import onnxruntime as ort

    from lfm2_onnx.builder.model import build_model
    from lfm2_onnx.builder.options import BuildOptions
    from lfm2_onnx.builder.weights import Checkpoint
    from lfm2_onnx.builder.writer import save_with_external_data

    spec = load_spec(tiny_checkpoint)[0]
    model = build_model(spec, Checkpoint(tiny_checkpoint), BuildOptions())
    chunks = save_with_external_data(model, tmp_path / "model.onnx", chunk_bytes=300_000, progress=False)
    files = sorted(p.name for p in tmp_path.glob("model.onnx_data*"))
    assert chunks == len(files) > 2
    assert files == ["model.onnx_data"] + [f"model.onnx_data_{i}" for i in range(1, chunks)]
    assert all((tmp_path / f).stat().st_size <= 300_000 for f in files)
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = {"input_ids": np.array([[1, 2, 3]]), "attention_mask": np.ones((1, 3), dtype=np.int64)}
    for i in session.get_inputs()[2:]:
        feeds[i.name] = np.zeros([1 if d == "batch_size" else 0 if isinstance(d, str) else d for d in i.shape],
                                 dtype=np.float32)
    assert np.isfinite(session.run(["logits"], feeds)[0]).all()


def _all_combinations():
    from lfm2_onnx.builder.options import VALID_COMBINATIONS

    return VALID_COMBINATIONS


@pytest.mark.parametrize("precision,ep", _all_combinations())
def test_external_data_matches_declared_types(factory, tiny_checkpoint, precision, ep):
    """Every initializer's bytes on disk are exactly its declared dtype x shape (a CUDA-only export
    can't be run here, so this is what catches a tensor written in the wrong precision)."""
    folder = factory.export(tiny_checkpoint, precision, ep)
    model = load_graph(folder)
    sizes = {onnx.TensorProto.FLOAT: 4, onnx.TensorProto.FLOAT16: 2, onnx.TensorProto.BFLOAT16: 2,
             onnx.TensorProto.INT64: 8, onnx.TensorProto.INT32: 4, onnx.TensorProto.UINT8: 1,
             onnx.TensorProto.INT8: 1}
    checked = 0
    for tensor in model.graph.initializer:
        info = {e.key: e.value for e in tensor.external_data}
        if "length" not in info:
            continue
        numel = 1
        for d in tensor.dims:
            numel *= d
        assert int(info["length"]) == numel * sizes[tensor.data_type], tensor.name
        checked += 1
    assert checked > 0
