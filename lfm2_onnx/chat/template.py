"""Render a model folder's chat template exactly as transformers' apply_chat_template(tokenize=False) does.

The Jinja environment copies transformers' (transformers/utils/chat_template_utils.py): a sandbox with
trim_blocks and lstrip_blocks, the loopcontrols extension, a `{% generation %}` tag (rendered as its
body), a `tojson` filter that is plain json.dumps (ensure_ascii=False, indent and separators as given,
no HTML escaping), `raise_exception`, `strftime_now`, and dunder-safe `dict`/`namespace`. The inputs
are prepared the same way too: None-valued message keys are dropped, every value is rebuilt from plain
JSON types, and a message's reasoning is offered under both `reasoning_content` and `thinking`.

Two additions, both for OpenAI-style history (see render_chat): tool-call arguments given as a JSON
string are handed to the template as a dict, and `inline_tool_calls` writes tool calls into the
content for templates that ignore `tool_calls`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..errors import UserError
from .reasoning import THINK_START
from .tool_calls import format_tool_calls

TEMPLATE_FILE = "chat_template.jinja"
DEFAULT_BOS_TOKEN = "<|startoftext|>"

# transformers' SPECIAL_TOKENS_ATTRIBUTES: the named special tokens every template can read.
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")

# transformers copies a message's reasoning, found under any of these names, to "reasoning_content"
# and "thinking" (LFM2.5-8B-A1B's template reads message.thinking).
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


# --- loading ---------------------------------------------------------------------------------------


def load_chat_template(folder: str | Path) -> str:
    """The chat template of a model folder: chat_template.jinja, else tokenizer_config.json's "chat_template".

    transformers reads them in the same order. Raises UserError when the folder has neither.
    """
    folder = Path(folder)
    template_file = folder / TEMPLATE_FILE
    if template_file.is_file():
        return template_file.read_text(encoding="utf-8")
    template = _read_json(folder / "tokenizer_config.json").get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": "..."}, ...]
        template = next((entry.get("template") for entry in template if entry.get("name") == "default"), None)
    if isinstance(template, str) and template:
        return template
    raise UserError(
        f"{folder} has no chat template: expected {TEMPLATE_FILE} or a \"chat_template\" entry in "
        "tokenizer_config.json; copy the chat_template.jinja of the original model into that folder"
    )


def load_special_tokens(folder: str | Path) -> dict[str, str]:
    """The named special tokens (bos_token, eos_token, ...) from tokenizer_config.json and
    special_tokens_map.json, as template variables. Pass them to render_chat(**tokens)."""
    folder = Path(folder)
    tokens: dict[str, str] = {}
    # tokenizer_config.json wins, as in transformers for current folders (older folders without an
    # added_tokens_decoder let special_tokens_map.json win there; the two files agree in practice).
    for source in (_read_json(folder / "special_tokens_map.json"), _read_json(folder / "tokenizer_config.json")):
        for name in SPECIAL_TOKEN_NAMES:
            value = source.get(name)
            if isinstance(value, dict):  # serialized AddedToken
                value = value.get("content")
            if isinstance(value, str):
                tokens[name] = value
    return tokens


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read {path}: {error}") from error
    return data if isinstance(data, dict) else {}


# --- rendering -------------------------------------------------------------------------------------


def render_chat(
    template_source: str,
    messages: list[dict],
    *,
    tools: list[dict] | None = None,
    add_generation_prompt: bool = True,
    bos_token: str = DEFAULT_BOS_TOKEN,
    inline_tool_calls: bool = False,
    **extra: Any,
) -> str:
    """The prompt text for `messages`, as `tokenizer.apply_chat_template(messages, tools=tools,
    tokenize=False, add_generation_prompt=..., **extra)` renders it.

    `extra` holds further template variables: the other special tokens (see load_special_tokens) and
    template switches such as LFM2.5's keep_past_thinking / preserve_thinking. Messages follow OpenAI's
    shape; assistant tool-call arguments may be a JSON string (OpenAI) or a dict (transformers).

    `inline_tool_calls=True` moves each assistant message's tool_calls into its content as LFM2 writes
    them (`<|tool_call_start|>[f(a=1)]<|tool_call_end|>` then the text, as in LFM2's model card). Use it
    for templates that ignore tool_calls (all LFM2 ones; see template_renders_tool_calls): without it
    they drop the calls, and fail on the content=None that OpenAI sends with them.

    Raises UserError for an empty conversation, a tool that is not a dict or str, or a template error.
    """
    if not isinstance(messages, (list, tuple)):
        raise UserError(f"messages must be a list of dicts like [{{'role': 'user', 'content': 'Hi'}}], "
                        f"got {type(messages).__name__} {_shorten(messages)}")
    if not messages:
        raise UserError("cannot render a chat template for an empty conversation: give at least one message")
    # transformers also takes Python functions (and refuses strings, which LFM2 templates accept as
    # ready-made JSON); here tools are JSON schemas, as dicts or as JSON text.
    if tools is not None and not all(isinstance(tool, (dict, str)) for tool in tools):
        raise UserError("tools must be JSON schemas: dicts like {'type': 'function', 'function': {...}} or JSON text")
    chat = [_prepared_message(message, inline_tool_calls) for message in messages]
    variables = _plain({"bos_token": bos_token, **extra})
    try:
        return _compiled(template_source).render(
            messages=chat,
            tools=_plain(tools),
            documents=None,
            add_generation_prompt=add_generation_prompt,
            **variables,
        )
    except (jinja2.TemplateError, TypeError, ValueError) as error:
        # TypeError: e.g. LFM2's `content | tojson` on a missing content (OpenAI's content=None beside
        # tool calls; see inline_tool_calls).
        raise UserError(f"the chat template failed to render these messages: {error}") from error


def template_renders_tool_calls(template_source: str) -> bool:
    """Whether the template reads assistant `tool_calls` (LFM2.5-8B-A1B's does; LFM2's do not)."""
    return "tool_calls" in template_source


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
    """A model folder's chat template and special tokens, rendering prompts the way the runtime does:
    with a generation prompt, and tool calls written into the content for templates that ignore them."""

    source: str
    special_tokens: dict[str, str]

    @classmethod
    def from_folder(cls, folder: str | Path) -> ChatTemplate:
        return cls(load_chat_template(folder), load_special_tokens(folder))

    def render(self, messages: list[dict], tools: list[dict] | None = None,
               template_kwargs: dict | None = None) -> tuple[str, bool]:
        """The prompt text, and whether it already opened <think> (template_kwargs: extra template
        variables, e.g. enable_thinking)."""
        text = render_chat(self.source, messages, tools=tools, add_generation_prompt=True,
                           inline_tool_calls=not template_renders_tool_calls(self.source),
                           **{**self.special_tokens, **(template_kwargs or {})})
        return text, text.rstrip().endswith(THINK_START)


def _shorten(value, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _prepared_message(message: Mapping, inline_tool_calls: bool) -> dict:
    if not isinstance(message, Mapping):
        raise UserError(f"chat messages must be dicts with a role and content, got {_shorten(message)}")
    # OpenAI sends content=None next to tool calls; transformers drops None-valued keys, templates
    # handle a missing key better than a None.
    message = _plain({key: value for key, value in message.items() if value is not None})
    if inline_tool_calls and message.get("tool_calls"):
        content = message.get("content", "")
        if not isinstance(content, str):
            raise UserError("inline_tool_calls needs assistant messages with text content (or none) beside tool_calls")
        try:
            message["content"] = format_tool_calls(message.pop("tool_calls")) + content
        except (KeyError, TypeError, ValueError) as error:
            expected = "{'function': {'name': ..., 'arguments': JSON object text}}"
            problem = f"an assistant message has a malformed tool call ({error!r}); expected {expected}"
            raise UserError(problem) from error
    if message.get("tool_calls"):
        message["tool_calls"] = [_with_dict_arguments(call) for call in message["tool_calls"]]
    reasoning = next((message[key] for key in _REASONING_FIELDS if message.get(key) is not None), None)
    if reasoning is not None:
        message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
    return message


def _with_dict_arguments(call: Any) -> Any:
    """OpenAI's JSON-string arguments as the dict templates iterate over (`arguments.items()`)."""
    function = call.get("function") if isinstance(call, dict) else None
    arguments = function.get("arguments") if isinstance(function, dict) else None
    if not isinstance(arguments, str):
        return call
    try:
        decoded = json.loads(arguments)
    except ValueError:
        return call  # not JSON: leave it to the template
    if not isinstance(decoded, dict):
        return call
    return {**call, "function": {**function, "arguments": decoded}}


def _plain(value: Any) -> Any:
    """`value` rebuilt from plain JSON types, as transformers does before a template sees it: chat
    templates are untrusted code, and rich objects could give them methods to call."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_plain(item) for item in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: _plain(getattr(value, field.name)) for field in dataclasses.fields(value)}
    return f"<{type(value).__name__}>"  # an inert placeholder, like transformers'


# --- the Jinja environment -------------------------------------------------------------------------


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for training masks; render its body."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render_body"), [], [], body).set_lineno(lineno)

    def _render_body(self, caller):
        return caller()


class _TemplateDict:
    """`dict(...)` for templates, without the class itself (no attribute tricks on it)."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """Jinja's namespace() refusing underscore-prefixed attributes (no route to CPython internals)."""

    def __init__(*args, **kwargs):  # same signature trick as Jinja's Namespace
        self, args = args[0], args[1:]
        attributes = dict(*args, **kwargs)
        for name in attributes:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attributes)

    def __setitem__(self, name, value):
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"chat templates cannot store underscore-prefixed attributes on a namespace, got {name!r}"
            )


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # Jinja's own tojson escapes HTML characters (<, >, &, '); transformers' is plain json.dumps.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format):
    return datetime.now().strftime(format)


@functools.lru_cache(maxsize=16)
def _compiled(template_source: str) -> jinja2.Template:
    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    environment.filters["tojson"] = _tojson
    environment.globals.update(
        raise_exception=_raise_exception,
        strftime_now=_strftime_now,
        dict=_TemplateDict(),
        namespace=_TemplateNamespace,
    )
    try:
        return environment.from_string(template_source)
    except jinja2.TemplateSyntaxError as error:
        raise UserError(f"the chat template is not valid Jinja (line {error.lineno}): {error.message}") from error
