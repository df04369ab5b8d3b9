"""python -m lfm2_onnx.publish FOLDER --repo ORG/NAME: push an export to the Hugging Face Hub.

    python -m lfm2_onnx.publish lfm2-350m-onnx --repo my-org/LFM2-350M-ONNX --dry-run   # card + file list
    python -m lfm2_onnx.publish lfm2-350m-onnx --repo my-org/LFM2-350M-ONNX [--private]

Writes the model card (README.md) into the folder, creates the repo if needed and uploads the
folder with huggingface_hub's upload_folder (resumable: run it again after an interruption). The
token comes from HF_TOKEN or `hf auth login` and is never printed.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from .errors import ArgumentParser, UserError, cli_entry
from .hub import first_line
from .variants import MANIFEST, ROOT_GENAI_CONFIG, read_manifest

CARD = "README.md"
# Beside the variants' files, what every client needs.
REQUIRED = (ROOT_GENAI_CONFIG, "config.json", "tokenizer.json", MANIFEST)


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m lfm2_onnx.publish", description=__doc__.split("\n\n")[0])
    p.add_argument("folder", help="export folder written by python -m lfm2_onnx.build")
    p.add_argument("--repo", required=True, help="the Hub repository to push to, ORG/NAME (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--revision", help="branch to push to (created from the default branch if missing)")
    p.add_argument("--create-pr", action="store_true", help="open a pull request instead of pushing to the branch")
    p.add_argument("--commit-message", help="commit title (default: Upload <folder> (variants) with lfm2_onnx)")
    p.add_argument("--base-model", help="the source model's Hub id for the card (default: the -m the export was "
                                        "built from)")
    p.add_argument("--dry-run", action="store_true",
                   help="write the model card and list the files and sizes that would go up; change nothing remote")
    p.add_argument("--allow-unverified", action="store_true",
                   help="publish variants that were never verified or whose stored verify failed")
    return p


def check_repo_id(repo_id: str) -> None:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        repo_id_ok = False
    else:
        repo_id_ok = repo_id.count("/") == 1
    if not repo_id_ok:
        raise UserError(f"--repo {repo_id!r} is not a valid Hub repo id; give ORG/NAME (letters, digits, '-', '_', "
                        "'.'; at most 96 characters)")


def check_folder(folder: Path, allow_unverified: bool):
    """The export's manifest, or a UserError if the folder is not a complete, verified export."""
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder; give an export written by python -m lfm2_onnx.build")
    manifest = read_manifest(folder)
    if manifest is None:
        raise UserError(f"{folder} is not a complete export (no {MANIFEST}); build it with python -m lfm2_onnx.build")
    needed = [*REQUIRED, *(f for v in manifest.variants for f in (*v.files, v.genai_config))]
    missing = [f for f in needed if not (folder / f).is_file()]
    if missing or not manifest.variants:
        raise UserError(f"{folder} is not a complete export (missing {', '.join(missing) or 'every variant'}); "
                        "build it again")
    if not allow_unverified:
        failed = [v.name for v in manifest.variants if v.verified is False]
        never = [v.name for v in manifest.variants if v.verified is None]
        if failed:
            raise UserError(f"{folder}: the stored verify of {', '.join(failed)} failed; rebuild it, or pass "
                            "--allow-unverified to publish it anyway")
        if never:
            raise UserError(f"{folder}: {', '.join(never)} never verified; build with --verify (or run "
                            "python -m lfm2_onnx.verify), or pass --allow-unverified")
    return manifest


def upload_list(folder: Path) -> list[tuple[str, int]]:
    """(path in repo, bytes) of every file that goes up: all but hidden files (partial builds)."""
    files = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts):
            files.append((rel.as_posix(), path.stat().st_size))
    return files


@contextlib.contextmanager
def _hub_call(repo_id: str, what: str):
    """huggingface_hub's HTTP and network failures as one line."""
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    try:
        yield
    except RepositoryNotFoundError:
        raise UserError(f"{repo_id}: no such repository, or the token can't write to it; check --repo and "
                        "HF_TOKEN") from None
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status in (401, 403):
            raise UserError(f"{what} {repo_id}: the Hub refused the token (HTTP {status}); use a token with "
                            "write access (HF_TOKEN or hf auth login)") from None
        raise UserError(f"{what} {repo_id}: {first_line(e)}") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{what} {repo_id}: {first_line(e)}; check the network (HF_ENDPOINT) and run the "
                        "command again: the upload resumes") from None
    except Exception as e:
        # The HTTP client's own errors (httpx: proxy, TLS, protocol) are not OSErrors.
        if type(e).__module__.split(".")[0] not in ("httpx", "httpx2", "httpcore", "requests", "urllib3"):
            raise
        raise UserError(f"{what} {repo_id}: network error ({type(e).__name__}: {first_line(e)}); check the "
                        "network and run the command again: the upload resumes") from None


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    folder = Path(args.folder)
    check_repo_id(args.repo)
    if args.create_pr and args.revision:
        raise UserError("--create-pr opens a pull request against the default branch; drop --revision "
                        "(or push to the branch --revision without --create-pr)")
    manifest = check_folder(folder, args.allow_unverified)
    token = None
    if not args.dry_run:
        from huggingface_hub import get_token

        token = get_token()
        if not token:
            raise UserError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (a token with write access)")

    from .card import make_card

    make_card(folder, args.repo, base_model=args.base_model).save(folder / CARD)
    files = upload_list(folder)
    where = args.repo + (f"@{args.revision}" if args.revision else "") + (" (pull request)" if args.create_pr else "")
    print(f"{'would upload' if args.dry_run else 'uploading'} {len(files)} files, "
          f"{sum(s for _, s in files) / 1e6:.1f} MB, to {where}:")
    for name, size in files:
        print(f"  {size:>14,}  {name}")
    if args.dry_run:
        print(f"dry run: wrote {folder / CARD}; nothing was sent")
        return 0

    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with _hub_call(args.repo, "cannot create"):
        url = api.create_repo(args.repo, private=args.private or None, exist_ok=True)
        if args.revision:
            api.create_branch(args.repo, branch=args.revision, exist_ok=True)
    message = args.commit_message or f"Upload {folder.name} ({', '.join(manifest.names)}) with lfm2_onnx"
    with _hub_call(args.repo, "cannot upload to"):
        info = api.upload_folder(repo_id=args.repo, folder_path=folder, revision=args.revision,
                                 create_pr=args.create_pr or None, commit_message=message,
                                 allow_patterns=[name for name, _ in files])
    print(f"published {url}" + (f" (pull request: {info.pr_url})" if getattr(info, "pr_url", None) else "")
          + f", commit {info.oid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
