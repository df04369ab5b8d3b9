"""List the Memcpy nodes onnxruntime inserts for an export on CUDA (each one forbids CUDA graphs).

    python benchmarks/memcpy_nodes.py EXPORT_FOLDER
"""

import json
import sys
import tempfile
from pathlib import Path

import onnx
import onnxruntime as ort

folder = Path(sys.argv[1])
filename = json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]["filename"]
ort.preload_dlls()
with tempfile.TemporaryDirectory() as tmp:
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
    ort.InferenceSession(str(folder / filename), options, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    graph = onnx.load(options.optimized_model_filepath, load_external_data=False).graph
producers = {o: n for n in graph.node for o in n.output}
memcpy = [n for n in graph.node if n.op_type.startswith("Memcpy")]
print(f"{len(memcpy)} memcpy nodes")
for n in memcpy:
    src = producers.get(n.input[0])
    users = [u.name for u in graph.node if n.output[0] in u.input]
    print(f"  {n.op_type}: {n.input[0]} (from {src.op_type + ' ' + src.name if src else 'graph input'}) -> {users[:4]}")
