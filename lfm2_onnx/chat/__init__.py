"""Chat: prompt rendering with the model's chat template, and generated text -> OpenAI-style messages.

- render_chat / load_chat_template / load_special_tokens: the prompt text, as transformers renders it;
  ChatTemplate: a folder's template and special tokens, rendered as the runtime renders prompts.
- parse_assistant_message: generated text -> {"role": "assistant", "content", "tool_calls", "reasoning_content"}.
- parse_tool_calls / format_tool_calls: LFM2's `<|tool_call_start|>[f(a=1)]<|tool_call_end|>` blocks.
- split_reasoning: LFM2.5's `<think>...</think>`.
- ChatStreamParser: the same parse, incrementally, as events (ContentDelta, ReasoningDelta, ToolCallEvent).

Pure Python (jinja2, json, ast): no torch, no transformers.
"""

from .message import assistant_message, parse_assistant_message
from .reasoning import THINK_END, THINK_START, ReasoningSplit, split_reasoning
from .stream import ChatEvent, ChatStreamParser, ContentDelta, ReasoningDelta, ToolCallEvent
from .template import ChatTemplate, load_chat_template, load_special_tokens, render_chat, template_renders_tool_calls
from .tool_calls import (
    TOOL_CALL_END,
    TOOL_CALL_START,
    ParsedToolCalls,
    format_tool_calls,
    new_tool_call_id,
    parse_call_block,
    parse_tool_calls,
)

__all__ = [
    "TOOL_CALL_END",
    "TOOL_CALL_START",
    "THINK_END",
    "THINK_START",
    "ChatEvent",
    "ChatStreamParser",
    "ChatTemplate",
    "ContentDelta",
    "ParsedToolCalls",
    "ReasoningDelta",
    "ReasoningSplit",
    "ToolCallEvent",
    "assistant_message",
    "format_tool_calls",
    "load_chat_template",
    "load_special_tokens",
    "new_tool_call_id",
    "parse_assistant_message",
    "parse_call_block",
    "parse_tool_calls",
    "render_chat",
    "split_reasoning",
    "template_renders_tool_calls",
]
