"""Caches that live on the device for a whole generation and never move.

KV: one buffer per attention layer and per key/value, [batch, kv_heads, capacity, head_size], bound
as both past input and present output: GroupQueryAttention writes the new positions in place.
Conv: two state buffers per conv layer used in turn (past from one, present into the other), so a
decode step's bindings alternate between two fixed sets of addresses, each one CUDA graph.
Step inputs follow the same parity: the token ids and lengths a step reads from pair `parity` it
writes for the next step into pair `1 - parity` (greedy decoding never copies a token in).
"""

from __future__ import annotations

import numpy as np

from .session import ModelLayout

_ONNX_ELEMENT = {"tensor(float)": (np.float32, 1), "tensor(float16)": (np.float16, 10),
                 "tensor(bfloat16)": (np.uint16, 16)}


def device_zeros(shape, input_type: str, device: str):
    """A zero-filled OrtValue of the graph's cache type on the device (bfloat16 via raw uint16)."""
    from onnxruntime import OrtValue

    host_dtype, element = _ONNX_ELEMENT[input_type]
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


class DeviceCaches:
    def __init__(self, layout: ModelLayout, cache_type: str, batch: int, capacity: int, device: str,
                 conv_state: tuple[int, int]):
        """conv_state: a conv state's shape without the batch ([C, L-1], or [L-1, C] channels-last)."""
        self.layout, self.batch, self.capacity, self.device = layout, batch, capacity, device
        kv_shape = (batch, layout.num_kv_heads, capacity, layout.head_size)
        conv_shape = (batch, *conv_state)
        self.kv = {i: (device_zeros(kv_shape, cache_type, device), device_zeros(kv_shape, cache_type, device))
                   for i in layout.attention_layers}
        self.conv = {i: [device_zeros(conv_shape, cache_type, device), device_zeros(conv_shape, cache_type, device)]
                     for i in layout.conv_layers}
        self._conv_zeros = np.zeros(conv_shape, dtype=_ONNX_ELEMENT[cache_type][0])
        self.ids = [device_array(np.zeros((batch, 1), np.int64), device) for _ in range(2)]  # [B, 1]
        self.seqlens = [device_array(np.zeros(batch, np.int32), device) for _ in range(2)]  # [B]: cached - 1
        self.scores = device_array(np.zeros((batch, layout.vocab_size), np.float32), device)
        self.capacity_scalar = np.array(capacity, np.int32)  # total_sequence_length of every decode step

    @property
    def nbytes(self) -> int:
        kv = sum(2 * v[0].shape()[0] * int(np.prod(v[0].shape()[1:])) for v in self.kv.values())
        conv = sum(2 * int(np.prod(v[0].shape())) for v in self.conv.values())
        return (kv + conv) * self._conv_zeros.itemsize

    def reset(self) -> None:
        """A new generation: conv states back to zero (KV positions past each row's length are never read)."""
        for buffers in self.conv.values():
            buffers[0].update_inplace(self._conv_zeros)

    def bind_step(self, binding, parity: int) -> None:
        """A decode step of the uniform graph: ids and lengths from pair `parity`, the next ones into the other."""
        binding.bind_ortvalue_input("input_ids", self.ids[parity])
        binding.bind_ortvalue_input("seqlens_k", self.seqlens[parity])
        binding.bind_cpu_input("total_sequence_length", self.capacity_scalar)
        self.bind_outputs(binding, parity, next_seqlens=True)

    def bind_outputs(self, binding, parity: int, *, next_seqlens: bool) -> None:
        """Scores, the argmax token (as the next step's ids) and every cache."""
        binding.bind_ortvalue_output("scores", self.scores)
        binding.bind_ortvalue_output("next_token", self.ids[1 - parity])
        if next_seqlens:
            binding.bind_ortvalue_output("next_seqlens_k", self.seqlens[1 - parity])
        self.bind(binding, parity)

    def bind(self, binding, parity: int) -> None:
        """Bind every cache: KV in place, conv from buffer `parity` into buffer `1 - parity`."""
        layout = self.layout
        for i, (key, value) in self.kv.items():
            binding.bind_ortvalue_input(layout.past_key % i, key)
            binding.bind_ortvalue_output(layout.present_key % i, key)
            binding.bind_ortvalue_input(layout.past_value % i, value)
            binding.bind_ortvalue_output(layout.present_value % i, value)
        for i, buffers in self.conv.items():
            binding.bind_ortvalue_input(layout.past_conv % i, buffers[parity])
            binding.bind_ortvalue_output(layout.present_conv % i, buffers[1 - parity])
