"""One GPU round that decides the MoE levers of issue 9: router variants (builder/moe.py _route,
chosen by LFM2_ONNX_MOE_ROUTER at build time) and onnxruntime's MoE environment switches, each
built/loaded on the LFM2-8B-A1B shape and timed side by side in this one run.

    python3 benchmarks/moe_variants_gpu.py MODELS_DIR OUT_DIR [--budget 560] [--only fp16|q4f16]

MODELS_DIR holds LFM2-8B-A1B's config (and tokenizer files); the random checkpoint and the base
builds are reused from WORK (default /tmp/moe-round, benchmarks/moe_gpu_round.sh's folder) when
present. Every configuration runs in its own process (onnxruntime reads the switches when a session
runs, and a CUDA graph keeps what it captured): one load, then TTFT / TPOT / tokens/s at batch 1, 8
and 32 (prompt 1024, 128 new, greedy, median of --runs after a warm-up) and the replayed batch-1
decode step; the profiled ones also get the kernels of one batch-1 step (benchmarks/kernel_profile.py,
prompt 256, a load without graphs). Results: OUT_DIR/variants.jsonl, OUT_DIR/profile-*.txt, and a
table at the end. Steps run in priority order (builds, base vs V, profiles, switches) and are skipped
when --budget seconds would not fit them; run the same command again on the same machine to resume
(finished configurations and builds are kept).
Configurations (router variants: lean, rank, gemm, gate16; see builder/moe.py):
  fp16/q4f16 base          the TopK graph (LFM2_ONNX_MOE_ROUTER=base; the default before round 3)
  fp16/q4f16 V             lean,rank,gemm, the default now (same choice as base: fp32 selection, ties alike)
  fp16 V pdl / V det       ORT_ENABLE_PDL=1 (programmatic dependent launch in the MoE op's kernels);
                           ORT_FORCE_DETERMINISTIC_MOE=1 (GEMM tactic 0, no per-session profiling)
  fp16 V warm1             the first MoE call is one token, so a profiler that tunes once per
                           GEMM shape tunes for decode rather than for the 1024-token prefill
  q4f16 V det              as above on QMoE, whose int4 GEMM profiling finds "No valid GEMM config"
  fp16 V+gate16            fp16 gate GEMV (changes near-tie choices; not exact to fp32 routing)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
VARIANT = "lean,rank,gemm"
ENV_PDL = {"ORT_ENABLE_PDL": "1"}
ENV_DET = {"ORT_FORCE_DETERMINISTIC_MOE": "1"}
SIZE_GB = {"fp16": 16.5, "int4": 9.0}  # one 8B-A1B build on disk


# -- one configuration, in its own process ------------------------------------------------------

def measure(args) -> None:
    from lfm2_onnx.bench import _summary, prompts_for
    from lfm2_onnx.lfm2_model import Lfm2Model
    from lfm2_onnx.sampling import SamplingParams

    sys.path.insert(0, str(HERE))
    import kernel_profile

    capacity = args.prompt_len + args.gen + 64
    if args.profile:  # the kernels of one batch-1 decode step, without graphs (CUPTI sees each launch)
        profiled = kernel_profile.load(args.folder, "uniform", capacity, cuda_graph=False)
        prompt = prompts_for(profiled.layout.vocab_size, 1, args.prompt_len)[0]
        kernel_profile.profile(profiled, prompt, rows=args.rows)  # prints its table
        return
    start = time.perf_counter()
    model = Lfm2Model.load(args.folder, ep=args.ep, max_length=capacity)
    record = {"config": args.label, "folder": args.folder, "load_s": round(time.perf_counter() - start, 1),
              "env": {k: os.environ[k] for k in ("ORT_ENABLE_PDL", "ORT_FORCE_DETERMINISTIC_MOE") if k in os.environ}}
    if args.warm_tokens:
        model.generate_ids([[1] * args.warm_tokens], 2)
    greedy = SamplingParams()
    vocab = model.layout.vocab_size
    for batch in args.batches:
        prompts = prompts_for(vocab, batch, args.prompt_len)
        runs = []
        for _ in range(args.runs + 1):  # the first warms up (and captures this batch's graphs)
            t0, first, count = time.perf_counter(), None, 0
            for _tokens in model.steps(prompts, args.gen, greedy):
                count += 1
                if first is None:
                    first = time.perf_counter()
            runs.append((first - t0, (time.perf_counter() - first) / max(count - 1, 1), count))
        summary = _summary(runs[1:], batch, args.ep)
        record[f"b{batch}"] = {k: round(summary[k], 3) for k in ("ttft_ms", "tpot_ms", "tokens_per_s")}
        print(f"  {args.label} batch {batch}: TTFT {summary['ttft_ms']:.2f} ms, TPOT {summary['tpot_ms']:.3f} ms, "
              f"{summary['tokens_per_s']:.0f} tokens/s", flush=True)
    prompt = prompts_for(vocab, 1, args.prompt_len)[0]
    record["tokens_b1"] = model.generate_ids([prompt], 16)[0]
    record["step_us_b1"] = round(kernel_profile.step_us(model, prompt, args.steps), 1)
    print(f"  {args.label} replayed batch-1 decode step {record['step_us_b1']:.1f} us", flush=True)
    with open(args.json, "a") as f:
        f.write(json.dumps(record) + "\n")


# -- the round ----------------------------------------------------------------------------------

class Round:
    def __init__(self, args):
        self.args, self.out, self.work = args, Path(args.out), Path(args.work)
        self.out.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        self.deadline = time.monotonic() + args.budget
        self.jsonl = self.out / "variants.jsonl"

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, label: str, cmd: list[str], env: dict | None, need_s: float, log: Path) -> bool:
        if self.left() < need_s:
            print(f"[skip] {label}: {self.left():.0f} s left, needs ~{need_s:.0f} s", flush=True)
            return False
        t0 = time.monotonic()
        with open(log, "w") as f:
            try:
                proc = subprocess.run(cmd, env={**os.environ, **(env or {})}, stdout=f, stderr=subprocess.STDOUT,
                                      timeout=max(self.left() - 5, 10))
                ok = proc.returncode == 0
            except subprocess.TimeoutExpired:
                ok = False
        text = log.read_text()
        shown = [line for line in text.splitlines() if line.startswith("  ") or "Error" in line]
        print(f"[{'ok' if ok else 'FAILED'}] {label} in {time.monotonic() - t0:.0f} s", flush=True)
        print("\n".join(shown[-40:]) if ok else "\n".join(text.splitlines()[-15:]), flush=True)
        return ok

    def checkpoint(self) -> Path:
        ck = self.work / "ck-8b"
        if not ck.exists():
            self.run("random checkpoint", [sys.executable, "-m", "lfm2_onnx.builder.random_checkpoint",
                                           str(Path(self.args.models) / "LFM2-8B-A1B"), "-o", str(ck)],
                     None, 60, self.out / "ckpt.log")
        return ck

    def build(self, name: str, precision: str, router: str) -> Path | None:
        """WORK/ours-<name> (the base builds share moe_gpu_round.sh's folder names)."""
        folder = self.work / f"ours-{name}"
        if folder.exists():
            return folder
        cost = 45 if precision == "fp16" else 100
        checkpoint = self.checkpoint()
        if not self.make_room(SIZE_GB[precision]):
            print(f"[skip] build {name}: {self.free_gb():.0f} GB free, needs ~{SIZE_GB[precision]} GB", flush=True)
            return None
        cmd = [sys.executable, "-m", "lfm2_onnx.build", "-i", str(checkpoint), "-o", str(folder), "-p",
               precision, "-e", "cuda", "-q"]
        ok = self.run(f"build {name} ({router or 'base'})", cmd, {"LFM2_ONNX_MOE_ROUTER": router or "base"}, cost,
                      self.out / f"build-{name}.log")
        return folder if ok else None

    def free_gb(self) -> float:
        return shutil.disk_usage(self.work).free / 1e9

    def make_room(self, need_gb: float) -> bool:
        """The device's disk (64 GiB) holds the checkpoint and about four 8B builds: base builds whose
        timings are already taken go first when a build would not fit."""
        for label, name in (("fp16 base", "ours-fp16"), ("q4f16 base", "ours-q4f16")):
            if self.free_gb() >= need_gb + 3:
                break
            if label in self.done() and (self.work / name).exists() and not self.args.profile_base:
                print(f"[disk] removing {name} ({label} is measured) for the next build", flush=True)
                shutil.rmtree(self.work / name)
        return self.free_gb() >= need_gb + 3

    def done(self) -> set[str]:
        if not self.jsonl.exists():
            return set()
        return {json.loads(line)["config"] for line in self.jsonl.read_text().splitlines() if line.strip()}

    def measure(self, label: str, build, env: dict | None = None, warm: int = 0) -> None:
        """Timings of one configuration (skipped when variants.jsonl has it: a second call resumes).
        `build` gives its folder (building it if needed), or None."""
        if label in self.done():
            return
        folder = build()
        if folder is None:
            print(f"[skip] {label}: no build", flush=True)
            return
        a = self.args
        cmd = [sys.executable, str(Path(__file__).resolve()), "--measure", str(folder), "--label", label,
               "--json", str(self.jsonl), "--runs", str(a.runs), "--steps", str(a.steps),
               "--batches", *map(str, a.batches), "--warm-tokens", str(warm), "--ep", a.ep,
               "--prompt-len", str(a.prompt_len), "--gen", str(a.gen)]
        self.run(label, cmd, env, 75 if "q4f16" in label else 60, self.out / f"run-{label.replace(' ', '_')}.txt")

    def profile(self, label: str, build) -> None:
        log = self.out / f"profile-{label.replace(' ', '_')}.txt"
        if self.args.ep != "cuda" or (log.exists() and "kernels per step" in log.read_text()):
            return
        folder = build()
        if folder is None:
            return
        cmd = [sys.executable, str(Path(__file__).resolve()), "--measure", str(folder), "--label", label,
               "--profile", "--rows", str(self.args.rows), "--prompt-len", "256"]
        self.run(f"profile {label}", cmd, None, 50, log)

    def plan(self) -> list:
        """(precision, step) in priority order: builds, base vs V, profiles, then the switches."""
        fp16 = lambda: self.build("fp16", "fp16", "")  # noqa: E731
        fp16_v = lambda: self.build("fp16-v", "fp16", VARIANT)  # noqa: E731
        q4 = lambda: self.build("q4f16", "int4", "")  # noqa: E731
        q4_v = lambda: self.build("q4f16-v", "int4", VARIANT)  # noqa: E731
        gate16 = lambda: self.build("fp16-v-gate16", "fp16", VARIANT + ",gate16")  # noqa: E731
        return [
            ("fp16", lambda: ("fp16 base" in self.done() or fp16(), fp16_v())),  # a measured base may be gone
            ("fp16", lambda: self.measure("fp16 base", fp16)),
            ("fp16", lambda: self.measure("fp16 V", fp16_v)),
            ("q4f16", lambda: ("q4f16 base" in self.done() or q4(), q4_v())),
            ("q4f16", lambda: self.measure("q4f16 base", q4)),
            ("q4f16", lambda: self.measure("q4f16 V", q4_v)),
            ("fp16", lambda: self.profile("fp16 V", fp16_v)),
            ("q4f16", lambda: self.profile("q4f16 V", q4_v)),
            ("fp16", lambda: self.measure("fp16 V pdl", fp16_v, ENV_PDL)),
            ("fp16", lambda: self.measure("fp16 V det", fp16_v, ENV_DET)),
            ("q4f16", lambda: self.measure("q4f16 V det", q4_v, ENV_DET)),
            ("fp16", lambda: self.measure("fp16 V warm1", fp16_v, warm=1)),
            ("q4f16", lambda: self.measure("q4f16 V pdl", q4_v, ENV_PDL)),
            ("fp16", lambda: self.profile("fp16 base", fp16) if self.args.profile_base else None),
            ("fp16", lambda: self.measure("fp16 V+gate16", lambda: gate16() if self.left() > 110 else None)),
        ]

    def table(self) -> None:
        if not self.jsonl.exists():
            return
        rows = [json.loads(line) for line in self.jsonl.read_text().splitlines() if line.strip()]
        print(f"\n{'config':<16}{'load s':>7}{'step us':>9}" + "".join(
            f"{f'b{b} TTFT':>10}{f'b{b} TPOT':>10}{f'b{b} tok/s':>11}" for b in self.args.batches))
        for r in rows:
            cells = "".join(f"{r[f'b{b}']['ttft_ms']:>10.2f}{r[f'b{b}']['tpot_ms']:>10.3f}{r[f'b{b}']['tokens_per_s']:>11.0f}"
                            if f"b{b}" in r else f"{'-':>31}" for b in self.args.batches)
            print(f"{r['config']:<16}{r['load_s']:>7.1f}{r['step_us_b1']:>9.1f}{cells}")
        for log in sorted(self.out.glob("profile-*.txt")):
            lines = [line.strip() for line in log.read_text().splitlines()
                     if "greedy step with CUDA graph replay" in line or "kernels per step" in line]
            print(f"{log.stem}: {'; '.join(lines) or 'no profile'}")
        tokens = {r["config"]: r["tokens_b1"] for r in rows}
        print("batch-1 greedy tokens equal to base's:", {c: t == tokens.get(c.split()[0] + " base")
                                                        for c, t in tokens.items()})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="?", help="folder holding LFM2-8B-A1B (config + tokenizer)")
    p.add_argument("out", nargs="?", help="results folder")
    p.add_argument("--work", default=os.environ.get("WORK", "/tmp/moe-round"))
    p.add_argument("--budget", type=float, default=560, help="seconds for the whole round (configs that "
                   "would not fit are skipped)")
    p.add_argument("--only", choices=["fp16", "q4f16"], help="one precision (e.g. one call each)")
    p.add_argument("--profile-base", action="store_true", help="also profile the base fp16 graph")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--steps", type=int, default=100, help="replayed batch-1 decode steps timed")
    p.add_argument("--rows", type=int, default=45, help="kernels listed per profile")
    # one configuration (internal: the round runs each in its own process)
    p.add_argument("--measure", metavar="FOLDER", dest="folder", help=argparse.SUPPRESS)
    p.add_argument("--label", help=argparse.SUPPRESS)
    p.add_argument("--json", help=argparse.SUPPRESS)
    p.add_argument("--warm-tokens", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)  # profile only
    # a dry run of the script's own plumbing on a CPU with tiny exports in WORK
    p.add_argument("--ep", default="cuda", help=argparse.SUPPRESS)
    p.add_argument("--prompt-len", type=int, default=1024, help=argparse.SUPPRESS)
    p.add_argument("--gen", type=int, default=128, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.folder:
        measure(args)
        return
    if not (args.models and args.out):
        p.error("MODELS_DIR and OUT_DIR are required")
    r = Round(args)
    for precision, step in r.plan():
        if args.only in (None, precision):
            step()
    r.table()


if __name__ == "__main__":
    main()
