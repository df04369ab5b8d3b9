"""Where a checkpoint comes from: the Hugging Face Hub, a local folder, or the built-in tiny model."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from lfm2_onnx.errors import UserError

# What an export needs from a repository; everything else (original .bin/.pt, GGUF, ONNX) is skipped.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "tokenizer*", "*.txt", "*.model"]


def from_hub(repo_id: str, revision: str | None = None, cache_dir: str | None = None) -> Path:
    """Download (or reuse from the cache) a checkpoint. HF_TOKEN, HF_HOME and HF_HUB_OFFLINE apply."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        path = snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=HUB_PATTERNS)
    except GatedRepoError:
        raise UserError(f"{repo_id} is gated: accept its license on the Hub and set HF_TOKEN") from None
    except RepositoryNotFoundError:
        raise UserError(f"{repo_id}: no such model on the Hub (or it is private: set HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise UserError(f"{repo_id}: no revision {revision!r}") from None
    except LocalEntryNotFoundError:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
        why = "HF_HUB_OFFLINE is set and it is not in the cache" if offline else "the Hub is unreachable and it is not cached"
        raise UserError(f"cannot get {repo_id}: {why}; download it first or pass a local folder with -i") from None
    except (OSError, ValueError) as e:
        # Invalid repo ids, network failures: one line, the message of the library, no token in it.
        raise UserError(f"cannot get {repo_id}: {str(e).splitlines()[0]}") from None
    return Path(path)


def from_folder(path: str) -> Path:
    folder = Path(path).expanduser()
    if not folder.exists():
        raise UserError(f"{folder}: no such folder; pass a checkpoint folder with -i or a Hub id with -m")
    if not folder.is_dir():
        raise UserError(f"{folder}: not a folder; -i takes the checkpoint folder that holds config.json")
    return folder


def resolve(model_id: str | None, input_dir: str | None, revision: str | None = None,
            cache_dir: str | None = None) -> tuple[Path, tempfile.TemporaryDirectory | None]:
    """The checkpoint folder, and a temporary directory to clean up when it was generated."""
    if bool(model_id) == bool(input_dir):
        raise UserError("give exactly one source: -m HUB_ID (or lfm2-tiny-random) or -i CHECKPOINT_DIR")
    if input_dir:
        return from_folder(input_dir), None
    from .tiny import TINY_ID, write_tiny_checkpoint

    if model_id == TINY_ID:
        tmp = tempfile.TemporaryDirectory(prefix="lfm2-tiny-")
        return write_tiny_checkpoint(Path(tmp.name)), tmp
    return from_hub(model_id, revision, cache_dir), None
