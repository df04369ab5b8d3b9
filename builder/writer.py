"""Write an ir.Model as `<name>.onnx` plus external data chunks named the transformers.js way.

transformers.js loads `<name>.onnx_data`, `<name>.onnx_data_1`, ... (its config says how many), and
browsers cap one buffer at 2 GB, so chunks stay under that. Tensors are materialised one at a time
(they are LazyTensors that read the checkpoint), written, and dropped.
"""

from __future__ import annotations

from pathlib import Path

import onnx_ir as ir
from tqdm import tqdm

CHUNK_BYTES = 2_000_000_000
ALIGN = 64  # keeps every tensor's offset aligned for mmap-friendly loads
INLINE_BYTES = 1024  # tiny constants stay in the .onnx


def save_with_external_data(model: ir.Model, onnx_path: Path, *, chunk_bytes: int = CHUNK_BYTES,
                            progress: bool = True) -> int:
    """Write the model; returns the number of external data chunks (0 if none)."""
    base = onnx_path.name + "_data"
    folder = onnx_path.parent
    chunk, offset, handle = 0, 0, None
    total_chunks = 0
    initializers = list(model.graph.initializers.values())
    total_bytes = sum(v.const_value.nbytes for v in initializers)
    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc=f"writing {onnx_path.name}",
               disable=not progress, leave=False)
    try:
        for value in initializers:
            tensor = value.const_value
            if tensor.nbytes <= INLINE_BYTES:
                value.const_value = ir.Tensor(tensor.numpy(), name=value.name)
                continue
            data = tensor.tobytes()
            offset = (offset + ALIGN - 1) // ALIGN * ALIGN
            if handle is not None and offset + len(data) > chunk_bytes:
                handle.close()
                handle, chunk, offset = None, chunk + 1, 0
            location = base if chunk == 0 else f"{base}_{chunk}"
            if handle is None:
                handle = open(folder / location, "wb")
                total_chunks = chunk + 1
            handle.seek(offset)
            handle.write(data)
            value.const_value = ir.ExternalTensor(location, offset, len(data), tensor.dtype, shape=tensor.shape,
                                                  name=value.name, base_dir=folder)
            offset += len(data)
            bar.update(len(data))
            del data, tensor
    finally:
        if handle is not None:
            handle.close()
        bar.close()
    ir.save(model, onnx_path)
    return total_chunks
