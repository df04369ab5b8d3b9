"""Checkpoint folder in, export folder out: the whole pipeline, written atomically.

The folder is built under a temporary name beside the destination and renamed at the end, so an
interrupted or failed build never leaves anything that looks like a model.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from lfm2_onnx.errors import UserError

from .genai_config import make_genai_config
from .model import build_model
from .options import BuildOptions
from .spec import Lfm2Spec, load_spec
from .weights import Checkpoint
from .writer import save_with_external_data

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
    out = out.expanduser().absolute()
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists; pass --overwrite to replace it or choose another -o")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder; choose another -o")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    except OSError as e:
        raise UserError(f"cannot write to {out.parent}: {e.strerror}; choose a writable -o") from None
    try:
        _write_folder(staging, checkpoint, spec, config, generation, ckpt, opts, progress)
        _replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return ExportResult(out, spec, opts, time.perf_counter() - start, size)


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
    config.setdefault("model_type", "lfm2")
    js = dict(config.get("transformers.js_config") or {})
    js["dtype"] = opts.precision
    data = dict(js.get("use_external_data_format") or {})
    if chunks:
        data[Path(opts.onnx_file).name] = chunks
    js["use_external_data_format"] = data
    config["transformers.js_config"] = js
    return config


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
