"""List the Memcpy nodes onnxruntime inserts on CUDA (each one forbids CUDA graph capture), for the
folder's graph and for the runtime's uniform decode graph derived from it.

    python benchmarks/memcpy_nodes.py EXPORT_FOLDER
"""

import sys
import tempfile
from pathlib import Path

import onnx
import onnxruntime as ort

from lfm2_onnx import runtime_graphs
from lfm2_onnx.session import ModelLayout

layout = ModelLayout.from_folder(sys.argv[1])
ort.preload_dlls()
folder_graph = runtime_graphs.load(layout.onnx_path)
for name, model in (("folder graph", folder_graph), ("runtime uniform graph", runtime_graphs.uniform(folder_graph))):
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        options.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                         str(layout.onnx_path.parent))
        ort.InferenceSession(runtime_graphs.serialize(model), options,
                             providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
        graph = onnx.load(options.optimized_model_filepath, load_external_data=False).graph
    producers = {o: n for n in graph.node for o in n.output}
    memcpy = [n for n in graph.node if n.op_type.startswith("Memcpy")]
    print(f"{name}: {len(memcpy)} memcpy nodes, {len(graph.node)} nodes after onnxruntime's optimisations")
    for n in memcpy:
        src = producers.get(n.input[0])
        users = [u.name for u in graph.node if n.output[0] in u.input]
        print(f"  {n.op_type}: {n.input[0]} (from {src.op_type + ' ' + src.name if src else 'graph input'}) -> {users[:4]}")
