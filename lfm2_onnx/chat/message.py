"""Generated text -> an OpenAI-style assistant message."""

from __future__ import annotations

from .reasoning import split_reasoning
from .tool_calls import IdFactory, parse_tool_calls


def parse_assistant_message(
    text: str, *, reasoning_started: bool = False, make_id: IdFactory | None = None
) -> dict:
    """The assistant message for generated `text` (decoded with the tool-call markers kept).

    {"role": "assistant", "content": ..., "tool_calls": [...], "reasoning_content": ...}:
    - `tool_calls` only when the text made at least one call;
    - `reasoning_content` only when a think block held some text;
    - `content` is the text left around the call blocks. Like OpenAI, it is None when the message
      makes tool calls and no other text than whitespace is left; otherwise it is a string (maybe "").
    """
    content, reasoning = split_reasoning(text, reasoning_started=reasoning_started)
    content, tool_calls = parse_tool_calls(content, make_id=make_id)
    return assistant_message(content, tool_calls, reasoning)


def assistant_message(content: str, tool_calls: list[dict], reasoning: str | None) -> dict:
    """Assemble the message from its parsed parts (shared with the streaming parser)."""
    message: dict = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = list(tool_calls)
        if not content.strip():
            message["content"] = None
    if reasoning:
        message["reasoning_content"] = reasoning
    return message
