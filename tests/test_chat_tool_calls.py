"""Tool-call parsing and writing, think-block splitting, and the assembled assistant message."""

from __future__ import annotations

import itertools
import json
import keyword
import re

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from lfm2_onnx.chat import (
    TOOL_CALL_END,
    TOOL_CALL_START,
    format_tool_calls,
    new_tool_call_id,
    parse_assistant_message,
    parse_tool_calls,
    split_reasoning,
)

S, E = TOOL_CALL_START, TOOL_CALL_END


def counting_ids(prefix: str = "call_"):
    """A make_id giving call_000000000000000000000000, ...01, ... (deterministic, still 24 hex digits)."""
    counter = itertools.count()
    return lambda: f"{prefix}{next(counter):024x}"


def calls_of(text: str) -> list[tuple[str, dict]]:
    """(name, decoded arguments) of each call parsed from text."""
    _, tool_calls = parse_tool_calls(text)
    return [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in tool_calls]


# --- the forms the model writes --------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, expected",
    [
        ('[get_weather(city="Paris", days=2)]', [("get_weather", {"city": "Paris", "days": 2})]),
        ("[get_weather(city='Paris')]", [("get_weather", {"city": "Paris"})]),
        ("[f()]", [("f", {})]),
        ("[f(a=1, b=-2.5, c=+3, d=1e3, e=-0)]", [("f", {"a": 1, "b": -2.5, "c": 3, "d": 1000.0, "e": 0})]),
        ("[f(a=True, b=False, c=None)]", [("f", {"a": True, "b": False, "c": None})]),
        ("[f(a=true, b=false, c=null)]", [("f", {"a": True, "b": False, "c": None})]),
        (
            '[f(items=[1, "two", [3, {"four": [None, true]}]], opts={"k": {"n": -1}, "e": {}}, t=(1, 2))]',
            [("f", {"items": [1, "two", [3, {"four": [None, True]}]], "opts": {"k": {"n": -1}, "e": {}}, "t": [1, 2]})],
        ),
        ('[a(x=1), b(y="2"), a(x=3)]', [("a", {"x": 1}), ("b", {"y": "2"}), ("a", {"x": 3})]),
        ('  \n[f(a="x")]\n ', [("f", {"a": "x"})]),
        ('f(a="no brackets")', [("f", {"a": "no brackets"})]),
        (
            '[f(s="quote \\" and \'single\' and \\\\ back\\nslash")]',
            [("f", {"s": "quote \" and 'single' and \\ back\nslash"})],
        ),
        (
            "[f(s='Zürich 東京 🌸', t=\"\\u00e9\\ud83d\\ude00\")]",
            [("f", {"s": "Zürich 東京 🌸", "t": "é😀"})],
        ),
        ('[f(s="a" "b")]', [("f", {"s": "ab"})]),
        ('[search_flights(from="NYC", to="LA", class="economy", lambda=1)]',
         [("search_flights", {"from": "NYC", "to": "LA", "class": "economy", "lambda": 1})]),
        ('[import(None=1, True=2)]', [("import", {"None": 1, "True": 2})]),
        ('[f(\n    a=1,\n    b=[\n        2,\n    ],\n)]', [("f", {"a": 1, "b": [2]})]),
        # JSON objects, as the model writes when asked for JSON
        ('[{"name": "get_weather", "arguments": {"city": "Paris", "ok": true, "n": null}}]',
         [("get_weather", {"city": "Paris", "ok": True, "n": None})]),
        ('{"name": "f", "arguments": {"a": [1, 2]}}', [("f", {"a": [1, 2]})]),
        ('[{"name": "f", "arguments": {}}, {"name": "g", "parameters": {"x": 1}}, {"name": "h"}]',
         [("f", {}), ("g", {"x": 1}), ("h", {})]),
        ('[{"name": "f", "arguments": "{\\"a\\": 1}"}]', [("f", {"a": 1})]),
        ("[{'name': 'f', 'arguments': {'a': True}}]", [("f", {"a": True})]),
        (
            '[{"name": "get-weather", "arguments": {"user id": "\\ud83d\\ude00"}}]',
            [("get-weather", {"user id": "😀"})],
        ),
        # both forms in one list
        ('[f(a=1), {"name": "g", "arguments": {"b": 2}}]', [("f", {"a": 1}), ("g", {"b": 2})]),
    ],
)
def test_call_forms(body, expected):
    content, tool_calls = parse_tool_calls(S + body + E)
    assert content == ""
    assert calls_of(S + body + E) == expected
    for call in tool_calls:
        assert call["type"] == "function"
        assert re.fullmatch(r"call_[0-9a-f]{24}", call["id"])


@pytest.mark.parametrize(
    "body",
    [
        "",
        "[]",
        "[f(1)]",  # positional arguments have no names
        '[f("Paris", days=2)]',
        "[f(**kw)]",
        "[f(a=b)]",  # a name, not a literal
        "[f(a=g(1))]",
        "[f(a=1 + 2)]",
        "[f(a=__import__('os'))]",
        "[f(a=open('/etc/passwd').read())]",
        "[obj.method(a=1)]",
        "[f(a=1)(b=2)]",
        "[f(a={1, 2})]",  # a set
        "[f(a=b'bytes')]",
        "[f(a=1j)]",
        "[f(a=...)]",
        "[f(a=f'{x}')]",
        "[f(a=1e400)]",  # inf has no JSON
        "[f(a=-1e400)]",
        '[f(a={1: "int key"})]',
        "[f(a='\\ud800')]",  # a lone surrogate is not text
        "[f(a=1, a=2)]",
        "[f(a=1]",
        "[f(a=1)",
        "not a call at all",
        "[1, 2]",
        '["f"]',
        '[{"arguments": {}}]',
        '[{"name": "", "arguments": {}}]',
        '[{"name": "f", "arguments": [1]}]',
        '[{"name": "f", "arguments": "not json"}]',
        '[{"name": "f", "arguments": {"a": NaN}}]',
        '[{"name": "f", "arguments": {"a": 1e999}}]',
        "[" * 500 + "]" * 500,
        "[f(a=" + "[" * 300 + "]" * 300 + ")]",
    ],
)
def test_malformed_blocks_stay_text(body):
    text = f"before {S}{body}{E} after"
    assert parse_tool_calls(text) == (text, [])


# --- what real models write: recovered where the intent is unambiguous -------------------------------


@pytest.mark.parametrize(
    "body, expected",
    [
        # raw line breaks inside a quoted string
        ('[write_file(path="a.txt", content="line 1\nline 2\n")]',
         [("write_file", {"path": "a.txt", "content": "line 1\nline 2\n"})]),
        ("[f(s='a\r\nb', n=1)]", [("f", {"s": "a\r\nb", "n": 1})]),
        ('[{"name": "note", "arguments": {"text": "two\nlines"}}]', [("note", {"text": "two\nlines"})]),
        # unescaped quotes of the string's own kind in a shell or code argument
        ("[run(cmd='sed -n '1,5p' f.py')]", [("run", {"cmd": "sed -n '1,5p' f.py"})]),
        ('[run(cmd="grep -rn "TODO" src", timeout=30)]', [("run", {"cmd": 'grep -rn "TODO" src', "timeout": 30})]),
        ("[python(code='print('hi')')]", [("python", {"code": "print('hi')"})]),
        ('[say(text="He said "hi", then left", n=1)]', [("say", {"text": 'He said "hi", then left', "n": 1})]),
        ('[sql(q="SELECT * FROM t WHERE name = "bob"")]', [("sql", {"q": 'SELECT * FROM t WHERE name = "bob"'})]),
        ("[f(s='it's', t='you're')]", [("f", {"s": "it's", "t": "you're"})]),
        ("[f(s='x'', t=1,)]", [("f", {"s": "x'", "t": 1})]),
        ("[write(code='def f():\n    return 'x'\n')]", [("write", {"code": "def f():\n    return 'x'\n"})]),
        ("run(cmd='echo '[1, (2' && ls', cwd='/tmp')", [("run", {"cmd": "echo '[1, (2' && ls", "cwd": "/tmp"})]),
        ("[a(cmd='ls 'x''), b(cmd='cat 'y'')]", [("a", {"cmd": "ls 'x'"}), ("b", {"cmd": "cat 'y'"})]),
        ("[f(s='it's', from='a', class=1)]", [("f", {"s": "it's", "from": "a", "class": 1})]),
        ('[f(s="a\\"b "c"")]', [("f", {"s": 'a"b "c"'})]),  # escaped and unescaped quotes together
        # integers with leading zeros are decimal
        ("[set_alarm(hour=07, minute=05)]", [("set_alarm", {"hour": 7, "minute": 5})]),
        ("[f(x=007, y=-08, z=[01, 00], w={'k': 09})]", [("f", {"x": 7, "y": -8, "z": [1, 0], "w": {"k": 9}})]),
        ("[f(x=007.5, y=1e007, s='007', t=\"x = 010\")]", [("f", {"x": 7.5, "y": 1e7, "s": "007", "t": "x = 010"})]),
        ("[f(s='it's 007', n=010)]", [("f", {"s": "it's 007", "n": 10})]),  # only numbers outside strings
        # brackets and commas inside strings do not cut calls
        ('[f(s="a), g(b=1"), h(x="[", y="{(")]', [("f", {"s": "a), g(b=1"}), ("h", {"x": "[", "y": "{("})]),
        ("[f(s='it's, (x'), g(n=1)]", [("f", {"s": "it's, (x"}), ("g", {"n": 1})]),
    ],
)
def test_recovered_calls(body, expected):
    text = f"before {S}{body}{E} after"
    assert parse_tool_calls(text)[0] == "before  after"
    assert calls_of(text) == expected


@pytest.mark.parametrize(
    "body, expected_calls, unread",
    [
        ("[a(x=1), b(1), c(y=2)]", [("a", {"x": 1}), ("c", {"y": 2})], "b(1)"),
        ("[a(x=1), b(1), c(y=open('x')), d()]", [("a", {"x": 1}), ("d", {})], "b(1), c(y=open('x'))"),
        ("[bad(1), ok(s='it's')]", [("ok", {"s": "it's"})], "bad(1)"),
        ('[f(s="a, b), c(d"), 1, "g()"]', [("f", {"s": "a, b), c(d"})], '1, "g()"'),
        ("[a(x=1),\n  b(oops=]", [("a", {"x": 1})], "b(oops="),
        ('[{"name": "f", "arguments": {"a": 1}}, {"name": ""}]', [("f", {"a": 1})], '{"name": ""}'),
        ("[f(a=1), f(a=1, a=2), g(a=1e400)]", [("f", {"a": 1})], "f(a=1, a=2), g(a=1e400)"),
        # the quote rule ends this code string early and the rest is no call: that call stays text
        ("[python(code='g(a='1', b=2)'), ok()]", [("ok", {})], "python(code='g(a='1', b=2)')"),
        ("[f(s='never closed), g(n=1)]", [("g", {"n": 1})], "f(s='never closed)"),
    ],
)
def test_unreadable_calls_stay_content_beside_the_read_ones(body, expected_calls, unread):
    text = f"before {S}{body}{E} after"
    content, _ = parse_tool_calls(text)
    assert content == f"before {S}[{unread}]{E} after"
    assert calls_of(text) == expected_calls


@pytest.mark.parametrize(
    "body",
    [
        "[python(code='g(a='1', b=2)')]",  # a quote before `, b=` ends the string: the rest is not a call
        "[f(s='unterminated)]",
        "[f(s='a' 'b' c)]",
        "[f(xs=['it's'])]",  # strings inside lists keep Python's rule
        "[f(x=0_7)]",
        "[f(x=08j)]",
        "[f(s=r'it's')]",  # prefixed strings are not repaired
    ],
)
def test_ambiguous_calls_stay_text(body):
    text = f"before {S}{body}{E} after"
    assert parse_tool_calls(text) == (text, [])


def test_valid_python_is_read_as_python_before_any_repair():
    # Implicit concatenation is valid Python: the lenient quote rule never applies to it.
    assert calls_of(f"{S}[f(s='a' 'b', t='c')]{E}") == [("f", {"s": "ab", "t": "c"})]


def test_the_quote_rule_is_applied_as_written():
    """A quote followed by `, name=` ends the string, even where a human would read code on."""
    assert calls_of(f"{S}[python(code='print('a', end='')')]{E}") == [("python", {"code": "print('a", "end": "')"})]


def test_long_zero_padded_integers():
    assert calls_of(f"{S}[f(n=0{'7' * 300})]{E}") == [("f", {"n": int("7" * 300)})]
    text = f"{S}[f(n=0{'7' * 5000})]{E}"  # past Python's int <-> str digit limit: not readable, no error
    assert parse_tool_calls(text) == (text, [])


def test_text_around_and_between_blocks_is_content():
    text = f"Sure.{S}[a(x=1)]{E} Then {S}[b(y=2), c()]{E}done."
    content, tool_calls = parse_tool_calls(text, make_id=counting_ids())
    assert content == "Sure. Then done."
    assert [c["function"]["name"] for c in tool_calls] == ["a", "b", "c"]
    assert [c["id"] for c in tool_calls] == [f"call_{i:024x}" for i in range(3)]


def test_good_and_bad_blocks_mix():
    text = f"{S}[a(x=1)]{E}-{S}[oops(]{E}-{S}[b()]{E}"
    assert parse_tool_calls(text)[0] == f"-{S}[oops(]{E}-"
    assert calls_of(text) == [("a", {"x": 1}), ("b", {})]


@pytest.mark.parametrize(
    "text",
    [
        f"Hi {S}[f(a=1)]",  # unterminated: generation stopped inside the block
        f"Hi {S}",
        f"Hi {E} and {S}",
        "no markers at all",
        "",
        f"{E}[f(a=1)]{E}",  # an end marker without a start
    ],
)
def test_unterminated_or_unmatched_markers_stay_text(text):
    assert parse_tool_calls(text) == (text, [])


def test_start_marker_inside_a_block_makes_it_malformed():
    """A block ends at the first end marker; a second start inside makes the body malformed."""
    text = f"{S}[a()]{S}[b()]{E} tail"
    assert parse_tool_calls(text) == (text, [])


def test_arguments_json_keeps_non_ascii():
    _, tool_calls = parse_tool_calls(f'{S}[f(city="Zürich")]{E}')
    assert tool_calls[0]["function"]["arguments"] == '{"city": "Zürich"}'


def test_new_tool_call_id_format():
    ids = {new_tool_call_id() for _ in range(100)}
    assert len(ids) == 100 and all(re.fullmatch(r"call_[0-9a-f]{24}", i) for i in ids)


# --- writing calls ---------------------------------------------------------------------------------


def test_format_tool_calls_writes_lfm2_syntax():
    calls = [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris", "days": 2}'},
        },
        {"function": {"name": "f", "arguments": {"ok": True, "none": None, "list": [1.5, "é"], "from": {"k": "v"}}}},
        {"name": "g", "arguments": {}},
    ]
    assert format_tool_calls(calls) == (
        f'{S}[get_weather(city="Paris", days=2), '
        f'f(ok=True, none=None, list=[1.5, "é"], from={{"k": "v"}}), g()]{E}'
    )
    assert format_tool_calls([]) == ""


def test_format_tool_calls_falls_back_to_json_for_non_python_names():
    calls = [
        {"function": {"name": "get-weather", "arguments": {"user id": 1}}},
        {"function": {"name": "ﬁx", "arguments": {}}},  # NFKC would read the Python name as "fix"
    ]
    written = format_tool_calls(calls)
    json_calls = '{"name": "get-weather", "arguments": {"user id": 1}}, {"name": "ﬁx", "arguments": {}}'
    assert written == f"{S}[{json_calls}]{E}"
    assert calls_of(written) == [("get-weather", {"user id": 1}), ("ﬁx", {})]


# --- fuzzing ---------------------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
# Identifiers, Python keywords included (the parser renames those): what names usually look like.
identifiers = st.one_of(
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,15}", fullmatch=True),
    st.sampled_from(keyword.kwlist + ["__debug__", "print", "match", "type"]),
    st.text(min_size=1, max_size=8).filter(str.isidentifier),  # unicode identifiers
)
any_names = st.one_of(identifiers, st.text(min_size=1, max_size=10))  # anything goes: JSON fallback


def openai_calls(names):
    return st.lists(
        st.builds(
            lambda name, arguments: {"name": name, "arguments": arguments},
            names,
            st.dictionaries(names, json_values, max_size=5),
        ),
        min_size=1,
        max_size=4,
    )


def as_openai(calls: list[dict], make_id) -> list[dict]:
    return [
        {
            "id": make_id(),
            "type": "function",
            "function": {"name": c["name"], "arguments": json.dumps(c["arguments"], ensure_ascii=False)},
        }
        for c in calls
    ]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(calls=openai_calls(identifiers), before=st.text(max_size=20), after=st.text(max_size=20))
def test_format_then_parse_round_trips(calls, before, after):
    if S in before + after or E in before + after:
        return
    tool_calls = as_openai(calls, counting_ids())
    text = before + format_tool_calls(tool_calls) + after
    assert parse_tool_calls(text, make_id=counting_ids()) == (before + after, tool_calls)


@settings(max_examples=200, deadline=None)
@given(calls=openai_calls(any_names))
def test_round_trip_with_any_names(calls):
    tool_calls = as_openai(calls, counting_ids())
    assert parse_tool_calls(format_tool_calls(tool_calls), make_id=counting_ids()) == ("", tool_calls)


# Text built from pieces that exercise the parser: markers, brackets, quotes, keywords, escapes, and
# what the repairs look at (zero-padded numbers, quotes before `, name=` or `)`, triple quotes, prefixes).
FRAGMENTS = [S, E, S, E, "[", "]", "(", ")", "{", "}", "f", "(a=", "=", ",", '"', "'", "\\", "1", "-", "True",
             "null", "from", "**", "\n", " ", "é", "\ud83d", "<think>", "</think>", "<|tool_call", "e9", "#",
             "007", "0" * 5, "\r", "cmd='", "', b=", "')", '")]', "'''", "r'", "x(s='it's')", "g(n=01)"]
marker_heavy_text = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=5)), max_size=30).map("".join)


@settings(max_examples=500, deadline=None)
@given(text=st.one_of(st.text(), marker_heavy_text))
def test_parse_never_raises_and_keeps_all_text(text):
    content, tool_calls = parse_tool_calls(text)
    assert isinstance(content, str)
    if not tool_calls:
        assert content == text  # nothing parsed: nothing lost
    for call in tool_calls:
        assert isinstance(json.loads(call["function"]["arguments"]), dict)
        call["function"]["arguments"].encode("utf-8")  # valid text for any JSON/HTTP layer


# String values a model writes raw: line breaks and unescaped quotes of the string's own kind.
raw_values = st.text(alphabet=st.sampled_from(list("ab ,.()[]{}=:-é0'\"\n\r\t")), max_size=16)


@settings(max_examples=400, deadline=None)
@given(values=st.lists(raw_values, min_size=1, max_size=3), quote=st.sampled_from(["'", '"']))
def test_strings_written_raw_are_recovered(values, quote):
    # Outside the quote rule: a quote then `,` or `)` (reads as the string's end); a quote then any
    # quote, or one ending the value (valid Python, implicit concatenation: `"a" "b"` is "ab", and
    # valid Python wins); a value opening with its quote (a triple quote).
    for value in values:
        assume(not value.startswith(quote))
        assume(not re.search(rf"{quote}\s*([,)'\"]|$)", value))
    arguments = {f"k{i}": value for i, value in enumerate(values)}
    call = "f(" + ", ".join(f"{key}={quote}{value}{quote}" for key, value in arguments.items()) + ")"
    text = f"{S}[{call}, g(n=01)]{E}"
    assert parse_tool_calls(text)[0] == ""
    assert calls_of(text) == [("f", arguments), ("g", {"n": 1})]


# Calls that never read, each balanced in brackets and quotes (so where it ends is clear).
UNREADABLE_CALLS = ["f(1)", "g(a=b)", "h(**kw)", "obj.m(a=1)", "k(a=1, a=2)", "1", '"text"', "q(a=1e400)",
                    "r(a={1, 2})", "s(a='x' 'y' z)", "u(x=0_7)", '{"name": ""}']


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    calls=openai_calls(any_names),
    bad=st.lists(st.sampled_from(UNREADABLE_CALLS), min_size=1, max_size=3),
    data=st.data(),
)
def test_unreadable_calls_do_not_take_the_good_ones_down(calls, bad, data):
    tool_calls = as_openai(calls, counting_ids())
    good = [format_tool_calls([call])[len(S) + 1 : -len(E) - 1] for call in tool_calls]  # "f(a=1)"
    places = sorted(data.draw(st.lists(st.integers(0, len(good)), min_size=len(bad), max_size=len(bad))))
    written = list(good)
    for offset, (place, call) in enumerate(zip(places, bad)):
        written.insert(place + offset, call)
    text = f"<{S}[{', '.join(written)}]{E}>"
    assert parse_tool_calls(text, make_id=counting_ids()) == (f"<{S}[{', '.join(bad)}]{E}>", tool_calls)


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(st.text(), marker_heavy_text), started=st.booleans())
def test_assistant_message_never_raises(text, started):
    message = parse_assistant_message(text, reasoning_started=started)
    assert message["role"] == "assistant"
    assert set(message) <= {"role", "content", "tool_calls", "reasoning_content"}


# --- reasoning -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, started, expected",
    [
        ("<think>Let me see.</think>The answer is 4.", False, ("The answer is 4.", "Let me see.")),
        ("\n <think>\n  spaced  \n</think>\n\n  Answer  ", False, ("Answer  ", "spaced")),
        ("<think>unfinished thoughts", False, ("", "unfinished thoughts")),
        ("<think></think>Answer", False, ("Answer", "")),
        ("No thinking here.", False, ("No thinking here.", None)),
        ("  Answer with <think> later</think> stays", False, ("  Answer with <think> later</think> stays", None)),
        ("already thinking</think>Answer", True, ("Answer", "already thinking")),
        ("still thinking", True, ("", "still thinking")),
        ("</think>Answer", True, ("Answer", "")),
        ("a</think>b</think>c", True, ("b</think>c", "a")),
        ("", False, ("", None)),
        ("", True, ("", "")),
    ],
)
def test_split_reasoning(text, started, expected):
    assert split_reasoning(text, reasoning_started=started) == expected


# --- the assembled message -------------------------------------------------------------------------


def test_message_plain_text():
    assert parse_assistant_message("Hello!") == {"role": "assistant", "content": "Hello!"}
    assert parse_assistant_message("") == {"role": "assistant", "content": ""}


def test_message_with_calls_and_reasoning():
    text = f'<think>Need weather.</think>\n{S}[get_weather(city="Paris")]{E}'
    assert parse_assistant_message(text, make_id=counting_ids()) == {
        "role": "assistant",
        "content": None,  # OpenAI: no text beside the calls
        "tool_calls": [
            {
                "id": f"call_{0:024x}",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
        "reasoning_content": "Need weather.",
    }


def test_message_keeps_text_beside_calls():
    message = parse_assistant_message(f"{S}[f()]{E}Checking the status.")
    assert message["content"] == "Checking the status." and len(message["tool_calls"]) == 1
    assert parse_assistant_message(f"{S}[f()]{E} \n")["content"] is None


def test_calls_inside_reasoning_are_not_calls():
    text = f"<think>maybe {S}[f()]{E}?</think>No call."
    assert parse_assistant_message(text) == {
        "role": "assistant",
        "content": "No call.",
        "reasoning_content": f"maybe {S}[f()]{E}?",
    }


def test_malformed_call_keeps_markers_in_content():
    text = f"{S}[f(1)]{E}"
    assert parse_assistant_message(text) == {"role": "assistant", "content": text}
