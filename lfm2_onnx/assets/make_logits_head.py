"""Writes logits_head_{fp16,fp32}.onnx, run once by hand (the runtime itself never needs `onnx`).

The head runs on the device right after the decoder: it takes each row's logits at one position,
as float32 scores [B, V], and their argmax [B], so greedy decoding copies B integers to the host
instead of B x vocab half floats (and a 1024-token prefill no longer copies all its logits).

    python lfm2_onnx/assets/make_logits_head.py
"""

from pathlib import Path

import onnx
from onnx import TensorProto, helper


def head(logits_type: int) -> onnx.ModelProto:
    nodes = [
        # positions [B] -> [B, 1, 1] -> [B, 1, V]: GatherElements picks logits[b, positions[b], :]
        helper.make_node("Unsqueeze", ["positions", "axes_12"], ["positions_b11"]),
        helper.make_node("Shape", ["logits"], ["logits_shape"]),
        helper.make_node("Slice", ["logits_shape", "two", "three"], ["vocab"]),
        helper.make_node("Concat", ["one_one_i64", "vocab"], ["expand_shape"], axis=0),
        helper.make_node("Expand", ["positions_b11", "expand_shape"], ["index"]),
        helper.make_node("GatherElements", ["logits", "index"], ["picked"], axis=1),
        helper.make_node("Squeeze", ["picked", "axes_1"], ["picked_2d"]),
        helper.make_node("Cast", ["picked_2d"], ["scores"], to=TensorProto.FLOAT),
        helper.make_node("ArgMax", ["scores"], ["greedy"], axis=-1, keepdims=0, select_last_index=0),
    ]
    inits = [
        helper.make_tensor("axes_12", TensorProto.INT64, [2], [1, 2]),
        helper.make_tensor("axes_1", TensorProto.INT64, [1], [1]),
        helper.make_tensor("two", TensorProto.INT64, [1], [2]),
        helper.make_tensor("three", TensorProto.INT64, [1], [3]),
        helper.make_tensor("one_one_i64", TensorProto.INT64, [2], [1, 1]),
    ]
    graph = helper.make_graph(
        nodes, "logits_head",
        [helper.make_tensor_value_info("logits", logits_type, ["batch", "sequence", "vocab"]),
         helper.make_tensor_value_info("positions", TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", "vocab"]),
         helper.make_tensor_value_info("greedy", TensorProto.INT64, ["batch"])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], producer_name="lfm2_onnx")
    model.ir_version = 10
    onnx.checker.check_model(model)
    return model


if __name__ == "__main__":
    here = Path(__file__).parent
    for name, dtype in (("fp16", TensorProto.FLOAT16), ("fp32", TensorProto.FLOAT)):
        onnx.save(head(dtype), here / f"logits_head_{name}.onnx")
