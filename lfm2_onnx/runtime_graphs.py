"""Decoder graphs specialised for this runtime, derived at load time from the folder's model.onnx.

The folder's graph is the contract every client loads: it takes an attention mask, returns logits
for every position, and re-gathers each conv state at its row's last real token so right-padded
batches come out right. A runtime that knows more about its batch can skip work, so it derives:

- `uniform(model)`, for runs whose rows all add the same number of real tokens: every decode step,
  any single prompt, equal-length prompts.
  - GroupQueryAttention's `seqlens_k` / `total_sequence_length` become inputs, and
    `next_seqlens_k` (+1) an output. A decode step then needs no mask and no host copy in.
  - Conv layers keep the state CausalConvWithState carries itself: the last input is real.
  - The LM head runs on the last position only, then fp32 `scores` and an argmax `next_token`
    [B, 1], which the next step takes as its input_ids without a round trip.
- `ragged(model)`, for right-padded prompts of unequal length (prefill only): the folder's graph
  with the same last-position head, taken per row at `last_positions`.

An LFM2-VL folder's decoder takes `inputs_embeds`; `glue_embeddings(model, embed)` first puts the
folder's embedding graph in front of it (see there), so both variants take token ids as a text
decoder does and a decode step still feeds its argmax back on the device.

On CUDA both read the folder's weights, uploaded once (`upload_weights`) and shared by the two
sessions; on CPU the runtime keeps one session (`uniform`), see lfm2_onnx.session.DecoderSessions.
Graphs that don't have the expected shape (no GroupQueryAttention, no LM head found) raise
`NotSpecialisable`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

MS = "com.microsoft"
HEAD_OPS = {("", "MatMul"), ("", "Gemm"), (MS, "MatMulNBits"), (MS, "FusedMatMul")}
PASS_THROUGH = {"Reshape", "Cast", "Identity"}  # between the LM head and the logits output
SEQLENS_K, TOTAL_LENGTH, GQA_SEQLENS_K, GQA_TOTAL = "seqlens_k", "total_sequence_length", 5, 6


class NotSpecialisable(ValueError):
    """The graph lacks a piece the runtime's variants are derived from."""


def load(path: str | Path) -> ir.Model:
    """The graph only: external weights stay on disk (read lazily) until upload_weights."""
    return ir.load(str(path))


IMAGE_FEATURES, IMAGE_POSITIONS = "image_features", "image_positions"


def glue_embeddings(model: ir.Model, embed: ir.Model) -> None:
    """A decoder on inputs_embeds -> one on input_ids, image_features and image_positions, in place.

    inputs_embeds = ScatterND(embed(input_ids), image_positions, image_features): the embedding
    graph's nodes run first, then the feature rows [T, hidden] overwrite the embeddings at the
    [T, 2] (row, position) pairs given. Why glued rather than a session of its own: a decode step
    must take the previous step's argmax as token ids on the device (no copy out and in, one CUDA
    graph); it feeds T = 0. A prefill feeds the positions where its prompt has image tokens (the
    host knows them: no NonZero, whose data-dependent shape a captured graph can't hold).
    Raises NotSpecialisable when either graph lacks the named input or output.
    """
    graph, table = model.graph, embed.graph
    embeds = next((v for v in graph.inputs if v.name == "inputs_embeds"), None)
    ids = next((v for v in table.inputs if v.name == "input_ids"), None)
    out = next((v for v in table.outputs if v.name == "inputs_embeds"), None)
    if embeds is None:
        raise NotSpecialisable("the decoder has no inputs_embeds input to glue the embedding to")
    if ids is None or out is None or len(table.inputs) != 1:
        raise NotSpecialisable("the embedding graph is not input_ids -> inputs_embeds")
    # Names of the embedding graph's values and nodes get a prefix: the decoder's may be the same.
    for node in table:
        node.name = f"embed_tokens/{node.name}"
        for value in node.outputs:
            if value is not out:
                value.name = f"embed_tokens/{value.name}"
    nodes = list(table)
    initializers = list(table.initializers.values())
    table.inputs.clear()
    table.outputs.clear()
    for node in nodes:
        table.remove(node)
    table.initializers.clear()
    for value in initializers:
        value.name = f"embed_tokens/{value.name}"
        graph.register_initializer(value)
    graph.insert_before(graph[0], nodes)
    out.name = "embed_tokens/inputs_embeds"
    features = ir.Value(name=IMAGE_FEATURES, type=embeds.type, shape=ir.Shape(["num_image_tokens", embeds.shape[-1]]))
    positions = ir.Value(name=IMAGE_POSITIONS, type=ir.TensorType(ir.DataType.INT64),
                         shape=ir.Shape(["num_image_tokens", 2]))
    merge = _node("ScatterND", [out, positions, features], name="merge_image_features")
    graph.insert_after(nodes[-1], merge)
    merge.outputs[0].name = "inputs_embeds/merged"
    merge.outputs[0].type, merge.outputs[0].shape = embeds.type, embeds.shape
    embeds.replace_all_uses_with(merge.outputs[0])
    index = graph.inputs.index(embeds)
    graph.inputs[index:index + 1] = [ids, features, positions]


def uniform(model: ir.Model) -> ir.Model:
    model = _copy(model)
    graph = model.graph
    _channels_last_conv(graph)
    _seqlens_as_inputs(graph)
    _keep_carried_conv_states(graph)
    _last_position_head(graph, per_row=None)
    _drop_unused(model, "attention_mask")
    return model


def ragged(model: ir.Model) -> ir.Model:
    model = _copy(model)
    positions = ir.Value(name="last_positions", type=ir.TensorType(ir.DataType.INT64), shape=ir.Shape(["batch_size"]))
    model.graph.inputs.append(positions)
    _channels_last_conv(model.graph)
    _last_position_head(model.graph, per_row=positions)
    RemoveUnusedNodesPass()(model)
    return model


def _copy(model: ir.Model) -> ir.Model:
    # A deep copy through the proto: external tensors stay references (no weight is read).
    return ir.from_proto(ir.to_proto(model))


# -- rewrites ---------------------------------------------------------------------------------
def _node(op_type: str, inputs, domain: str = "", name: str = "", outputs: int = 1, **attributes) -> ir.Node:
    attrs = [ir.convenience.convert_attribute(k, v) for k, v in attributes.items()]
    return ir.Node(domain, op_type, inputs, attributes=attrs, num_outputs=outputs, name=f"runtime/{name or op_type}")


def _const(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    tensor = ir.Tensor(np.asarray(array), name=name)
    value = ir.Value(name=name, type=ir.TensorType(tensor.dtype), shape=ir.Shape(tensor.shape), const_value=tensor)
    graph.register_initializer(value)
    return value


def _seqlens_as_inputs(graph: ir.Graph) -> None:
    """GroupQueryAttention's per-row lengths and total length, fed directly instead of from the mask."""
    gqa = [n for n in graph if n.op_type == "GroupQueryAttention" and n.domain == MS]
    if not gqa:
        raise NotSpecialisable("no GroupQueryAttention node")
    seqlens = ir.Value(name=SEQLENS_K, type=ir.TensorType(ir.DataType.INT32), shape=ir.Shape(["batch_size"]))
    total = ir.Value(name=TOTAL_LENGTH, type=ir.TensorType(ir.DataType.INT32), shape=ir.Shape([]))
    graph.inputs.extend([seqlens, total])
    for node in gqa:
        node.replace_input_with(GQA_SEQLENS_K, seqlens)
        node.replace_input_with(GQA_TOTAL, total)
    # The lengths for the next single-token step: a decode loop feeds this back without the host.
    step = _node("Add", [seqlens, _const(graph, "runtime/one_i32", np.array(1, np.int32))], name="next_seqlens_k")
    graph.append(step)
    step.outputs[0].name = "next_seqlens_k"
    step.outputs[0].type, step.outputs[0].shape = ir.TensorType(ir.DataType.INT32), ir.Shape(["batch_size"])
    graph.outputs.append(step.outputs[0])


def _keep_carried_conv_states(graph: ir.Graph) -> None:
    """present_conv = CausalConvWithState's own carried state, not the per-row re-gather of it.

    The folder's graph writes GatherElements(Concat(past_state, conv_input)) so a padded row keeps
    the state at its last real token; with no padding the op's own state is the same tensor.
    """
    for i, out in enumerate(graph.outputs):
        gather = out.producer()
        if gather is None or gather.op_type != "GatherElements":
            continue
        history = gather.inputs[0].producer()
        if history is None or history.op_type != "Concat" or not history.inputs[0].is_graph_input():
            continue
        past = history.inputs[0]
        conv = next((n for n, _ in past.uses() if n.op_type == "CausalConvWithState"), None)
        if conv is None or len(conv.outputs) < 2:
            continue
        carried = conv.outputs[1]
        carried.name, carried.type, carried.shape = out.name, out.type, out.shape
        out.name = f"{carried.name}/ragged"
        graph.outputs[i] = carried


def _is_swap_12(node: ir.Node | None) -> bool:
    return node is not None and node.op_type == "Transpose" and list(node.attributes.get_ints("perm", [])) == [0, 2, 1]


def _channels_last_conv(graph: ir.Graph) -> None:
    """Drop the Transposes around each CausalConvWithState: run it channels-last ([B, S, C]).

    The folder's graph transposes into the op's channels-first layout and back, so that
    onnxruntime 1.30 (transformers.js) can load it. Here the carried state becomes [B, L-1, C]
    too, and the ragged graph's state re-gather moves to axis 1 with it.
    """
    index_t: dict[int, ir.Value] = {}
    for conv in [n for n in graph if n.op_type == "CausalConvWithState" and n.domain == MS]:
        to_first, past = conv.inputs[0].producer(), conv.inputs[3]
        to_last = [user for user, _ in conv.outputs[0].uses()]
        if not (_is_swap_12(to_first) and to_last and all(_is_swap_12(t) for t in to_last)
                and past is not None and past.is_graph_input() and conv.attributes.get_int("ndim", 1) == 1):
            continue
        regather = [(n, i) for n, i in past.uses() if n is not conv]
        if not all(n.op_type == "Concat" and i == 0 and _regather(n) for n, i in regather):
            continue
        channels_last = to_first.inputs[0]
        conv.replace_input_with(0, channels_last)
        conv.attributes["channels_last"] = ir.AttrInt64("channels_last", 1)
        for t in to_last:
            t.outputs[0].replace_all_uses_with(conv.outputs[0])
        for concat, _ in regather:  # Concat(past, x, axis=2) -> GatherElements(., index, axis=2)
            gather = _regather(concat)
            concat.replace_input_with(1, channels_last)
            concat.attributes["axis"] = ir.AttrInt64("axis", 1)
            gather.attributes["axis"] = ir.AttrInt64("axis", 1)
            index = gather.inputs[1]
            if id(index) not in index_t:
                swap = _node("Transpose", [index], perm=[0, 2, 1], name="state_index_channels_last")
                if index.producer() is not None:
                    graph.insert_after(index.producer(), swap)
                else:
                    graph.insert_before(graph[0], swap)
                index_t[id(index)] = swap.outputs[0]
            gather.replace_input_with(1, index_t[id(index)])
        for state in [past, *[o for o in graph.outputs if o.producer() is not None and o.name.startswith("present")
                              and _feeds_from(o, past)]]:
            if state.shape is not None and len(state.shape) == 3:
                state.shape = ir.Shape([state.shape[0], state.shape[2], state.shape[1]])


def _regather(concat: ir.Node) -> ir.Node | None:
    users = [n for n, _ in concat.outputs[0].uses()]
    return users[0] if len(users) == 1 and users[0].op_type == "GatherElements" else None


def _feeds_from(output: ir.Value, past: ir.Value) -> bool:
    """Whether a present state output is derived from this past state in one or two nodes."""
    node = output.producer()
    if node.op_type == "CausalConvWithState":
        return node.inputs[3] is past
    history = node.inputs[0].producer() if node.op_type == "GatherElements" else None
    return history is not None and history.op_type == "Concat" and history.inputs[0] is past


def _last_position_head(graph: ir.Graph, per_row: ir.Value | None) -> None:
    """Replace the `logits` output by the LM head over one position per row: fp32 scores + argmax.

    per_row None takes the last position (uniform rows); otherwise the int64 [B] positions given.
    """
    logits_index = next((i for i, v in enumerate(graph.outputs) if v.name == "logits"), None)
    if logits_index is None:
        raise NotSpecialisable("no logits output")
    node = graph.outputs[logits_index].producer()
    while node is not None and node.op_type in PASS_THROUGH:
        node = node.inputs[0].producer()
    if node is None or (node.domain, node.op_type) not in HEAD_OPS:
        raise NotSpecialisable("the logits don't come from a MatMul/Gemm/MatMulNBits LM head")
    head = node
    hidden = head.inputs[0]  # [B, S, H], or [B*S, H] reshaped from it
    if hidden.producer() is not None and hidden.producer().op_type == "Reshape":
        hidden = hidden.producer().inputs[0]
    if per_row is None:
        pick = _node("Gather", [hidden, _const(graph, "runtime/last_i64", np.array(-1, np.int64))], axis=1,
                     name="last_position")
    else:
        index = _node("Unsqueeze", [per_row, _const(graph, "runtime/axis1_i64", np.array([1], np.int64))],
                      name="positions_2d")
        graph.append(index)
        pick = _node("GatherND", [hidden, index.outputs[0]], batch_dims=1, name="last_position")
    last_head = ir.Node(head.domain, head.op_type, [pick.outputs[0], *head.inputs[1:]],
                        attributes=list(head.attributes.values()), name="runtime/lm_head_last")
    scores = _node("Cast", [last_head.outputs[0]], to=ir.DataType.FLOAT, name="scores")
    argmax = _node("ArgMax", [scores.outputs[0]], axis=-1, keepdims=1, name="next_token")
    graph.extend([pick, last_head, scores, argmax])
    scores.outputs[0].name, argmax.outputs[0].name = "scores", "next_token"
    scores.outputs[0].type = ir.TensorType(ir.DataType.FLOAT)
    scores.outputs[0].shape = ir.Shape(["batch_size", graph.outputs[logits_index].shape[-1]])
    argmax.outputs[0].type, argmax.outputs[0].shape = ir.TensorType(ir.DataType.INT64), ir.Shape(["batch_size", 1])
    graph.outputs.pop(logits_index)
    graph.outputs.extend([scores.outputs[0], argmax.outputs[0]])


def _drop_unused(model: ir.Model, input_name: str) -> None:
    RemoveUnusedNodesPass()(model)
    graph = model.graph
    for value in list(graph.inputs):
        if value.name == input_name:
            if value.uses():
                raise NotSpecialisable(f"{input_name} is still needed after the rewrites")
            graph.inputs.remove(value)


# -- CPU memory -------------------------------------------------------------------------------
def bound_rotary_tables(model: ir.Model, positions: int) -> None:
    """The rotary cos/sin tables computed for `positions` rows (the runtime's KV capacity), in place.

    The folder's graph computes them for the model's whole context (128k rows, 2 x 16 MB at LFM2's
    shape), which onnxruntime folds into constants at load; no run can reach a row past the cache.
    """
    for node in model.graph:
        if node.op_type != "GroupQueryAttention" or node.domain != MS:
            continue
        for table in node.inputs[7:9]:
            for rng in _producers(table, "Range"):
                limit = rng.inputs[1].const_value
                if limit is not None and limit.numpy().size == 1 and limit.numpy().item() > positions:
                    array = np.asarray(positions, dtype=limit.numpy().dtype)
                    rng.replace_input_with(1, _const(model.graph, f"runtime/rotary_positions_{array.dtype}", array))


def _producers(value: ir.Value | None, op_type: str) -> list[ir.Node]:
    """The op_type nodes among value's ancestors."""
    found, stack, seen = [], [value], set()
    while stack:
        ancestor = stack.pop()
        node = ancestor.producer() if ancestor is not None else None
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if node.op_type == op_type:
            found.append(node)
        stack.extend(v for v in node.inputs if v is not None)
    return found


def external_reshapes_as_views(model: ir.Model) -> None:
    """Reshape(external weight, constant shape) -> the same bytes of the data file, declared in that shape.

    onnxruntime folds such a Reshape into a copy in memory at load (the int4 embedding table viewed
    as [vocab, bytes] for GatherBlockQuantized: 32 MB at 350M, beside MatMulNBits' prepacked LM
    head); a second initializer over the same file range is memory-mapped instead, and only the
    rows read become resident.
    """
    graph = model.graph
    for node in list(graph):
        if node.op_type != "Reshape" or node.domain not in ("", "ai.onnx"):
            continue
        data, shape = node.inputs[0], node.inputs[1]
        stored = data.const_value if data is not None and data.is_initializer() else None
        target = shape.const_value if shape is not None else None
        if not isinstance(stored, ir.ExternalTensor) or target is None or not data.name:
            continue
        dims = [int(d) for d in target.numpy().tolist()]
        if dims.count(-1) > 1 or 0 in dims:
            continue
        size = int(np.prod(stored.shape.numpy()))
        if -1 in dims:
            dims[dims.index(-1)] = size // -int(np.prod(dims))
        if int(np.prod(dims)) != size:
            continue
        name = f"{data.name}/as_{'x'.join(map(str, dims))}"
        view = ir.ExternalTensor(stored.location, stored.offset, stored.length, stored.dtype,
                                 shape=ir.Shape(dims), name=name, base_dir=stored.base_dir)
        value = ir.Value(name=name, type=ir.TensorType(stored.dtype), shape=ir.Shape(dims), const_value=view)
        graph.register_initializer(value)
        node.outputs[0].replace_all_uses_with(value)
    RemoveUnusedNodesPass()(model)


# -- sessions ---------------------------------------------------------------------------------
def external_weights(model: ir.Model) -> list[ir.Value]:
    """The initializers stored in external data files: the weights worth uploading once."""
    return [v for v in model.graph.initializers.values() if isinstance(v.const_value, ir.ExternalTensor)]


def upload_weights(model: ir.Model, device: str) -> dict:
    """Each external weight as an OrtValue on the device, read straight from the data files.

    Sessions given these (SessionOptions.add_initializer) use them in place, so two sessions over
    the same folder hold one copy of the weights. Returns {} where this onnxruntime can't hand a
    device buffer over (each session then reads the files itself).
    """
    from onnxruntime import OrtValue

    values = {}
    for value in external_weights(model):
        array = value.const_value.numpy()
        host = np.ascontiguousarray(array)
        if device == "cpu":  # a numpy array the caller keeps: user-owned, as add_initializer wants
            element = 16 if array.dtype.name == "bfloat16" else None
            values[value.name] = (OrtValue.ortvalue_from_numpy_with_onnx_type(host.view(np.uint16), element)
                                  if element else OrtValue.ortvalue_from_numpy(host))
            continue
        if array.dtype.name == "bfloat16":  # onnxruntime takes bfloat16 as raw 16-bit words
            owned = OrtValue.ortvalue_from_shape_and_type(list(host.shape), 16, device, 0)
            owned.update_inplace(host.view(np.uint16))
        else:
            owned = OrtValue.ortvalue_from_numpy(host, device, 0)
        shared = _as_user_buffer(owned)
        if shared is None:
            return {}
        values[value.name] = shared
    return values


def _as_user_buffer(value):
    """The same device buffer, seen through DLPack: add_initializer only takes buffers it doesn't own."""
    from onnxruntime import OrtValue
    from onnxruntime.capi import onnxruntime_pybind11_state as C

    if not hasattr(C.OrtValue, "from_dlpack") or not hasattr(value._ortvalue, "to_dlpack"):
        return None
    return OrtValue(C.OrtValue.from_dlpack(value._ortvalue.to_dlpack()))  # the capsule keeps `value` alive


def serialize(model: ir.Model) -> bytes:
    return ir.to_proto(model).SerializeToString()
