"""Prometheus metrics of one server, in their own registry (GET /metrics)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0)
_STEP_BUCKETS = (0.0005, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
_TTFT_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.running = Gauge("lfm2_requests_running", "Requests holding a slot (prefilled or decoding)", registry=r)
        self.waiting = Gauge("lfm2_requests_waiting", "Requests waiting for a free slot", registry=r)
        self.slots = Gauge("lfm2_slots", "Slots (requests decoded together at most)", registry=r)
        self.slot_use = Gauge("lfm2_slot_use_ratio", "Fraction of the slots in use", registry=r)
        self.prompt_tokens = Counter("lfm2_prompt_tokens", "Prompt tokens accepted", registry=r)
        self.generation_tokens = Counter("lfm2_generation_tokens", "Tokens generated and sent", registry=r)
        self.requests = Counter("lfm2_requests", "Finished requests", ["endpoint", "finish_reason"], registry=r)
        self.ttft = Histogram("lfm2_time_to_first_token_seconds", "From submission to the first token",
                              buckets=_TTFT_BUCKETS, registry=r)
        self.itl = Histogram("lfm2_inter_token_latency_seconds", "Between two tokens of a request",
                             buckets=_LATENCY_BUCKETS, registry=r)
        # The engine thread's own view: what a step costs, how full decode steps are, how busy it is.
        self.step = Histogram("lfm2_engine_step_seconds", "One engine step (prefill or decode), host work included",
                              ["kind"], buckets=_STEP_BUCKETS, registry=r)
        self.decode_rows = Counter("lfm2_engine_decode_rows", "Requests advanced by decode steps (sum over steps)",
                                   registry=r)
        self.prefill_requests = Counter("lfm2_engine_prefill_requests", "Requests prefilled", registry=r)
        self.busy = Counter("lfm2_engine_busy_seconds", "Time the engine thread spent stepping and delivering",
                            registry=r)

    def engine_state(self, running: int, waiting: int, slots: int) -> None:
        self.running.set(running)
        self.waiting.set(waiting)
        self.slots.set(slots)
        self.slot_use.set(running / slots if slots else 0.0)

    def engine_step(self, prefill: bool, requests: int, seconds: float, busy: float) -> None:
        self.step.labels("prefill" if prefill else "decode").observe(seconds)
        (self.prefill_requests if prefill else self.decode_rows).inc(requests)
        self.busy.inc(busy)

    def render(self) -> bytes:
        return generate_latest(self.registry)
