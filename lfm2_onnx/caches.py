"""Device caches organised as slots: row s of every buffer belongs to the request in slot s.

KV: one buffer per attention layer and per key/value, [slots, kv_heads, capacity, head_size], bound
as both past input and present output: GroupQueryAttention writes the new positions in place.
Conv: two state buffers per conv layer used in turn (past from one, present into the other), so a
decode step's bindings alternate between two fixed sets of addresses, each one CUDA graph.
Step inputs follow the same parity: the token ids and lengths a step reads from pair `parity` it
writes for the next step into pair `1 - parity` (greedy decoding needs no copy in).

Runs bind a contiguous range of rows [start, start + rows) by address (IOBinding.bind_input with a
pointer), so a decode step over the first n slots and a prefill into one slot use the same memory.
Moving a request to another slot copies its rows of every cache on the device (a graph of Identity
nodes bound row to row: move_row), so the engine can keep the running requests in the lowest slots.
"""

from __future__ import annotations

import numpy as np

from .session import ModelLayout

# ONNX type name -> (host numpy dtype, ONNX element type); bfloat16 travels as raw uint16.
HOST_TYPES = {"tensor(float)": (np.float32, 1), "tensor(float16)": (np.float16, 10),
              "tensor(bfloat16)": (np.uint16, 16)}
_INT64, _INT32, _FLOAT = 7, 6, 1


def device_zeros(shape, input_type: str, device: str):
    """A zero-filled OrtValue of the graph's cache type on the device (bfloat16 via raw uint16)."""
    from onnxruntime import OrtValue

    host_dtype, element = HOST_TYPES[input_type]
    host = np.zeros(shape, dtype=host_dtype)
    if element == 16:
        value = OrtValue.ortvalue_from_shape_and_type(shape, element_type=element, device_type=device, device_id=0) \
            if device != "cpu" else OrtValue.ortvalue_from_numpy_with_onnx_type(host, element)
        if device != "cpu":
            value.update_inplace(host)
        return value
    return OrtValue.ortvalue_from_numpy(host, device, 0)


def device_array(host: np.ndarray, device: str):
    from onnxruntime import OrtValue

    return OrtValue.ortvalue_from_numpy(host, device, 0)


class Rows:
    """An OrtValue [slots, ...] whose row ranges are bound by address."""

    def __init__(self, value, element: int, itemsize: int, device: str):
        self.value, self.element, self.device = value, element, device
        self.shape = list(value.shape())
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * itemsize

    def _where(self, start: int, rows: int):
        if start < 0 or start + rows > self.shape[0]:
            raise IndexError(f"rows {start}..{start + rows} outside {self.shape[0]} slots")
        return [rows, *self.shape[1:]], self.value.data_ptr() + start * self.row_bytes

    def bind_input(self, binding, name: str, start: int, rows: int) -> None:
        shape, ptr = self._where(start, rows)
        binding.bind_input(name, self.device, 0, self.element, shape, ptr)

    def bind_output(self, binding, name: str, start: int, rows: int) -> None:
        shape, ptr = self._where(start, rows)
        binding.bind_output(name, self.device, 0, self.element, shape, ptr)


class SlotCaches:
    """Every cache of `slots` requests, plus the step inputs and outputs the decode graphs bind."""

    def __init__(self, layout: ModelLayout, cache_type: str, slots: int, capacity: int, device: str,
                 conv_state: tuple[int, int]):
        """conv_state: a conv state's shape without the batch ([C, L-1], or [L-1, C] channels-last)."""
        self.layout, self.slots, self.capacity, self.device = layout, slots, capacity, device
        dtype, element = HOST_TYPES[cache_type]
        itemsize = np.dtype(dtype).itemsize

        def cache(shape):
            return Rows(device_zeros(shape, cache_type, device), element, itemsize, device)

        kv_shape = (slots, layout.num_kv_heads, capacity, layout.head_size)
        conv_shape = (slots, *conv_state)
        self.kv = {i: (cache(kv_shape), cache(kv_shape)) for i in layout.attention_layers}
        self.conv = {i: (cache(conv_shape), cache(conv_shape)) for i in layout.conv_layers}
        self.fresh_conv = cache(conv_shape)  # all zeros, only ever read: the state before a prompt
        self.ids = [Rows(device_array(np.zeros((slots, 1), np.int64), device), _INT64, 8, device) for _ in range(2)]
        self.seqlens = [Rows(device_array(np.zeros(slots, np.int32), device), _INT32, 4, device) for _ in range(2)]
        self.capacity_scalar = np.array(capacity, np.int32)  # total_sequence_length of every decode step
        self._scores: dict[int, Rows] = {}  # by rows: a step over n rows reads back exactly n score rows
        self._vocab_row = np.zeros(layout.vocab_size, np.float32)
        self._row_copy = None  # (session, buffers) made on the first move

    def _state_buffers(self) -> list[Rows]:
        """Every buffer whose rows are a request's state (KV, both conv parities)."""
        return [b for pair in (*self.kv.values(), *self.conv.values()) for b in pair]

    def move_row(self, source: int, target: int, make_session) -> None:
        """Copy slot `source`'s state into slot `target` on the device (source is left as it was).

        make_session(model) opens an onnx_ir model on the caches' device (DecoderSessions.helper_session)."""
        if self._row_copy is None:
            buffers = self._state_buffers()
            self._row_copy = (make_session(row_copy_model([(b.element, b.shape[1:]) for b in buffers])), buffers)
        session, buffers = self._row_copy
        binding = session.io_binding()
        for k, buffer in enumerate(buffers):
            buffer.bind_input(binding, f"source_{k}", source, 1)
            buffer.bind_output(binding, f"target_{k}", target, 1)
        session.run_with_iobinding(binding)

    @property
    def nbytes(self) -> int:
        rows = [b for pair in (*self.kv.values(), *self.conv.values()) for b in pair]
        return sum(b.row_bytes * b.shape[0] for b in rows)

    def scores(self, rows: int) -> Rows:
        if rows not in self._scores:
            value = device_array(np.zeros((rows, self.layout.vocab_size), np.float32), self.device)
            self._scores[rows] = Rows(value, _FLOAT, 4, self.device)
        return self._scores[rows]

    def write_step_inputs(self, parity: int, ids: np.ndarray, seqlens: np.ndarray) -> None:
        """The host's token ids [slots] and lengths [slots] for the next decode step."""
        self.ids[parity].value.update_inplace(ids.reshape(-1, 1).astype(np.int64, copy=False))
        self.seqlens[parity].value.update_inplace(seqlens.astype(np.int32, copy=False))

    def bind_decode(self, binding, rows: int, parity: int) -> None:
        """A decode step over rows [0, rows): ids and lengths from pair `parity`, the next ones into the other."""
        self.ids[parity].bind_input(binding, "input_ids", 0, rows)
        self.seqlens[parity].bind_input(binding, "seqlens_k", 0, rows)
        binding.bind_cpu_input("total_sequence_length", self.capacity_scalar)
        self.scores(rows).bind_output(binding, "scores", 0, rows)
        self.ids[1 - parity].bind_output(binding, "next_token", 0, rows)
        self.seqlens[1 - parity].bind_output(binding, "next_seqlens_k", 0, rows)
        self.bind_kv(binding, 0, rows)
        for i, buffers in self.conv.items():
            buffers[parity].bind_input(binding, self.layout.past_conv % i, 0, rows)
            buffers[1 - parity].bind_output(binding, self.layout.present_conv % i, 0, rows)

    def bind_kv(self, binding, start: int, rows: int) -> None:
        layout = self.layout
        for i, (key, value) in self.kv.items():
            key.bind_input(binding, layout.past_key % i, start, rows)
            key.bind_output(binding, layout.present_key % i, start, rows)
            value.bind_input(binding, layout.past_value % i, start, rows)
            value.bind_output(binding, layout.present_value % i, start, rows)

    def bind_conv(self, binding, start: int, rows: int, source: int | None, target: int) -> None:
        """Conv states of rows [start, start + rows): from buffer `source` (None: fresh zeros) into `target`."""
        for i, buffers in self.conv.items():
            if source is None:
                self.fresh_conv.bind_input(binding, self.layout.past_conv % i, 0, rows)
            else:
                buffers[source].bind_input(binding, self.layout.past_conv % i, start, rows)
            buffers[target].bind_output(binding, self.layout.present_conv % i, start, rows)


def row_copy_model(rows: list[tuple[int, list[int]]]):
    """An onnx_ir model copying one row of each buffer: source_k -> Identity -> target_k.

    rows: (ONNX element type, row shape without the batch) per buffer."""
    import onnx_ir as ir

    inputs, outputs, nodes = [], [], []
    for k, (element, shape) in enumerate(rows):
        kind = ir.TensorType(ir.DataType(element))
        source = ir.Value(name=f"source_{k}", shape=ir.Shape([1, *shape]), type=kind)
        target = ir.Value(name=f"target_{k}", shape=ir.Shape([1, *shape]), type=kind)
        nodes.append(ir.Node("", "Identity", inputs=[source], outputs=[target]))
        inputs.append(source)
        outputs.append(target)
    graph = ir.Graph(inputs=inputs, outputs=outputs, nodes=nodes, opset_imports={"": 21}, name="row_copy")
    return ir.Model(graph, ir_version=10)
