"""Host work per generated token, split: the engine's own step vs the server's per-token path.

    python benchmarks/serve_host.py engine FOLDER --rows 16 64          # engine.step(): host µs per row-token
    python benchmarks/serve_host.py stream FOLDER --rows 64 [--chat]    # the event loop's µs per token, no HTTP
    python benchmarks/serve_host.py server FOLDER --clients 16 64       # the server around a model-free engine

`engine`: the real Engine on FOLDER (--ep), --rows requests prefilled together, then --steps decode
steps timed; onnxruntime's run time (device waits included: the step's last run waits for the
device) is measured apart (a wrapper around run_with_iobinding), and
what is left of the step, divided by the tokens it produced, is the engine's host work per row
per step (bookkeeping, sampling decisions, reading tokens back).

`stream`: --rows streams fed one token per step through the worker's hand-off and the app's chunk
path (mailbox, detokenising, stop strings, metrics, SSE JSON), no HTTP: the event loop's CPU time
per token.

`server`: the real server (FastAPI app, worker thread, detokenising, SSE, uvicorn) whose engine is
replaced by NullEngine: the same interface with no model, each decode step gives every running
request one token after --device-ms (slept, GIL released, like a device wait). With --device-ms 0
the tokens/s is the most the server's host path can push; its CPU time per token (the server
process's /proc counters over the timed run, clients excluded) is the host cost per row per step.
Clients: benchmarks/serve_load.py (streamed /v1/completions, ignore_eos, in their own processes).
A benchmark, not a test; on a shared machine run the variants back to back, more than once.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

import numpy as np


# -- the engine ---------------------------------------------------------------------------------
def engine_host(folder: str, rows: int, steps: int, prompt_len: int, ep: str = "cpu") -> dict:
    from lfm2_onnx.engine import Engine, Request
    from lfm2_onnx.hub import resolve_export
    from lfm2_onnx.sampling import SamplingParams

    layout = resolve_export(folder, ep, None)
    engine = Engine(layout, ep, prompt_len + steps * 2 + 8, max_slots=rows)
    session = engine.sessions.uniform
    ort = [0.0]
    run = session.run_with_iobinding

    def timed_run(*a, **k):
        t = time.perf_counter()
        try:
            return run(*a, **k)
        finally:
            ort[0] += time.perf_counter() - t

    session.run_with_iobinding = timed_run
    rng = np.random.default_rng(0)
    requests = [engine.add(Request(rng.integers(100, layout.vocab_size, prompt_len).tolist(), steps * 2 + 4,
                                   SamplingParams(), frozenset())) for _ in range(rows)]
    while engine.waiting:
        engine.step()
    for _ in range(5):
        engine.step()  # warm: first decode steps bind and allocate
    before = sum(len(r.generated) for r in requests)
    ort[0], start = 0.0, time.perf_counter()
    for _ in range(steps):
        engine.step()
    wall = time.perf_counter() - start
    tokens = sum(len(r.generated) for r in requests) - before
    return {"ep": ep, "rows": rows, "tokens": tokens, "step_tokens_per_row": tokens / rows / steps,
            "wall_ms_per_step": 1e3 * wall / steps, "ort_ms_per_step": 1e3 * ort[0] / steps,
            "host_us_per_row_token": 1e6 * (wall - ort[0]) / tokens}


# -- the per-token path on the event loop, without HTTP ---------------------------------------------
def stream_host(folder: str, rows: int, steps: int, chat: bool) -> dict:
    """rows streamed completions (or chat completions) fed one token per step through the worker's
    hand-off and the app's real chunk path (detokenise, stop strings, metrics, SSE JSON); the event
    loop's CPU time per token, HTTP excluded."""
    import asyncio

    from lfm2_onnx.engine import Request
    from lfm2_onnx.server import app as server_app
    from lfm2_onnx.server.metrics import Metrics
    from lfm2_onnx.server.protocol import ChatCompletionRequest, CompletionRequest
    from lfm2_onnx.server.worker import Job, _dispatch
    from lfm2_onnx.text import TextCodec, TextStream

    codec = TextCodec(Path(folder))
    vocab = codec.tokenizer.get_vocab_size()
    state = argparse.Namespace(metrics=Metrics(), name="m", worker=None)

    async def run() -> tuple[float, int]:
        loop = asyncio.get_running_loop()
        jobs, consumers = [], []
        for i in range(rows):
            request = Request([1, 2, 3], steps)
            job = Job(request, loop, endpoint="chat" if chat else "completions")
            request.tag = job
            body = {"prompt": "x", "stream": True, "stream_options": {"include_usage": True}}
            if chat:
                body = ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "x"}],
                                                             "stream": True})
                plan = server_app._ChatPlan([], None, "", None, True)
                stream = server_app._Chat(state, job, TextStream(codec, [], skip_special_tokens=False), plan,
                                          False, body).chunks()
            else:
                stream = server_app._Completion(state, job, TextStream(codec, []),
                                                CompletionRequest.model_validate(body)).chunks()
            jobs.append(job)

            async def consume(stream=stream):
                async for _ in stream:
                    pass
            consumers.append(loop.create_task(consume()))
        await asyncio.sleep(0)
        cpu = time.process_time()
        for step in range(steps):
            items = []
            for i, job in enumerate(jobs):
                token = 100 + (step * 31 + i * 7) % (vocab - 100)
                job.request.generated.append(token)
                job.delivered += 1
                finish = "length" if step == steps - 1 else None
                if finish:
                    job.request.finish_reason = finish
                items.append((job, [token], finish))
            loop.call_soon_threadsafe(_dispatch, items)
            for _ in range(4):  # let every consumer take its token before the next step
                await asyncio.sleep(0)
        await asyncio.gather(*consumers)
        return time.process_time() - cpu, rows * steps

    cpu, tokens = asyncio.run(run())
    return {"rows": rows, "chat": chat, "tokens": tokens, "event_loop_us_per_token": 1e6 * cpu / tokens}


# -- the server around a model-free engine ------------------------------------------------------
class NullEngine:
    """The Engine interface the server uses, without a model: a decode step sleeps device_s (like a
    device wait, GIL released) and gives every running request one token; a prefill admits waiting
    requests into free slots and gives each its first token."""

    def __init__(self, slots: int, vocab: int, device_s: float):
        self._slots: list = [None] * slots
        self._waiting: deque = deque()
        self.vocab, self.device_s = vocab, device_s
        self.prefill_wait_steps = 0
        self.last_step_prefill = False
        self.eos_token_ids = frozenset()

    def add(self, request):
        if request.eos_token_ids is None:
            request.eos_token_ids = self.eos_token_ids
        self._waiting.append(request)
        return request

    def cancel(self, request):
        if request.finished:
            return
        if request.slot is None and request in self._waiting:
            self._waiting.remove(request)
        request.finish_reason = "cancelled"
        self._free(request)

    def _free(self, request):
        if request.slot is not None:
            self._slots[request.slot] = None
            request.slot = None

    running = property(lambda self: sum(r is not None for r in self._slots))
    waiting = property(lambda self: len(self._waiting))
    slots = property(lambda self: len(self._slots))
    idle = property(lambda self: not self._waiting and self.running == 0)

    def _token(self, request) -> None:
        n = len(request.generated)
        request.generated.append(100 + (n * 31 + len(request.prompt) * 7) % (self.vocab - 100))
        if n + 1 >= request.max_new_tokens:
            request.finish_reason = "length"
            self._free(request)

    def step(self):
        free = [s for s, r in enumerate(self._slots) if r is None]
        if self._waiting and free:
            admitted = []
            for slot in free:
                if not self._waiting:
                    break
                request = self._waiting.popleft()
                request.slot, self._slots[slot] = slot, request
                admitted.append(request)
                self._token(request)
            self.last_step_prefill = True
            return admitted
        self.last_step_prefill = False
        running = [r for r in self._slots if r is not None]
        if running and self.device_s:
            time.sleep(self.device_s)
        for request in running:
            self._token(request)
        return running


def _serve_null(folder: str, port: int, slots: int, device_s: float, http: str, loop: str) -> None:
    """The server process: the real app, its model's engine swapped for a NullEngine."""
    import uvicorn

    from lfm2_onnx import lfm2_model
    from lfm2_onnx.server import ServerConfig, create_app

    real = lfm2_model.Lfm2Model.from_layout.__func__

    def from_layout(cls, layout, *a, **k):
        model = real(cls, layout, *a, **k)
        model.engine = NullEngine(slots, layout.vocab_size, device_s)
        return model

    lfm2_model.Lfm2Model.from_layout = classmethod(from_layout)
    app = create_app(ServerConfig(folder=folder, max_batch=slots))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", http=http, loop=loop)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_host(args, clients: int) -> dict:
    sys.path.insert(0, str(Path(__file__).parent))
    import serve_load

    port = args.port
    server = subprocess.Popen([sys.executable, __file__, "_serve", args.folder, "--port", str(port),
                               "--slots", str(clients), "--device-ms", str(args.device_ms), "--http", args.http,
                               "--loop", args.loop])
    try:
        url = f"http://127.0.0.1:{port}"
        from lfm2_onnx.serve import wait_until_healthy

        wait_until_healthy(url, timeout=120, process=server)
        ns = argparse.Namespace(url=url, clients=clients, rounds=args.rounds, prompt_len=args.prompt_len,
                                max_tokens=args.max_tokens, vocab=args.vocab, api_key=None, timeout=600,
                                warmup=True, procs=max(1, min(-(-clients // 8), os.cpu_count() or 1)),
                                metrics=True, json=None)
        cpu = _cpu_seconds(server.pid)
        summary = serve_load.run(ns)
        cpu = _cpu_seconds(server.pid) - cpu
        tokens = summary["output_tokens_per_s"] * summary["wall_s"]
        return {"clients": clients, "device_ms": args.device_ms, "output_tokens_per_s": summary["output_tokens_per_s"],
                "itl_p50_ms": (summary["itl_ms"] or {}).get("p50"), "tpot_p50_ms": (summary["tpot_ms"] or {}).get("p50"),
                "failed": summary["failed"], "server_cpu_us_per_token": 1e6 * cpu / tokens,
                "server": summary["server"]}
    finally:
        server.terminate()
        server.wait(timeout=30)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="part", required=True)
    e = sub.add_parser("engine")
    e.add_argument("folder")
    e.add_argument("--rows", type=int, nargs="+", default=[16, 64])
    e.add_argument("--steps", type=int, default=100)
    e.add_argument("--prompt-len", type=int, default=16)
    e.add_argument("--ep", default="cpu", choices=["cpu", "cuda"])
    t = sub.add_parser("stream")
    t.add_argument("folder")
    t.add_argument("--rows", type=int, nargs="+", default=[16, 64])
    t.add_argument("--steps", type=int, default=128)
    t.add_argument("--chat", action="store_true", help="chat completion chunks (else text completions)")
    s = sub.add_parser("server")
    s.add_argument("folder")
    s.add_argument("--clients", type=int, nargs="+", default=[16, 64])
    s.add_argument("--rounds", type=int, default=2)
    s.add_argument("--prompt-len", type=int, default=16)
    s.add_argument("--max-tokens", type=int, default=128)
    s.add_argument("--vocab", type=int, default=768)
    s.add_argument("--device-ms", type=float, default=0.0)
    s.add_argument("--port", type=int, default=18777)
    n = sub.add_parser("_serve")  # internal: the server process of `server`
    n.add_argument("folder")
    n.add_argument("--port", type=int)
    n.add_argument("--slots", type=int)
    n.add_argument("--device-ms", type=float)
    for q in (s, n):  # uvicorn's choices ("auto": httptools / uvloop when installed)
        q.add_argument("--http", default="auto", choices=["auto", "h11", "httptools"])
        q.add_argument("--loop", default="auto", choices=["auto", "asyncio", "uvloop"])
    for q in (e, t, s):
        q.add_argument("--json", help="also write the rows here")
    args = p.parse_args(argv)
    if args.part == "_serve":
        _serve_null(args.folder, args.port, args.slots, args.device_ms / 1e3, args.http, args.loop)
        return 0
    rows = []
    if args.part == "engine":
        for r in args.rows:
            rows.append(engine_host(args.folder, r, args.steps, args.prompt_len, args.ep))
            print(json.dumps(rows[-1]))
    elif args.part == "stream":
        for r in args.rows:
            rows.append(stream_host(args.folder, r, args.steps, args.chat))
            print(json.dumps(rows[-1]))
    else:
        for c in args.clients:
            rows.append(server_host(args, c))
            print(json.dumps(rows[-1]))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
