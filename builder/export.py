"""Checkpoint folder in, export folder out: the whole pipeline, written atomically.

The folder is built under a temporary name beside the destination and renamed at the end, so an
interrupted or failed build never leaves anything that looks like a model.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import re
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from lfm2_onnx.errors import UserError

from .architectures import ARCHITECTURES
from .genai_config import make_genai_config
from .model import build_model
from .options import BuildOptions
from .spec import Lfm2Spec, load_spec
from .weights import Checkpoint
from .writer import save_with_external_data

# Write failures that the user fixes by freeing space or choosing another place.
_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)

# Copied from the checkpoint when present: tokenizers, chat template, generation defaults.
CHECKPOINT_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                    "generation_config.json")


@dataclass
class ExportResult:
    folder: Path
    spec: Lfm2Spec
    options: BuildOptions
    seconds: float
    bytes_written: int


def export(checkpoint: Path, out: Path, opts: BuildOptions, *, overwrite: bool = False,
           progress: bool = True) -> ExportResult:
    start = time.perf_counter()
    spec, config, generation = load_spec(checkpoint)
    ckpt = Checkpoint(checkpoint)
    ckpt.validate(spec)
    out = check_output(out, overwrite, checkpoint)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(out)
        staging = Path(tempfile.mkdtemp(prefix=_partial_prefix(out), dir=out.parent))
        staging.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the export is an ordinary folder
    except OSError as e:
        raise UserError(f"cannot create {out.name} in {out.parent} ({e.strerror}); choose a writable -o") from None
    try:
        _write_folder(staging, checkpoint, spec, config, generation, ckpt, opts, progress)
        _replace(staging, out)
    except BaseException as e:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(e, OSError) and e.errno in _DISK_ERRNOS:
            raise UserError(f"cannot write {out} ({e.strerror}); free some space or choose another -o") from None
        raise
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return ExportResult(out, spec, opts, time.perf_counter() - start, size)


# A build writes into .NAME.partial-HOST-PID-XXXX beside OUT. A build killed outright (SIGKILL, power
# loss) can't remove it, so the next build of NAME removes those whose process is gone: same host,
# pid no longer running. Folders named before the pid was recorded (.NAME.partial-XXXX) are removed
# once they are a day old; no build takes that long.
_LEGACY_PARTIAL_AGE_S = 24 * 3600


def _partial_prefix(out: Path) -> str:
    return f".{out.name}.partial-{socket.gethostname()}-{os.getpid()}-"


def remove_stale_partials(out: Path) -> list[Path]:
    """Remove the partial folders of earlier builds of `out` whose process is gone; returns them."""
    owned = re.compile(rf"\.{re.escape(out.name)}\.partial-(?P<host>.+)-(?P<pid>\d+)-[^-]+")
    removed = []
    for path in out.parent.glob(f".{glob.escape(out.name)}.partial-*"):
        match = owned.fullmatch(path.name)
        if match:
            stale = match["host"] == socket.gethostname() and not _running(int(match["pid"]))
        else:
            stale = time.time() - path.stat().st_mtime > _LEGACY_PARTIAL_AGE_S
        if stale and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def check_output(out: Path, overwrite: bool, checkpoint: Path | None = None) -> Path:
    """The absolute output folder, or a UserError if building there would fail or destroy something.

    Cheap and side-effect free, so the CLI calls it before downloading or loading anything.
    """
    out = Path(out).expanduser().absolute()
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise UserError(f"{out} already exists; pass --overwrite to replace it or choose another -o")
        if not out.is_dir():
            raise UserError(f"{out} exists and is not a folder; remove it or choose another -o")
        if any(out.iterdir()) and not (out / "genai_config.json").exists():
            raise UserError(f"{out} is not an export folder (no genai_config.json), so --overwrite will not "
                            "delete it; remove it yourself or choose another -o")
        if checkpoint is not None:
            source = Path(checkpoint).expanduser().resolve()
            if out.resolve() == source or out.resolve() in source.parents:
                raise UserError(f"{out} holds the checkpoint being exported, so --overwrite would delete it; "
                                "choose another -o")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"cannot create {out}: {parent} is a file, not a folder; choose another -o")
            break
    return out


def _write_folder(folder: Path, checkpoint: Path, spec: Lfm2Spec, config: dict, generation: dict,
                  ckpt: Checkpoint, opts: BuildOptions, progress: bool) -> None:
    (folder / "onnx").mkdir()
    model = build_model(spec, ckpt, opts)
    chunks = save_with_external_data(model, folder / opts.onnx_file, progress=progress)
    del model

    for name in CHECKPOINT_FILES:
        if (checkpoint / name).exists():
            shutil.copyfile(checkpoint / name, folder / name)
    _write_json(folder / "genai_config.json", make_genai_config(spec, opts, generation))
    _write_json(folder / "config.json", _client_config(config, spec, opts, chunks))


def _client_config(config: dict, spec: Lfm2Spec, opts: BuildOptions, chunks: int) -> dict:
    """The checkpoint's config.json, plus what transformers.js needs to load the ONNX files."""
    config = dict(config)
    config["layer_types"] = list(spec.layer_types)  # transformers.js sizes caches from layer_types
    config.setdefault("model_type", ARCHITECTURES[spec.architecture].model_type)
    js = dict(config.get("transformers.js_config") or {})
    js["dtype"] = opts.js_dtype  # q4, q8, q4f16: the file transformers.js loads
    data = dict(js.get("use_external_data_format") or {})
    if chunks:
        data[Path(opts.onnx_file).name] = chunks
    js["use_external_data_format"] = data
    config["transformers.js_config"] = js
    return config


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=4) + "\n")


def _replace(staging: Path, out: Path) -> None:
    if out.exists():
        old = out.with_name(f".{out.name}.old-{int(time.time())}")
        out.rename(old)
        staging.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(out)
