"""N concurrent streaming clients against a running server: throughput and latency as clients see them.

    python -m lfm2_onnx.serve FOLDER --ep cuda --max-batch 64 &
    python benchmarks/serve_load.py --url http://127.0.0.1:8000 --clients 64 --prompt-len 512 --max-tokens 128

Each client sends --rounds streamed /v1/completions requests one after the other: a prompt of
--prompt-len random token ids (seeded, different per request) and max_tokens new tokens with
ignore_eos, so every request generates exactly that many. Prints requests/s, output tokens/s,
time to first token, inter-token latency (gaps between streamed chunks) and time per output token
(per request: (last - first) / (tokens - 1)), p50 and p99, and the failed requests. A benchmark,
not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time

import httpx
import numpy as np


async def one_request(client: httpx.AsyncClient, url: str, headers: dict, body: dict) -> dict:
    start = time.perf_counter()
    arrivals, usage = [], None
    async with client.stream("POST", f"{url}/v1/completions", json=body, headers=headers) as response:
        if response.status_code != 200:
            text = (await response.aread()).decode(errors="replace")
            raise RuntimeError(f"HTTP {response.status_code}: {text[:200]}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"]["message"])
            if chunk.get("usage"):
                usage = chunk["usage"]
            if chunk.get("choices") and chunk["choices"][0]["text"]:
                arrivals.append(time.perf_counter())
    tokens = usage["completion_tokens"] if usage else len(arrivals)
    if not arrivals:
        raise RuntimeError("no tokens streamed")
    return {"ttft": arrivals[0] - start, "gaps": np.diff(arrivals).tolist(), "tokens": tokens,
            "tpot": (arrivals[-1] - arrivals[0]) / (tokens - 1) if tokens > 1 else None}


async def client_loop(client, args, model: str, headers: dict, index: int, results: list, errors: list) -> None:
    rng = random.Random(index)
    for _ in range(args.rounds):
        prompt = [1] + [rng.randrange(100, args.vocab) for _ in range(args.prompt_len - 1)]
        body = {"model": model, "prompt": prompt, "max_tokens": args.max_tokens, "stream": True,
                "stream_options": {"include_usage": True}, "ignore_eos": True, "temperature": 0}
        try:
            results.append(await one_request(client, args.url, headers, body))
        except Exception as e:  # counted and shown, never fatal: a load test reports failures
            errors.append(str(e).splitlines()[0][:200] if str(e) else type(e).__name__)


def percentiles(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    p50, p99 = np.percentile(values, [50, 99]) * 1e3
    return f"p50 {p50:8.2f} ms   p99 {p99:8.2f} ms"


async def run(args) -> dict:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    limits = httpx.Limits(max_connections=args.clients + 4, max_keepalive_connections=args.clients + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(args.timeout), limits=limits) as client:
        models = (await client.get(f"{args.url}/v1/models", headers=headers)).json()
        model = models["data"][0]["id"]
        if args.warmup:  # captures the CUDA graphs of every bucket up to --clients rows, outside the timing
            warm = argparse.Namespace(**{**vars(args), "rounds": 1, "max_tokens": 8})
            await asyncio.gather(*(client_loop(client, warm, model, headers, 10**6 + i, [], [])
                                   for i in range(args.clients)))
        results, errors = [], []
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(client, args, model, headers, i, results, errors)
                               for i in range(args.clients)))
        wall = time.perf_counter() - start
    tokens = sum(r["tokens"] for r in results)
    summary = {
        "clients": args.clients, "rounds": args.rounds, "prompt_len": args.prompt_len, "max_tokens": args.max_tokens,
        "requests": len(results), "failed": len(errors), "wall_s": wall,
        "requests_per_s": len(results) / wall, "output_tokens_per_s": tokens / wall,
        "ttft_ms": _p(r["ttft"] for r in results), "itl_ms": _p(g for r in results for g in r["gaps"]),
        "tpot_ms": _p(r["tpot"] for r in results), "errors": sorted(set(errors))[:5],
    }
    print(f"{args.url} · {model} · {args.clients} clients × {args.rounds} · prompt {args.prompt_len} · "
          f"{args.max_tokens} new tokens")
    print(f"  requests      {len(results)} ok, {len(errors)} failed, {wall:.2f} s")
    print(f"  throughput    {summary['requests_per_s']:.2f} requests/s, {summary['output_tokens_per_s']:.1f} "
          "output tokens/s")
    print(f"  TTFT          {percentiles([r['ttft'] for r in results])}")
    print(f"  inter-token   {percentiles([g for r in results for g in r['gaps']])}")
    print(f"  TPOT          {percentiles([r['tpot'] for r in results])}")
    for error in summary["errors"]:
        print(f"  error: {error}")
    return summary


def _p(values) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    p50, p99 = np.percentile(values, [50, 99]) * 1e3
    return {"p50": float(p50), "p99": float(p99)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--rounds", type=int, default=1, help="requests per client, one after the other")
    p.add_argument("--prompt-len", type=int, default=512)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--vocab", type=int, default=65536, help="prompt token ids are drawn below this")
    p.add_argument("--api-key")
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--no-warmup", dest="warmup", action="store_false")
    p.add_argument("--json", help="also write the summary here")
    args = p.parse_args(argv)
    summary = asyncio.run(run(args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
