"""Exports against transformers: prefill and 32 decode steps, fp32 to rounding, fp16/CPU by distribution."""

from __future__ import annotations

import numpy as np
import pytest

from lfm2_onnx.builder.parity import compare, load_reference
from lfm2_onnx.reference_driver import ReferenceDriver

CONFIGS = {
    "default": {},
    "conv_bias": {"conv_bias": True},
    "untied": {"tie_word_embeddings": False},
    "one_kv_head": {"num_key_value_heads": 1},
    "attention_first_and_last": {"layer_types": ["full_attention", "conv", "conv", "full_attention"]},
}
# Three prompts of different lengths: the export runs them as one right-padded batch.
PROMPTS = [[1, 45, 300, 17, 98, 412, 23, 77, 5, 640, 31], [1, 250, 9], [1, 88, 120, 700, 66, 15, 402]]
STEPS = 32


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def case(request, factory):
    checkpoint = factory.checkpoint(**CONFIGS[request.param])
    return checkpoint, load_reference(checkpoint)


def test_fp32_matches_transformers(case, factory):
    checkpoint, reference = case
    report = compare(factory.export(checkpoint, "fp32"), checkpoint, PROMPTS, steps=STEPS, reference=reference)
    for phase in report.phases:
        assert phase.max_abs <= 1e-4, report.table()  # prefill and every decode step (max over steps)
        assert phase.top1 == 1.0, report.table()
    assert all(report.greedy_match), report.table()
    assert report.passed


def test_fp16_cpu_close_to_transformers(case, factory):
    checkpoint, reference = case
    report = compare(factory.export(checkpoint, "fp16"), checkpoint, PROMPTS, steps=STEPS, reference=reference)
    assert report.passed, report.table()
    assert all(p.mean_kl < 1e-4 for p in report.phases), report.table()


def test_ragged_batch_rows_equal_single_runs(factory):
    """Each row of a right-padded batch: same logits and same present caches as that prompt alone."""
    checkpoint = factory.checkpoint(conv_bias=True)
    driver = ReferenceDriver(factory.export(checkpoint, "fp32"))
    batch_logits, batch_state = driver.prefill(PROMPTS)
    batch_steps = []
    next_tokens = np.array([int(batch_logits[r, len(p) - 1].argmax()) for r, p in enumerate(PROMPTS)])
    for _ in range(4):
        batch_steps.append(driver.decode(next_tokens, batch_state)[:, -1])
        next_tokens = batch_steps[-1].argmax(-1)
    batch_caches = {name: batch_state.cache(name) for name in batch_state.caches}

    for row, prompt in enumerate(PROMPTS):
        logits, state = driver.prefill([prompt])
        np.testing.assert_allclose(batch_logits[row, : len(prompt)], logits[0], atol=1e-5)
        token = np.array([int(logits[0, -1].argmax())])
        for step in range(4):
            step_logits = driver.decode(token, state)[:, -1]
            np.testing.assert_allclose(batch_steps[step][row], step_logits[0], atol=1e-5)
            token = step_logits.argmax(-1)
        real = len(prompt) + 4  # cache positions that hold this row's tokens
        for name in state.caches:
            cache = state.cache(name)
            if "conv" in name:
                np.testing.assert_allclose(batch_caches[name][row], cache[0], atol=1e-5, err_msg=name)
            else:
                np.testing.assert_allclose(batch_caches[name][row][:, :real], cache[0][:, :real], atol=1e-5,
                                           err_msg=name)
