"""python -m lfm2_onnx.bench FOLDER: time-to-first-token, time per output token and throughput.

    python -m lfm2_onnx.bench lfm2-350m-onnx --ep cuda --prompt-len 1024 --gen 128 [--batch 8] [--compare-genai]
    python -m lfm2_onnx.bench ours-q4 --ep cpu --compare-genai --genai-folder genai-builder-q4

Each engine runs in its own process on the same random prompt tokens: ours (lfm2_onnx.lfm2_model)
and, with --compare-genai, onnxruntime-genai on the same folder; with --genai-folder, also
onnxruntime-genai on another export of the same model (its own builder's, say). The floor is the time
to read every weight once: weight bytes / bandwidth measured in this run (a device copy on CUDA; on
CPU, reads of a host buffer by as many threads as cores, the way a decode step reads its weights).
A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .errors import ArgumentParser, UserError, cli_entry
from .session import ModelLayout, check_ep_flag


def prompts_for(vocab: int, batch: int, length: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [[1] + rng.integers(100, vocab, length - 1).tolist() for _ in range(batch)]


def device_memory_mb(ep: str) -> float | None:
    """Device memory this process holds (NVML), or peak RSS on the CPU."""
    if ep != "cuda":
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
            if proc.pid == os.getpid():
                return proc.usedGpuMemory / 2**20
        return pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20
    except Exception:
        return None


def run_ours(folder: str, ep: str, prompts: list[list[int]], gen: int, runs: int, cuda_graph: bool = True) -> dict:
    from .lfm2_model import Lfm2Model
    from .sampling import SamplingParams

    model = Lfm2Model.load(folder, ep=ep, max_length=len(prompts[0]) + gen + 8, cuda_graph=cuda_graph)
    greedy = SamplingParams()
    results = []
    for _ in range(runs + 1):  # the first run warms up (and captures the CUDA graphs)
        start = time.perf_counter()
        first = None
        count = 0
        for _tokens in model.steps(prompts, gen, greedy):
            count += 1
            if first is None:
                first = time.perf_counter()
        end = time.perf_counter()
        results.append((first - start, (end - first) / max(count - 1, 1), count))
    return _summary(results[1:], len(prompts), ep)


def run_genai(folder: str, ep: str, prompts: list[list[int]], gen: int, runs: int) -> dict:
    """onnxruntime-genai on the same folder: with its CUDA graph option when it can capture, else without."""
    import onnxruntime_genai as og

    def make_model(cuda_graph: bool):
        config = og.Config(folder)
        if ep == "cuda":
            config.clear_providers()
            config.append_provider("cuda")
            config.set_provider_option("cuda", "enable_cuda_graph", "1" if cuda_graph else "0")
        return og.Model(config)

    def timed_run(model):
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(prompts[0]) + gen, min_length=len(prompts[0]) + gen,
                                  do_sample=False, batch_size=len(prompts))
        generator = og.Generator(model, params)
        start = time.perf_counter()
        generator.append_tokens(np.array(prompts, dtype=np.int32))
        generator.generate_next_token()
        first = time.perf_counter()
        count = 1
        while not generator.is_done() and count < gen:
            generator.generate_next_token()
            count += 1
        return first - start, (time.perf_counter() - first) / max(count - 1, 1), count

    cuda_graph = ep == "cuda"
    try:
        model = make_model(cuda_graph)
        results = [timed_run(model)]
    except Exception as e:  # capture refused: measure it without graphs, and say so
        if not cuda_graph:
            raise
        cuda_graph, why = False, str(e).splitlines()[0][:160]
        model = make_model(False)
        results = [timed_run(model)]
    results += [timed_run(model) for _ in range(runs)]
    summary = _summary(results[1:], len(prompts), ep)
    summary["cuda_graph"] = cuda_graph
    if ep == "cuda" and not cuda_graph:
        summary["note"] = f"CUDA graph refused: {why}"
    return summary


def _summary(results, batch: int, ep: str) -> dict:
    ttft = float(np.median([r[0] for r in results]))
    tpot = float(np.median([r[1] for r in results]))
    return {"ttft_ms": ttft * 1e3, "tpot_ms": tpot * 1e3, "tokens_per_s": batch / tpot,
            "new_tokens": results[0][2], "device_memory_mb": device_memory_mb(ep)}


def copy_bandwidth(ep: str, nbytes: int = 1 << 30) -> float:
    """Bytes/s of a device copy (read + write) through onnxruntime; on CPU, host read bandwidth."""
    if ep != "cuda":
        return read_bandwidth(nbytes)
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Add", ["x", "zero"], ["y"])], "copy",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["n"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["n"])],
                              [helper.make_tensor("zero", TensorProto.FLOAT16, [], [0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    session = ort.InferenceSession(model.SerializeToString(), providers=["CUDAExecutionProvider"])
    x = ort.OrtValue.ortvalue_from_shape_and_type([nbytes // 2], np.float16, "cuda", 0)
    y = ort.OrtValue.ortvalue_from_shape_and_type([nbytes // 2], np.float16, "cuda", 0)
    binding = session.io_binding()
    binding.bind_ortvalue_input("x", x)
    binding.bind_ortvalue_output("y", y)
    for _ in range(3):
        session.run_with_iobinding(binding)
    times = []
    for _ in range(10):
        start = time.perf_counter()
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        times.append(time.perf_counter() - start)
    return 2 * nbytes / min(times)


CPU_PROBE_BYTES = (64 << 20, 256 << 20)  # the CPU probe's buffer: past the caches, small beside the model


def read_bandwidth(nbytes: int, threads: int | None = None, seconds: float = 1.0) -> float:
    """Bytes/s that `threads` threads (default: every core) read from host memory, best of ~1 s of passes.

    The buffer is the weights' size clamped to CPU_PROBE_BYTES: large enough that it streams from
    DRAM rather than the caches, small enough to take a fraction of a second and little memory.
    numpy's reductions release the GIL, so each thread sums its own slice at memory speed.
    """
    from concurrent.futures import ThreadPoolExecutor

    nbytes = int(min(max(nbytes, CPU_PROBE_BYTES[0]), CPU_PROBE_BYTES[1]))
    threads = threads or os.cpu_count() or 1
    buffer = np.ones(nbytes // 4, dtype=np.float32)  # written once: every page resident before timing
    slices = np.array_split(buffer, threads)
    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            list(pool.map(np.add.reduce, slices))
            best = min(best, time.perf_counter() - start)
    return buffer.nbytes / best


def weight_bytes(layout: ModelLayout) -> int:
    onnx_dir = layout.onnx_path.parent
    return sum(f.stat().st_size for f in onnx_dir.glob(layout.onnx_path.name + "*"))


def _engine_subprocess(engine: str, args, folder: str) -> dict:
    cmd = [sys.executable, "-m", "lfm2_onnx.bench", folder, "--ep", args.ep, "--prompt-len",
           str(args.prompt_len), "--gen", str(args.gen), "--batch", str(args.batch), "--runs", str(args.runs),
           "--engine", engine]
    print(f"running {engine} ...", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    line = next((l for l in reversed(proc.stdout.splitlines()) if l.startswith("{")), None)
    if proc.returncode or line is None:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["failed"]}
    return json.loads(line)


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m lfm2_onnx.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("folder", help="export folder written by python -m lfm2_onnx.build")
    p.add_argument("--ep", default="cpu", choices=["cpu", "cuda"],
                   help="execution provider: cpu or cuda (needs onnxruntime-gpu); default cpu")
    p.add_argument("--prompt-len", type=int, default=1024,
                   help="tokens per prompt (random ids, the same for every engine); default 1024")
    p.add_argument("--gen", type=int, default=128, help="new tokens per row, greedy decoding; default 128")
    p.add_argument("--batch", type=int, default=1, help="prompts decoded together; default 1")
    p.add_argument("--runs", type=int, default=3, help="timed runs after one warm-up (medians reported)")
    p.add_argument("--compare-genai", action="store_true", help="also run onnxruntime-genai on the same folder")
    p.add_argument("--genai-folder", help="also run onnxruntime-genai on this folder: another export of the same "
                   "model, e.g. onnxruntime-genai's own builder's (row 'genai-folder')")
    p.add_argument("--engine", choices=["ours", "ours-nograph", "genai"], help=argparse.SUPPRESS)  # internal
    p.add_argument("--json", type=Path, help="also write the results here")
    return p


@cli_entry
def main(argv=None) -> int:
    args = parser().parse_args(argv)
    layout = ModelLayout.from_folder(args.folder)
    if args.prompt_len < 2 or args.gen < 2:
        raise UserError("--prompt-len and --gen must be at least 2")
    if args.batch < 1 or args.runs < 1:
        raise UserError("--batch and --runs must be at least 1")
    check_ep_flag(args.ep)
    if args.genai_folder and ModelLayout.from_folder(args.genai_folder).vocab_size != layout.vocab_size:
        raise UserError(f"--genai-folder {args.genai_folder} has another vocabulary than {args.folder}: "
                        "pass an export of the same model")
    prompts = prompts_for(layout.vocab_size, args.batch, args.prompt_len)
    if args.engine:  # one engine in this process; the parent collects the JSON line
        if args.engine == "genai":
            result = run_genai(args.folder, args.ep, prompts, args.gen, args.runs)
        else:
            result = run_ours(args.folder, args.ep, prompts, args.gen, args.runs, args.engine == "ours")
        print(json.dumps(result))
        return 0
    # On CUDA also without graphs: what capture/replay buys, and a number even if capture fails.
    engines = ["ours"] + (["ours-nograph"] if args.ep == "cuda" else []) + (["genai"] if args.compare_genai else [])
    results = {e: _engine_subprocess(e, args, args.folder) for e in engines}
    if args.genai_folder:
        results["genai-folder"] = _engine_subprocess("genai", args, args.genai_folder)
    print("measuring memory bandwidth ...", file=sys.stderr, flush=True)
    bandwidth = copy_bandwidth(args.ep, weight_bytes(layout)) if args.ep == "cpu" else copy_bandwidth(args.ep)
    floor_ms = weight_bytes(layout) / bandwidth * 1e3
    print(f"{layout.folder} · {args.ep} · batch {args.batch} · prompt {args.prompt_len} · {args.gen} new tokens "
          f"· medians of {args.runs} runs")
    print(f"{'engine':<14}{'TTFT ms':>10}{'TPOT ms':>10}{'tokens/s':>11}{'memory MB':>11}")
    for engine, r in results.items():
        if "error" in r:
            print(f"{engine:<14} failed: {r['error']}")
            continue
        mem = f"{r['device_memory_mb']:.0f}" if r.get("device_memory_mb") else "n/a"
        print(f"{engine:<14}{r['ttft_ms']:>10.2f}{r['tpot_ms']:>10.3f}{r['tokens_per_s']:>11.1f}{mem:>11}"
              + (f"   ({r['note']})" if r.get("note") else ""))
    kind = "read bandwidth" if args.ep == "cpu" else "copy bandwidth"
    print(f"{'floor':<14}{'':>10}{floor_ms:>10.3f}   (weights {weight_bytes(layout) / 1e6:.0f} MB / {kind} "
          f"{bandwidth / 1e9:.1f} GB/s)")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "results": results,
                                         "floor_tpot_ms": floor_ms, "copy_bandwidth_gbs": bandwidth / 1e9},
                                        indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
