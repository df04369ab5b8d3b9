"""ChatStreamParser: any way of cutting the text into deltas gives the non-streamed message."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lfm2_onnx.chat import (
    TOOL_CALL_END,
    TOOL_CALL_START,
    ChatStreamParser,
    ContentDelta,
    ReasoningDelta,
    ToolCallEvent,
    parse_assistant_message,
)

S, E = TOOL_CALL_START, TOOL_CALL_END


def counting_ids():
    counter = itertools.count()
    return lambda: f"call_{next(counter):024x}"


EXAMPLES = [
    "",
    "Hello, world!",
    "   ",
    "Grüße 🌸 東京 — naïve",
    f'{S}[get_weather(city="Paris", days=2)]{E}',
    f'Let me check. {S}[get_weather(city="Paris")]{E}',
    f'{S}[get_candidate_status(candidate_id="12345")]{E}Checking the current status.',
    f"{S}[a(x=1), b(y='二')]{E} then {S}[c(z=[1, {{\"k\": null}}])]{E} done",
    f'{S}[{{"name": "f", "arguments": {{"a": true}}}}]{E}',
    f"{S}[f(1)]{E} malformed stays",
    f"{S}[f(a=1)] never closed",
    f"text {S}",
    f"text <|tool_call_sta",
    f"<|tool_call_start|<|tool_call_start|>[f()]{E}",
    f"{S}{S}[f()]{E}",
    f"{E}{S}[f()]{E}{E}",
    "<think>Plan: add.</think>\n\n4",
    "  <think>\n spaced \n</think>  \n answer ",
    "<think>never finished",
    "<think></think>",
    "<think>  </think>   ",
    f'<think>Need a tool.</think>\n{S}[get_weather(city="Paris")]{E}',
    f"<think>maybe {S}[f()]{E}</think>no call",
    "<thinking>not a think tag</thinking>",
    "<th",
    "<think",
    "x <think>late</think> y",
    "a </think> b",
    f"<think>a</think>{S}[f(from='x', class=1)]{E}\n",
    f"{S}[f(s=\"quote {E} inside\")]{E}",
    "<think>tabs\tand\nnewlines\n\n</think>\t\nanswer\n",
    # what real models write: repaired calls, and unreadable calls beside readable ones
    f"{S}[run(cmd='sed -n '1,5p' f.py')]{E}",
    f'{S}[write(path="a.txt", text="line 1\nline 2")]{E}',
    f"{S}[set_alarm(hour=07, minute=05)]{E}",
    f"Checking. {S}[a(x=1), b(1), c(y='it's')]{E} done",
]


def stream(text: str, cuts: list[int], *, reasoning_started: bool = False):
    """Feed `text` cut at `cuts`; return (events, final message)."""
    parser = ChatStreamParser(reasoning_started=reasoning_started, make_id=counting_ids())
    bounds = [0, *sorted(set(cuts)), len(text)]
    events = []
    for start, end in zip(bounds, bounds[1:]):
        events += parser.feed(text[start:end])
    events += parser.finish()
    return events, parser.final_message()


def check_stream(text: str, cuts: list[int], reasoning_started: bool = False):
    events, message = stream(text, cuts, reasoning_started=reasoning_started)
    expected = parse_assistant_message(text, reasoning_started=reasoning_started, make_id=counting_ids())
    assert message == expected
    # The events spell out the message.
    content = "".join(e.text for e in events if isinstance(e, ContentDelta))
    reasoning = "".join(e.text for e in events if isinstance(e, ReasoningDelta))
    calls = [e for e in events if isinstance(e, ToolCallEvent)]
    if expected["content"] is None:
        assert not content.strip()
    else:
        assert content == expected["content"]
    assert reasoning == expected.get("reasoning_content", "")
    assert [e.call for e in calls] == expected.get("tool_calls", [])
    assert [e.index for e in calls] == list(range(len(calls)))
    assert all(e.text for e in events if not isinstance(e, ToolCallEvent))  # no empty deltas
    # Reasoning comes first.
    kinds = [isinstance(e, ReasoningDelta) for e in events]
    assert kinds == sorted(kinds, reverse=True)


@pytest.mark.parametrize("text", EXAMPLES)
@pytest.mark.parametrize("reasoning_started", [False, True])
def test_whole_and_per_character(text, reasoning_started):
    check_stream(text, [], reasoning_started)
    check_stream(text, list(range(len(text))), reasoning_started)


@st.composite
def text_and_cuts(draw, texts):
    text = draw(texts)
    cuts = draw(st.lists(st.integers(min_value=0, max_value=len(text)), max_size=12))
    return text, cuts


FRAGMENTS = [S, E, "<think>", "</think>", "[", "]", "(", ")", "f", "a=", '"x"', "'y'", "1", ",", " ", "\n", "é",
             "🌸", "<", "|", "<|tool_call", "_end|>", "</th", "nk>", "{", "}", ":", "true"]
fragment_text = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=4)), max_size=25).map("".join)
example_pairs = st.lists(st.sampled_from(EXAMPLES), min_size=1, max_size=3).map("".join)


@settings(max_examples=400, deadline=None)
@given(case=text_and_cuts(st.one_of(st.sampled_from(EXAMPLES), example_pairs, fragment_text)), started=st.booleans())
def test_random_splits_match_the_whole_text_parse(case, started):
    text, cuts = case
    check_stream(text, cuts, started)


# --- timing: what comes out when ------------------------------------------------------------------


def test_content_before_a_call_is_emitted_before_the_block_completes():
    parser = ChatStreamParser(make_id=counting_ids())
    assert parser.feed("Sure, checking. ") == [ContentDelta("Sure, checking. ")]
    assert parser.feed(S + "[get_weather(") == []
    assert parser.feed('city="Paris")]') == []
    events = parser.feed(E + "Done.")
    assert events == [
        ToolCallEvent(
            {
                "id": f"call_{0:024x}",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            },
            0,
        ),
        ContentDelta("Done."),
    ]
    assert parser.finish() == []


def test_partial_markers_are_held_back_until_decided():
    parser = ChatStreamParser()
    assert parser.feed("Hello <|tool") == [ContentDelta("Hello ")]
    assert parser.feed("box|> more") == [ContentDelta("<|toolbox|> more")]
    assert parser.feed(" <") == [ContentDelta(" ")]
    assert parser.finish() == [ContentDelta("<")]


def test_a_think_prefix_is_held_back_until_decided():
    parser = ChatStreamParser()
    assert parser.feed("\n<thi") == []
    assert parser.feed("nk>Hmm") == [ReasoningDelta("Hmm")]
    assert parser.feed(", so </thi") == [ReasoningDelta(", so")]
    assert parser.feed("nk>\n\n") == []
    assert parser.feed("Yes") == [ContentDelta("Yes")]
    assert parser.final_message() == {"role": "assistant", "content": "Yes", "reasoning_content": "Hmm, so"}


def test_text_not_starting_with_think_flows_at_once():
    parser = ChatStreamParser()
    assert parser.feed("<b>") == [ContentDelta("<b>")]


def test_reasoning_started_by_the_prompt():
    parser = ChatStreamParser(reasoning_started=True)
    assert parser.feed("  thinking ") == [ReasoningDelta("thinking")]
    assert parser.feed(" more </think> answer") == [ReasoningDelta("  more"), ContentDelta("answer")]


def test_unterminated_call_becomes_content_at_finish():
    parser = ChatStreamParser()
    assert parser.feed(f"a {S}[f(x=1)") == [ContentDelta("a ")]
    assert parser.finish() == [ContentDelta(f"{S}[f(x=1)")]
    assert parser.final_message() == {"role": "assistant", "content": f"a {S}[f(x=1)"}


def test_malformed_call_becomes_content_when_closed():
    parser = ChatStreamParser()
    assert parser.feed(f"{S}[f(1)]{E}") == [ContentDelta(f"{S}[f(1)]{E}")]


def test_unreadable_calls_become_content_beside_the_read_ones():
    parser = ChatStreamParser(make_id=counting_ids())
    assert parser.feed(f"{S}[a(x=1), b(1), c(cmd='ls 'x'')") == []
    events = parser.feed(f"]{E}")
    assert [e.index for e in events if isinstance(e, ToolCallEvent)] == [0, 1]
    assert [e for e in events if isinstance(e, ContentDelta)] == [ContentDelta(f"{S}[b(1)]{E}")]
    assert [c["function"]["arguments"] for c in parser.final_message()["tool_calls"]] == [
        '{"x": 1}',
        '{"cmd": "ls \'x\'"}',
    ]


def test_feed_after_finish_is_an_error():
    parser = ChatStreamParser()
    assert parser.feed("<") == []  # could still become <think>
    assert parser.finish() == [ContentDelta("<")]
    assert parser.finish() == []
    with pytest.raises(RuntimeError):
        parser.feed("y")


def test_long_call_block_in_small_deltas():
    arguments = ", ".join(f"a{i}={i}" for i in range(2000))
    text = f"{S}[f({arguments})]{E}"
    parser = ChatStreamParser()
    events = []
    for i in range(0, len(text), 3):
        events += parser.feed(text[i : i + 3])
    assert len(events) == 1 and isinstance(events[0], ToolCallEvent)
