"""Regenerate genai_configs/: the genai_config.json the builder writes for each real LFM2 config.

    python -m lfm2_onnx.builder.goldens [--models ../shared/models] [--out genai_configs] [--check]

Reads only config.json and generation_config.json (LFM2-VL: its processor configs too; no weights): the genai config is a pure function
of those and of the precision/EP choice, and tests check the builder writes exactly these files.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lfm2_onnx.errors import UserError

from .genai_config import make_genai_config
from .options import VALID_COMBINATIONS, BuildOptions
from .spec import load_spec
from .vl import image_processor_settings, make_vl_genai_config

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODELS = REPO.parent / "shared" / "models"


def golden_name(precision: str, ep: str) -> str:
    return f"{ep}-{precision}.json"


def goldens(models_dir: Path) -> dict[Path, str]:
    """{relative path: file text} for every supported config under models_dir."""
    files = {}
    for config in sorted(models_dir.glob("*/config.json")):
        try:
            spec, hf_config, generation = load_spec(config.parent)
            settings = image_processor_settings(config.parent, hf_config) if spec.is_vl else None
        except UserError:
            continue  # not an LFM2-family checkpoint
        for precision, ep in VALID_COMBINATIONS:
            opts = BuildOptions(precision, ep)
            genai = (make_vl_genai_config(spec, opts, generation, settings) if spec.is_vl
                     else make_genai_config(spec, opts, generation))
            text = json.dumps(genai, indent=4) + "\n"
            files[Path(config.parent.name) / golden_name(precision, ep)] = text
    return files


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m lfm2_onnx.builder.goldens", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=Path, default=DEFAULT_MODELS, help="folder of model folders with config.json")
    p.add_argument("--out", type=Path, default=REPO / "genai_configs")
    p.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on any difference")
    args = p.parse_args(argv)
    if not args.models.is_dir():
        print(f"error: {args.models}: no such folder", file=sys.stderr)
        return 2
    wanted = goldens(args.models)
    stale = [rel for rel, text in wanted.items()
             if not (args.out / rel).exists() or (args.out / rel).read_text() != text]
    if args.check:
        for rel in stale:
            print(f"differs: {args.out / rel}")
        return 1 if stale else 0
    for rel in stale:
        (args.out / rel).parent.mkdir(parents=True, exist_ok=True)
        (args.out / rel).write_text(wanted[rel])
    print(f"{len(wanted)} genai configs in {args.out} ({len(stale)} written)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
