"""The runtime's derived graphs (lfm2_onnx.runtime_graphs) against the folder's own graph, on CPU."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx_ir as ir
import pytest

from lfm2_onnx import runtime_graphs
from lfm2_onnx.errors import UserError
from lfm2_onnx.lfm2_model import Lfm2Model
from lfm2_onnx.session import DecoderSessions, ModelLayout
from lfm2_onnx.reference_driver import ReferenceDriver
from lfm2_onnx.sampling import SamplingParams

PROMPTS = [[1, 45, 300, 17, 98, 412, 23, 77, 5, 640, 31], [1, 250, 9], [1, 88, 120, 700, 66, 15, 402]]


@pytest.fixture(scope="module")
def layout(tiny_export):
    return ModelLayout.from_folder(tiny_export)


@pytest.fixture(scope="module")
def sessions(layout):
    return DecoderSessions(layout, "cpu", positions=CAPACITY)  # rotary tables for CAPACITY rows only


CAPACITY = 32


def test_uniform_graph_has_no_mask_regather_or_transposes(layout):
    folder = runtime_graphs.load(layout.onnx_path)
    uniform = runtime_graphs.uniform(folder)
    ops = Counter(n.op_type for n in uniform.graph)
    inputs = [v.name for v in uniform.graph.inputs]
    outputs = [v.name for v in uniform.graph.outputs]
    assert "attention_mask" not in inputs and {"seqlens_k", "total_sequence_length"} <= set(inputs)
    assert {"scores", "next_token", "next_seqlens_k"} <= set(outputs) and "logits" not in outputs
    assert ops["GatherElements"] == ops["Concat"] == ops["Transpose"] == 0
    convs = [n for n in uniform.graph if n.op_type == "CausalConvWithState"]
    assert convs and all(n.attributes.get_int("channels_last", 0) == 1 for n in convs)
    # Fewer nodes than the folder's graph, and the folder's graph is left as it was.
    assert sum(1 for _ in uniform.graph) < sum(1 for _ in folder.graph)
    assert "attention_mask" in [v.name for v in folder.graph.inputs]


def _uniform_run(sessions, layout, state, ids, cached):
    feeds = {"input_ids": ids, "seqlens_k": np.full(len(ids), cached - 1, np.int32),
             "total_sequence_length": np.array(cached, np.int32), **state}
    names = [o.name for o in sessions.uniform.get_outputs()]
    out = dict(zip(names, sessions.uniform.run(names, feeds)))
    for i in layout.conv_layers:
        state[layout.past_conv % i] = out[layout.present_conv % i]
    for i in layout.attention_layers:
        state[layout.past_key % i] = out[layout.present_key % i]
        state[layout.past_value % i] = out[layout.present_value % i]
    return out


def _empty_state(sessions, batch):
    state = {}
    for meta in sessions.uniform.get_inputs():
        if meta.name.startswith("past"):
            shape = [batch, *[0 if isinstance(d, str) else d for d in meta.shape[1:]]]
            state[meta.name] = np.zeros(shape, np.float32)
    return state


def test_uniform_graph_equals_folder_graph(sessions, layout, tiny_export):
    """Equal-length rows: scores = the folder's last-position logits, argmax and states equal too."""
    prompts = [PROMPTS[0], PROMPTS[0][::-1]]
    driver = ReferenceDriver(tiny_export)
    logits, ref_state = driver.prefill(prompts)
    state = _empty_state(sessions, 2)
    ids = np.array(prompts, np.int64)
    cached = ids.shape[1]
    out = _uniform_run(sessions, layout, state, ids, cached)
    for step in range(4):
        np.testing.assert_allclose(out["scores"], logits[:, -1], atol=1e-4, rtol=1e-4)
        assert out["next_token"].reshape(-1).tolist() == logits[:, -1].argmax(-1).tolist()
        assert out["next_seqlens_k"].tolist() == [cached] * 2
        for i in layout.conv_layers:  # channels-last here: [B, L-1, C] against [B, C, L-1]
            np.testing.assert_allclose(state[layout.past_conv % i].transpose(0, 2, 1),
                                       ref_state.cache(layout.past_conv % i), atol=1e-5)
        tokens = out["next_token"]
        logits = driver.decode(tokens.reshape(-1), ref_state)
        cached += 1
        out = _uniform_run(sessions, layout, state, tokens, cached)


def test_ragged_graph_takes_each_rows_last_token(sessions, layout, tiny_export):
    logits, ref_state = ReferenceDriver(tiny_export).prefill(PROMPTS)
    lengths = np.array([len(p) for p in PROMPTS])
    ids = np.zeros((len(PROMPTS), lengths.max()), np.int64)
    for row, prompt in enumerate(PROMPTS):
        ids[row, :len(prompt)] = prompt
    feeds = {"input_ids": ids, "attention_mask": (np.arange(ids.shape[1]) < lengths[:, None]).astype(np.int64),
             "last_positions": lengths - 1, **_empty_state(sessions, len(PROMPTS))}
    names = [o.name for o in sessions.ragged.get_outputs()]
    out = dict(zip(names, sessions.ragged.run(names, feeds)))
    expected = logits[np.arange(len(PROMPTS)), lengths - 1]
    np.testing.assert_allclose(out["scores"], expected, atol=1e-4, rtol=1e-4)
    assert out["next_token"].reshape(-1).tolist() == expected.argmax(-1).tolist()
    for i in layout.conv_layers:
        np.testing.assert_allclose(out[layout.present_conv % i].transpose(0, 2, 1),
                                   ref_state.cache(layout.past_conv % i), atol=1e-5)


def test_cpu_keeps_one_session_for_every_batch(tiny_export):
    """Each CPU session prepacks its own copy of the weights: no batch may open a second one, and the
    weights aren't handed in (the caller's arrays would stay resident beside the prepacked copy)."""
    model = Lfm2Model.load(tiny_export, max_length=64)
    assert model.sessions.weights == {} and model.sessions.prefill is model.sessions.uniform
    model.generate_ids([PROMPTS[0]], 4)
    model.generate_ids([PROMPTS[1], PROMPTS[1]], 4)
    model.generate_ids(PROMPTS, 4)  # unequal lengths: row by row through the one session
    assert not model.sessions.ragged_prefill and model.sessions._ragged is None


def test_one_upload_of_the_weights_covers_every_external_weight(layout):
    """What the CUDA sessions share: every external weight, uploaded once (here to host memory)."""
    folder = runtime_graphs.load(layout.onnx_path)
    names = {v.name for v in runtime_graphs.external_weights(folder)}
    assert names and set(runtime_graphs.upload_weights(folder, "cpu")) == names


def test_a_graph_it_cannot_specialise_is_a_one_line_error(tiny_export, tmp_path):
    import shutil

    folder = tmp_path / "foreign"
    shutil.copytree(tiny_export, folder)
    x = ir.Value(name="input_ids", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([1, 4]))
    node = ir.Node("", "Relu", [x], name="relu")
    node.outputs[0].name, node.outputs[0].type = "logits", ir.TensorType(ir.DataType.FLOAT)
    graph = ir.Graph([x], [node.outputs[0]], nodes=[node], opset_imports={"": 21})
    ir.save(ir.Model(graph, ir_version=10), folder / "onnx" / "model.onnx")
    with pytest.raises(UserError, match="not an LFM2 decoder this runtime can run .no GroupQueryAttention"):
        Lfm2Model.load(folder)


def _rotary_limits(model: ir.Model) -> list[float]:
    return [float(n.inputs[1].const_value.numpy()) for n in model.graph if n.op_type == "Range"
            and n.inputs[1].const_value is not None and any(u.op_type in ("Cos", "Sin") or u.op_type == "Unsqueeze"
                                                            for u, _ in n.outputs[0].uses())]


def test_rotary_tables_cover_the_kv_capacity_only(layout, sessions):
    """onnxruntime folds the tables at load: the model's whole context would be 2 x 16 MB at 350M."""
    folder = runtime_graphs.load(layout.onnx_path)
    assert _rotary_limits(folder) == [float(layout.context_length)]
    runtime_graphs.bound_rotary_tables(folder, CAPACITY)
    assert _rotary_limits(folder) == [float(CAPACITY)]
    runtime_graphs.bound_rotary_tables(folder, 10**9)  # never beyond the model's own
    assert _rotary_limits(folder) == [float(CAPACITY)]


def test_a_full_cache_decodes_the_same_with_bounded_rotary_tables(tiny_export):
    """The last position the cache holds still finds its row of the (bounded) tables."""
    prompt = PROMPTS[0]
    small = Lfm2Model.load(tiny_export, max_length=len(prompt) + 8)
    large = Lfm2Model.load(tiny_export, max_length=256)
    assert small.generate_ids([prompt], 8, SamplingParams()) == large.generate_ids([prompt], 8, SamplingParams())


def test_int4_embedding_rows_read_the_file_bytes_of_the_lm_head(factory, tiny_checkpoint):
    """The tied int4 table's Reshape for GatherBlockQuantized becomes a second initializer over the
    same external bytes (onnxruntime would fold it into a copy in memory), with the same tokens."""
    folder = factory.export(tiny_checkpoint, "int4")
    layout = ModelLayout.from_folder(folder)
    model = runtime_graphs.load(layout.onnx_path)
    gather = next(n for n in model.graph if n.op_type == "GatherBlockQuantized")
    assert gather.inputs[0].producer().op_type == "Reshape"
    runtime_graphs.external_reshapes_as_views(model)
    gather = next(n for n in model.graph if n.op_type == "GatherBlockQuantized")
    view = gather.inputs[0].const_value
    head = next(n for n in model.graph if n.op_type == "MatMulNBits" and n.inputs[1].name.startswith("model.embed"))
    table = head.inputs[1].const_value
    assert isinstance(view, ir.ExternalTensor) and gather.inputs[0].producer() is None
    assert (view.location, view.offset, view.length) == (table.location, table.offset, table.length)
    assert list(view.shape) == [table.shape[0], table.shape[1] * table.shape[2]]
    assert not [n for n in model.graph if n.op_type == "Reshape" and n.inputs[0].is_initializer()]
    np.testing.assert_array_equal(view.numpy(), table.numpy().reshape(view.shape.numpy()))
    ids = Lfm2Model.load(folder, max_length=64).generate_ids(PROMPTS, 6, SamplingParams())  # greedy
    driver = ReferenceDriver(folder)  # the folder's own graph, Reshape and all
    for prompt, got in zip(PROMPTS, ids):
        logits, state = driver.prefill([prompt])
        want = [int(logits[0, -1].argmax())]
        for _ in range(5):
            want.append(int(driver.decode(np.array(want[-1:]), state)[0].argmax()))
        assert got == want[:len(got)] and (len(got) == 6 or got[-1] in layout.eos_token_ids)
