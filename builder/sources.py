"""Where a checkpoint comes from: the Hugging Face Hub, a local folder, or the built-in tiny model."""

from __future__ import annotations

import tempfile
from pathlib import Path

from lfm2_onnx.errors import UserError
from lfm2_onnx.hub import download

# What an export needs from a repository (README.md: the card, for the license); everything else
# (original .bin/.pt, GGUF, ONNX) is skipped.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "tokenizer*", "*.txt", "*.model", "README.md"]


def from_hub(repo_id: str, revision: str | None = None, cache_dir: str | None = None) -> Path:
    """Download (or reuse from the cache) a checkpoint. HF_TOKEN, HF_HOME and HF_HUB_OFFLINE apply."""
    return download(repo_id, HUB_PATTERNS, revision=revision, cache_dir=cache_dir,
                    local_hint="or pass a local folder with -i", local_flag="-i")


def from_folder(path: str) -> Path:
    folder = Path(path).expanduser()
    if not folder.exists():
        raise UserError(f"{folder}: no such folder; pass a checkpoint folder with -i or a Hub id with -m")
    if not folder.is_dir():
        raise UserError(f"{folder}: not a folder; -i takes the checkpoint folder that holds config.json")
    if not (folder / "config.json").is_file():
        inside = sorted(p.parent for p in folder.glob("*/config.json"))
        hint = f" (did you mean -i {inside[0]}?)" if len(inside) == 1 else ""
        raise UserError(f"{folder}: no config.json; -i takes a Hugging Face checkpoint folder "
                        f"(config.json + *.safetensors){hint}")
    return folder


def resolve(model_id: str | None, input_dir: str | None, revision: str | None = None,
            cache_dir: str | None = None) -> tuple[Path, tempfile.TemporaryDirectory | None]:
    """The checkpoint folder, and a temporary directory to clean up when it was generated."""
    if bool(model_id) == bool(input_dir):
        raise UserError("give exactly one source: -m HUB_ID (or lfm2-tiny-random) or -i CHECKPOINT_DIR")
    if input_dir:
        return from_folder(input_dir), None
    from .tiny import TINY_ID, TINY_VL_ID, write_tiny_checkpoint

    if model_id in (TINY_ID, TINY_VL_ID):
        tmp = tempfile.TemporaryDirectory(prefix="lfm2-tiny-")
        return write_tiny_checkpoint(Path(tmp.name), vl=model_id == TINY_VL_ID), tmp
    return from_hub(model_id, revision, cache_dir), None
