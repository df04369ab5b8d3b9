"""The engine's thread: takes requests from the event loop, steps the batch, sends tokens back.

One thread owns the engine (lfm2_onnx.engine) and calls nothing else; HTTP handlers talk to it
through an inbox (add / cancel) and get each step's new tokens in their job's mailbox. It sleeps
while there is nothing to do. A step that fails fails the requests in it; the server keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from ..engine import Engine, Request
from ..errors import UserError, one_line
from .protocol import ApiError

log = logging.getLogger("lfm2_onnx.serve")

SWITCH_INTERVAL = 0.0005  # seconds a thread may hold the GIL while another waits (sys.setswitchinterval)


class Mailbox:
    """Items for one job's handler, put and taken on the event loop: take() returns everything put
    since the last take, in order (a handler that fell behind gets several steps at once). One list
    and one future: lighter per token than an asyncio.Queue."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._items: list = []
        self._waiter: asyncio.Future | None = None

    def put(self, item) -> None:
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def take(self) -> list:
        while not self._items:
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        items, self._items = self._items, []
        return items


@dataclass(eq=False)
class Job:
    """One HTTP request's generation: the engine request and the mailbox its tokens arrive in.

    The mailbox receives (token ids, finish reason or None) per step, or an ApiError."""

    request: Request
    loop: asyncio.AbstractEventLoop
    mailbox: Mailbox = field(init=False)
    delivered: int = 0  # tokens of request.generated already sent
    submitted: float = field(default_factory=time.perf_counter)
    endpoint: str = ""
    text: object = None  # the TextStream its tokens go through
    finish_reason: str | None = None  # OpenAI's: stop, length (tool_calls is decided by the handler)
    eos: bool = False  # it ended on an eos token

    def __post_init__(self):
        self.mailbox = Mailbox(self.loop)


class Overloaded(Exception):
    pass


class EngineWorker:
    def __init__(self, engine: Engine, *, max_waiting: int, metrics=None):
        self.engine, self.max_waiting, self.metrics = engine, max_waiting, metrics
        self._inbox: deque[tuple[str, Job]] = deque()
        self._live: set[Job] = set()  # submitted and not finished (running or waiting)
        self._wake = threading.Condition()
        self._stopping = False
        self._switch_interval: float | None = None  # the process's own, restored by stop()
        self._thread = threading.Thread(target=self._run, name="lfm2-engine", daemon=True)

    def start(self) -> None:
        # The engine thread gives up the GIL while onnxruntime runs and wants it back the moment the
        # run ends; the event loop, busy streaming the previous step's tokens, would keep it for up to
        # the switch interval (5 ms by default: longer than a GPU decode step).
        self._switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(min(self._switch_interval, SWITCH_INTERVAL))
        self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout=10)
        if self._switch_interval is not None:
            sys.setswitchinterval(self._switch_interval)

    @property
    def waiting(self) -> int:
        return max(len(self._live) - self.engine.running, 0)

    def submit(self, job: Job) -> None:
        """Queue a job; Overloaded when every slot is taken and max_waiting requests already wait."""
        with self._wake:
            if len(self._live) >= self.engine.slots + self.max_waiting:
                raise Overloaded
            self._live.add(job)
            self._inbox.append(("add", job))
            self._wake.notify()

    def cancel(self, job: Job) -> None:
        """The client left, or a stop string ended it: its slot is free at the next step."""
        with self._wake:
            self._inbox.append(("cancel", job))
            self._wake.notify()

    # -- the thread ------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._inbox and self.engine.idle and not self._stopping:
                    self._wake.wait()
                if self._stopping:
                    return
                orders = list(self._inbox)
                self._inbox.clear()
            began = time.perf_counter()
            for order, job in orders:
                self._apply(order, job)
            try:
                advanced = self.engine.step()
            except Exception as e:  # a failed run: fail what was in the engine, keep serving
                log.exception("engine step failed")
                self._fail_all(ApiError(500, f"generation failed: {one_line(e)}", type="server_error"))
                continue
            stepped = time.perf_counter()
            self._deliver(advanced)
            if orders or any(r.finished for r in advanced):  # else no job can have finished
                with self._wake:
                    self._live = {job for job in self._live if not job.request.finished}
            if self.metrics is not None:
                if advanced:
                    self.metrics.engine_step(self.engine.last_step_prefill, len(advanced), stepped - began,
                                             time.perf_counter() - began)
                self.metrics.engine_state(self.engine.running, self.waiting, self.engine.slots)

    def _apply(self, order: str, job: Job) -> None:
        if order == "cancel":
            self.engine.cancel(job.request)
            return
        if job.request.finished:  # cancelled before it was added
            return
        try:
            self.engine.add(job.request)
        except UserError as e:
            job.request.finish_reason = "cancelled"
            job.loop.call_soon_threadsafe(job.mailbox.put, ApiError(400, one_line(e)))

    def _deliver(self, requests: list[Request]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for request in requests:
            job = request.tag
            new = request.generated[job.delivered:]
            job.delivered += len(new)
            if new or request.finished:
                by_loop.setdefault(job.loop, []).append((job, new, request.finish_reason))
        for loop, items in by_loop.items():  # one wake-up of the event loop per step
            loop.call_soon_threadsafe(_dispatch, items)

    def _fail_all(self, error: ApiError) -> None:
        engine = self.engine
        stuck = [r for r in engine._slots if r is not None] + list(engine._waiting)
        for request in stuck:
            engine.cancel(request)
            request.tag.loop.call_soon_threadsafe(request.tag.mailbox.put, error)


def _dispatch(items) -> None:
    for job, tokens, finish in items:
        job.mailbox.put((tokens, finish))
