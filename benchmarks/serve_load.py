"""N concurrent streaming clients against a running server: throughput and latency as clients see them.

    python -m lfm2_onnx.serve FOLDER --ep cuda --max-batch 64 &
    python benchmarks/serve_load.py --url http://127.0.0.1:8000 --clients 64 --prompt-len 512 --max-tokens 128

Each client sends --rounds streamed /v1/completions requests one after the other: a prompt of
--prompt-len random token ids (seeded, different per request) and max_tokens new tokens with
ignore_eos, so every request generates exactly that many. Prints requests/s, output tokens/s,
time to first token, inter-token latency (gaps between streamed chunks) and time per output token
(per request: (last - first) / (tokens - 1)), p50 and p99, and the failed requests. A benchmark,
not a test.

The clients run in --procs processes (default: one per 8 clients, at most the CPU count), each with
its own event loop, released together once every process has warmed up: one Python process cannot
read 64 streams of small SSE chunks as fast as a GPU writes them (measured: it starved the server,
BENCHMARKS.md "Serving"). Each process reports the share of its wall time it spent on the CPU;
the summary warns when a process was busy most of the time (the load, not the server, may then be
the bottleneck). --metrics also prints the server's own view (its /metrics) over the timed run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
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


async def run_clients(args, indices: list[int], ready, go) -> dict:
    """Clients `indices` of the load in this process; `ready` / `go` line the processes up after warm-up."""
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    limits = httpx.Limits(max_connections=len(indices) + 4, max_keepalive_connections=len(indices) + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(args.timeout), limits=limits) as client:
        models = (await client.get(f"{args.url}/v1/models", headers=headers)).json()
        model = models["data"][0]["id"]
        if args.warmup:  # captures the CUDA graphs of every bucket up to --clients rows, outside the timing
            warm = argparse.Namespace(**{**vars(args), "rounds": 1, "max_tokens": 8})
            await asyncio.gather(*(client_loop(client, warm, model, headers, 10**6 + i, [], []) for i in indices))
        ready.put(os.getpid())
        await asyncio.get_running_loop().run_in_executor(None, go.wait)
        results, errors = [], []
        cpu, start = time.process_time(), time.perf_counter()
        await asyncio.gather(*(client_loop(client, args, model, headers, i, results, errors) for i in indices))
        wall = time.perf_counter() - start
        cpu = time.process_time() - cpu
    return {"model": model, "results": results, "errors": errors, "wall": wall, "cpu_share": cpu / wall,
            "start": start}


def _process_main(args, indices, ready, go, out) -> None:
    try:
        out.put(asyncio.run(run_clients(args, indices, ready, go)))
    except Exception as e:  # the parent reports it
        ready.put(os.getpid())
        out.put({"fatal": f"{type(e).__name__}: {e}"})


def _fan_out(args, warmed_up) -> list[dict]:
    """Run the clients in args.procs processes (spawned: no inherited event loop or sockets);
    warmed_up() runs once all have warmed up, just before the timed run starts."""
    context = multiprocessing.get_context("spawn")
    ready, out, go = context.Queue(), context.Queue(), context.Event()
    shares = [list(range(args.clients))[p::args.procs] for p in range(args.procs)]
    procs = [context.Process(target=_process_main, args=(args, share, ready, go, out), daemon=True)
             for share in shares]
    for proc in procs:
        proc.start()
    for _ in procs:
        ready.get(timeout=args.timeout)
    warmed_up()
    go.set()
    parts = [out.get(timeout=args.timeout) for _ in procs]
    for proc in procs:
        proc.join()
    fatal = [p["fatal"] for p in parts if "fatal" in p]
    if fatal:
        raise RuntimeError(f"a client process failed: {fatal[0]}")
    return parts


def _server_metrics(url: str) -> dict[str, float]:
    """The server's counters and histogram sums (GET /metrics), name{labels} -> value."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "_bucket" not in line and "_created" not in line:
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def _server_view(before: dict, after: dict, wall: float) -> dict:
    """What the server measured over the timed run: its tokens/s, mean TTFT and inter-token latency,
    its engine steps (decode / prefill: count, mean duration) and the rows per decode step."""
    def delta(name):
        return after.get(name, 0.0) - before.get(name, 0.0)

    view = {"output_tokens_per_s": delta("lfm2_generation_tokens_total") / wall}
    for key, name in (("ttft_mean_ms", "lfm2_time_to_first_token_seconds"),
                      ("itl_mean_ms", "lfm2_inter_token_latency_seconds")):
        count = delta(f"{name}_count")
        view[key] = 1e3 * delta(f"{name}_sum") / count if count else None
    for kind in ("decode", "prefill"):
        name = f'lfm2_engine_step_seconds{{kind="{kind}"}}'
        count = delta(name.replace("{", "_count{"))
        view[f"{kind}_steps"] = int(count)
        view[f"{kind}_step_mean_ms"] = 1e3 * delta(name.replace("{", "_sum{")) / count if count else None
    steps = view["decode_steps"]
    view["rows_per_decode_step"] = delta("lfm2_engine_decode_rows_total") / steps if steps else None
    view["engine_busy_share"] = delta("lfm2_engine_busy_seconds_total") / wall
    return view


def run(args) -> dict:
    before = {}
    parts = _fan_out(args, lambda: before.update(_server_metrics(args.url) if args.metrics else {}))
    results = [r for p in parts for r in p["results"]]
    errors = [e for p in parts for e in p["errors"]]
    wall = max(p["start"] + p["wall"] for p in parts) - min(p["start"] for p in parts)
    model = parts[0]["model"]
    tokens = sum(r["tokens"] for r in results)
    summary = {
        "clients": args.clients, "rounds": args.rounds, "prompt_len": args.prompt_len, "max_tokens": args.max_tokens,
        "procs": args.procs, "requests": len(results), "failed": len(errors), "wall_s": wall,
        "requests_per_s": len(results) / wall, "output_tokens_per_s": tokens / wall,
        "ttft_ms": _p(r["ttft"] for r in results), "itl_ms": _p(g for r in results for g in r["gaps"]),
        "tpot_ms": _p(r["tpot"] for r in results), "errors": sorted(set(errors))[:5],
        "client_cpu_share": [round(p["cpu_share"], 3) for p in parts],
    }
    if args.metrics:
        summary["server"] = _server_view(before, _server_metrics(args.url), wall)
    print(f"{args.url} · {model} · {args.clients} clients × {args.rounds} in {args.procs} processes · "
          f"prompt {args.prompt_len} · {args.max_tokens} new tokens")
    print(f"  requests      {len(results)} ok, {len(errors)} failed, {wall:.2f} s")
    print(f"  throughput    {summary['requests_per_s']:.2f} requests/s, {summary['output_tokens_per_s']:.1f} "
          "output tokens/s")
    print(f"  TTFT          {percentiles([r['ttft'] for r in results])}")
    print(f"  inter-token   {percentiles([g for r in results for g in r['gaps']])}")
    print(f"  TPOT          {percentiles([r['tpot'] for r in results])}")
    busiest = max(summary["client_cpu_share"])
    print(f"  client CPU    {busiest:.0%} of the wall time in the busiest of {args.procs} processes"
          + ("  (near saturation: add --procs)" if busiest > 0.7 else ""))
    if args.metrics:
        print("  server        " + ", ".join(f"{k} {_fmt(v)}" for k, v in summary["server"].items()))
    for error in summary["errors"]:
        print(f"  error: {error}")
    return summary


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3g}" if isinstance(value, float) else str(value)


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
    p.add_argument("--procs", type=int, help="client processes (default: one per 8 clients, at most the CPU count)")
    p.add_argument("--metrics", action="store_true", help="also print the server's /metrics over the timed run")
    p.add_argument("--json", help="also write the summary here")
    args = p.parse_args(argv)
    if args.procs is None:
        args.procs = max(1, min(-(-args.clients // 8), os.cpu_count() or 1))
    args.procs = max(1, min(args.procs, args.clients))
    summary = run(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
