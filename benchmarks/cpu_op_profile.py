"""Where a CPU decode step's time goes, per operator type (onnxruntime's session profiling).

    python benchmarks/cpu_op_profile.py EXPORT_FOLDER [--runtime ours|file] [--model-file F]
        [--prompt-len 128] [--gen 32] [--no-profile]

--runtime ours: lfm2_onnx.lfm2_model as the benchmark runs it; file: one plain onnxruntime session
on the folder's ONNX file (the way onnxruntime-genai loads it), stepped by lfm2_onnx.reference_driver; with
--model-file, a variant graph saved beside the original (e.g. another QMoE accuracy_level). Prints
the median decode step without profiling, then a profiled generation's decode steps (the prefill
run left out) summed by op type, and the process's peak RSS. A benchmark, not a test; run one at a time.
"""

from __future__ import annotations

import argparse
import collections
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from lfm2_onnx.bench import prompts_for
from lfm2_onnx.session import ModelLayout

_plain_options = ort.SessionOptions


def profiled_options(prefix: str):
    def make():
        options = _plain_options()
        options.enable_profiling = True
        options.profile_file_prefix = prefix
        return options
    return make


def generate(folder: str, runtime: str, prompt: list[int], gen: int, model_file: str | None = None):
    """(loaded engine, step function): step() runs prefill + gen-1 decode steps, returns decode step seconds."""
    if runtime == "ours":
        from lfm2_onnx.lfm2_model import Lfm2Model
        from lfm2_onnx.sampling import SamplingParams

        model = Lfm2Model.load(folder, ep="cpu", max_length=len(prompt) + gen + 8)

        def run():
            times, last = [], None
            for _ in model.steps([prompt], gen, SamplingParams()):
                now = time.perf_counter()
                if last is not None:
                    times.append(now - last)
                last = now
            return times
        return model, run
    from lfm2_onnx.reference_driver import ReferenceDriver

    driver = ReferenceDriver(folder, "cpu", model_file)

    def run():
        logits, state = driver.prefill([prompt])
        times = []
        for _ in range(gen - 1):
            start = time.perf_counter()
            logits = driver.decode(logits[:, -1].argmax(-1), state)
            times.append(time.perf_counter() - start)
        return times
    return driver, run


def by_op(profile: Path) -> tuple[collections.Counter, int]:
    events = json.loads(profile.read_text())
    runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
    decode_from = runs[1]["ts"] if len(runs) > 1 else 0  # the first run is the prefill
    totals = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= decode_from:
            totals[e["args"]["op_name"]] += e["dur"]
    return totals, len(runs) - 1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder")
    p.add_argument("--runtime", choices=["ours", "file"], default="ours",
                   help="ours: the runtime as the benchmark runs it; file: a plain session on the folder's file")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--gen", type=int, default=32)
    p.add_argument("--no-profile", action="store_true", help="only the unprofiled decode step time and peak RSS")
    p.add_argument("--model-file", help="--runtime file: this ONNX file of the folder instead of genai_config's "
                   "(a variant graph beside the original, sharing its data files)")
    args = p.parse_args()
    prompt = prompts_for(ModelLayout.from_folder(args.folder).vocab_size, 1, args.prompt_len)[0]

    import gc

    engine, run = generate(args.folder, args.runtime, prompt, args.gen, args.model_file)
    run()  # warm-up
    step_ms = float(np.median(run())) * 1e3
    print(f"{args.folder} · {args.runtime} · decode step median {step_ms:.1f} ms ({1e3 / step_ms:.1f} tokens/s)")
    del engine, run  # one model in memory at a time
    gc.collect()
    if args.no_profile:
        print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GB")
        return

    with tempfile.TemporaryDirectory() as tmp:
        ort.SessionOptions = profiled_options(f"{tmp}/profile")
        try:
            engine, run = generate(args.folder, args.runtime, prompt, args.gen, args.model_file)
            run()
            del engine, run  # ends the sessions' profiles
            gc.collect()
        finally:
            ort.SessionOptions = _plain_options
        profiles = sorted(Path(tmp).glob("profile*.json"), key=lambda f: f.stat().st_size)
        totals, steps = by_op(profiles[-1])  # the session that ran the decode steps
    total = sum(totals.values())
    print(f"profiled decode: {steps} runs, {total / steps / 1e3:.1f} ms of kernels per step")
    for op, us in totals.most_common(12):
        print(f"  {op:<34}{us / steps / 1e3:>8.2f} ms/step {100 * us / total:>6.1f}%")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GB")


if __name__ == "__main__":
    main()
