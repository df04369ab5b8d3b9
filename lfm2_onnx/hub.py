"""The Hugging Face Hub: download a repository (a checkpoint, or a published export by its id).

Everything goes through huggingface_hub, so HF_TOKEN, HF_HOME, HF_HUB_OFFLINE and HF_ENDPOINT apply
as everywhere else; the token is never printed (errors.one_line masks it).
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

from .errors import UserError
from .variants import METADATA_PATTERNS, PRECISIONS, choose, config_file, read_manifest

# org/name, as the Hub spells ids (huggingface_hub.utils.validate_repo_id checks the details).
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_repo_id(source: str | Path) -> bool:
    """An org/name string that is not an existing local path."""
    text = str(source)
    return bool(_REPO_ID.match(text)) and not Path(text).expanduser().exists()


def first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


@contextlib.contextmanager
def hub_errors(repo_id: str, revision: str | None, local_hint: str, local_flag: str = ""):
    """huggingface_hub's download failures as one-line UserErrors.

    local_hint ends each message with what to do instead ("or pass a local folder with -i");
    local_flag is the option that takes a local folder, when the id given is one.
    """
    from huggingface_hub import constants
    from huggingface_hub import errors as hub_errors_module
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    # Newer huggingface_hub only: a cached snapshot that an interrupted download left incomplete.
    incomplete = getattr(hub_errors_module, "IncompleteSnapshotError", None) or ()
    try:
        yield
    except GatedRepoError:
        raise UserError(f"{repo_id} is gated: accept its license on the Hub and set HF_TOKEN") from None
    except RepositoryNotFoundError:
        local = "" if local_flag else f", and no local folder {repo_id} either"
        raise UserError(f"{repo_id}: no such model on the Hub (or it is private: set HF_TOKEN){local}") from None
    except RevisionNotFoundError:
        raise UserError(f"{repo_id}: no revision {revision or 'main'!r}; pass an existing branch, tag or commit "
                        "with --revision") from None
    except incomplete:
        raise UserError(f"cannot get {repo_id}: its cached copy is incomplete and the Hub cannot be reached; "
                        f"download it again with network access {local_hint}") from None
    except LocalEntryNotFoundError:
        offline = bool(getattr(constants, "HF_HUB_OFFLINE", False))
        why = "HF_HUB_OFFLINE is set and it is not in the cache" if offline else "the Hub is unreachable and it is not cached"
        raise UserError(f"cannot get {repo_id}: {why}; download it first {local_hint}") from None
    except HFValidationError:
        if Path(repo_id).expanduser().is_dir():
            how = f"; pass it with {local_flag} {repo_id}" if local_flag else ""
            raise UserError(f"{repo_id} is a local folder, not a Hub id{how}") from None
        raise UserError(f"{repo_id!r} is not a Hub id (expected org/name, e.g. LiquidAI/LFM2-350M); "
                        f"{local_hint.removeprefix('or ')}") from None
    except (OSError, ValueError) as e:
        # Network failures, a full disk: one line, the message of the library (no token in it).
        raise UserError(f"cannot get {repo_id}: {first_line(e)}; check the network and HF_HOME, "
                        f"{local_hint}") from None
    except Exception as e:
        # The HTTP client's own errors (httpx: proxy, TLS, protocol) are not OSErrors.
        if type(e).__module__.split(".")[0] not in ("httpx", "httpx2", "httpcore", "requests", "urllib3"):
            raise
        raise UserError(f"cannot get {repo_id}: network error ({type(e).__name__}: {first_line(e)}); check the "
                        f"network and proxy settings, {local_hint}") from None


def download(repo_id: str, patterns, *, revision: str | None = None, cache_dir: str | Path | None = None,
             local_dir: Path | None = None, local_hint: str, local_flag: str = "") -> Path:
    """snapshot_download of the files matching `patterns`, with one-line errors."""
    from huggingface_hub import snapshot_download

    with hub_errors(repo_id, revision, local_hint, local_flag):
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, local_dir=local_dir,
                                      allow_patterns=list(patterns)))


def exports_dir(cache_dir: str | Path | None = None) -> Path:
    """Where pulled exports live as plain files: HF_HOME/lfm2_onnx (or beside an explicit cache_dir)."""
    from huggingface_hub import constants

    return Path(cache_dir).parent / "lfm2_onnx" if cache_dir else Path(constants.HF_HOME) / "lfm2_onnx"


def pull_export(repo_id: str, ep: str, precision: str | None = None, *, revision: str | None = None,
                cache_dir: str | Path | None = None) -> tuple[Path, Path]:
    """A published export with only the chosen variant's graph: (folder, that variant's genai config).

    First the small files (configs, tokenizer, variants.json) through the Hub cache, which resolves
    the revision to a commit; then that commit's small files and the variant's onnx files as plain
    files in exports_dir()/<repo>/<commit>. Plain files, because onnx-ir, onnxruntime and
    onnxruntime-genai refuse external data reached through a symlink out of the model's folder, and
    the Hub cache's snapshots are symlinks into blobs/. Pinning the commit also keeps a branch that
    moves in between from mixing two versions.
    """
    from huggingface_hub import constants

    hint = "or pass a local export folder"
    meta = download(repo_id, METADATA_PATTERNS, revision=revision, cache_dir=cache_dir, local_hint=hint)
    manifest = read_manifest(meta)
    if manifest is None:
        raise UserError(f"{repo_id} has no variants.json: it is not an export published by lfm2_onnx.publish")
    variant = choose(manifest, ep, precision, where=repo_id)
    commit = meta.name  # snapshots/<commit hash>
    local = exports_dir(cache_dir) / f"models--{repo_id.replace('/', '--')}" / commit
    folder = download(repo_id, [*METADATA_PATTERNS, *variant.files], revision=commit, cache_dir=cache_dir,
                      local_dir=local, local_hint=hint)
    missing = [f for f in variant.files if not (folder / f).is_file()]
    if missing:
        if constants.HF_HUB_OFFLINE:
            raise UserError(f"cannot get {repo_id} {variant.name}: HF_HUB_OFFLINE is set and {', '.join(missing)} "
                            "is not downloaded; run once online, or choose a variant you have")
        raise UserError(f"{repo_id}: {', '.join(missing)} listed in variants.json but not in the repository; "
                        "publish the export again")
    return folder, folder / config_file(manifest, variant)


def add_export_arguments(parser, use: str) -> None:
    """The arguments `resolve_export` takes, for a CLI that `use`s one variant ("run", "served")."""
    parser.add_argument("folder", help="export folder written by python -m lfm2_onnx.build, or a Hub repo id "
                                       f"published by python -m lfm2_onnx.publish (downloads only the variant {use})")
    parser.add_argument("--precision", help=f"which variant of the export: {', '.join(PRECISIONS)} "
                                            "(default: the best one for --ep)")
    parser.add_argument("--revision", help="Hub branch, tag or commit (with a repo id)")


def resolve_export(source: str | Path, ep: str, precision: str | None = None, *, revision: str | None = None):
    """A local export folder or a published repo id -> the ModelLayout of the variant to run."""
    from .session import ModelLayout
    from .variants import variant_config_path

    if looks_like_repo_id(source):
        folder, config = pull_export(str(source), ep, precision, revision=revision)
        return ModelLayout.from_folder(folder, config)
    if revision is not None:
        raise UserError(f"--revision applies to a Hub id; {source} is a local folder")
    folder = Path(source)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such model folder; build one with python -m lfm2_onnx.build "
                        "or give a published repo id (org/name)")
    return ModelLayout.from_folder(folder, variant_config_path(folder, precision, ep))
