"""LFM2 tool calls: parse them out of generated text, and write them back as the model does.

LFM2 models call tools by writing a Python-style list of calls between two marker tokens:

    <|tool_call_start|>[get_weather(city="Paris", days=2)]<|tool_call_end|>

When asked for JSON ("Output function calls as JSON") they write JSON objects instead:

    <|tool_call_start|>[{"name": "get_weather", "arguments": {"city": "Paris"}}]<|tool_call_end|>

Both forms are parsed here without ever evaluating the text: the JSON form with `json`, the Python
form with `ast`, reading only literals (strings, numbers, booleans, None/null, lists, dicts) and
keyword arguments. A block that does not parse stays in the content as the raw text, markers
included, so nothing the model wrote is lost and no exception escapes.
"""

from __future__ import annotations

import ast
import io
import json
import keyword
import math
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

    Every `<|tool_call_start|>...<|tool_call_end|>` block that parses becomes OpenAI-style tool
    calls (in order) and leaves the content; text around the blocks is kept as is. A block that
    does not parse, or one never closed, stays in the content verbatim. Never raises.
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
        calls = parse_call_block(text[body_start:end], make_id=make_id)
        if calls is None:
            content_parts.append(text[start : end + len(TOOL_CALL_END)])
        else:
            tool_calls.extend(calls)
        position = end + len(TOOL_CALL_END)
    content_parts.append(text[position:])
    return ParsedToolCalls("".join(content_parts), tool_calls)


def parse_call_block(body: str, *, make_id: IdFactory | None = None) -> list[dict] | None:
    """The OpenAI tool calls written between the markers, or None if `body` is not a call list."""
    try:
        named_arguments = [(name, _arguments_json(name, arguments)) for name, arguments in _read_calls(body.strip())]
    except Exception:  # noqa: BLE001 - any failure on model text means "not a call block"
        return None
    make_id = make_id or new_tool_call_id
    return [
        {"id": make_id(), "type": "function", "function": {"name": name, "arguments": arguments}}
        for name, arguments in named_arguments
    ]


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
