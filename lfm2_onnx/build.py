"""python -m lfm2_onnx.build: export an LFM2 checkpoint to one ONNX folder.

    python -m lfm2_onnx.build -m LiquidAI/LFM2-350M -p fp16 -e cuda -o lfm2-350m-onnx
    python -m lfm2_onnx.build -i ./my-finetune -p fp32 -e cpu -o out
    python -m lfm2_onnx.build -m lfm2-tiny-random -o demo        # offline, seconds
    python -m lfm2_onnx.build -m LiquidAI/LFM2-350M -p fp32,int8,int4 -o out --verify   # several variants
    python -m lfm2_onnx.build -m LiquidAI/LFM2-350M -p fp16,int4 -e cuda -o out --add   # more, beside them
"""

from __future__ import annotations

import argparse
import resource
import shlex
import sys
from pathlib import Path

from .errors import ArgumentParser, UserError, cli_entry
from .variants import EXECUTION_PROVIDERS, PRECISIONS



def parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m lfm2_onnx.build", description=__doc__.split("\n\n")[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="Output: onnx/model{,_fp16,_bf16,_quantized,_q4,_q4f16,_q8f16}.onnx + external data, "
                              "genai_config.json, config.json, tokenizer and chat template files.")
    src = p.add_argument_group("source (one of)")
    src.add_argument("-m", "--model", help="Hugging Face Hub id (e.g. LiquidAI/LFM2-350M) or lfm2-tiny-random")
    src.add_argument("-i", "--input", help="local checkpoint folder (config.json + *.safetensors)")
    p.add_argument("-o", "--output", required=True, help="export folder to create")
    p.add_argument("-p", "--precision", help=f"one of {', '.join(PRECISIONS)}, or several separated by commas, one "
                                             "variant each (default: fp32 for cpu, fp16 for cuda)")
    p.add_argument("-e", "--ep", default="cpu", help=f"execution provider: {', '.join(EXECUTION_PROVIDERS)} (default: cpu)")
    q = p.add_argument_group("quantization (-p int8, -p int4: weight-only, MatMulNBits)")
    q.add_argument("--block-size", type=int, help="weights per scale along the input dim: 16, 32, 64, 128, 256 "
                                                  "(default 32; 64 makes a CPU int4 file q4_0-sized)")
    q.add_argument("--asymmetric", action="store_const", const=False, dest="symmetric",
                   help="a zero point per block (default: symmetric, none)")
    q.add_argument("--lm-head", help="LM head and embedding table: int8, int4 or float (default: as -p; tied "
                                     "models store one table for both)")
    q.add_argument("--accuracy-level", type=int, help="-e cpu: MatMulNBits compute type, 1 fp32 (exact on the "
                                                      "quantized weights) ... 4 int8 (default 4, fastest)")
    p.add_argument("--revision", help="Hub revision (branch, tag or commit)")
    p.add_argument("--cache-dir", help="Hub cache folder (default: HF_HOME)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--add", action="store_true",
                   help="add these variants to the existing export -o, leaving its other variants as they are")
    p.add_argument("--verify", action="store_true",
                   help="after building, compare the export with transformers (python -m lfm2_onnx.verify)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # Export-time code (torch, transformers) is imported only once the arguments are known good.
    from .builder.export import check_output, export
    from .builder.options import BuildOptions
    from .builder.sources import resolve

    precisions = [p.strip() for p in (args.precision or ("fp16" if args.ep == "cuda" else "fp32")).split(",")]
    # Refuses unknown or unsupported combinations, quantization options included.
    options = [BuildOptions(precision, args.ep, block_size=args.block_size, symmetric=args.symmetric,
                            lm_head=args.lm_head, accuracy_level=args.accuracy_level) for precision in precisions]
    if args.input and not args.model and (args.revision or args.cache_dir):
        raise UserError("--revision and --cache-dir apply to -m HUB_ID only; drop them when building from -i")
    if args.add and args.overwrite:
        raise UserError("--add keeps the export's other variants and --overwrite replaces the folder; choose one")
    if not args.add:
        check_output(Path(args.output), args.overwrite)  # before any download: fail fast on a bad -o
    checkpoint, tmp = resolve(args.model, args.input, args.revision, args.cache_dir)
    source = {"model": args.model, "revision": args.revision} if args.model else {"folder": Path(args.input).name}
    command = shlex.join(["python", "-m", "lfm2_onnx.build", *(sys.argv[1:] if argv is None else map(str, argv))])
    try:
        result = export(checkpoint, Path(args.output), options, overwrite=args.overwrite, add=args.add,
                        progress=not args.quiet, source=source, command=command)
        spec = result.spec
        peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
        files = ", ".join(v.onnx_file for v in result.variants)
        print(f"wrote {result.folder} ({files}, {result.bytes_written / 1e6:.1f} MB) in "
              f"{result.seconds:.{1 if result.seconds >= 1 else 2}f} s, peak RSS {peak_gb:.2f} GB: "
              f"{spec.num_layers} layers ({len(spec.attention_layers)} attention, {len(spec.conv_layers)} conv), "
              f"{','.join(precisions)}, {args.ep}")
        if args.verify:
            from .builder.parity import run_verification

            codes = []
            for variant in result.variants:
                if len(result.variants) > 1:
                    print(f"\n{variant.name} ({variant.onnx_file}):")
                codes.append(run_verification(result.folder, checkpoint, ep=args.ep, variant=variant.name))
            return max(codes)
        return 0
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
