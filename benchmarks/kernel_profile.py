"""Which CUDA kernels one greedy decode step runs, how long the step takes, and what the ragged
session adds to device memory.

    python benchmarks/kernel_profile.py EXPORT_FOLDER [--prompt-len 1024] [--steps 200] [--batch 1]

Variants of the runtime's uniform decode graph, each timed as a replayed CUDA graph (median of
--steps synchronised greedy steps), then profiled without graphs through torch.profiler (CUPTI
sees every kernel onnxruntime launches):
  uniform         what the runtime runs
  no-chlast       the same without the channels-last conv rewrite (Transposes kept)
Needs torch with CUDA on the machine (only for the profiler) and pynvml for the memory line.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from lfm2_onnx import runtime_graphs
from lfm2_onnx.lfm2_model import Lfm2Model


def load(folder: str, variant: str, capacity: int, cuda_graph: bool) -> Lfm2Model:
    original = runtime_graphs._channels_last_conv
    if variant == "no-chlast":
        runtime_graphs._channels_last_conv = lambda graph: None
    try:
        return Lfm2Model.load(folder, ep="cuda", max_length=capacity, cuda_graph=cuda_graph)
    finally:
        runtime_graphs._channels_last_conv = original


def decode_once(model: Lfm2Model, parity: int, batch: int = 1) -> None:
    """Queue one greedy decode step over slots 0..batch-1 (the ids and lengths the previous step left)."""
    binding, options, _ = model.engine._decode_binding(batch, parity)
    model.sessions.uniform.run_with_iobinding(binding, options)


def step_us(model: Lfm2Model, prompt: list[int], steps: int) -> float:
    model.generate_ids([prompt], 8)  # capture
    model.generate_ids([prompt], 2)
    caches = model.engine.caches
    times = []
    for i in range(steps + 20):
        start = time.perf_counter()
        decode_once(model, i % 2)
        caches.ids[1 - i % 2].value.numpy()
        times.append(time.perf_counter() - start)
    return float(np.median(times[20:])) * 1e6


def profile(model: Lfm2Model, prompt: list[int], steps: int = 20, rows: int = 30,
            others: list[list[int]] = ()) -> None:
    """The kernels of one greedy decode step over `prompt` and `others` (one row each). Rows of
    distinct prompts route to distinct experts in an MoE model; repeats of one prompt would not."""
    import torch
    from torch.profiler import ProfilerActivity, profile as torch_profile

    torch.cuda.init()
    batch = 1 + len(others)
    model.generate_ids([prompt, *others], 4)
    caches = model.engine.caches
    for i in range(5):
        decode_once(model, i % 2, batch)
    caches.ids[0].value.numpy()
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        for i in range(steps):
            decode_once(model, i % 2, batch)
            caches.ids[1 - i % 2].value.numpy()
    table = [(e.key, e.count / steps, e.device_time_total / steps) for e in prof.key_averages()
             if e.device_time_total > 0]
    table.sort(key=lambda r: -r[2])
    total_us, kernels = sum(r[2] for r in table), sum(r[1] for r in table)
    print(f"  kernels per step {kernels:.0f}, kernel time per step {total_us:.0f} us")
    for name, count, us in table[:rows]:
        print(f"    {us:8.1f} us {count:6.1f}x  {name[:150]}")


def nvml_used_mb() -> float:
    import os

    import pynvml

    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
        if proc.pid == os.getpid():
            return proc.usedGpuMemory / 2**20
    return pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("folder")
    p.add_argument("--prompt-len", type=int, default=1024)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--variants", default="uniform,no-chlast", help="comma-separated: uniform, no-chlast")
    p.add_argument("--rows", type=int, default=30, help="kernels listed per profile")
    p.add_argument("--batch", type=int, default=1,
                   help="rows decoded together (distinct random prompts); above 1 only the kernel profile runs")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    capacity = args.prompt_len + args.steps + 64
    if args.batch > 1:
        model = load(args.folder, "uniform", capacity, cuda_graph=False)
        prompts = [[1] + rng.integers(100, model.layout.vocab_size, args.prompt_len - 1).tolist()
                   for _ in range(args.batch)]
        print(f"--- uniform, batch {args.batch} (distinct prompts): kernels of one decode step (no graphs)")
        profile(model, prompts[0], rows=args.rows, others=prompts[1:])
        return
    for variant in args.variants.split(","):
        model = load(args.folder, variant, capacity, cuda_graph=True)
        prompt = [1] + rng.integers(100, model.layout.vocab_size, args.prompt_len - 1).tolist()
        print(f"--- {variant}: greedy step with CUDA graph replay {step_us(model, prompt, args.steps):.1f} us")
        if variant == "uniform":
            weights = sum(v.shape()[0] * int(np.prod(v.shape()[1:])) * 2 for v in model.sessions.weights.values())
            before = nvml_used_mb()
            model.generate_ids([prompt[:50], prompt[:30]], 4)  # a ragged batch: makes the ragged session
            print(f"  ragged session added {nvml_used_mb() - before:.0f} MB device memory "
                  f"(weights ~{weights / 2**20:.0f} MB if fp16)")
        del model
        profile(load(args.folder, variant, capacity, cuda_graph=False), prompt, rows=args.rows)


if __name__ == "__main__":
    main()
