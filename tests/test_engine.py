"""The engine (lfm2_onnx.engine) on CPU: slots, requests joining and leaving, per-request sampling."""

from __future__ import annotations

import pytest

from lfm2_onnx import engine as engine_module
from lfm2_onnx.engine import Engine, Request
from lfm2_onnx.errors import UserError
from lfm2_onnx.lfm2_model import Lfm2Model
from lfm2_onnx.sampling import SamplingParams
from lfm2_onnx.session import ModelLayout

PROMPTS = [[1, 45, 300, 17, 98, 412, 23, 77, 5, 640, 31], [1, 250, 9], [1, 88, 120, 700, 66, 15, 402],
           [1, 5, 6, 7, 8], [1] + list(range(20, 61))]
SAMPLED = SamplingParams(temperature=0.9, top_p=0.95, seed=11)
PENALISED = SamplingParams(repetition_penalty=1.3)  # greedy on the host


@pytest.fixture(scope="module")
def layout(tiny_export):
    return ModelLayout.from_folder(tiny_export)


@pytest.fixture(scope="module")
def engine(layout):
    return Engine(layout, "cpu", capacity=128, max_slots=4)


def run_alone(engine: Engine, prompt, n, params=SamplingParams()) -> list[int]:
    request = engine.add(Request(prompt, n, params))
    while not request.finished:
        engine.step()
    return request.generated


@pytest.fixture(scope="module")
def alone(engine):
    """Each prompt's tokens when it has the engine to itself."""
    return {(i, kind): run_alone(engine, p, 20, params) for i, p in enumerate(PROMPTS)
            for kind, params in (("greedy", SamplingParams()), ("sampled", SAMPLED), ("penalised", PENALISED))}


def drain(engine: Engine, requests) -> None:
    while not all(r.finished for r in requests):
        engine.step()


def test_requests_joining_and_leaving_get_the_tokens_they_get_alone(engine, alone):
    """Requests join mid-generation, one is cancelled, slots are reused, more wait than fit."""
    a = engine.add(Request(PROMPTS[0], 20))
    for _ in range(5):
        engine.step()
    b = engine.add(Request(PROMPTS[1], 20, SAMPLED))
    doomed = engine.add(Request(PROMPTS[2], 20))
    for _ in range(3):
        engine.step()
    assert doomed.slot is not None and len(doomed.generated) > 0
    engine.cancel(doomed)
    assert doomed.finish_reason == "cancelled" and doomed.slot is None
    later = [engine.add(Request(PROMPTS[i], 20, params)) for i, params in
             ((2, SamplingParams()), (3, PENALISED), (4, SamplingParams()), (1, SamplingParams()))]
    assert engine.waiting > 0  # four slots: some of them wait for a free one
    drain(engine, [a, b, *later])
    assert a.generated == alone[(0, "greedy")]
    assert b.generated == alone[(1, "sampled")]
    assert [r.generated for r in later] == [alone[(2, "greedy")], alone[(3, "penalised")], alone[(4, "greedy")],
                                           alone[(1, "greedy")]]
    assert all(r.finish_reason == "length" for r in [a, b, *later]) and engine.idle


def test_prompts_prefilled_together_into_later_slots(engine, alone):
    """A group of ragged prompts prefilled in one run into slots 1..3 while slot 0 decodes."""
    first = engine.add(Request(PROMPTS[3], 20))
    engine.step()
    group = [engine.add(Request(PROMPTS[i], 20)) for i in (0, 1, 2)]
    engine.step()  # a decode step for `first` (a prefill just ran)
    engine.step()  # the group's prefill
    assert [r.slot for r in group] == [1, 2, 3] and all(len(r.generated) == 1 for r in group)
    drain(engine, [first, *group])
    assert first.generated == alone[(3, "greedy")]
    assert [r.generated for r in group] == [alone[(i, "greedy")] for i in (0, 1, 2)]


def test_chunked_prefill_while_others_decode(engine, alone, monkeypatch):
    running = engine.add(Request(PROMPTS[0], 20))
    engine.step()
    engine.step()
    for chunk in (8, 10):  # odd and even numbers of chunks end in different conv buffers
        monkeypatch.setattr(engine_module, "PREFILL_CHUNK", chunk)
        long = engine.add(Request(PROMPTS[4], 20))
        drain(engine, [long])
        assert long.generated == alone[(4, "greedy")], chunk
    drain(engine, [running])
    assert running.generated == alone[(0, "greedy")]


def _count_prefill_runs(engine: Engine, monkeypatch) -> list[list[int]]:
    """The slots of each prefill run from now on."""
    runs = []
    for name in ("_prefill_uniform", "_prefill_ragged"):
        method = getattr(engine, name)

        def counted(run, method=method):
            runs.append([r.slot for r in run])
            return method(run)
        monkeypatch.setattr(engine, name, counted)
    return runs


def test_running_requests_move_down_so_arrivals_prefill_together(engine, alone, monkeypatch):
    """Slots 0 and 2 free up while 1 and 3 decode; two prompts arriving together: the request in
    slot 3 moves into slot 0 (caches copied), the two new ones take 2 and 3 in one prefill run, and
    every request still gets the tokens it gets alone (greedy, sampled and penalised rows moved)."""
    a, b, c, d = (engine.add(Request(PROMPTS[i], 20, params)) for i, params in
                  ((0, SamplingParams()), (1, SAMPLED), (2, SamplingParams()), (3, PENALISED)))
    for _ in range(4):
        engine.step()
    assert [r.slot for r in (a, b, c, d)] == [0, 1, 2, 3]
    engine.cancel(a)
    engine.cancel(c)
    runs = _count_prefill_runs(engine, monkeypatch)
    new = [engine.add(Request(PROMPTS[i], 20)) for i in (3, 3)]  # equal lengths: one run on CPU too
    engine.step()
    assert (b.slot, d.slot) == (1, 0) and [r.slot for r in new] == [2, 3] and runs == [[2, 3]]
    drain(engine, [b, d, *new])
    assert b.generated == alone[(1, "sampled")] and d.generated == alone[(3, "penalised")]
    assert [r.generated for r in new] == [alone[(3, "greedy")]] * 2 and engine.idle


def test_arrivals_wait_a_few_steps_to_share_a_prefill(layout, alone, monkeypatch):
    """prefill_wait_steps=3: a request arriving mid-decode joins within 3 decode steps, with what
    arrived meanwhile in the same run; a burst larger than PREFILL_BUDGET is prefilled in parts,
    a decode step between them; nobody waits when nothing runs."""
    engine = Engine(layout, "cpu", capacity=128, max_slots=4, prefill_wait_steps=3)
    first = engine.add(Request(PROMPTS[3], 20))
    engine.step()
    assert first.slot == 0 and len(first.generated) == 1  # idle engine: prefilled at once
    runs = _count_prefill_runs(engine, monkeypatch)
    early = engine.add(Request(PROMPTS[1], 20))
    engine.step()
    late = engine.add(Request(PROMPTS[1], 20))
    kinds = []
    for _ in range(4):
        engine.step()
        kinds.append(engine.last_step_prefill)
    assert kinds == [False, False, True, False] and runs == [[1, 2]]
    drain(engine, [first, early, late])
    assert first.generated == alone[(3, "greedy")]
    assert early.generated == late.generated == alone[(1, "greedy")]

    monkeypatch.setattr(engine_module, "PREFILL_BUDGET", 2 * len(PROMPTS[3]))
    runs.clear()
    running = engine.add(Request(PROMPTS[0], 20))
    engine.step()
    burst = [engine.add(Request(PROMPTS[3], 20)) for _ in range(3)]  # fill every free slot: no wait
    kinds = []
    for _ in range(4):
        engine.step()
        kinds.append(engine.last_step_prefill)
    assert kinds == [False, True, False, True] and runs == [[0], [1, 2], [3]]
    drain(engine, [running, *burst])
    assert running.generated == alone[(0, "greedy")]
    assert [r.generated for r in burst] == [alone[(3, "greedy")]] * 3
    with pytest.raises(UserError, match="prefill_wait_steps"):
        Engine(layout, "cpu", capacity=128, max_slots=1, prefill_wait_steps=-1)


def test_eos_and_budget_per_request(layout, alone):
    engine = Engine(layout, "cpu", capacity=128, max_slots=2)
    tokens = alone[(0, "greedy")]
    stop = next(t for k, t in enumerate(tokens) if k >= 2 and t not in tokens[:k])
    a = engine.add(Request(PROMPTS[0], 20, eos_token_ids=frozenset({stop})))
    b = engine.add(Request(PROMPTS[0], 7))
    drain(engine, [a, b])
    assert (a.generated, a.finish_reason) == (tokens[:tokens.index(stop)], "stop")
    assert (b.generated, b.finish_reason) == (tokens[:7], "length")


def test_bad_requests_are_refused(engine):
    with pytest.raises(UserError, match="exceeds the context of 128"):
        engine.add(Request(PROMPTS[0], 200))
    with pytest.raises(UserError, match="at least one token"):
        engine.add(Request([], 4))
    with pytest.raises(UserError, match="token ids must be in"):
        engine.add(Request([1, 10**9], 4))
    with pytest.raises(UserError, match="temperature"):
        engine.add(Request([1, 2], 4, SamplingParams(temperature=-1.0)))
    assert engine.idle


def test_interleaved_streams_share_the_model(tiny_export, alone):
    """Two generations iterated in turn: no state on the model, each gets its own tokens."""
    model = Lfm2Model.load(tiny_export, max_length=128)
    one = model.stream_ids(PROMPTS[0], 20)
    two = model.stream_ids(PROMPTS[2], 20, SAMPLED)
    got_one, got_two = [], []
    for a, b in zip(one, two):
        got_one.append(a)
        got_two.append(b)
    got_one += list(one)
    got_two += list(two)
    assert got_one == alone[(0, "greedy")] and got_two == alone[(2, "sampled")]
    abandoned = model.stream_ids(PROMPTS[1], 20)
    next(abandoned)
    abandoned.close()  # leaves the engine
    assert model.engine.idle
    assert model.generate_ids([PROMPTS[1], PROMPTS[3]], 20) == [alone[(1, "greedy")], alone[(3, "greedy")]]


def test_batch_larger_than_max_batch_waits_for_slots(tiny_export, alone):
    model = Lfm2Model.load(tiny_export, max_length=128, max_batch=2)
    assert model.generate_ids(PROMPTS, 20) == [alone[(i, "greedy")] for i in range(len(PROMPTS))]
    assert model.engine.slots == 2


cuda = pytest.mark.skipif(
    "CUDAExecutionProvider" not in __import__("onnxruntime").get_available_providers(),
    reason="needs onnxruntime-gpu and a CUDA device")


def _schedule(engine: Engine) -> list[list[int]]:
    """Requests joining and leaving over several slot buckets (1, 2, 4, 8), greedy and sampled."""
    first = [engine.add(Request(PROMPTS[i % len(PROMPTS)], 24)) for i in range(2)]
    for _ in range(4):
        engine.step()
    more = [engine.add(Request(PROMPTS[i % len(PROMPTS)], 24, SAMPLED if i == 4 else SamplingParams()))
            for i in range(2, 7)]
    for _ in range(3):
        engine.step()
    engine.cancel(more[0])
    late = [engine.add(Request(PROMPTS[4], 24)) for _ in range(2)]  # two: running rows move down first
    drain(engine, first + more[1:] + late)
    return [r.generated for r in first + more[1:] + late]


@cuda
@pytest.mark.cuda
def test_cuda_graphs_per_bucket_equal_uncaptured_runs(factory, tiny_checkpoint):
    """The same schedule with captured graphs (one per bucket and parity) and without: the same tokens."""
    folder = factory.export(tiny_checkpoint, "fp16", "cuda")
    layout = ModelLayout.from_folder(folder)
    captured = Engine(layout, "cuda", capacity=128, max_slots=8)
    plain = Engine(layout, "cuda", capacity=128, max_slots=8, cuda_graph=False)
    expected = _schedule(plain)
    assert _schedule(captured) == expected
    assert _schedule(captured) == expected  # replayed
