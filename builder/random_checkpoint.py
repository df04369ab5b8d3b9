"""Seeded random weights for a real LFM2 config, written shard by shard (never the whole model in memory).

    python -m lfm2_onnx.builder.random_checkpoint ../shared/models/LFM2-1.2B -o ckpt-1.2b [--std 0.1]

Real-shape checkpoints for tests and benchmarks, where real weights can't be downloaded: the
config, tokenizer and chat template come from the given folder; the tensors are normal(0, std) for
matrices and ones for norms, like transformers' initialisation, in the config's dtype (bf16).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from .spec import load_spec
from .tensors import expected_shapes, is_norm, per_expert_names

COPIED = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
          "special_tokens_map.json", "chat_template.jinja", "preprocessor_config.json", "processor_config.json")
SHARD_BYTES = 1 << 30


EXPERT_LAYOUTS = ("packed", "per-expert")


def write_random_checkpoint(source: Path, dest: Path, *, std: float = 0.1, seed: int = 0,
                            dtype: torch.dtype = torch.bfloat16, expert_layout: str = "packed") -> Path:
    """expert_layout: MoE experts as transformers 5 saves them ("packed") or as LiquidAI's original
    checkpoints do ("per-expert": experts.N.w1|w2|w3.weight)."""
    spec, config, _ = load_spec(source)
    dest.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        if (source / name).exists():
            shutil.copyfile(source / name, dest / name)
    shapes = expected_shapes(spec)
    if spec.tie_word_embeddings:
        del shapes["lm_head.weight"]
    if spec.is_vl:  # transformers 5's layout: the decoder under model.language_model, then the vision half
        from .vl import vision_shapes

        shapes = {name.replace("model.", "model.language_model.", 1): shape for name, shape in shapes.items()}
        shapes.update(vision_shapes(config))
    generator = torch.Generator().manual_seed(seed)
    weight_map, shard, shard_bytes, index = {}, {}, 0, 0

    def flush():
        nonlocal shard, shard_bytes, index
        if shard:
            index += 1
            filename = f"model-{index:05d}.safetensors"
            save_file(shard, dest / filename, metadata={"format": "pt"})
            weight_map.update({name: filename for name in shard})
            shard, shard_bytes = {}, 0

    def add(name: str, tensor: torch.Tensor):
        nonlocal shard_bytes
        if shard_bytes + tensor.nbytes > SHARD_BYTES:
            flush()
        shard[name] = tensor.contiguous()
        shard_bytes += tensor.nbytes

    for name, shape in shapes.items():
        if is_norm(name):
            tensor = torch.ones(shape, dtype=dtype)
        else:
            tensor = (torch.randn(shape, generator=generator) * std).to(dtype)
        if expert_layout == "per-expert" and name.endswith((".experts.gate_up_proj", ".experts.down_proj")):
            parts = per_expert_names(name, shape[0])
            for n, expert in enumerate(tensor):  # gate_up: w1's rows, then w3's
                for part, rows in zip(parts, expert.chunk(len(parts))):
                    add(parts[part][n], rows.clone())
        else:
            add(name, tensor)
        del tensor
    flush()
    # Rename to the usual -0000i-of-0000n names and write the index transformers reads.
    names = {}
    for i in range(1, index + 1):
        final = f"model-{i:05d}-of-{index:05d}.safetensors"
        (dest / f"model-{i:05d}.safetensors").rename(dest / final)
        names[f"model-{i:05d}.safetensors"] = final
    index_data = {"metadata": {}, "weight_map": {k: names[v] for k, v in weight_map.items()}}
    (dest / "model.safetensors.index.json").write_text(json.dumps(index_data, indent=2))
    return dest


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lfm2_onnx.builder.random_checkpoint", description=__doc__.split("\n\n")[0])
    p.add_argument("source", type=Path, help="folder with a real config.json (and tokenizer files)")
    p.add_argument("-o", "--output", type=Path, required=True, help="checkpoint folder to write")
    p.add_argument("--std", type=float, default=0.1, help="std of the weights (default 0.1: varied greedy tokens)")
    p.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same weights "
                                                       "(default 0)")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16",
                   help="dtype of the stored weights (default bf16, as LiquidAI's checkpoints)")
    p.add_argument("--expert-layout", choices=EXPERT_LAYOUTS, default="packed",
                   help="MoE checkpoints: experts packed per layer as transformers 5 saves them (default), "
                        "or one tensor per expert as LiquidAI's original checkpoints")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    write_random_checkpoint(args.source, args.output, std=args.std, seed=args.seed, dtype=dtype,
                            expert_layout=args.expert_layout)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
