"""Resident memory on CPU: lfm2_onnx's runtime vs onnxruntime-genai on the same export folders.

    python benchmarks/cpu_memory.py FOLDER [FOLDER ...] [--prompt-len 256] [--gen 32] [--json out.json]

Each engine runs in a fresh subprocess per folder and reports, from /proc/self/status:
VmRSS after its imports, after loading the model, after one prompt, after a batch of two
prompts of unequal length (ours: right-padded, the ragged path; onnxruntime-genai 0.18 takes only
equal lengths, so its batch is two prompts of the longer length), and after three more batches;
VmHWM (peak) at the end; "load" includes the tokenizer for both. "weights" is the size of the
folder's onnx/*.onnx_data* files.
Engines and folders run one after another in the same script run, on the same machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np


def status() -> dict:
    """VmRSS, VmHWM, RssAnon, RssFile of this process in MB."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) / 1024
    return out


def prompts(vocab: int, length: int) -> tuple[list[int], list[int]]:
    rng = np.random.default_rng(0)
    long = [1] + rng.integers(100, vocab, length - 1).tolist()
    return long, long[: length // 2]


def run_ours(folder: str, length: int, gen: int) -> dict:
    from lfm2_onnx.lfm2_model import Lfm2Model
    from lfm2_onnx.sampling import SamplingParams

    marks = {"imports": status()}
    model = Lfm2Model.load(folder, ep="cpu", max_length=length + gen + 8)
    marks["load"] = status()
    long, short = prompts(model.layout.vocab_size, length)
    greedy = SamplingParams()
    model.generate_ids([long], gen, greedy)
    marks["one prompt"] = status()
    model.generate_ids([long, short], gen, greedy)
    marks["ragged batch"] = status()
    for _ in range(3):
        model.generate_ids([long, short], gen, greedy)
    marks["3 more batches"] = status()
    return marks


def run_genai(folder: str, length: int, gen: int) -> dict:
    import onnxruntime_genai as og

    marks = {"imports": status()}
    model = og.Model(folder)
    og.Tokenizer(model)  # ours loads its tokenizer at load too
    marks["load"] = status()
    vocab = json.loads((Path(folder) / "genai_config.json").read_text())["model"]["vocab_size"]
    long, _ = prompts(vocab, length)

    def generate(rows: int):
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=length + gen, do_sample=False, batch_size=rows)
        generator = og.Generator(model, params)
        generator.append_tokens(np.array([long] * rows, dtype=np.int32))
        while not generator.is_done():
            generator.generate_next_token()

    generate(1)
    marks["one prompt"] = status()
    generate(2)
    marks["ragged batch"] = status()  # equal lengths: see the module docstring
    for _ in range(3):
        generate(2)
    marks["3 more batches"] = status()
    return marks


def weight_mb(folder: str) -> float:
    return sum(f.stat().st_size for f in (Path(folder) / "onnx").glob("*.onnx_data*")) / 2**20


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="*")
    p.add_argument("--prompt-len", type=int, default=256)
    p.add_argument("--gen", type=int, default=32)
    p.add_argument("--engines", nargs="+", default=["ours", "genai"], choices=["ours", "genai"])
    p.add_argument("--json", type=Path)
    p.add_argument("--child", nargs=2, metavar=("ENGINE", "FOLDER"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        engine, folder = args.child
        marks = (run_ours if engine == "ours" else run_genai)(folder, args.prompt_len, args.gen)
        print(json.dumps(marks))
        return 0
    rows = []
    for folder in args.folders:
        for engine in args.engines:
            print(f"{engine} on {folder} ...", file=sys.stderr, flush=True)
            cmd = [sys.executable, __file__, "--child", engine, folder, "--prompt-len", str(args.prompt_len),
                   "--gen", str(args.gen)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                print(proc.stderr[-2000:], file=sys.stderr)
                rows.append({"folder": folder, "engine": engine, "error": proc.stderr.strip().splitlines()[-1:]})
                continue
            marks = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append({"folder": folder, "engine": engine, "weights_mb": weight_mb(folder), "marks": marks})
    stages = ["imports", "load", "one prompt", "ragged batch", "3 more batches"]
    print(f"prompt {args.prompt_len} tokens, {args.gen} new; VmRSS MB after each stage, VmHWM at the end; "
          "x = RSS after load / weights")
    print("| folder | engine | weights MB | " + " | ".join(stages) + " | peak | load x |")
    print("|---|---|---|" + "---|" * (len(stages) + 2))
    for row in rows:
        if "error" in row:
            print(f"| {row['folder']} | {row['engine']} | failed: {row['error']} |")
            continue
        marks, weights = row["marks"], row["weights_mb"]
        cells = " | ".join(f"{marks[s]['VmRSS']:.0f}" for s in stages)
        peak = marks["3 more batches"]["VmHWM"]
        print(f"| {Path(row['folder']).name} | {row['engine']} | {weights:.0f} | {cells} | {peak:.0f} | "
              f"{marks['load']['VmRSS'] / weights:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
