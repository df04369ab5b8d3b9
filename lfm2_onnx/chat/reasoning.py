"""LFM2.5 reasoning: split `<think>...</think>` off the front of generated text.

Rules (the streaming parser in stream.py follows the same ones):
- A think block is recognised only at the very start of the text, after optional whitespace.
  With `reasoning_started=True` (the prompt already ended in `<think>`), the text starts inside it.
- The reasoning is the text up to the first `</think>`, stripped of surrounding whitespace; with no
  `</think>`, everything is reasoning (generation stopped while thinking).
- The content is the text after `</think>`, without its leading whitespace (the model usually puts a
  blank line there; LFM2.5 templates `trim` the same text when they render history).
- Without a think block the text is all content, untouched, and reasoning is None.
"""

from __future__ import annotations

from typing import NamedTuple

THINK_START = "<think>"
THINK_END = "</think>"


class ReasoningSplit(NamedTuple):
    content: str
    reasoning: str | None


def split_reasoning(text: str, *, reasoning_started: bool = False) -> ReasoningSplit:
    """Split generated text into (content, reasoning); reasoning is None when there is no think block."""
    if not reasoning_started:
        unindented = text.lstrip()
        if not unindented.startswith(THINK_START):
            return ReasoningSplit(text, None)
        text = unindented[len(THINK_START) :]
    reasoning, closed, content = text.partition(THINK_END)
    return ReasoningSplit(content.lstrip() if closed else "", reasoning.strip())
