"""LFM2 q4 on CPU: lfm2_onnx's runtime vs llama.cpp (q4_0) on the same checkpoint, same threads, one run.

    python benchmarks/cpu_vs_llamacpp.py --checkpoint CKPT --work DIR [--threads 2] [--prompt-lens 512 1024]
        [--gen 128] [--runs 3] [--ours FOLDER ...] [--ours-build "-p int4"] [--ort-config KEY=VALUE ...]

llama.cpp comes from llama-cpp-python built from its source package (once, into this environment):

    CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAVA_BUILD=OFF" pip install --no-binary llama-cpp-python llama-cpp-python

The script then takes llama.cpp's own converter (convert_hf_to_gguf.py, from that source package,
downloaded into DIR unless --llama-src names an unpacked one) to turn CKPT into an f32 GGUF,
quantizes it to q4_0 with llama.cpp's quantizer (llama_model_quantize), and builds our export of the
same CKPT (python -m lfm2_onnx.build -i CKPT -e cpu + --ours-build) unless --ours gives folders.

Every engine runs in its own subprocess with the same thread count, on the same random prompt
tokens; the engines alternate, --runs times. Prefill tokens/s = prompt tokens / time to the first
new token; decode tokens/s = (new tokens - 1) / the time after it. Each cell is the median of the
runs, then the best run: on a machine shared with other work the best run is the one least disturbed.
--ort-config runs ours under several sets of onnxruntime session config entries (the levers
measured in BENCHMARKS.md), e.g. --ort-config "" session.intra_op.allow_spinning=1; cpu_mem_arena=1 turns
onnxruntime's CPU memory arena on (lfm2_onnx.session.CPU_MEMORY_ARENA).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np


def prompt_tokens(vocab: int, length: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    return [1] + rng.integers(100, min(vocab, 60000), length - 1).tolist()


# -- children: one engine, one model, every prompt length ---------------------------------------
def child_ours(folder: str, threads: int, lengths: list[int], gen: int, seed: int, config: dict) -> dict:
    from lfm2_onnx import session
    from lfm2_onnx.lfm2_model import Lfm2Model
    from lfm2_onnx.sampling import SamplingParams

    session.CPU_THREADS = threads
    config = dict(config)
    session.CPU_MEMORY_ARENA = config.pop("cpu_mem_arena", "0") == "1"  # a SessionOptions field, not an entry
    session.CPU_SESSION_CONFIG.update(config)
    model = Lfm2Model.load(folder, ep="cpu", max_length=max(lengths) + gen + 8)
    greedy = SamplingParams()
    model.generate_ids([prompt_tokens(model.layout.vocab_size, 16, 99)], 4, greedy)  # warm-up
    out = {}
    for length in lengths:
        prompt = prompt_tokens(model.layout.vocab_size, length, seed)
        start = time.perf_counter()
        first, count = None, 0
        for _ in model.steps([prompt], gen, greedy):
            count += 1
            if first is None:
                first = time.perf_counter()
        end = time.perf_counter()
        out[length] = (first - start, end - first, count)
    return out


def child_llama(gguf: str, threads: int, lengths: list[int], gen: int, seed: int) -> dict:
    from llama_cpp import Llama

    llm = Llama(model_path=gguf, n_threads=threads, n_threads_batch=threads, n_ctx=max(lengths) + gen + 8,
                n_batch=max(lengths), verbose=False)
    vocab = llm.n_vocab()
    llm.reset()
    for i, _ in enumerate(llm.generate(prompt_tokens(vocab, 16, 99), temp=0.0, top_k=1)):  # warm-up
        if i == 3:
            break
    out = {}
    for length in lengths:
        prompt = prompt_tokens(vocab, length, seed)
        llm.reset()  # no prefix reuse: the whole prompt is evaluated
        start = time.perf_counter()
        first, count = None, 0
        for _ in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
            count += 1
            if first is None:
                first = time.perf_counter()
            if count == gen:
                break
        end = time.perf_counter()
        out[length] = (first - start, end - first, count)
    return out


# -- preparation --------------------------------------------------------------------------------
def llama_source(work: Path, given: Path | None) -> Path:
    """The llama.cpp tree of the installed llama-cpp-python's source package (for its converter)."""
    if given:
        return given / "vendor" / "llama.cpp" if (given / "vendor").is_dir() else given
    import llama_cpp

    version = llama_cpp.__version__
    root = work / f"llama_cpp_python-{version}"
    if not root.is_dir():
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-binary", ":all:", "--no-deps",
                        f"llama-cpp-python=={version}", "-d", str(work)], check=True)
        with tarfile.open(work / f"llama_cpp_python-{version}.tar.gz") as tar:
            tar.extractall(work, filter="data")
    return root / "vendor" / "llama.cpp"


def make_gguf_q4_0(checkpoint: Path, work: Path, source: Path) -> Path:
    import llama_cpp

    f32, q4 = work / "model-f32.gguf", work / "model-q4_0.gguf"
    if not f32.exists():
        env = {**os.environ, "PYTHONPATH": str(source / "gguf-py")}
        subprocess.run([sys.executable, str(source / "convert_hf_to_gguf.py"), str(checkpoint), "--outfile", str(f32),
                        "--outtype", "f32"], check=True, env=env, stdout=subprocess.DEVNULL)
    if not q4.exists():
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
        params.nthread = 2
        if llama_cpp.llama_model_quantize(str(f32).encode(), str(q4).encode(), params) != 0:
            raise SystemExit("llama_model_quantize failed")
    return q4


def build_ours(checkpoint: Path, work: Path, extra: str) -> Path:
    name = "ours" + extra.replace(" ", "").replace("-", "_")
    out = work / name
    if not out.exists():
        subprocess.run([sys.executable, "-m", "lfm2_onnx.build", "-i", str(checkpoint), "-e", "cpu", "-o", str(out),
                        "-q", *extra.split()], check=True)
    return out


def onnx_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in (folder / "onnx").iterdir() if f.is_file())


# -- the run ------------------------------------------------------------------------------------
def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path)
    p.add_argument("--work", type=Path, default=Path("/tmp/cpu_vs_llamacpp"))
    p.add_argument("--llama-src", type=Path, help="an unpacked llama-cpp-python source package (else downloaded)")
    p.add_argument("--gguf", type=Path, help="a q4_0 GGUF to use instead of converting CKPT")
    p.add_argument("--ours", type=Path, nargs="*", default=[], help="our export folders (else built from CKPT)")
    p.add_argument("--ours-build", default="-p int4", help="build options for our export")
    p.add_argument("--ort-config", nargs="*", default=[], help="configurations of ours to compare (levers), "
                   "each KEY=VALUE[,KEY=VALUE...] of onnxruntime session config entries; '' for the defaults")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt-lens", type=int, nargs="+", default=[512, 1024])
    p.add_argument("--gen", type=int, default=128)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--no-llama", action="store_true", help="ours only (levers)")
    p.add_argument("--json", type=Path)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        spec = json.loads(args.child)
        if spec["engine"] == "llama":
            result = child_llama(spec["model"], args.threads, args.prompt_lens, args.gen, spec["seed"])
        else:
            result = child_ours(spec["model"], args.threads, args.prompt_lens, args.gen, spec["seed"], spec["config"])
        print(json.dumps(result))
        return 0

    args.work.mkdir(parents=True, exist_ok=True)
    engines = []  # (label, spec, file MB)
    if not args.no_llama:
        gguf = args.gguf or make_gguf_q4_0(args.checkpoint, args.work, llama_source(args.work, args.llama_src))
        engines.append(("llama.cpp q4_0", {"engine": "llama", "model": str(gguf)}, gguf.stat().st_size / 1e6))
        # ggml's CPU backend here runs on OpenMP, whose workers spin between ops by default; PASSIVE
        # makes them sleep, like our sessions' allow_spinning=0: both settings, for a fair pair.
        engines.append(("llama.cpp q4_0 OMP_WAIT_POLICY=PASSIVE",
                        {"engine": "llama", "model": str(gguf), "env": {"OMP_WAIT_POLICY": "PASSIVE"}},
                        gguf.stat().st_size / 1e6))
    folders = args.ours or [build_ours(args.checkpoint, args.work, args.ours_build)]
    # Each --ort-config argument is one configuration, "KEY=VALUE,KEY=VALUE" ("" for the defaults).
    configs = [dict(kv.split("=", 1) for kv in entry.split(",") if kv) for entry in args.ort_config] or [{}]
    for folder in folders:
        for config in configs:
            label = f"ours {folder.name}" + (f" {config}" if config else "")
            engines.append((label, {"engine": "ours", "model": str(folder), "config": config},
                            onnx_bytes(folder) / 1e6))

    results: dict[str, dict[int, list]] = {label: {n: [] for n in args.prompt_lens} for label, _, _ in engines}
    for run in range(args.runs):
        for label, spec, _ in engines:  # the engines alternate: drift on a shared machine hits all
            print(f"run {run + 1}/{args.runs}: {label} ...", file=sys.stderr, flush=True)
            cmd = [sys.executable, __file__, "--child", json.dumps({**spec, "seed": run}), "--threads",
                   str(args.threads), "--gen", str(args.gen), "--prompt-lens", *map(str, args.prompt_lens)]
            env = {**os.environ, **spec.get("env", {})}
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode:
                raise SystemExit(f"{label} failed:\n{proc.stderr[-3000:]}")
            for n, timing in json.loads(proc.stdout.strip().splitlines()[-1]).items():
                results[label][int(n)].append(timing)

    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"threads {args.threads} · {args.gen} new tokens · median / best of {args.runs} runs · "
          f"load average at the end {load} (other work on the machine)")
    print("| engine | file MB | " + " | ".join(f"prefill {n} tok/s | decode tok/s (after {n})"
                                              for n in args.prompt_lens) + " |")
    print("|---|---|" + "---|---|" * len(args.prompt_lens))
    summary = {}
    for label, _, size in engines:
        cells = []
        for n in args.prompt_lens:
            timings = results[label][n]
            prefill = [n / t[0] for t in timings]
            decode = [(t[2] - 1) / t[1] for t in timings]
            summary.setdefault(label, {})[n] = {"prefill_tok_s": statistics.median(prefill),
                                                "decode_tok_s": statistics.median(decode), "runs": timings}
            cells.append(f"{statistics.median(prefill):.0f} / {max(prefill):.0f} | "
                         f"{statistics.median(decode):.1f} / {max(decode):.1f}")
        print(f"| {label} | {size:.1f} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
