"""What one prepacked MatMulNBits costs in resident memory on CPU, against its weight file.

    python benchmarks/cpu_prepack.py [--block-size 32] [--accuracy-level 4] [--no-prepack] [--work DIR]

One MatMulNBits node of LFM2-350M's LM head shape (K=1024, N=65536), random int4 weights and fp32
scales in an external data file that onnxruntime memory-maps, as in an export folder. Prints the
session's RSS growth (anon = onnxruntime's own buffers, e.g. the prepacked copy; file = mapped
pages) after one run, and its ratio to the data file. Each setting wants a fresh process.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from pathlib import Path

import numpy as np


def status(key: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":")) / 1024


def write_model(path: Path, k: int, n: int, block: int, level: int) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    packed = numpy_helper.from_array(rng.integers(0, 255, (n, k // block, block // 2), dtype=np.uint8), "B")
    scales = numpy_helper.from_array(rng.random((n, k // block), dtype=np.float32), "scales")
    node = helper.make_node("MatMulNBits", ["A", "B", "scales"], ["Y"], domain="com.microsoft", K=k, N=n, bits=4,
                            block_size=block, accuracy_level=level)
    graph = helper.make_graph([node], "one_matmulnbits", [helper.make_tensor_value_info("A", TensorProto.FLOAT, [1, k])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, n])], [packed, scales])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    onnx.save(model, str(path), save_as_external_data=True, location=path.name + "_data", size_threshold=0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--block-size", type=int, default=32)
    p.add_argument("--accuracy-level", type=int, default=4)
    p.add_argument("--no-prepack", action="store_true")
    p.add_argument("--work", type=Path, default=Path("/tmp/cpu_prepack"))
    args = p.parse_args()
    k, n = 1024, 65536
    path = args.work / f"matmulnbits_b{args.block_size}_acc{args.accuracy_level}.onnx"
    if not path.exists():
        args.work.mkdir(parents=True, exist_ok=True)
        write_model(path, k, n, args.block_size, args.accuracy_level)
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = False
    options.add_session_config_entry("session.disable_prepacking", "1" if args.no_prepack else "0")
    anon, file = status("RssAnon"), status("RssFile")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    session.run(None, {"A": np.ones((1, k), np.float32)})
    gc.collect()
    data_mb = os.path.getsize(str(path) + "_data") / 2**20
    grown = status("RssAnon") - anon + status("RssFile") - file
    print(f"block {args.block_size}, accuracy level {args.accuracy_level}, prepacking {'off' if args.no_prepack else 'on'}: "
          f"data file {data_mb:.1f} MiB; session RSS +{grown:.1f} MiB ({grown / data_mb:.2f}x): "
          f"anon +{status('RssAnon') - anon:.1f}, file +{status('RssFile') - file:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
