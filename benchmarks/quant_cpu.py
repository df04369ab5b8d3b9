"""CPU decode speed of int4/int8 exports: lfm2_onnx's vs onnxruntime-genai's builder, one script.

    python benchmarks/quant_cpu.py --checkpoint CKPT --work /tmp/quant_cpu [--precision int4]

Builds both exports of the same checkpoint (`python -m lfm2_onnx.build -p int4 -e cpu` and
`python -m onnxruntime_genai.models.builder -p int4 -e cpu`, each with its defaults: block 32,
symmetric, accuracy_level 4), then times greedy generation of the same random 128-token prompt,
64 new tokens, on each:

* genai runtime: onnxruntime-genai's Generator (its own search loop, shared KV buffers);
* ReferenceDriver: our plain driver (lfm2_onnx.reference_driver: onnxruntime InferenceSession, default options);

each on both folders.

Decode tokens/s = (new tokens - 1) / (time after the first token); prefill is reported apart.
Each number is the median of --runs runs after one warm-up; the runs of all four interleave.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def build(cmd: list[str], out: Path, log: Path) -> float | None:
    """Build seconds, or None when out already exists (reused)."""
    if out.exists():
        return None
    start = time.perf_counter()
    with open(log, "a") as f:
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT)
    return time.perf_counter() - start


def genai_generate(model, prompt: list[int], new_tokens: int) -> tuple[float, float, list[int]]:
    """(prefill seconds, decode seconds for new_tokens - 1 tokens, tokens)."""
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(prompt) + new_tokens, min_length=len(prompt) + new_tokens)
    generator = og.Generator(model, params)
    start = time.perf_counter()
    generator.append_tokens(np.array(prompt, dtype=np.int32))
    generator.generate_next_token()
    first = time.perf_counter()
    while not generator.is_done():
        generator.generate_next_token()
    end = time.perf_counter()
    return first - start, end - first, [int(t) for t in generator.get_sequence(0)][len(prompt):]


def driver_generate(driver, prompt: list[int], new_tokens: int) -> tuple[float, float, list[int]]:
    start = time.perf_counter()
    logits, state = driver.prefill([prompt])
    tokens = [int(logits[0, -1].argmax())]
    first = time.perf_counter()
    while len(tokens) < new_tokens:
        logits = driver.decode(np.array([tokens[-1]]), state)
        tokens.append(int(logits[0, -1].argmax()))
    return first - start, time.perf_counter() - first, tokens


def measure(runners: dict, runs: int, new_tokens: int) -> dict:
    """Median prefill time and decode tokens/s per runner; runs interleave, so drift hits all alike."""
    for run in runners.values():
        run()  # warm-up: session caches, prepacked weights, page cache
    results = {label: [] for label in runners}
    for _ in range(runs):
        for label, run in runners.items():
            results[label].append(run())
    summary = {}
    for label, rows in results.items():
        decode = statistics.median(r[1] for r in rows)
        summary[label] = {"prefill_s": round(statistics.median(r[0] for r in rows), 4),
                          "decode_tokens_per_s": round((new_tokens - 1) / decode, 2), "tokens": rows[0][2]}
    return summary


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--work", type=Path, default=Path("/tmp/quant_cpu"))
    p.add_argument("--precision", default="int4", choices=["int4", "int8"])
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    import onnxruntime as ort
    import onnxruntime_genai as og

    from lfm2_onnx.reference_driver import ReferenceDriver

    args.work.mkdir(parents=True, exist_ok=True)
    log = args.work / "build.log"
    ours, theirs = args.work / f"ours-{args.precision}", args.work / f"genai-{args.precision}"
    py = sys.executable
    build_s = {
        "ours": build([py, "-m", "lfm2_onnx.build", "-i", str(args.checkpoint), "-o", str(ours), "-p", args.precision,
                       "-e", "cpu", "-q"], ours, log),
        "genai": build([py, "-m", "onnxruntime_genai.models.builder", "-i", str(args.checkpoint), "-o", str(theirs),
                        "-p", args.precision, "-e", "cpu", "-c", str(args.work / "genai-cache")], theirs, log),
    }
    vocab = json.loads((args.checkpoint / "config.json").read_text())["vocab_size"]
    prompt = [1] + np.random.default_rng(0).integers(100, vocab, args.prompt_tokens - 1).tolist()

    runners = {}
    for label, folder in (("ours (genai runtime)", ours), ("genai's export (genai runtime)", theirs)):
        model = og.Model(str(folder))
        runners[label] = lambda model=model: genai_generate(model, prompt, args.new_tokens)
    for label, folder in (("ours (ReferenceDriver)", ours), ("genai's export (ReferenceDriver)", theirs)):
        driver = ReferenceDriver(folder)
        runners[label] = lambda driver=driver: driver_generate(driver, prompt, args.new_tokens)
    results = measure(runners, args.runs, args.new_tokens)
    same = results["ours (genai runtime)"]["tokens"] == results["ours (ReferenceDriver)"]["tokens"]
    report = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.processor() or platform.machine()}, "
                                                      f"{os.cpu_count()} cores",
        "onnxruntime": ort.__version__, "onnxruntime_genai": og.__version__, "precision": args.precision,
        "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens, "runs": args.runs,
        "build_s": {k: "reused" if v is None else round(v, 1) for k, v in build_s.items()},
        "onnx_bytes": {k: sum(f.stat().st_size for f in d.rglob("*") if ".onnx" in f.name)
                       for k, d in (("ours", ours), ("genai", theirs))},
        "ours_driver_and_genai_runtime_agree": same,
        "results": {k: {kk: vv for kk, vv in v.items() if kk != "tokens"} for k, v in results.items()},
    }
    print(json.dumps(report, indent=2))
    (args.work / "results.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
