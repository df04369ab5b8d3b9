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

import onnx_ir as ir

from lfm2_onnx.errors import UserError
from lfm2_onnx.variants import (
    ROOT_GENAI_CONFIG,
    Manifest,
    Variant,
    read_manifest,
    variant_name,
    write_json_atomic,
    write_manifest,
)

from .architectures import ARCHITECTURES
from .genai_config import make_genai_config
from .model import build_model
from .options import BuildOptions
from .spec import Lfm2Spec, load_spec
from . import vl
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
    options: BuildOptions  # the first variant's
    seconds: float
    bytes_written: int  # the new variants' files and the folder's metadata
    variants: list[Variant]  # the ones this build wrote


def export(checkpoint: Path, out: Path, opts: BuildOptions | list[BuildOptions], *, overwrite: bool = False,
           add: bool = False, progress: bool = True, source: dict | None = None,
           command: str | None = None) -> ExportResult:
    """Build one variant per BuildOptions into `out`; with add=True, beside those already there.

    source: where the checkpoint came from ({"model": hub id, "revision": ...}), kept in variants.json;
    command: the command line that built it, kept per variant with the tool versions (for the card).
    """
    start = time.perf_counter()
    options = [opts] if isinstance(opts, BuildOptions) else list(opts)
    names = [variant_name(o.ep, o.precision) for o in options]
    if len(set(names)) != len(names) or not options:
        raise UserError(f"each precision once per build: got {', '.join(names) or 'none'}")
    spec, config, generation = load_spec(checkpoint)
    ckpt = vl.open_checkpoint(checkpoint, spec)
    ckpt.validate(spec, extra=vl.vision_shapes(config) if spec.is_vl else None)
    images = _ImageModel(config, vl.image_processor_settings(checkpoint, config)) if spec.is_vl else None
    source = {**(source or {}), "card": _source_card(checkpoint)}
    built_with = {"command": command, "versions": _versions(), "date": time.strftime("%Y-%m-%d", time.gmtime())}
    if add:
        return _add(checkpoint, Path(out), spec, config, generation, ckpt, options, progress, start, built_with,
                    images)
    out = check_output(out, overwrite, checkpoint)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(out)
        staging = Path(tempfile.mkdtemp(prefix=_partial_prefix(out), dir=out.parent))
        staging.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the export is an ordinary folder
    except OSError as e:
        raise UserError(f"cannot create {out.name} in {out.parent} ({e.strerror}); choose a writable -o") from None
    try:
        variants = _write_folder(staging, checkpoint, spec, config, generation, ckpt, options, progress, source,
                                 built_with, images)
        _replace(staging, out)
    except BaseException as e:
        shutil.rmtree(staging, ignore_errors=True)
        _disk_error(e, out)
        raise
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return ExportResult(out, spec, options[0], time.perf_counter() - start, size, variants)


def _disk_error(e: BaseException, out: Path) -> None:
    if isinstance(e, OSError) and e.errno in _DISK_ERRNOS:
        raise UserError(f"cannot write {out} ({e.strerror}); free some space or choose another -o") from None


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


@dataclass
class _ImageModel:
    """What an LFM2-VL export needs beyond the decoder's spec: the VL config.json, image settings."""

    config: dict
    settings: dict  # vl.image_processor_settings


def _write_folder(folder: Path, checkpoint: Path, spec: Lfm2Spec, config: dict, generation: dict,
                  ckpt: Checkpoint, options: list[BuildOptions], progress: bool, source: dict,
                  built_with: dict, images: _ImageModel | None = None) -> list[Variant]:
    (folder / "onnx").mkdir()
    variants = _write_variants(folder, spec, generation, ckpt, options, set(), progress, built_with, images)
    for name in CHECKPOINT_FILES:
        if (checkpoint / name).exists():
            shutil.copyfile(checkpoint / name, folder / name)
    default = variants[0]  # the root genai_config.json and transformers.js's default dtype: the first -p
    shutil.copyfile(folder / default.genai_config, folder / ROOT_GENAI_CONFIG)
    if images is not None:
        for name, data in vl.processor_files(checkpoint, config).items():
            _write_json(folder / name, data)
        config = vl.client_config(config, spec)
    _write_json(folder / "config.json", _client_config(config, spec, variants, default))
    write_manifest(folder, Manifest(variants, source, default.name))
    return variants


def _write_variants(folder: Path, spec: Lfm2Spec, generation: dict, ckpt: Checkpoint, options: list[BuildOptions],
                    taken: set[str], progress: bool, built_with: dict,
                    images: _ImageModel | None = None) -> list[Variant]:
    """Each variant's graph, external data and genai config; `taken`: files other variants hold."""
    if images is not None:
        return [_write_vl_variant(folder, spec, generation, ckpt, opts, taken, progress, built_with, images)
                for opts in options]
    variants = []
    for opts in options:
        onnx_file = opts.onnx_file_beside(taken)
        taken.add(onnx_file)
        model = build_model(spec, ckpt, opts)
        chunks = save_with_external_data(model, folder / onnx_file, progress=progress)
        del model
        data = [f"{onnx_file}_data" + (f"_{i}" if i else "") for i in range(chunks)]
        files = [onnx_file, *data]
        variant = Variant(opts.precision, opts.ep, onnx_file, files, sum((folder / f).stat().st_size for f in files),
                          options={**opts.summary(), "external_data_chunks": chunks}, built_with=built_with)
        if onnx_file != opts.onnx_file:  # not at transformers.js's name: no dtype loads it
            variant.options["js_dtype"] = None
        _write_json(folder / variant.genai_config, make_genai_config(spec, opts, generation, onnx_file=onnx_file))
        variants.append(variant)
    return variants


def _write_graph(model, path: Path, progress: bool) -> list[str]:
    """Write one graph and its external data; returns its files relative to the folder."""
    chunks = save_with_external_data(model, path, progress=progress)
    name = f"onnx/{path.name}"
    return [name, *(f"{name}_data" + (f"_{i}" if i else "") for i in range(chunks))]


def _write_vl_variant(folder: Path, spec: Lfm2Spec, generation: dict, ckpt: Checkpoint, opts: BuildOptions,
                      taken: set[str], progress: bool, built_with: dict, images: _ImageModel) -> Variant:
    """An LFM2-VL variant: decoder, embed_tokens and vision encoder graphs (vl.py), one at a time."""
    files = vl.graph_files(opts, taken)
    shared = vl.graph_files(opts, set())[vl.VISION_ENCODER]
    if shared in taken and (folder / shared).exists():
        # Another variant of this build wrote the same vision encoder (it is float at the activation
        # precision whatever the decoder's: -p fp32,int8,int4 share one); the variants share the file.
        files[vl.VISION_ENCODER] = shared
    written, chunks, embed_tokens = [], {}, None
    for session, onnx_file in files.items():
        if onnx_file == shared and session == vl.VISION_ENCODER and (folder / shared).exists():
            graph_files = [f for f in sorted(taken) if f == shared or f.startswith(f"{shared}_data")]
        elif session == vl.GENAI_EMBEDDING:  # embed_tokens' graph plus the merge, on embed_tokens' data
            model = vl.build_graph(session, spec, images.config, ckpt, opts)
            vl.share_weights(model, embed_tokens)
            ir.save(model, folder / onnx_file)
            del model, embed_tokens
            graph_files = [onnx_file]
            chunks[Path(onnx_file).name] = 0  # no data file of its own
            written.extend(graph_files)
            continue
        else:
            model = vl.build_graph(session, spec, images.config, ckpt, opts)
            graph_files = _write_graph(model, folder / onnx_file, progress)
            embed_tokens = model if session == vl.EMBED_TOKENS else None
            del model
        chunks[Path(onnx_file).name] = len(graph_files) - 1
        written.extend(graph_files)
    taken.update(written)
    variant = Variant(opts.precision, opts.ep, files[vl.DECODER], written,
                      sum((folder / f).stat().st_size for f in written),
                      options={**opts.summary(), "js_dtype": vl.js_dtypes(opts), "external_data_chunks": chunks},
                      built_with=built_with)
    if any(f != vl.graph_files(opts, set())[s] for s, f in files.items()):  # not at transformers.js's names
        variant.options["js_dtype"] = None
    _write_json(folder / variant.genai_config,
                vl.make_vl_genai_config(spec, opts, generation, images.settings, files))
    return variant


def _add(checkpoint: Path, out: Path, spec: Lfm2Spec, config: dict, generation: dict, ckpt: Checkpoint,
         options: list[BuildOptions], progress: bool, start: float, built_with: dict,
         images: _ImageModel | None = None) -> ExportResult:
    """New variants beside an export's others, which stay as they are; variants.json is written last."""
    out = out.expanduser().absolute()
    manifest = read_manifest(out) if out.is_dir() else None
    if manifest is None:
        raise UserError(f"{out} is not an export with variants.json, so --add has nothing to add to; "
                        "build it without --add (or rebuild an older export with --overwrite)")
    there = [o for o in options if manifest.get(variant_name(o.ep, o.precision))]
    if there:
        names = ", ".join(variant_name(o.ep, o.precision) for o in there)
        raise UserError(f"{out} already holds {names}; drop it from -p, or rebuild the folder with --overwrite")
    root = json.loads((out / ROOT_GENAI_CONFIG).read_text())
    fresh = (vl.make_vl_genai_config(spec, options[0], generation, images.settings) if images is not None
             else make_genai_config(spec, options[0], generation))
    if _model_signature(root) != _model_signature(fresh):
        raise UserError(f"{out} holds an export of another model (its genai_config.json differs in shapes or "
                        "tokens); --add takes the checkpoint the folder was built from")
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.add-", dir=out))
    try:
        (staging / "onnx").mkdir()
        taken = {f for v in manifest.variants for f in v.files}
        variants = _write_variants(staging, spec, generation, ckpt, options, taken, progress, built_with, images)
        for variant in variants:
            for name in (*variant.files, variant.genai_config):
                if not (staging / name).exists():  # a file this build's variants share, moved already
                    continue
                (staging / name).chmod(0o666 & ~_umask())
                os.replace(staging / name, out / name)
        client = json.loads((out / "config.json").read_text())
        write_json_atomic(out / "config.json", _client_config(client, spec, variants, None))
        manifest.variants.extend(variants)
        write_manifest(out, manifest)
    except BaseException as e:
        _disk_error(e, out)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    size = sum((out / f).stat().st_size for v in variants for f in v.files)
    return ExportResult(out, spec, options[0], time.perf_counter() - start, size, variants)


def _model_signature(genai: dict) -> dict:
    """What two variants of one model share: everything in genai_config.json but the file and EP."""
    model = json.loads(json.dumps(genai["model"]))
    for section in ("decoder", "embedding", "vision"):  # LFM2-VL has all three
        if section in model:
            model[section].pop("filename", None)
            model[section].pop("session_options", None)
    return model


def _versions() -> dict:
    from importlib import metadata

    versions = {}
    for package in ("lfm2-onnx", "torch", "transformers", "onnx-ir", "onnxruntime", "onnxruntime-gpu"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return versions


def _source_card(checkpoint: Path) -> dict:
    """The source model card's license and tags, for the export's card (lfm2_onnx.card)."""
    from lfm2_onnx.card import source_card_metadata

    return source_card_metadata(checkpoint)


def _client_config(config: dict, spec: Lfm2Spec, variants: list[Variant], default: Variant | None) -> dict:
    """The checkpoint's config.json, plus what transformers.js needs to load the ONNX files.

    default: the variant whose dtype transformers.js loads when not told (None: keep the one there).
    """
    config = dict(config)
    config["layer_types"] = list(spec.layer_types)  # transformers.js sizes caches from layer_types
    config.setdefault("model_type", ARCHITECTURES[spec.architecture].model_type)
    js = dict(config.get("transformers.js_config") or {})
    if default is not None:
        js["dtype"] = default.options["js_dtype"]  # q4, q8, q4f16: the file transformers.js loads
    data = dict(js.get("use_external_data_format") or {})
    for variant in variants:
        chunks = variant.options["external_data_chunks"]
        for name, count in (chunks.items() if isinstance(chunks, dict) else [(Path(variant.onnx_file).name, chunks)]):
            if count:
                data[name] = count
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
