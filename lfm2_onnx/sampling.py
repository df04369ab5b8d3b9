"""Choosing the next token from a batch of logits, on the host, one step at a time.

The pipeline is the one Hugging Face transformers' generate() builds in
`GenerationMixin._get_logits_processor` (transformers/generation/utils.py), restricted to the
knobs we support, in the same order:

    1. repetition penalty   RepetitionPenaltyLogitsProcessor  (applied for greedy too, like HF)
    2. temperature          TemperatureLogitsWarper           (sampling only)
    3. top-k                TopKLogitsWarper                  (sampling only)
    4. top-p (nucleus)      TopPLogitsWarper                  (sampling only)
    5. min-p                MinPLogitsWarper                  (sampling only; after temperature)

then a draw from the softmax of what survives. temperature == 0 means greedy: the argmax of the
penalised logits (ties go to the lowest index, as numpy's argmax). Everything is float32, like
generate(), which casts the last-position logits to float32 before the processors run.

Known differences from HF, all on exact ties or the last float bit: top-p keeps every token tied
with the last one in the nucleus (HF keeps whichever of them its unstable sort puts first), and
min-p compares exp(logit - max) with min_p rather than softmax with min_p * max(softmax).

Speed, for V = 65536: no step sorts the vocabulary. top-k is a partition; top-p sorts only a
growing head of candidates until it holds top_p of the mass; once a filter has removed most
tokens, the rest works on the survivors alone; the draw is a two-level inverse CDF.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import UserError

# transformers' GenerationConfig defaults, used when a generation_config.json leaves a field out.
_HF_DEFAULTS = {"temperature": 1.0, "top_k": 50, "top_p": 1.0, "min_p": 0.0, "repetition_penalty": 1.0}

# Nucleus search starts with this many candidates and grows by _NUCLEUS_GROWTH until the nucleus
# fits, so a peaked distribution never pays for a sort of the whole vocabulary.
_NUCLEUS_FIRST_GUESS = 256
_NUCLEUS_GROWTH = 8

# Tokens per block of the two-level inverse CDF in _draw: sqrt(65536), so both levels are short.
_CDF_BLOCK = 256


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0         # 0 means greedy (argmax)
    top_k: int = 0                   # 0 = off
    top_p: float = 1.0               # 1 = off
    min_p: float = 0.0               # 0 = off; keep tokens with p >= min_p * p_max
    repetition_penalty: float = 1.0  # 1 = off; HF semantics, see _apply_repetition_penalty
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def validate(self) -> None:
        """Raise UserError naming the first bad field and its valid range."""
        for name in _RULES:
            check_field(name, getattr(self, name))


# The valid range of each field, said once: validate() and the generate CLI's flags both use it.
# (integer?, rule, test); seed may also be None.
_RULES = {
    "temperature": (False, "must be >= 0 (0 means greedy)", lambda v: v >= 0),
    "top_k": (True, "must be an integer >= 0 (0 turns it off)", lambda v: v >= 0),
    "top_p": (False, "must be in (0, 1] (1 turns it off)", lambda v: 0 < v <= 1),
    "min_p": (False, "must be in [0, 1) (0 turns it off)", lambda v: 0 <= v < 1),
    "repetition_penalty": (False, "must be > 0 (1 turns it off)", lambda v: v > 0),
    "seed": (True, "must be an integer >= 0", lambda v: v >= 0),  # or None: no seed
}


def check_field(field: str, value, shown: str | None = None) -> None:
    """UserError unless value is valid for the SamplingParams field; the message names it `shown`
    (a CLI passes its flag, e.g. --top-k) or the field itself."""
    integer, rule, ok = _RULES[field]
    if field == "seed" and value is None:
        return
    kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    valid = isinstance(value, kinds) and not isinstance(value, bool) and math.isfinite(value) and ok(value)
    if not valid:
        raise UserError(f"{shown or field} {rule}, got {value!r}")


PRESETS: dict[str, SamplingParams] = {
    "greedy": SamplingParams(),
    # LiquidAI's recommendation for LFM2 text models (model cards and docs.liquid.ai).
    "lfm2": SamplingParams(temperature=0.3, min_p=0.15, repetition_penalty=1.05),
    # LiquidAI's recommendation for LFM2.5 text models (LFM2.5-1.2B-Instruct model card).
    "lfm2.5": SamplingParams(temperature=0.1, top_k=50, top_p=0.1, repetition_penalty=1.05),
    # Ours, not LiquidAI's: looser, for open-ended text.
    "creative": SamplingParams(temperature=0.8, top_p=0.95, min_p=0.05, repetition_penalty=1.05),
}


def preset(name: str) -> SamplingParams:
    if name not in PRESETS:
        raise UserError(f"unknown sampling preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]


def from_generation_config(config: dict, seed: int | None = None) -> SamplingParams:
    """The sampling a generation_config.json asks generate() for.

    do_sample false or missing is greedy (HF's default), which still honours repetition_penalty,
    as generate() does. Fields left out or null take transformers' GenerationConfig defaults,
    which includes top_k = 50 when sampling.
    """

    def field(name):
        value = config.get(name)
        return _HF_DEFAULTS[name] if value is None else value

    if not config.get("do_sample"):
        params = SamplingParams(repetition_penalty=field("repetition_penalty"), seed=seed)
    else:
        params = SamplingParams(temperature=field("temperature"), top_k=field("top_k"), top_p=field("top_p"),
                                min_p=field("min_p"), repetition_penalty=field("repetition_penalty"), seed=seed)
    params.validate()
    return params


class Sampler:
    """Picks one token per row from [batch_size, vocab_size] logits; see the module docstring.

    Seeded samplers are reproducible: the same seed and the same sequence of calls give the same
    tokens. Greedy never touches the random generator.
    """

    def __init__(self, params: SamplingParams, batch_size: int, vocab_size: int):
        params.validate()
        if batch_size < 1 or vocab_size < 1:
            raise ValueError(f"batch_size and vocab_size must be >= 1, got {batch_size}, {vocab_size}")
        self.params = params
        self.batch_size = batch_size
        self.vocab_size = vocab_size
        self.rng = np.random.default_rng(params.seed)
        self._seen: np.ndarray | None = None  # allocated by the first observe()

    def __call__(self, logits: np.ndarray, seen: np.ndarray | None = None) -> np.ndarray:
        """int64 [B]: the chosen token of each row.

        seen: bool [B, V], the tokens each row already holds (prompt + generated), for the
        repetition penalty. Without it, the mask built by observe() is used.
        """
        scores = self.processed_logits(logits, seen)
        if self.params.greedy:
            return np.argmax(scores, axis=1).astype(np.int64)
        return _draw(scores, self.rng)

    def processed_logits(self, logits: np.ndarray, seen: np.ndarray | None = None) -> np.ndarray:
        """float32 [B, V]: the logits after every processor, -inf where a filter removed a token.

        Their softmax is the distribution __call__ draws from. For greedy, only the penalty applies.
        """
        scores = self._float32_copy(logits)
        seen = self._seen if seen is None else self._checked_mask(seen)
        p = self.params
        if p.repetition_penalty != 1.0 and seen is not None:
            scores = _apply_repetition_penalty(scores, seen, p.repetition_penalty)
        if p.greedy:
            return scores
        if p.temperature != 1.0:
            scores /= np.float32(p.temperature)
        if 0 < p.top_k < self.vocab_size:
            _apply_top_k(scores, int(p.top_k))
        if p.top_p < 1.0:
            _apply_top_p(scores, p.top_p)
        if p.min_p > 0.0:
            _apply_min_p(scores, p.min_p)
        return scores

    def observe(self, tokens) -> None:
        """Mark tokens as seen for the repetition penalty.

        tokens: int [B] (one new token per row), int [B, T], or a list of B int arrays of any
        lengths (a ragged prompt, without padding). Call it with the prompt, then with each chosen
        token; __call__ does not do it for you.
        """
        if self._seen is None:
            self._seen = np.zeros((self.batch_size, self.vocab_size), dtype=bool)
        rows = _token_rows(tokens, self.batch_size)
        for row, ids in enumerate(rows):
            if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
                raise ValueError(f"row {row}: token ids must be in [0, {self.vocab_size}), got "
                                 f"{ids.min()}..{ids.max()}")
            self._seen[row, ids] = True

    def reset(self) -> None:
        """Forget the tokens observed so far (the random generator keeps its state)."""
        self._seen = None

    def _float32_copy(self, logits: np.ndarray) -> np.ndarray:
        logits = np.asarray(logits)
        if logits.shape != (self.batch_size, self.vocab_size):
            raise ValueError(f"logits must be [{self.batch_size}, {self.vocab_size}], got {list(logits.shape)}")
        return np.array(logits, dtype=np.float32, copy=True)  # a copy: the filters work in place

    def _checked_mask(self, seen: np.ndarray) -> np.ndarray:
        seen = np.asarray(seen)
        if seen.shape != (self.batch_size, self.vocab_size) or seen.dtype != np.bool_:
            raise ValueError(f"seen must be bool [{self.batch_size}, {self.vocab_size}], "
                             f"got {seen.dtype} {list(seen.shape)}")
        return seen


def _token_rows(tokens, batch_size: int) -> list[np.ndarray]:
    if isinstance(tokens, (list, tuple)):
        rows = [np.asarray(ids, dtype=np.int64).reshape(-1) for ids in tokens]
    else:
        tokens = np.asarray(tokens, dtype=np.int64)
        if tokens.ndim not in (1, 2):
            raise ValueError(f"tokens must be [B] or [B, T], got shape {list(tokens.shape)}")
        rows = list(tokens.reshape(tokens.shape[0], -1))
    if len(rows) != batch_size:
        raise ValueError(f"tokens must have {batch_size} rows, got {len(rows)}")
    return rows


def _apply_repetition_penalty(scores: np.ndarray, seen: np.ndarray, penalty: float) -> np.ndarray:
    """HF's rule for seen tokens: a negative logit is multiplied by the penalty, any other divided.

    Both push the token's probability down when penalty > 1. Only the seen entries are touched
    (a small fraction of the vocabulary), in place.
    """
    rows, cols = np.nonzero(seen)
    values = scores[rows, cols]
    penalty = np.float32(penalty)
    scores[rows, cols] = np.where(values < 0, values * penalty, values / penalty)
    return scores


def _apply_top_k(scores: np.ndarray, k: int) -> None:
    """Keep each row's k largest logits and any ties with the k-th (as HF: remove `< k-th value`)."""
    vocab = scores.shape[1]
    kth_largest = np.partition(scores, vocab - k, axis=1)[:, vocab - k, None]
    scores[scores < kth_largest] = -np.inf


def _apply_top_p(scores: np.ndarray, top_p: float) -> None:
    """Keep the smallest set of most likely tokens whose probability reaches top_p.

    HF removes a token when the ascending cumulative probability up to and including it is
    <= 1 - top_p; equivalently we keep a token when the probability of the tokens ranked strictly
    above it is < top_p. The most likely token always stays.
    """
    live, _ = _live_tokens(scores)
    scores[scores < _nucleus_threshold(live, top_p)] = -np.inf


def _nucleus_threshold(scores: np.ndarray, top_p: float) -> np.ndarray:
    """[B, 1]: the smallest logit inside each row's top-p nucleus.

    Sorts only as many of the most likely tokens as the nucleus needs: a first guess, grown until
    the candidates hold top_p of the mass, so a peaked distribution never sorts the vocabulary.
    """
    vocab = scores.shape[1]
    probs = _unnormalised_probs(scores)
    probs = probs / probs.sum(axis=1, keepdims=True, dtype=np.float64)
    alive = int(np.isfinite(scores).sum(axis=1).max())
    count = min(alive, _NUCLEUS_FIRST_GUESS)
    while True:
        # The `count` most likely tokens of each row, in descending order (ties: lowest index first).
        candidates = np.argpartition(scores, vocab - count, axis=1)[:, vocab - count:]
        order = np.argsort(-np.take_along_axis(scores, candidates, axis=1), axis=1, kind="stable")
        candidates = np.take_along_axis(candidates, order, axis=1)
        candidate_probs = np.take_along_axis(probs, candidates, axis=1)
        cumulative = np.cumsum(candidate_probs, axis=1)
        # The nucleus fits when the candidates' mass reaches top_p, or they are every live token.
        if count >= alive or bool((cumulative[:, -1] >= top_p).all()):
            break
        count = min(alive, count * _NUCLEUS_GROWTH)
    kept = np.maximum((cumulative - candidate_probs < top_p).sum(axis=1), 1)
    last_kept = np.take_along_axis(candidates, (kept - 1)[:, None], axis=1)
    return np.take_along_axis(scores, last_kept, axis=1)


def _apply_min_p(scores: np.ndarray, min_p: float) -> None:
    """Remove tokens with p < min_p * p_max; p / p_max is exp(logit - max logit)."""
    scores[_unnormalised_probs(scores) < np.float32(min_p)] = -np.inf


def _unnormalised_probs(scores: np.ndarray) -> np.ndarray:
    """exp(logit - row max): 1 for the top token, 0 for removed (-inf) ones."""
    return np.exp(scores - scores.max(axis=1, keepdims=True))


def _live_tokens(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """The logits the filters left (not -inf), packed to the left: values [B, A] and ids [B, A].

    A is the largest live count of a row; shorter rows are padded with -inf (and id -1). After a
    filter A is usually tens, and the later steps then work on [B, A] instead of [B, V]. When most
    of the vocabulary is live, packing gains nothing: (scores, None) is returned as is.
    """
    live = np.isfinite(scores)
    counts = live.sum(axis=1)
    if counts.max() > scores.shape[1] // 4:
        return scores, None
    rows, cols = np.nonzero(live)  # row-major: each row's live ids, ascending
    slots = np.arange(rows.size) - np.repeat(np.cumsum(counts) - counts, counts)
    values = np.full((scores.shape[0], counts.max()), -np.inf, dtype=scores.dtype)
    ids = np.full(values.shape, -1, dtype=np.int64)
    values[rows, slots] = scores[rows, cols]
    ids[rows, slots] = cols
    return values, ids


def _draw(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One token per row from softmax(scores), by inverse CDF: one uniform per row."""
    values, ids = _live_tokens(scores)
    slots = _inverse_cdf(_unnormalised_probs(values), rng.random(scores.shape[0]))
    tokens = slots if ids is None else ids[np.arange(ids.shape[0]), slots]
    return tokens.astype(np.int64)


def _inverse_cdf(weights: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """For each row, the index i with cdf[i-1] <= u * total < cdf[i], over weights >= 0.

    Two levels, so no [B, V] cumulative sum is built (numpy's row-wise cumsum is the slow part):
    find the block of _CDF_BLOCK weights the target falls in from the block sums, then the token
    inside that block. A zero weight has zero width and is never chosen.
    """
    batch, width = weights.shape
    rows = np.arange(batch)
    padded = np.pad(weights, ((0, 0), (0, -width % _CDF_BLOCK)))
    blocks = padded.reshape(batch, -1, _CDF_BLOCK)
    block_mass = blocks.sum(axis=2, dtype=np.float64)
    block_cdf = np.cumsum(block_mass, axis=1)
    totals = block_cdf[:, -1]
    bad = ~(np.isfinite(totals) & (totals > 0))
    if bad.any():
        raise ValueError(f"rows {np.flatnonzero(bad).tolist()}: logits are NaN, +inf or all -inf; "
                         "nothing to sample from")
    targets = uniforms * totals
    block = (block_cdf <= targets[:, None]).sum(axis=1)
    block = np.minimum(block, _last_positive(block_mass))  # a target rounded up to the total
    mass_before = block_cdf[rows, block] - block_mass[rows, block]
    inner_cdf = np.cumsum(blocks[rows, block], axis=1, dtype=np.float64)
    inner = (inner_cdf <= (targets - mass_before)[:, None]).sum(axis=1)
    # The two levels round differently; never step past the block's last nonzero weight.
    inner = np.minimum(inner, _last_positive(blocks[rows, block]))
    return block * _CDF_BLOCK + inner


def _last_positive(weights: np.ndarray) -> np.ndarray:
    """[B]: the index of each row's last weight > 0."""
    return weights.shape[1] - 1 - np.argmax(weights[:, ::-1] > 0, axis=1)


__all__ = ["PRESETS", "Sampler", "SamplingParams", "from_generation_config", "preset"]
