"""Incremental parsing of generated text into content, reasoning and tool-call events.

Feed the decoded text as it arrives; each call returns the events it settled:

    parser = ChatStreamParser()
    for delta in deltas:
        for event in parser.feed(delta):
            ...  # ContentDelta / ReasoningDelta / ToolCallEvent
    events = parser.finish()
    message = parser.final_message()   # == parse_assistant_message("".join(deltas))

Content flows out as soon as it is known not to start a marker: a delta ending in "<|tool_c" is held
back until the next one tells whether a call block begins. A call block is held whole and becomes
ToolCallEvents when `<|tool_call_end|>` arrives; what of it does not parse becomes content as
tool_calls.parse_call_block says, and a block never closed is content verbatim. The rules for think blocks and whitespace are those of reasoning.split_reasoning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from .message import assistant_message
from .reasoning import THINK_END, THINK_START
from .tool_calls import TOOL_CALL_END, TOOL_CALL_START, IdFactory, parse_call_block


@dataclass(frozen=True)
class ContentDelta:
    text: str


@dataclass(frozen=True)
class ReasoningDelta:
    text: str


@dataclass(frozen=True)
class ToolCallEvent:
    call: dict  # OpenAI shape: {"id", "type": "function", "function": {"name", "arguments"}}
    index: int  # position among this message's tool calls (OpenAI streams tool calls by index)


ChatEvent = Union[ContentDelta, ReasoningDelta, ToolCallEvent]

# Where in the text the parser is.
_OPENING = "opening"  # at the start: a think block may still begin
_REASONING = "reasoning"  # inside <think>
_CONTENT = "content"  # answer text, outside any call block
_CALL = "call"  # inside <|tool_call_start|> ... <|tool_call_end|>


class ChatStreamParser:
    """Turns text deltas into events; `final_message()` equals the non-streamed parse of the whole text."""

    def __init__(self, *, reasoning_started: bool = False, make_id: IdFactory | None = None):
        self._make_id = make_id
        self._mode = _REASONING if reasoning_started else _OPENING
        self._pending = ""  # received text not yet turned into events
        self._call_text = ""  # body of the open call block
        self._call_search_from = 0  # where to look for the end marker next, so long blocks stay linear
        self._reasoning_begun = False  # leading whitespace of the reasoning is dropped
        self._reasoning_trailing_space = ""  # held until more reasoning shows it was not trailing
        self._skip_content_space = False  # leading whitespace after </think> is dropped
        self._content_parts: list[str] = []
        self._reasoning_parts: list[str] = []
        self._tool_calls: list[dict] = []
        self._finished = False

    def feed(self, delta: str) -> list[ChatEvent]:
        """Take the next piece of generated text; return the events it settles."""
        if self._finished:
            raise RuntimeError("ChatStreamParser.feed() after finish()")
        self._pending += delta
        return self._drain(final=False)

    def finish(self) -> list[ChatEvent]:
        """Generation ended: settle everything held back (open call blocks become content)."""
        if self._finished:
            return []
        events = self._drain(final=True)
        self._finished = True
        return events

    def final_message(self) -> dict:
        """The whole assistant message, as parse_assistant_message gives it (finishes the parse if needed)."""
        self.finish()
        reasoning = "".join(self._reasoning_parts) or None
        return assistant_message("".join(self._content_parts), self._tool_calls, reasoning)

    # --- the state machine ---------------------------------------------------------------------------

    def _drain(self, final: bool) -> list[ChatEvent]:
        events: list[ChatEvent] = []
        step = {_OPENING: self._opening, _REASONING: self._reasoning, _CONTENT: self._content, _CALL: self._call}
        while step[self._mode](events, final):
            pass  # a step returns True when it moved to another mode with text left to look at
        return events

    def _opening(self, events: list[ChatEvent], final: bool) -> bool:
        unindented = self._pending.lstrip()
        if unindented.startswith(THINK_START):
            self._pending = unindented[len(THINK_START) :]
            self._mode = _REASONING
            return True
        if THINK_START.startswith(unindented) and not final:
            return False  # only whitespace or a piece of "<think>" so far: wait
        self._mode = _CONTENT
        return True

    def _reasoning(self, events: list[ChatEvent], final: bool) -> bool:
        end = self._pending.find(THINK_END)
        if end >= 0:
            self._emit_reasoning(self._pending[:end], events)
            self._pending = self._pending[end + len(THINK_END) :]
            self._mode, self._skip_content_space = _CONTENT, True
            return True
        settled = self._settled_length(THINK_END, final)
        self._emit_reasoning(self._pending[:settled], events)
        self._pending = self._pending[settled:]
        return False

    def _content(self, events: list[ChatEvent], final: bool) -> bool:
        if self._skip_content_space:
            self._pending = self._pending.lstrip()
            if not self._pending:
                return False
            self._skip_content_space = False
        start = self._pending.find(TOOL_CALL_START)
        if start >= 0:
            self._emit_content(self._pending[:start], events)
            self._pending = self._pending[start + len(TOOL_CALL_START) :]
            self._mode = _CALL
            return True
        settled = self._settled_length(TOOL_CALL_START, final)
        self._emit_content(self._pending[:settled], events)
        self._pending = self._pending[settled:]
        return False

    def _call(self, events: list[ChatEvent], final: bool) -> bool:
        self._call_text += self._pending
        self._pending = ""
        end = self._call_text.find(TOOL_CALL_END, self._call_search_from)
        if end < 0:
            if final:  # never closed: the block is text after all
                self._emit_content(TOOL_CALL_START + self._call_text, events)
                self._call_text = ""
            else:
                self._call_search_from = max(0, len(self._call_text) - len(TOOL_CALL_END) + 1)
            return False
        body, self._pending = self._call_text[:end], self._call_text[end + len(TOOL_CALL_END) :]
        self._call_text, self._call_search_from, self._mode = "", 0, _CONTENT
        block = parse_call_block(body, make_id=self._make_id)
        self._emit_content(block.content, events)  # the calls that did not read, or the whole block
        for call in block.tool_calls:
            events.append(ToolCallEvent(call, len(self._tool_calls)))
            self._tool_calls.append(call)
        return True

    def _settled_length(self, marker: str, final: bool) -> int:
        """How much of the pending text is settled: all of it, but a tail that may begin `marker`."""
        if final:
            return len(self._pending)
        return len(self._pending) - _marker_prefix_length(self._pending, marker)

    # --- output --------------------------------------------------------------------------------------

    def _emit_content(self, text: str, events: list[ChatEvent]) -> None:
        if text:
            self._content_parts.append(text)
            events.append(ContentDelta(text))

    def _emit_reasoning(self, text: str, events: list[ChatEvent]) -> None:
        """Emit reasoning stripped like split_reasoning strips it: whitespace at either end never shows."""
        if not self._reasoning_begun:
            text = text.lstrip()
        text = self._reasoning_trailing_space + text
        body = text.rstrip()
        self._reasoning_trailing_space = text[len(body) :]
        if body:
            self._reasoning_begun = True
            self._reasoning_parts.append(body)
            events.append(ReasoningDelta(body))


def _marker_prefix_length(text: str, marker: str) -> int:
    """Length of the longest end of `text` that could be the start of `marker` (to hold back)."""
    for length in range(min(len(text), len(marker) - 1), 0, -1):
        if text.endswith(marker[:length]):
            return length
    return 0
