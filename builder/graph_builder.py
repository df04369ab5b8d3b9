"""A small graph-building layer over onnx-ir: scoped node names, typed I/O, lazy weights.

Blocks call `g.op("MatMul", x, w)` and get Values back; node and value names come from the scope
stack (`layers.3.attn/qkv_proj`), so no block assembles names by hand.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
import onnx_ir as ir

OPSET = {"": 21, "com.microsoft": 1}


class GraphBuilder:
    def __init__(self, name: str):
        self.graph = ir.Graph([], [], nodes=[], name=name, opset_imports=dict(OPSET))
        self._scopes: list[str] = []
        self._used = Counter()
        self._consts: dict[tuple, ir.Value] = {}

    # -- naming -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def scope(self, name: str):
        self._scopes.append(name)
        try:
            yield
        finally:
            self._scopes.pop()

    def _unique(self, name: str) -> str:
        path = "/".join([*self._scopes, name])
        self._used[path] += 1
        n = self._used[path]
        return path if n == 1 else f"{path}_{n - 1}"

    # -- I/O ----------------------------------------------------------------------------------
    def input(self, name: str, dtype: ir.DataType, shape: Sequence[int | str]) -> ir.Value:
        value = ir.Value(name=name, type=ir.TensorType(dtype), shape=ir.Shape(shape))
        self.graph.inputs.append(value)
        return value

    def output(self, value: ir.Value, name: str, dtype: ir.DataType, shape: Sequence[int | str]) -> None:
        value.name = name
        value.type = ir.TensorType(dtype)
        value.shape = ir.Shape(shape)
        self.graph.outputs.append(value)

    # -- nodes --------------------------------------------------------------------------------
    def op(self, op_type: str, *inputs: ir.Value | None, name: str | None = None, domain: str = "",
           outputs: int | Sequence[str | None] = 1, **attributes) -> ir.Value | tuple[ir.Value, ...]:
        """Add one node. `outputs` is a count, or a list whose None entries are omitted optional outputs."""
        node_name = self._unique(name or op_type)
        specs = [node_name if outputs == 1 else f"{node_name}:{i}" for i in range(outputs)] \
            if isinstance(outputs, int) else list(outputs)
        values = [ir.Value(name=("" if s is None else s)) for s in specs]
        attrs = {k: v for k, v in attributes.items() if v is not None}
        node = ir.Node(domain, op_type, list(inputs), attributes=[ir.convenience.convert_attribute(k, v)
                                                                  for k, v in attrs.items()],
                       outputs=values, name=node_name)
        self.graph.append(node)
        return values[0] if len(values) == 1 else tuple(values)

    # -- constants and weights ----------------------------------------------------------------
    def weight(self, name: str, dtype: ir.DataType, shape: Sequence[int],
               load: Callable[[], np.ndarray]) -> ir.Value:
        """An initializer whose data is produced only when the model is written (streamed)."""
        def tensor() -> ir.Tensor:
            array = load()
            if tuple(array.shape) != tuple(shape):
                raise AssertionError(f"{name}: loader produced {array.shape}, declared {tuple(shape)}")
            return ir.Tensor(array, name=name)

        lazy = ir.LazyTensor(tensor, dtype=dtype, shape=ir.Shape(shape), name=name)
        value = ir.Value(name=name, type=ir.TensorType(dtype), shape=ir.Shape(shape), const_value=lazy)
        self.graph.register_initializer(value)
        return value

    def const(self, array: np.ndarray, name: str | None = None) -> ir.Value:
        """A small constant initializer, shared between identical requests."""
        array = np.asarray(array)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._consts:
            const_name = name or f"const_{array.dtype.name}_{len(self._consts)}"
            tensor = ir.Tensor(array, name=const_name)
            value = ir.Value(name=const_name, type=ir.TensorType(tensor.dtype), shape=ir.Shape(array.shape),
                             const_value=tensor)
            self.graph.register_initializer(value)
            self._consts[key] = value
        return self._consts[key]

    def i64(self, *values: int) -> ir.Value:
        return self.const(np.array(values, dtype=np.int64))

    def model(self, producer: str, version: str) -> ir.Model:
        return ir.Model(self.graph, ir_version=10, producer_name=producer, producer_version=version)
