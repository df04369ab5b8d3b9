"""Side by side on one machine: lfm2_onnx.build vs onnxruntime-genai's model builder.

    python benchmarks/build_compare.py --models LFM2-350M LFM2-1.2B --shared ../shared/models --out results

For each real LFM2 config: seeded random bf16 weights (builder.random_checkpoint), then both builders
on the same checkpoint (wall time, peak RSS, output size), then the same verification (transformers
vs export, prompts as one right-padded batch, prefill + 32 decode steps) on both exports.
Writes results.json and one log per step under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

RSS_WRAPPER = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
               "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)")


def timed(cmd: list[str], log: Path, title: str) -> dict:
    """Run cmd in a fresh process; append its output to log under a header; time and peak RSS."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", RSS_WRAPPER, *cmd], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    text = proc.stdout + proc.stderr
    rss = next((int(line.split()[1]) for line in text.splitlines() if line.startswith("PEAK_RSS_KB")), 0)
    result = {"rc": proc.returncode, "seconds": round(seconds, 1), "peak_rss_gb": round(rss / 1024**2, 2)}
    with open(log, "a") as f:
        f.write(f"\n===== {title}: {' '.join(cmd)}\n{json.dumps(result)}\n{text[-20000:]}\n")
    return result


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.exists() else 0


def onnx_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and ".onnx" in f.name)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--models", nargs="+", default=["LFM2-350M", "LFM2-1.2B"])
    p.add_argument("--shared", type=Path, default=Path("../shared/models"))
    p.add_argument("--work", type=Path, default=Path("/tmp/build_compare"))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--precision", default="fp16")
    p.add_argument("--ep", default="cuda")
    p.add_argument("--extra-verify", nargs="*", default=["bf16", "fp32"],
                   help="more precisions of our builder to build and verify (ours only)")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    log = args.out / "all.log"
    results = {"ep": args.ep, "precision": args.precision, "models": {}}
    for name in args.models:
        r = results["models"][name] = {}
        ck = args.work / f"ck-{name}"
        if not ck.exists():
            r["checkpoint"] = timed([py, "-m", "lfm2_onnx.builder.random_checkpoint", str(args.shared / name),
                                     "-o", str(ck)], log, f"{name}-checkpoint")
        ours, theirs = args.work / f"ours-{name}", args.work / f"genai-{name}"
        r["ours_build"] = timed([py, "-m", "lfm2_onnx.build", "-i", str(ck), "-o", str(ours), "-p", args.precision,
                                 "-e", args.ep, "--overwrite", "-q"], log, f"{name}-ours-build")
        r["ours_build"].update(folder_bytes=folder_bytes(ours), onnx_bytes=onnx_bytes(ours))
        r["genai_build"] = timed([py, "-m", "onnxruntime_genai.models.builder", "-i", str(ck), "-o", str(theirs),
                                  "-p", args.precision, "-e", args.ep, "-c", str(args.work / "genai-cache")],
                                 log, f"{name}-genai-build")
        r["genai_build"].update(folder_bytes=folder_bytes(theirs), onnx_bytes=onnx_bytes(theirs))
        for label, folder in (("ours", ours), ("genai", theirs)):
            r[f"{label}_verify_{args.precision}"] = timed(
                [py, "-m", "lfm2_onnx.verify", str(folder), "--reference", str(ck), "--ep", args.ep], log,
                f"{name} {label} verify {args.precision}")
        for precision in args.extra_verify:
            folder = args.work / f"ours-{name}-{precision}"
            build = timed([py, "-m", "lfm2_onnx.build", "-i", str(ck), "-o", str(folder), "-p", precision,
                           "-e", args.ep, "--overwrite", "-q"], log, f"{name}-ours-build-{precision}")
            verify = timed([py, "-m", "lfm2_onnx.verify", str(folder), "--reference", str(ck), "--ep", args.ep],
                           log, f"{name}-ours-verify-{precision}")
            r[f"ours_{precision}"] = {"build": build, "verify": verify}
        (args.out / "results.json").write_text(json.dumps(results, indent=2))
        print(json.dumps({name: r}, indent=1), flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
