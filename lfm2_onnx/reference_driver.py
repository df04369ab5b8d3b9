"""A plain, readable driver for an exported LFM2 graph: numpy caches, one run() per step.

This is the reference client the verifier and the tests use: no IO binding, no CUDA graphs, every
cache a host array. Batches are right-padded, which is what GroupQueryAttention expects; each row
keeps its own length, and decode steps append one column of ones to the attention mask.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UserError
from .layers import ATTENTION_LAYER

# Empty caches: numpy dtype and ONNX element type (bfloat16 travels as raw uint16 in an OrtValue).
_CACHE_TYPES = {"tensor(float)": (np.float32, 1), "tensor(float16)": (np.float16, 10),
                "tensor(bfloat16)": (np.uint16, 16)}


def read_genai_config(folder: Path) -> dict:
    path = Path(folder) / "genai_config.json"
    if not path.exists():
        raise UserError(f"{folder}: no genai_config.json; is this a folder written by lfm2_onnx.build?")
    return json.loads(path.read_text())


@dataclass
class DriverState:
    """Caches (OrtValues, any dtype incl. bfloat16) and the attention mask of a batch between steps."""

    caches: dict  # past input name -> OrtValue
    attention_mask: np.ndarray
    lengths: np.ndarray  # real tokens per row so far

    def cache(self, name: str) -> np.ndarray:
        """A cache as a numpy array (fp32/fp16 caches)."""
        return self.caches[name].numpy()


class ReferenceDriver:
    def __init__(self, folder: str | Path, ep: str = "cpu", model_file: str | None = None):
        import onnxruntime as ort

        folder = Path(folder)
        config = read_genai_config(folder)
        decoder = config["model"]["decoder"]
        self.path = folder / (model_file or decoder["filename"])
        if not self.path.exists():
            raise UserError(f"{folder}: {self.path.name} is missing; the export is incomplete, build it again")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if ep == "cuda" else ["CPUExecutionProvider"]
        if ep == "cuda" and hasattr(ort, "preload_dlls"):
            ort.preload_dlls()  # CUDA/cuDNN from the pip packages, before the first CUDA session
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        names = {**decoder["inputs"], **decoder["outputs"]}
        self.layer_types = decoder["layer_types"]
        # Empty-cache shapes from the config: some exporters leave these dims symbolic in the graph.
        self._kv_shape = (decoder["num_key_value_heads"], 0, decoder["head_size"])
        self._conv_shape = (decoder["hidden_size"], decoder["conv_cache_size"])
        self._past, self._present = {}, {}
        for i, kind in enumerate(self.layer_types):
            if kind == ATTENTION_LAYER:
                self._past[i] = [names["past_key_names"] % i, names["past_value_names"] % i]
                self._present[i] = [names["present_key_names"] % i, names["present_value_names"] % i]
            else:
                self._past[i] = [names["past_conv_names"] % i]
                self._present[i] = [names["present_conv_names"] % i]
        self._inputs = {i.name: i for i in self.session.get_inputs()}
        # An LFM2-VL decoder (decoder_model_merged*.onnx) takes inputs_embeds: text prompts go through
        # the variant's embed_tokens graph first (the same suffix: the folder's naming contract).
        self.embed_session = None
        if "inputs_embeds" in self._inputs:
            embed = self.path.with_name(self.path.name.replace("decoder_model_merged", "embed_tokens", 1))
            if embed == self.path or not embed.exists():
                raise UserError(f"{folder}: {self.path.name} takes inputs_embeds but {embed.name} is missing; "
                                "build the export again")
            self.embed_session = ort.InferenceSession(str(embed), options, providers=providers)
        cache_input = next((n for names in self._past.values() for n in names), "logits")
        meta = self._inputs.get(cache_input) or self.session.get_outputs()[0]
        self.precision = {"tensor(float16)": "fp16", "tensor(bfloat16)": "bf16"}.get(meta.type, "fp32")

    def _empty_caches(self, batch: int) -> dict:
        from onnxruntime import OrtValue

        caches = {}
        for i, names in self._past.items():
            shape = (batch, *(self._kv_shape if self.layer_types[i] == ATTENTION_LAYER else self._conv_shape))
            for name in names:
                dtype, element_type = _CACHE_TYPES[self._inputs[name].type]
                caches[name] = OrtValue.ortvalue_from_numpy_with_onnx_type(np.zeros(shape, dtype), element_type)
        return caches

    def prefill(self, prompts: list[list[int]], pad_id: int = 0) -> tuple[np.ndarray, DriverState]:
        """Run right-padded prompts; returns logits [B, S, V] and the state for decoding."""
        lengths = np.array([len(p) for p in prompts], dtype=np.int64)
        width = int(lengths.max())
        ids = np.full((len(prompts), width), pad_id, dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, prompt in enumerate(prompts):
            ids[row, : len(prompt)] = prompt
            mask[row, : len(prompt)] = 1
        state = DriverState(self._empty_caches(len(prompts)), mask, lengths)
        return self._run(ids, state), state

    def decode(self, tokens: np.ndarray, state: DriverState) -> np.ndarray:
        """One new token per row; returns logits [B, 1, V]."""
        state.attention_mask = np.concatenate(
            [state.attention_mask, np.ones((len(tokens), 1), dtype=np.int64)], axis=1)
        state.lengths = state.lengths + 1
        return self._run(np.asarray(tokens, dtype=np.int64).reshape(-1, 1), state)

    def _run(self, ids: np.ndarray, state: DriverState) -> np.ndarray:
        from onnxruntime import OrtValue

        feeds = {"input_ids": ids, "attention_mask": state.attention_mask}
        if "position_ids" in self._inputs:  # graphs that take positions (onnxruntime-genai's builder)
            positions = np.cumsum(state.attention_mask, axis=1) - 1
            feeds["position_ids"] = np.maximum(positions[:, -ids.shape[1]:], 0)
        feeds = {k: OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()}
        if self.embed_session is not None:
            (feeds["inputs_embeds"],) = self.embed_session.run_with_ort_values(
                ["inputs_embeds"], {"input_ids": feeds.pop("input_ids")})
        output_names = ["logits"] + [n for names in self._present.values() for n in names]
        outputs = dict(zip(output_names, self.session.run_with_ort_values(output_names, {**feeds, **state.caches})))
        for i, past_names in self._past.items():
            for past_name, present_name in zip(past_names, self._present[i]):
                state.caches[past_name] = outputs[present_name]
        return outputs["logits"].numpy()
