"""An export folder as the runtime sees it: names, sizes and special ids from genai_config.json,
and an onnxruntime session for the chosen execution provider."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

REQUIRED_FILES = ("genai_config.json", "tokenizer.json")


@dataclass(frozen=True)
class ModelLayout:
    folder: Path
    onnx_path: Path
    layer_types: tuple[str, ...]
    num_kv_heads: int
    head_size: int
    hidden_size: int
    conv_size: int
    vocab_size: int
    context_length: int
    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    bos_token_id: int | None
    past_key: str
    past_value: str
    past_conv: str
    present_key: str
    present_value: str
    present_conv: str
    provider_options: dict

    @classmethod
    def from_folder(cls, folder: str | Path) -> ModelLayout:
        folder = Path(folder)
        if not folder.is_dir():
            raise UserError(f"{folder}: no such model folder; build one with python -m lfm2_onnx.build")
        missing = [f for f in REQUIRED_FILES if not (folder / f).is_file()]
        if missing:
            raise UserError(f"{folder}: missing {', '.join(missing)}; is this a folder written by lfm2_onnx.build?")
        try:
            config = json.loads((folder / "genai_config.json").read_text())
            model, decoder = config["model"], config["model"]["decoder"]
            inputs, outputs = decoder["inputs"], decoder["outputs"]
            onnx_path = folder / decoder["filename"]
            eos = model.get("eos_token_id")
            eos = tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,))
            providers = decoder.get("session_options", {}).get("provider_options", [])
            layout = cls(
                folder=folder, onnx_path=onnx_path, layer_types=tuple(decoder["layer_types"]),
                num_kv_heads=decoder["num_key_value_heads"], head_size=decoder["head_size"],
                hidden_size=decoder["hidden_size"], conv_size=decoder.get("conv_cache_size", 0),
                vocab_size=model["vocab_size"], context_length=model["context_length"],
                eos_token_ids=eos, pad_token_id=model.get("pad_token_id") or 0,
                bos_token_id=model.get("bos_token_id"),
                past_key=inputs["past_key_names"], past_value=inputs["past_value_names"],
                past_conv=inputs.get("past_conv_names", ""), present_key=outputs["present_key_names"],
                present_value=outputs["present_value_names"], present_conv=outputs.get("present_conv_names", ""),
                provider_options={k: v for p in providers for k, v in p.items()},
            )
        except (KeyError, TypeError, json.JSONDecodeError) as e:
            raise UserError(f"{folder}/genai_config.json is not an LFM2 genai config ({e!r}); rebuild the folder") from None
        if not onnx_path.is_file():
            raise UserError(f"{folder}: {decoder['filename']} is missing; the export is incomplete, build it again")
        return layout

    @property
    def attention_layers(self) -> list[int]:
        return [i for i, t in enumerate(self.layer_types) if t == "full_attention"]

    @property
    def conv_layers(self) -> list[int]:
        return [i for i, t in enumerate(self.layer_types) if t == "conv"]


def create_session(layout: ModelLayout, ep: str, *, cuda_graph: bool = False):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if ep == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise UserError("ep='cuda' needs onnxruntime-gpu with a CUDA device (pip install lfm2-onnx[cuda]); "
                            "use ep='cpu' otherwise")
        if hasattr(ort, "preload_dlls"):
            ort.preload_dlls()  # CUDA/cuDNN from the pip packages, before the first CUDA session
        cuda = {**layout.provider_options.get("cuda", {}), "enable_cuda_graph": "1" if cuda_graph else "0"}
        providers = [("CUDAExecutionProvider", cuda), "CPUExecutionProvider"]
    elif ep == "cpu":
        providers = ["CPUExecutionProvider"]
    else:
        raise UserError(f"unknown execution provider {ep!r}; choose cpu or cuda")
    return ort.InferenceSession(str(layout.onnx_path), options, providers=providers)
