"""The token sampler: greedy, seeding, each filter, and agreement with transformers' processors."""

from __future__ import annotations

import dataclasses
import time
import types

import numpy as np
import pytest

from lfm2_onnx.errors import UserError
from lfm2_onnx.sampling import PRESETS, Sampler, SamplingParams, from_generation_config, preset

# A fixed distribution over V = 8, its probabilities scattered over the ids so that nothing can
# depend on the most likely token being id 0.
PROBS_BY_RANK = np.array([0.30, 0.20, 0.15, 0.12, 0.10, 0.07, 0.04, 0.02])
RANK_TO_ID = np.array([5, 2, 7, 0, 3, 6, 1, 4])
PROBS = np.empty(8)
PROBS[RANK_TO_ID] = PROBS_BY_RANK
DRAWS = 20000


def ids_of_ranks(*ranks: int) -> set[int]:
    return {int(RANK_TO_ID[r]) for r in ranks}


def draw_many(params: SamplingParams, probs: np.ndarray = PROBS, draws: int = DRAWS) -> np.ndarray:
    """`draws` independent tokens: one call on a batch of identical rows."""
    logits = np.broadcast_to(np.log(probs).astype(np.float32), (draws, probs.size))
    return Sampler(params, draws, probs.size)(logits)


def expected_distribution(keep: set[int], temperature: float = 1.0) -> np.ndarray:
    """PROBS with temperature applied, restricted to `keep`, renormalised."""
    tempered = PROBS ** (1.0 / temperature)
    tempered[[i for i in range(PROBS.size) if i not in keep]] = 0.0
    return tempered / tempered.sum()


def assert_matches_distribution(tokens: np.ndarray, expected: np.ndarray) -> None:
    """Never a token with zero expected probability; frequencies within 5 standard errors; chi-square sane."""
    n = tokens.size
    counts = np.bincount(tokens, minlength=expected.size)
    assert set(np.flatnonzero(counts)) <= set(np.flatnonzero(expected)), (counts, expected)
    freq = counts / n
    standard_error = np.sqrt(expected * (1 - expected) / n)
    assert (np.abs(freq - expected) <= 5 * standard_error + 1e-12).all(), (freq, expected)
    live = expected > 0
    chi_square = (((counts - n * expected) ** 2)[live] / (n * expected[live])).sum()
    assert chi_square < 30.0, chi_square  # df <= 7: P(chi2 > 30) is about 1e-4


# --- greedy and seeding ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_greedy_is_argmax(dtype):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 1000)).astype(dtype)
    logits[0, [3, 7]] = 50  # a tie: the lowest index wins, as with numpy's argmax
    tokens = Sampler(SamplingParams(), 6, 1000)(logits)
    assert tokens.dtype == np.int64
    np.testing.assert_array_equal(tokens, np.argmax(logits, axis=1))
    assert tokens[0] == 3


def test_greedy_ignores_seed_and_filters():
    logits = np.random.default_rng(1).normal(size=(4, 300)).astype(np.float32)
    params = SamplingParams(temperature=0.0, top_k=5, top_p=0.5, min_p=0.2, seed=123)
    np.testing.assert_array_equal(Sampler(params, 4, 300)(logits), np.argmax(logits, axis=1))


def test_same_seed_same_tokens_different_seed_differs():
    rng = np.random.default_rng(2)
    steps = [rng.normal(size=(64, 1000)).astype(np.float32) for _ in range(3)]
    params = SamplingParams(temperature=1.0, seed=7)

    def run(p):
        sampler = Sampler(p, 64, 1000)
        return np.stack([sampler(logits) for logits in steps])

    np.testing.assert_array_equal(run(params), run(params))
    assert (run(params) != run(SamplingParams(temperature=1.0, seed=8))).any()


# --- each filter on a known distribution ------------------------------------------------------------

def test_plain_sampling_matches_softmax():
    assert_matches_distribution(draw_many(SamplingParams(temperature=1.0, seed=0)), PROBS)


def test_temperature_sharpens_and_flattens():
    for temperature in (0.5, 2.0):
        tokens = draw_many(SamplingParams(temperature=temperature, seed=1))
        assert_matches_distribution(tokens, expected_distribution(set(range(8)), temperature))


def test_top_k_keeps_the_k_most_likely():
    tokens = draw_many(SamplingParams(temperature=1.0, top_k=3, seed=2))
    assert set(tokens.tolist()) == ids_of_ranks(0, 1, 2)
    assert_matches_distribution(tokens, expected_distribution(ids_of_ranks(0, 1, 2)))


def test_top_p_keeps_the_nucleus():
    # Mass above each rank: 0, .30, .50, .65, ... so top_p = 0.6 keeps ranks 0-2.
    tokens = draw_many(SamplingParams(temperature=1.0, top_p=0.6, seed=3))
    assert set(tokens.tolist()) == ids_of_ranks(0, 1, 2)
    assert_matches_distribution(tokens, expected_distribution(ids_of_ranks(0, 1, 2)))


def test_min_p_drops_tokens_below_a_fraction_of_the_top():
    # 0.3 * p_max = 0.09: ranks 0-4 (0.30 .. 0.10) stay, 0.07 and below go.
    tokens = draw_many(SamplingParams(temperature=1.0, min_p=0.3, seed=4))
    assert set(tokens.tolist()) == ids_of_ranks(0, 1, 2, 3, 4)
    assert_matches_distribution(tokens, expected_distribution(ids_of_ranks(0, 1, 2, 3, 4)))


def test_filters_see_the_tempered_distribution():
    # temperature 0.5 squares the probabilities: .09 .04 .0225 .0144 ... (before renormalising),
    # so min_p = 0.2 keeps p^2 >= 0.2 * .09 = .018: ranks 0-2, where untempered it keeps ranks 0-5.
    tokens = draw_many(SamplingParams(temperature=0.5, min_p=0.2, seed=5))
    assert_matches_distribution(tokens, expected_distribution(ids_of_ranks(0, 1, 2), temperature=0.5))


def test_the_lfm2_preset_on_a_known_distribution():
    # temperature 0.3 then min_p 0.15: p ** (1/0.3) relative to the top: 1, .259, .099, ...
    params = dataclasses.replace(PRESETS["lfm2"], seed=6)
    tokens = draw_many(params)
    assert_matches_distribution(tokens, expected_distribution(ids_of_ranks(0, 1), temperature=0.3))


def test_draw_across_cdf_blocks_of_a_wide_vocabulary():
    # Mass on a few ids around the 256-token blocks of the draw, zero (underflowed) elsewhere,
    # and no -inf, so the draw runs on the whole row.
    vocab = 700
    chosen = np.array([3, 255, 256, 511, 699])
    probs = np.zeros(vocab)
    probs[chosen] = [0.1, 0.25, 0.3, 0.05, 0.3]
    logits = np.full(vocab, -1e4, dtype=np.float32)
    logits[chosen] = np.log(probs[chosen])
    tokens = Sampler(SamplingParams(temperature=1.0, seed=9), DRAWS, vocab)(np.broadcast_to(logits, (DRAWS, vocab)))
    assert_matches_distribution(tokens, probs)


# --- repetition penalty and observe() -------------------------------------------------------------

def test_repetition_penalty_pushes_seen_tokens_down():
    logits = np.array([[2.0, -2.0, 0.0, 1.5]], dtype=np.float32)
    seen = np.array([[True, True, True, False]])
    sampler = Sampler(SamplingParams(repetition_penalty=2.0), 1, 4)
    np.testing.assert_array_equal(sampler.processed_logits(logits, seen), [[1.0, -4.0, 0.0, 1.5]])
    assert sampler(logits, seen)[0] == 3  # greedy applies the penalty too, like generate()


def test_observe_builds_the_seen_mask():
    sampler = Sampler(SamplingParams(repetition_penalty=2.0), 2, 6)
    logits = np.full((2, 6), 4.0, dtype=np.float32)
    sampler.observe([np.array([0, 1, 1]), np.array([], dtype=np.int64)])  # a ragged prompt
    sampler.observe(np.array([5, 2]))  # one chosen token per row
    expected = np.array([[2, 2, 4, 4, 4, 2], [4, 4, 2, 4, 4, 4]], dtype=np.float32)
    np.testing.assert_array_equal(sampler.processed_logits(logits), expected)
    np.testing.assert_array_equal(sampler(logits), [2, 0])
    with pytest.raises(ValueError):
        sampler.observe(np.array([6, 0]))
    sampler.reset()
    np.testing.assert_array_equal(sampler.processed_logits(logits), logits)


# --- agreement with transformers ------------------------------------------------------------------

# transformers and torch are test-only references (the package never imports torch); without them
# only these tests skip.

@pytest.fixture
def torch():
    return pytest.importorskip("torch")


@pytest.fixture
def hf():
    pytest.importorskip("transformers")
    from transformers.generation import logits_process

    return logits_process


def random_case(batch: int, vocab: int, seq: int, scale: float, seed: int):
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(batch, vocab)) * scale).astype(np.float32)
    logits[:, :5] = 0.0  # exact zeros: HF divides them, which leaves them at 0
    input_ids = rng.integers(0, vocab, size=(batch, seq))
    seen = np.zeros((batch, vocab), dtype=bool)
    np.put_along_axis(seen, input_ids, True, axis=1)
    return logits, input_ids, seen


def test_repetition_penalty_matches_transformers(torch, hf):
    logits, input_ids, seen = random_case(4, 500, 40, 3.0, seed=10)
    for penalty in (1.3, 0.7):
        ours = Sampler(SamplingParams(repetition_penalty=penalty), 4, 500).processed_logits(logits, seen)
        theirs = hf.RepetitionPenaltyLogitsProcessor(penalty)(torch.from_numpy(input_ids),
                                                              torch.from_numpy(logits.copy()))
        np.testing.assert_array_equal(ours, theirs.numpy())


def transformers_processors(hf, p: SamplingParams) -> list:
    """The processors generate() would add for these params (same conditions as _get_logits_processor)."""
    processors = []
    if p.repetition_penalty != 1.0:
        processors.append(hf.RepetitionPenaltyLogitsProcessor(p.repetition_penalty))
    if p.temperature != 1.0:
        processors.append(hf.TemperatureLogitsWarper(p.temperature))
    if p.top_k != 0:
        processors.append(hf.TopKLogitsWarper(p.top_k))
    if p.top_p < 1.0:
        processors.append(hf.TopPLogitsWarper(p.top_p))
    processors.append(hf.MinPLogitsWarper(p.min_p))
    return processors


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


PIPELINE_CASES = [
    SamplingParams(temperature=0.3, min_p=0.15, repetition_penalty=1.05),
    SamplingParams(temperature=0.1, top_k=50, top_p=0.1, repetition_penalty=1.05),
    SamplingParams(temperature=0.7, top_k=40, top_p=0.9, min_p=0.05, repetition_penalty=1.3),
    SamplingParams(temperature=1.0, top_p=0.95),
    SamplingParams(temperature=1.5, top_k=1000, top_p=0.8),
    SamplingParams(temperature=2.0, top_p=0.9, repetition_penalty=0.8),  # nucleus of thousands
    SamplingParams(temperature=0.5, top_k=7),
    SamplingParams(temperature=1.2, min_p=0.5),
]


@pytest.mark.parametrize("params", PIPELINE_CASES, ids=lambda p: repr(p)[15:-1])
def test_filtered_distribution_matches_transformers(params, torch, hf):
    logits, input_ids, seen = random_case(8, 5000, 60, 2.0, seed=11)
    ours = Sampler(params, 8, 5000).processed_logits(logits, seen)
    theirs = torch.from_numpy(logits.copy())
    for processor in transformers_processors(hf, params):
        theirs = processor(torch.from_numpy(input_ids), theirs)
    theirs = theirs.numpy()
    np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(theirs))
    np.testing.assert_allclose(softmax(ours), softmax(theirs), atol=1e-5, rtol=0)


def test_processor_order_is_transformers_order(torch, hf):
    """Ask generate()'s own _get_logits_processor which processors it builds, and in which order."""
    from transformers import GenerationConfig
    from transformers.generation.utils import GenerationMixin

    model = types.SimpleNamespace(config=types.SimpleNamespace(is_encoder_decoder=False))
    model._merge_criteria_processor_list = types.MethodType(GenerationMixin._merge_criteria_processor_list, model)
    input_ids = torch.zeros((1, 4), dtype=torch.long)
    config = GenerationConfig(do_sample=True, temperature=0.7, top_k=20, top_p=0.9, min_p=0.1,
                              repetition_penalty=1.2)
    processors = GenerationMixin._get_logits_processor(
        model, generation_config=config, input_ids_seq_length=4, encoder_input_ids=input_ids,
        logits_processor=hf.LogitsProcessorList(), device="cpu",
        model_kwargs={"attention_mask": torch.ones_like(input_ids)})
    assert [type(p).__name__ for p in processors] == [
        "RepetitionPenaltyLogitsProcessor", "TemperatureLogitsWarper", "TopKLogitsWarper",
        "TopPLogitsWarper", "MinPLogitsWarper"]


# --- parameters -----------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value", [
    ("temperature", -0.1), ("temperature", float("nan")),
    ("top_k", -1), ("top_k", 2.5),
    ("top_p", 0.0), ("top_p", 1.01), ("top_p", -0.5),
    ("min_p", 1.0), ("min_p", -0.01),
    ("repetition_penalty", 0.0), ("repetition_penalty", -1.0),
    ("seed", -3),
])
def test_validate_names_the_bad_field(field, value):
    with pytest.raises(UserError, match=field) as caught:
        SamplingParams(**{field: value}).validate()
    assert "\n" not in str(caught.value)
    with pytest.raises(UserError):
        Sampler(SamplingParams(**{field: value}), 1, 8)


def test_valid_edges_pass():
    SamplingParams(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0).validate()
    SamplingParams(temperature=5.0, top_k=1, top_p=1e-6, min_p=0.999, repetition_penalty=0.01, seed=0).validate()
    for params in PRESETS.values():
        params.validate()


def test_presets():
    assert preset("greedy").temperature == 0.0
    lfm2 = preset("lfm2")
    assert (lfm2.temperature, lfm2.min_p, lfm2.repetition_penalty) == (0.3, 0.15, 1.05)
    with pytest.raises(UserError, match="greedy.*lfm2"):
        preset("nope")


def test_from_generation_config():
    # LFM2's generation_config.json has no sampling fields: greedy, like generate().
    assert from_generation_config({"bos_token_id": 1, "eos_token_id": 7}) == SamplingParams()
    assert from_generation_config({"do_sample": False, "temperature": 0.3, "repetition_penalty": 1.1}) == \
        SamplingParams(repetition_penalty=1.1)
    assert from_generation_config({"do_sample": True, "temperature": 0.3, "min_p": 0.15, "top_k": None,
                                   "repetition_penalty": 1.05}, seed=4) == \
        SamplingParams(temperature=0.3, top_k=50, min_p=0.15, repetition_penalty=1.05, seed=4)
    with pytest.raises(UserError, match="top_p"):
        from_generation_config({"do_sample": True, "top_p": 0.0})


# --- the real vocabulary size ---------------------------------------------------------------------

def test_full_vocabulary_is_fast_and_valid():
    batch, vocab = 8, 65536
    rng = np.random.default_rng(12)
    logits = (rng.normal(size=(batch, vocab)) * 4).astype(np.float16)
    seen = rng.random((batch, vocab)) < 0.01
    for params in [*PRESETS.values(), SamplingParams(temperature=1.0, top_p=0.9, seed=1)]:
        sampler = Sampler(dataclasses.replace(params, seed=3), batch, vocab)
        start = time.perf_counter()
        for _ in range(5):
            tokens = sampler(logits, seen)
        per_step = (time.perf_counter() - start) / 5
        assert per_step < 0.25, (params, per_step)  # generous; typically a few ms
        survivors = np.isfinite(sampler.processed_logits(logits, seen))
        assert survivors[np.arange(batch), tokens].all()
