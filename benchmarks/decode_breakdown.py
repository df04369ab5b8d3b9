"""Where one decode step's time goes: graph replay, host<->device copies, Python.

    python benchmarks/decode_breakdown.py EXPORT_FOLDER [--ep cuda] [--batch 1] [--prompt-len 1024]

Runs a short generation (which captures the CUDA graphs), then times each piece of a step on its own
(median of N repetitions, each synchronised) next to the whole step as the generation loop runs it.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from lfm2_onnx.lfm2_model import Lfm2Model
from lfm2_onnx.sampling import SamplingParams


def median_us(fn, repeat: int = 300) -> float:
    for _ in range(20):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e6


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("folder")
    p.add_argument("--ep", default="cuda")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--prompt-len", type=int, default=1024)
    p.add_argument("--gen", type=int, default=128)
    args = p.parse_args()
    for cuda_graph in (True, False):
        model = Lfm2Model.load(args.folder, ep=args.ep, max_length=args.prompt_len + args.gen + 8,
                               cuda_graph=cuda_graph)
        rng = np.random.default_rng(0)
        prompts = [[1] + rng.integers(100, model.layout.vocab_size, args.prompt_len - 1).tolist()
                   for _ in range(args.batch)]
        model.generate_ids(prompts, 8)  # warm-up and capture
        start = time.perf_counter()
        count = sum(1 for _ in model.steps(prompts, args.gen, SamplingParams()))
        whole = (time.perf_counter() - start) / count * 1e6  # includes the prefill, amortised
        engine, caches = model.engine, model.engine.caches
        rows = engine._bucket(args.batch)
        binding, options, _ = engine._decode_binding(rows, 0)
        tokens, lengths = np.ones(engine.slots, np.int64), np.full(engine.slots, args.prompt_len, np.int32)
        pieces = {
            "decoder run (graph replay)" if cuda_graph else "decoder run (no graph)":
                lambda: (model.sessions.uniform.run_with_iobinding(binding, options), binding.synchronize_outputs()),
            "copy ids + lengths in (host-fed step)": lambda: caches.write_step_inputs(0, tokens, lengths),
            "copy greedy ids out": lambda: caches.ids[1].value.numpy(),
            "copy fp32 scores out (sampling)": lambda: caches.scores(rows).value.numpy(),
        }
        print(f"--- cuda_graph={cuda_graph} · batch {args.batch} · capacity {model.capacity}")
        for name, fn in pieces.items():
            print(f"  {name:<30}{median_us(fn):>9.1f} us")
        print(f"  {'generation loop, per step':<30}{whole:>9.1f} us (prefill amortised over {count} steps)")


if __name__ == "__main__":
    main()
