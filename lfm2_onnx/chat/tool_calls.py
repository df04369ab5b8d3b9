"""LFM2 tool calls: parse them out of generated text, and write them back as the model does.

LFM2 models call tools by writing a Python-style list of calls between two marker tokens:

    <|tool_call_start|>[get_weather(city="Paris", days=2)]<|tool_call_end|>

When asked for JSON ("Output function calls as JSON") they write JSON objects instead:

    <|tool_call_start|>[{"name": "get_weather", "arguments": {"city": "Paris"}}]<|tool_call_end|>

Both forms are parsed here without ever evaluating the text: the JSON form with `json`, the Python
form with `ast`, reading only literals (strings, numbers, booleans, None/null, lists, dicts) and
keyword arguments.

Real models also write calls that are not quite Python. When a block does not parse as written, it
is cut into its calls at top-level commas and each call is read on its own, as written first, then
with these repairs (and only these, where the intent is unambiguous):

- a line break (or carriage return) typed raw inside a quoted string is read as if escaped;
- an integer with leading zeros is decimal: `hour=07` -> 7, `x=-010` -> -10 (Python 3 and JSON refuse
  them; nobody passes octal to a tool). Zeros inside strings and in floats like `007.5` are untouched;
- a keyword argument's string may hold unescaped quotes of its own kind (shell or code:
  `cmd='sed -n '1,5p' f.py'`). The quote rule: inside such a string, a quote ends it only if what
  follows, after optional spaces, is `, name=` (the next argument) or `)` ending the call (itself
  followed by `,` or the end); any other quote is part of the text. So a string that itself holds
  `', name=` ends there (`code='f(a='1', b=2)'` reads `code="f(a='1"`). The rule applies to strings
  that are direct argument values; strings inside lists or dicts, r/b/f-strings and triple-quoted
  ones end where Python ends them. Valid Python always wins: `s='a' 'b'` is "ab", and the rule is
  tried only on a call that does not read otherwise.

The cut at top-level commas is made twice, once reading strings as Python does and once with the
quote rule, and the cut that reads more calls is kept (Python's on a tie), so a broken string
cannot swallow its neighbours. Calls that still do not read lose no text: when none of a block's
calls reads, the block stays in the content verbatim, markers included; when some do, those become
tool calls and the others stay in the content as one block of their own,
`<|tool_call_start|>[bad(1), worse(=)]<|tool_call_end|>`. No exception escapes.
"""

from __future__ import annotations

import ast
import io
import json
import keyword
import math
import re
import secrets
import tokenize
import unicodedata
import warnings
from typing import Any, Callable, NamedTuple

TOOL_CALL_START = "<|tool_call_start|>"
TOOL_CALL_END = "<|tool_call_end|>"

# Names Python's grammar refuses as keyword-argument or function names; the parser renames them
# to this prefix first, so a tool argument called `from` or `class` still parses.
_RESERVED_NAMES = frozenset(keyword.kwlist) | {"__debug__"}
_RENAME_PREFIX = "_lfm2_reserved_"
_JSON_NAMES = {"true": True, "false": False, "null": None}

IdFactory = Callable[[], str]


class ParsedToolCalls(NamedTuple):
    content: str
    tool_calls: list[dict]


class _Malformed(Exception):
    """The call block is not one we can read; the caller keeps it as text."""


def new_tool_call_id() -> str:
    """An OpenAI-style tool call id: "call_" and 24 random hex digits."""
    return "call_" + secrets.token_hex(12)


def parse_tool_calls(text: str, *, make_id: IdFactory | None = None) -> ParsedToolCalls:
    """Split generated text into (content, tool_calls).

    The calls of every `<|tool_call_start|>...<|tool_call_end|>` block become OpenAI-style tool
    calls (in order) and leave the content; text around the blocks is kept as is. A block none of
    whose calls reads, or one never closed, stays in the content verbatim; calls that do not read
    beside ones that do stay in the content as a block of their own. Never raises.
    """
    content_parts: list[str] = []
    tool_calls: list[dict] = []
    position = 0
    while True:
        start = text.find(TOOL_CALL_START, position)
        if start < 0:
            break
        body_start = start + len(TOOL_CALL_START)
        end = text.find(TOOL_CALL_END, body_start)
        if end < 0:
            break  # unterminated: the rest, marker included, is content
        content_parts.append(text[position:start])
        block = parse_call_block(text[body_start:end], make_id=make_id)
        content_parts.append(block.content)
        tool_calls.extend(block.tool_calls)
        position = end + len(TOOL_CALL_END)
    content_parts.append(text[position:])
    return ParsedToolCalls("".join(content_parts), tool_calls)


def parse_call_block(body: str, *, make_id: IdFactory | None = None) -> ParsedToolCalls:
    """The calls written between the markers, and what of the block stays content. Never raises.

    content is "" when every call reads, the whole block (markers included) when none does, and
    otherwise the calls that do not read, as a block of their own (see the module docstring).
    """
    read, unread = _read_block(body)
    if not read:
        return ParsedToolCalls(TOOL_CALL_START + body + TOOL_CALL_END, [])
    content = TOOL_CALL_START + "[" + ", ".join(unread) + "]" + TOOL_CALL_END if unread else ""
    make_id = make_id or new_tool_call_id
    calls = [{"id": make_id(), "type": "function", "function": {"name": n, "arguments": a}} for n, a in read]
    return ParsedToolCalls(content, calls)


def format_tool_calls(tool_calls: list[dict]) -> str:
    """Write OpenAI tool calls the way LFM2 does: `<|tool_call_start|>[f(a=1)]<|tool_call_end|>`.

    Accepts calls shaped like OpenAI's ({"function": {"name", "arguments"}}) or bare
    ({"name", "arguments"}), with arguments as a JSON string or a dict. A call whose name or argument
    names are not Python identifiers (e.g. "get-weather") is written as a JSON object instead, which
    the parser also reads, so `parse_tool_calls(format_tool_calls(calls))` gives the calls back.
    An empty list gives "".
    """
    if not tool_calls:
        return ""
    written = [_format_call(*_name_and_arguments(call)) for call in tool_calls]
    return TOOL_CALL_START + "[" + ", ".join(written) + "]" + TOOL_CALL_END


# --- reading ---------------------------------------------------------------------------------------

NamedArguments = tuple[str, str]  # (name, arguments as a JSON string)


def _read_block(body: str) -> tuple[list[NamedArguments], list[str]]:
    """(calls read, calls left unread as written): the whole block as written, else call by call."""
    whole = _read_source(body.strip())
    if whole is not None:
        return whole, []
    text = _without_list_brackets(body.strip())
    best: tuple[list[NamedArguments], list[str]] = ([], [])
    for quote_rule in (False, True):  # the cut reading strings as Python does, then the lenient one
        read, unread = [], []
        for part in _scan(text, quote_rule=quote_rule):
            if not part.written.strip():
                continue  # nothing between two commas
            calls = _read_part(part.written)
            if calls is None:
                unread.append(part.written.strip())
            else:
                read += calls
        if len(read) > len(best[0]):
            best = (read, unread)
        if not unread:
            break
    return best


def _read_part(written: str) -> list[NamedArguments] | None:
    """The calls in one top-level part of a block: as written, else with line breaks in strings and
    zero-padded integers repaired, else with the quote rule too; None if none of those reads."""
    calls = _read_source(written.strip())
    for quote_rule in (False, True):
        if calls is not None:
            break
        calls = _read_source(_repaired(written, quote_rule=quote_rule).strip())
    return calls


def _read_source(source: str) -> list[NamedArguments] | None:
    try:
        return [(name, _arguments_json(name, arguments)) for name, arguments in _read_calls(source)]
    except Exception:  # noqa: BLE001 - any failure on model text means "not calls"
        return None


def _read_calls(body: str) -> list[tuple[str, dict]]:
    """(name, arguments) for each call in a block body; raises on anything else."""
    if body[:1] in "[{":
        try:
            parsed = _strict_json(body)
        except ValueError:
            parsed = None  # not strict JSON: maybe Python literals (single quotes, True, ...)
        if parsed is not None:
            items = parsed if isinstance(parsed, list) else [parsed]
            return _nonempty([_call_from_json(item) for item in items])
    try:
        return _calls_from_python(body, {})
    except (SyntaxError, _Malformed):
        # Maybe a reserved word used as a name (`from=`, `class(`, `None(`): rename those and retry.
        renamed_body, renamed = _rename_reserved_names(body)
        if not renamed:
            raise
        return _calls_from_python(renamed_body, renamed)


def _nonempty(calls: list) -> list:
    if not calls:
        raise _Malformed("empty call list")
    return calls


def _strict_json(text: str) -> Any:
    """json.loads without NaN/Infinity, which have no place in OpenAI's JSON arguments."""
    return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a JSON value")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value


def _call_from_json(item: Any) -> tuple[str, dict]:
    """A call written as a JSON object {"name": ..., "arguments": {...}}."""
    if not isinstance(item, dict):
        raise _Malformed("a JSON call must be an object")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise _Malformed("a JSON call needs a name")
    arguments = item.get("arguments", item.get("parameters", {}))
    if isinstance(arguments, str):  # arguments given as a JSON string, like OpenAI's
        arguments = _strict_json(arguments)
    if not isinstance(arguments, dict):
        raise _Malformed("arguments must be an object")
    return name, arguments


def _calls_from_python(body: str, renamed: dict[str, str]) -> list[tuple[str, dict]]:
    tree = _ast_expression(body)
    items = tree.elts if isinstance(tree, (ast.List, ast.Tuple)) else [tree]
    return _nonempty([_call_from_node(item, renamed) for item in items])


def _ast_expression(source: str) -> ast.expr:
    # Invalid escapes like "\d" in model text only warn; keep those warnings off the user's console.
    # (catch_warnings swaps process-wide filters; harmless here, as nothing else warns in between.)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ast.parse(source, mode="eval").body


def _rename_reserved_names(source: str) -> tuple[str, dict[str, str]]:
    """Rename reserved words used as names (`from=...`, `class(...)`) so `ast` accepts them."""
    tokens = [
        token
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT)
    ]
    line_offsets = [0]
    for line in source.split("\n"):
        line_offsets.append(line_offsets[-1] + len(line) + 1)
    pieces, renamed, position = [], {}, 0
    for token, following in zip(tokens, tokens[1:]):
        if not (
            token.type == tokenize.NAME
            and token.string in _RESERVED_NAMES
            and following.type == tokenize.OP
            and following.string in ("=", "(")
        ):
            continue
        start = line_offsets[token.start[0] - 1] + token.start[1]
        end = start + len(token.string)
        if source[start:end] != token.string:
            raise _Malformed("token positions do not match the text")
        replacement = _RENAME_PREFIX + token.string
        renamed[replacement] = token.string
        pieces += [source[position:start], replacement]
        position = end
    pieces.append(source[position:])
    return "".join(pieces), renamed


def _call_from_node(node: ast.expr, renamed: dict[str, str]) -> tuple[str, dict]:
    """A call written as Python, `name(key=value, ...)`, or as a JSON-like dict."""
    if isinstance(node, ast.Dict):
        return _call_from_json(_literal(node))
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
        raise _Malformed("not a call")
    if node.args:
        raise _Malformed("positional arguments have no names to map to")
    arguments = {}
    for argument in node.keywords:
        if argument.arg is None:
            raise _Malformed("**kwargs")
        name = renamed.get(argument.arg, argument.arg)
        if name in arguments:
            raise _Malformed(f"argument {name!r} given twice")
        arguments[name] = _literal(argument.value)
    return renamed.get(node.func.id, node.func.id), arguments


def _literal(node: ast.expr) -> Any:
    """The JSON value a literal node spells; raises for anything else (names, calls, operators...)."""
    if isinstance(node, ast.Constant):
        value = node.value
        if value is None or isinstance(value, (bool, int)):
            return value
        if isinstance(value, float) and math.isfinite(value):
            return value
        if isinstance(value, str):
            return _joined_surrogates(value)
    elif isinstance(node, ast.Name) and node.id in _JSON_NAMES:
        return _JSON_NAMES[node.id]
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = node.operand
        if isinstance(operand, ast.Constant) and type(operand.value) in (int, float):
            value = -operand.value if isinstance(node.op, ast.USub) else operand.value
            if math.isfinite(value):
                return value
    elif isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(element) for element in node.elts]
    elif isinstance(node, ast.Dict):
        result = {}
        for key, value in zip(node.keys, node.values):
            key = None if key is None else _literal(key)
            if not isinstance(key, str):
                raise _Malformed("object keys must be strings")
            result[key] = _literal(value)
        return result
    raise _Malformed(f"not a literal: {type(node).__name__}")


def _joined_surrogates(text: str) -> str:
    """Join "\\ud83d\\ude00"-style escaped surrogate pairs into one character, as JSON does."""
    if not any("\ud800" <= char <= "\udfff" for char in text):
        return text
    # A lone surrogate cannot be encoded as UTF-8 later on: treat it as malformed (decode raises).
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le")


def _arguments_json(name: str, arguments: dict) -> str:
    """The arguments as OpenAI's JSON string; raises if name or arguments cannot be UTF-8 (lone surrogates)."""
    name.encode("utf-8")
    text = json.dumps(arguments, ensure_ascii=False)
    text.encode("utf-8")
    return text


# --- repairing what real models write ---------------------------------------------------------------
#
# One pass over a block's text finds its strings, brackets and top-level commas, cuts it into calls
# and writes each call's repaired text (see the module docstring for the repairs and the quote rule).

_QUOTES = "'\""
_OPENING_BRACKETS = "([{"
_CLOSING_BRACKETS = ")]}"
# What the pass stops at outside strings: a quote, a bracket, a comma, or a zero-padded integer.
_SIGNIFICANT = re.compile(r"""['"()\[\]{},]|(?<![\w.])0+[0-9]+(?![\w.])""")
# The quote rule: after a quote, what shows the argument's string ended there.
_NEXT_ARGUMENT = re.compile(r"\s*,\s*[^\W\d]\w*\s*=(?!=)")
_END_OF_CALL = re.compile(r"\s*,?\s*\)\s*(?:,|\Z)")
_STRING_REPAIRS = {"\n": "\\n", "\r": "\\r", "\0": "\\x00"}


class _Part(NamedTuple):
    written: str  # as the model wrote it
    repaired: str  # the same with the repairs made


def _without_list_brackets(text: str) -> str:
    return text[1:-1] if text.startswith("[") and text.endswith("]") else text


def _repaired(text: str, *, quote_rule: bool) -> str:
    return ",".join(part.repaired for part in _scan(text, quote_rule=quote_rule))


def _scan(text: str, *, quote_rule: bool) -> list[_Part]:
    """Cut `text` at top-level commas, repairing each part; the quote rule only if `quote_rule`."""
    return _Scanner(text, quote_rule).parts()


class _Scanner:
    """The pass itself. Linear in the text: a string that runs to the end of the text without ending
    is remembered, so later strings of the same quote skip that search (it would fail the same way)."""

    def __init__(self, text: str, quote_rule: bool):
        self.text = text
        self.quote_rule = quote_rule
        self.no_end_after: dict[str, int] = {}  # quote -> no string it opens after this index ends
        self.no_argument_end_after: dict[str, int] = {}  # the same for the quote rule's ends

    def parts(self) -> list[_Part]:
        text = self.text
        parts: list[_Part] = []
        repaired: list[str] = []  # pieces of the current part's repaired text
        brackets: list[str] = []  # the brackets open at this point
        part_start = copied = 0
        while match := _SIGNIFICANT.search(text, copied):
            token, start, end = match.group(), match.start(), match.end()
            repaired.append(text[copied:start])
            if token in _QUOTES:
                prefixed = start > 0 and (text[start - 1].isalnum() or text[start - 1] == "_")  # r'', b'', f''
                argument = self.quote_rule and not prefixed and brackets == ["("]
                end, token = self._string(start, repair=not prefixed, argument=argument)
            elif token[0].isdigit():
                token = token.lstrip("0") or "0"  # not int(): no digit limit, no error
            elif token in _OPENING_BRACKETS:
                brackets.append(token)
            elif token in _CLOSING_BRACKETS:
                if brackets:
                    brackets.pop()
            elif not brackets:  # a top-level comma: the end of a call
                parts.append(_Part(text[part_start:start], "".join(repaired)))
                repaired, part_start, token = [], end, ""
            repaired.append(token)
            copied = end
        repaired.append(text[copied:])
        parts.append(_Part(text[part_start:], "".join(repaired)))
        return parts

    def _string(self, start: int, *, repair: bool, argument: bool) -> tuple[int, str]:
        """Where the string opened at `start` ends, and its text (repaired if `repair`).

        `argument`: the string is a keyword argument's value, read with the quote rule. A string
        that never ends is only its opening quote, so the scan goes on (and its call stays unread).
        """
        text, quote = self.text, self.text[start]
        if text.startswith(quote * 3, start):
            return self._triple_quoted(start)
        if start > self.no_end_after.get(quote, len(text)):
            return start + 1, quote
        argument = argument and start <= self.no_argument_end_after.get(quote, len(text))
        pieces = [quote]
        python_end = None  # with the quote rule: where Python ends the string, (index, pieces)
        position = start + 1
        while position < len(text):
            char = text[position]
            if char == "\\":
                pieces.append(text[position : position + 2])
                position += 2
                continue
            if char == quote:
                if not argument or _ends_argument(text, position + 1):
                    return position + 1, "".join(pieces) + quote
                python_end = python_end or (position, len(pieces))
                char = "\\" + quote
            elif repair:
                char = _STRING_REPAIRS.get(char, char)
            pieces.append(char)
            position += 1
        if argument:
            self.no_argument_end_after[quote] = start
        if python_end is not None:  # no quote ends the argument: end where Python does
            position, count = python_end
            return position + 1, "".join(pieces[:count]) + quote
        self.no_end_after[quote] = start
        return start + 1, quote

    def _triple_quoted(self, start: int) -> tuple[int, str]:
        """A triple-quoted string, as written (line breaks and lone quotes are valid in it)."""
        text, delimiter = self.text, self.text[start : start + 3]
        position = start + 3
        if start <= self.no_end_after.get(delimiter, len(text)):
            while position < len(text):
                if text[position] == "\\":
                    position += 2
                elif text.startswith(delimiter, position):
                    return position + 3, text[start : position + 3]
                else:
                    position += 1
            self.no_end_after[delimiter] = start
        return start + 1, delimiter[0]  # never ends: only its first quote


def _ends_argument(text: str, position: int) -> bool:
    return bool(_NEXT_ARGUMENT.match(text, position) or _END_OF_CALL.match(text, position))


# --- writing ---------------------------------------------------------------------------------------


def _name_and_arguments(call: dict) -> tuple[str, dict]:
    function = call.get("function", call)
    arguments = function.get("arguments") or {}
    if isinstance(arguments, str):
        arguments = json.loads(arguments)
    else:
        arguments = json.loads(json.dumps(arguments))  # JSON semantics: tuples become lists, keys strings
    if not isinstance(arguments, dict):
        raise ValueError(f"tool call arguments must be a JSON object, got {arguments!r}")
    return function["name"], arguments


def _format_call(name: str, arguments: dict) -> str:
    if not (_is_python_name(name) and all(_is_python_name(key) for key in arguments)):
        return json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return name + "(" + ", ".join(f"{key}={_format_value(value)}" for key, value in arguments.items()) + ")"


def _is_python_name(name: Any) -> bool:
    # Python folds identifiers to NFKC ("ﬁ" reads as "fi"), so only names already in that form round-trip.
    return (
        isinstance(name, str)
        and name.isidentifier()
        and unicodedata.normalize("NFKC", name) == name
        and not name.startswith(_RENAME_PREFIX)
    )


def _format_value(value: Any) -> str:
    """A JSON value as a Python literal (strings double-quoted like LFM2 writes them)."""
    if value is None or isinstance(value, bool):
        return repr(value)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON string escapes are valid Python escapes
    if isinstance(value, list):
        return "[" + ", ".join(_format_value(item) for item in value) + "]"
    if isinstance(value, dict):
        items = (f"{json.dumps(key, ensure_ascii=False)}: {_format_value(item)}" for key, item in value.items())
        return "{" + ", ".join(items) + "}"
    raise ValueError(f"not a JSON value: {value!r}")
