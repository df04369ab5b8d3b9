"""python -m lfm2_onnx.verify OUT --reference CKPT: check an export against transformers.

Runs prompts through transformers and through the export (prefill, then decode steps through the
caches) and prints max|Δlogit|, mean KL, top-1 agreement and greedy match. Exit code 1 on failure.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .errors import ArgumentParser, UserError, cli_entry
from .reference_driver import read_genai_config


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m lfm2_onnx.verify", description=__doc__.split("\n\n")[0])
    p.add_argument("folder", help="export folder written by python -m lfm2_onnx.build")
    p.add_argument("--reference", required=True,
                   help="the checkpoint it was built from: a folder, a Hub id, or lfm2-tiny-random")
    p.add_argument("--ep", default="cpu", choices=["cpu", "cuda"], help="execution provider to run the export on")
    p.add_argument("--precision", help="which variant of a multi-variant export (default: the best one for --ep); "
                                       "the result is stored in its variants.json")
    p.add_argument("--steps", type=int, default=32, help="decode steps per prompt (default 32)")
    p.add_argument("--prompt", action="append", help="a prompt to use (repeatable; default: three built-in prompts)")
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    folder = Path(args.folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such export folder; build one with python -m lfm2_onnx.build -o {folder}")
    # Checked before the reference is loaded or downloaded.
    try:
        read_genai_config(folder)
    except ValueError as e:
        raise UserError(f"{folder}/genai_config.json: not valid JSON ({e}); build the export again") from None
    if not (folder / "tokenizer.json").is_file():
        raise UserError(f"{folder}: no tokenizer.json; the export is incomplete, build it again")
    if args.steps < 0:
        raise UserError(f"--steps {args.steps}: give a number of decode steps >= 0")
    from .session import check_ep_flag

    check_ep_flag(args.ep)
    from .variants import choose, read_manifest

    manifest = read_manifest(folder)
    if manifest is None and args.precision:
        raise UserError(f"{folder} holds a single export without variants.json; drop --precision")
    variant = choose(manifest, args.ep, args.precision, where=str(folder)).name if manifest else None
    from .builder.sources import resolve
    from .builder.parity import DEFAULT_PROMPTS, run_verification

    ref = Path(args.reference)
    if ref.is_dir() and not (ref / "config.json").is_file():
        raise UserError(f"--reference {ref}: no config.json; give the checkpoint folder the export was built from")
    checkpoint, tmp = resolve(None, str(ref), None) if ref.is_dir() else resolve(args.reference, None)
    try:
        return run_verification(folder, checkpoint, ep=args.ep, texts=args.prompt or DEFAULT_PROMPTS,
                                steps=args.steps, variant=variant)
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
