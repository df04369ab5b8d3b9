"""Where a checkpoint comes from: the Hugging Face Hub, a local folder, or the built-in tiny model."""

from __future__ import annotations

import tempfile
from pathlib import Path

from lfm2_onnx.errors import UserError

# What an export needs from a repository; everything else (original .bin/.pt, GGUF, ONNX) is skipped.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "tokenizer*", "*.txt", "*.model"]


def from_hub(repo_id: str, revision: str | None = None, cache_dir: str | None = None) -> Path:
    """Download (or reuse from the cache) a checkpoint. HF_TOKEN, HF_HOME and HF_HUB_OFFLINE apply."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub import errors as hub_errors
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    # Newer huggingface_hub only: a cached snapshot that an interrupted download left incomplete.
    incomplete = getattr(hub_errors, "IncompleteSnapshotError", None) or ()
    try:
        path = snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=HUB_PATTERNS)
    except GatedRepoError:
        raise UserError(f"{repo_id} is gated: accept its license on the Hub and set HF_TOKEN") from None
    except RepositoryNotFoundError:
        raise UserError(f"{repo_id}: no such model on the Hub (or it is private: set HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise UserError(f"{repo_id}: no revision {revision or 'main'!r}; pass an existing branch, tag or commit "
                        "with --revision") from None
    except incomplete:
        raise UserError(f"cannot get {repo_id}: its cached copy is incomplete and the Hub cannot be reached; "
                        "download it again with network access or pass a local folder with -i") from None
    except LocalEntryNotFoundError:
        offline = bool(getattr(constants, "HF_HUB_OFFLINE", False))
        why = "HF_HUB_OFFLINE is set and it is not in the cache" if offline else "the Hub is unreachable and it is not cached"
        raise UserError(f"cannot get {repo_id}: {why}; download it first or pass a local folder with -i") from None
    except HFValidationError:
        if Path(repo_id).expanduser().is_dir():
            raise UserError(f"{repo_id} is a local folder, not a Hub id; pass it with -i {repo_id}") from None
        raise UserError(f"{repo_id!r} is not a Hub id (expected org/name, e.g. LiquidAI/LFM2-350M); "
                        "for a local checkpoint folder use -i") from None
    except (OSError, ValueError) as e:
        # Network failures, a full disk: one line, the message of the library (no token in it).
        raise UserError(f"cannot get {repo_id}: {_first_line(e)}; check the network and HF_HOME, "
                        "or pass a local folder with -i") from None
    except Exception as e:
        # The HTTP client's own errors (httpx: proxy, TLS, protocol) are not OSErrors.
        if type(e).__module__.split(".")[0] not in ("httpx", "httpx2", "httpcore", "requests", "urllib3"):
            raise
        raise UserError(f"cannot get {repo_id}: network error ({type(e).__name__}: {_first_line(e)}); check the "
                        "network and proxy settings, or pass a local folder with -i") from None
    return Path(path)


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


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
    from .tiny import TINY_ID, write_tiny_checkpoint

    if model_id == TINY_ID:
        tmp = tempfile.TemporaryDirectory(prefix="lfm2-tiny-")
        return write_tiny_checkpoint(Path(tmp.name)), tmp
    return from_hub(model_id, revision, cache_dir), None
