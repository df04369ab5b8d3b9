"""lfm2_onnx.chat.render_chat renders every real LFM2 / LFM2.5 template exactly like transformers."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import REPO, SHARED_MODELS, shared_model
from lfm2_onnx.chat import (
    ChatTemplate,
    format_tool_calls,
    load_chat_template,
    load_special_tokens,
    parse_assistant_message,
    render_chat,
    template_renders_tool_calls,
)
from lfm2_onnx.errors import UserError

transformers = pytest.importorskip("transformers")

TINY_TEMPLATE = REPO / "builder" / "assets" / "tiny_chat_template.jinja"
TINY_TOKENIZER = REPO / "builder" / "assets" / "tiny_tokenizer.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
TOKENIZER_DONOR = "LFM2-1.2B"  # the folders below that lack tokenizer files borrow these

# Every distinct real template (several folders share bytes; all are listed so each file is checked).
REAL_TEMPLATE_FOLDERS = [
    "LFM2-350M",
    "LFM2-1.2B",
    "LFM2-2.6B",
    "LFM2-8B-A1B",
    "LFM2.5-1.2B-Base",
    "LFM2.5-1.2B-Instruct",
    "LFM2.5-8B-A1B",
]

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city (°C). Ex: Zürich, 東京",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}
TIME_TOOL = {
    "name": "get_time",
    "description": "Time <now> & 'here'",
    "parameters": {"type": "object", "properties": {}},
}

WEATHER_CALL = {
    "id": "call_0123456789abcdef01234567",
    "type": "function",
    "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2, "units": ["c", None, True]}},
}


def _with_string_arguments(call: dict) -> dict:
    """The same call as an OpenAI client sends it: arguments as a JSON string."""
    function = {**call["function"], "arguments": json.dumps(call["function"]["arguments"])}
    return {**call, "function": function}


CONVERSATIONS = {
    "plain": ([{"role": "user", "content": "Hi there"}], None),
    "system": ([{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}], None),
    "multi_turn": (
        [
            {"role": "system", "content": "Be kind."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello! How can I help?"},
            {"role": "user", "content": "Tell me a joke."},
        ],
        None,
    ),
    "tools": ([{"role": "user", "content": "Weather in Paris?"}], [WEATHER_TOOL, TIME_TOOL]),
    "tools_and_system": (
        [{"role": "system", "content": "Use tools."}, {"role": "user", "content": "Weather in Paris?"}],
        [WEATHER_TOOL],
    ),
    "tool_round_trip": (
        [
            {"role": "system", "content": "Use tools."},
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": "Checking.", "tool_calls": [WEATHER_CALL]},
            {"role": "tool", "tool_call_id": WEATHER_CALL["id"], "content": '{"temp_c": 21}'},
            {"role": "tool", "tool_call_id": WEATHER_CALL["id"], "content": {"temp_c": 22, "sky": "clair ☀"}},
            {"role": "assistant", "content": "It is 21 °C."},
            {"role": "user", "content": "Thanks"},
        ],
        [WEATHER_TOOL],
    ),
    "tool_call_last": (
        [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": "", "tool_calls": [WEATHER_CALL, WEATHER_CALL]},
            {"role": "tool", "content": "sunny"},
        ],
        [WEATHER_TOOL],
    ),
    "non_ascii": (
        [
            {"role": "system", "content": "Réponds en français. 日本語もOK."},
            {"role": "user", "content": "Grüße aus Köln 🌸 — “quotes” <tags> & \\ backslash\n\ttab"},
        ],
        [{"type": "function", "function": {"name": "übersetze", "description": "Übersetzt ✓"}}],
    ),
    "reasoning_history": (
        [
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "<think>Add them.</think>\n\n4", "reasoning_content": "Add them."},
            {"role": "user", "content": "3+3?"},
            {"role": "assistant", "content": "<think>Again.</think>6", "reasoning_content": "Again."},
        ],
        None,
    ),
}


# --- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_folders(tmp_path_factory) -> dict[str, Path]:
    """name -> a folder with the real chat_template.jinja and the donor's tokenizer files."""
    donor = shared_model(TOKENIZER_DONOR)
    folders = {}
    for name in REAL_TEMPLATE_FOLDERS:
        source = SHARED_MODELS / name
        if not (source / "chat_template.jinja").is_file():
            continue
        folder = tmp_path_factory.mktemp(name)
        for file_name in TOKENIZER_FILES:
            shutil.copy(donor / file_name, folder / file_name)
        shutil.copy(source / "chat_template.jinja", folder / "chat_template.jinja")
        folders[name] = folder
    return folders


@pytest.fixture(scope="module")
def hf_tokenizers(model_folders) -> dict:
    return {name: transformers.AutoTokenizer.from_pretrained(folder) for name, folder in model_folders.items()}


def _folder(model_folders, name) -> Path:
    if name not in model_folders:
        pytest.skip(f"{SHARED_MODELS / name / 'chat_template.jinja'} not present")
    return model_folders[name]


def _ours(folder: Path, messages, tools=None, **kwargs) -> str:
    return render_chat(load_chat_template(folder), messages, tools=tools, **{**load_special_tokens(folder), **kwargs})


def _theirs(tokenizer, messages, tools=None, add_generation_prompt=True, **kwargs) -> str:
    return tokenizer.apply_chat_template(
        messages, tools=tools, tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs
    )


# --- parity with transformers -------------------------------------------------------------------------


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
@pytest.mark.parametrize("name", REAL_TEMPLATE_FOLDERS)
def test_real_templates_match_transformers(model_folders, hf_tokenizers, name, conversation, add_generation_prompt):
    folder = _folder(model_folders, name)
    messages, tools = CONVERSATIONS[conversation]
    before = copy.deepcopy(messages)
    ours = _ours(folder, messages, tools, add_generation_prompt=add_generation_prompt)
    theirs = _theirs(hf_tokenizers[name], messages, tools, add_generation_prompt)
    assert ours == theirs
    assert messages == before  # the caller's messages are never modified


@pytest.mark.parametrize("name", REAL_TEMPLATE_FOLDERS)
def test_template_switches_match_transformers(model_folders, hf_tokenizers, name):
    """LFM2.5's keep_past_thinking / preserve_thinking reach the template like any apply_chat_template kwarg."""
    folder = _folder(model_folders, name)
    messages, _ = CONVERSATIONS["reasoning_history"]
    for switches in ({"keep_past_thinking": True}, {"preserve_thinking": True}, {"eos_token": "<|x|>"}):
        assert _ours(folder, messages, **switches) == _theirs(hf_tokenizers[name], messages, **switches)


@pytest.mark.parametrize("name", REAL_TEMPLATE_FOLDERS)
def test_openai_string_arguments_render_like_dict_arguments(model_folders, hf_tokenizers, name):
    """OpenAI sends arguments as a JSON string; LFM2.5-8B-A1B's template iterates them as a dict
    (transformers fails on the string), so render_chat decodes them first."""
    folder = _folder(model_folders, name)
    messages, tools = CONVERSATIONS["tool_round_trip"]
    openai_messages = [
        {**m, "tool_calls": [_with_string_arguments(c) for c in m["tool_calls"]]} if "tool_calls" in m else m
        for m in messages
    ]
    assert _ours(folder, openai_messages, tools) == _theirs(hf_tokenizers[name], messages, tools)


@pytest.mark.parametrize("name", REAL_TEMPLATE_FOLDERS)
def test_inline_tool_calls_for_templates_that_ignore_them(model_folders, hf_tokenizers, name):
    """With inline_tool_calls, history tool calls (content None, as OpenAI sends) are written into the
    content the way LFM2 generates them; templates without tool_calls support need this."""
    folder = _folder(model_folders, name)
    openai_call = _with_string_arguments(WEATHER_CALL)
    messages = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [openai_call]},
        {"role": "tool", "tool_call_id": openai_call["id"], "content": "sunny"},
    ]
    written = [
        messages[0],
        {"role": "assistant", "content": format_tool_calls([openai_call])},
        messages[2],
    ]
    assert _ours(folder, messages, inline_tool_calls=True) == _theirs(hf_tokenizers[name], written)
    # The inlined block is exactly what the parser reads back.
    assert parse_assistant_message(written[1]["content"], make_id=lambda: openai_call["id"]) == {
        "role": "assistant",
        "content": None,
        "tool_calls": [openai_call],
    }


def test_which_templates_render_tool_calls(model_folders):
    renders = {name: template_renders_tool_calls(load_chat_template(f)) for name, f in model_folders.items()}
    assert renders.pop("LFM2.5-8B-A1B", True)
    assert not any(renders.values()), renders


@pytest.mark.parametrize("name", REAL_TEMPLATE_FOLDERS)
def test_template_failures_are_user_errors(model_folders, hf_tokenizers, name):
    """Where transformers fails (LFM2: tool calls with content None), render_chat raises UserError."""
    folder = _folder(model_folders, name)
    messages = [{"role": "user", "content": "x"}, {"role": "assistant", "content": None, "tool_calls": [WEATHER_CALL]}]
    try:
        theirs = _theirs(hf_tokenizers[name], messages)
    except Exception:
        with pytest.raises(UserError, match="chat template"):
            _ours(folder, messages)
    else:
        assert _ours(folder, messages) == theirs


def test_tools_given_as_json_text(model_folders):
    """LFM2 templates take a tool that is already JSON text as is (transformers refuses non-dict tools)."""
    messages, _ = CONVERSATIONS["plain"]
    text_tool = '{"name": "raw", "description": "already JSON"}'
    for name, folder in model_folders.items():
        rendered = _ours(folder, messages, [text_tool, TIME_TOOL])
        assert f"[{text_tool}, {json.dumps(TIME_TOOL)}]" in rendered


def test_lfm2_and_lfm25_tool_list_markers(model_folders):
    """LFM2 wraps the tool list in <|tool_list_start|>...<|tool_list_end|>; LFM2.5-Instruct/8B do not."""
    messages, tools = CONVERSATIONS["tools"]
    tool_json = json.dumps(WEATHER_TOOL, ensure_ascii=False) + ", " + json.dumps(TIME_TOOL, ensure_ascii=False)
    expected = {
        "LFM2-1.2B": f"List of tools: <|tool_list_start|>[{tool_json}]<|tool_list_end|><|im_end|>",
        "LFM2.5-1.2B-Instruct": f"List of tools: [{tool_json}]<|im_end|>",
        "LFM2.5-8B-A1B": f"List of tools: [{tool_json}]<|im_end|>",
    }
    for name, system_end in expected.items():
        rendered = _ours(_folder(model_folders, name), messages, tools)
        assert rendered.startswith("<|startoftext|><|im_start|>system\n" + system_end + "\n<|im_start|>user\n")


def test_lfm25_8b_renders_tool_calls_and_thinking(model_folders):
    folder = _folder(model_folders, "LFM2.5-8B-A1B")
    messages = [
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": None,
            "reasoning_content": "Need the tool.",
            "tool_calls": [_with_string_arguments(WEATHER_CALL)],
        },
        {"role": "tool", "content": "sunny"},
    ]
    rendered = _ours(folder, messages, add_generation_prompt=False)
    assert rendered == (
        "<|startoftext|><|im_start|>user\nWeather?<|im_end|>\n"
        "<|im_start|>assistant\n<think>Need the tool.</think>"
        "<|tool_call_start|>[get_weather(city='Paris', days=2, units=['c', None, True])]<|tool_call_end|>"
        "<|im_end|>\n<|im_start|>tool\nsunny<|im_end|>\n"
    )
    # What the template writes is Python the tool-call parser reads back.
    parsed = parse_assistant_message(rendered.split("<|im_start|>assistant\n")[1].split("<|im_end|>")[0])
    assert parsed["reasoning_content"] == "Need the tool."
    assert json.loads(parsed["tool_calls"][0]["function"]["arguments"]) == WEATHER_CALL["function"]["arguments"]


@settings(max_examples=60, deadline=None)
@given(
    turns=st.lists(st.tuples(st.sampled_from(["user", "assistant", "tool"]), st.text(max_size=30)), max_size=5),
    system=st.one_of(st.none(), st.text(max_size=20)),
    generation_prompt=st.booleans(),
)
def test_random_conversations_match_transformers(model_folders, hf_tokenizers, turns, system, generation_prompt):
    messages = ([{"role": "system", "content": system}] if system is not None else []) + [
        {"role": role, "content": content} for role, content in turns
    ]
    if not messages:
        return
    for name in ("LFM2-1.2B", "LFM2.5-1.2B-Instruct", "LFM2.5-8B-A1B"):
        if name in model_folders:
            ours = _ours(model_folders[name], messages, [WEATHER_TOOL], add_generation_prompt=generation_prompt)
            assert ours == _theirs(hf_tokenizers[name], messages, [WEATHER_TOOL], generation_prompt)


# --- the bundled tiny template and the Jinja environment ---------------------------------------------------


@pytest.fixture(scope="module")
def tiny_tokenizer():
    return transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(TINY_TOKENIZER), bos_token="<|startoftext|>", eos_token="<|im_end|>", pad_token="<|pad|>"
    )


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
def test_tiny_template_matches_transformers(tiny_tokenizer, conversation, add_generation_prompt):
    messages, tools = CONVERSATIONS[conversation]
    source = TINY_TEMPLATE.read_text()
    ours = render_chat(source, messages, tools=tools, add_generation_prompt=add_generation_prompt)
    theirs = _theirs(tiny_tokenizer, messages, tools, add_generation_prompt, chat_template=source)
    assert ours == theirs


ENVIRONMENT_TEMPLATE = """\
{% set ns = namespace(count=0) %}
  {% for m in messages %}
    {% if m.role == "skip" %}{% continue %}{% endif %}
    {% if m.role == "stop" %}{% break %}{% endif %}
    {% set ns.count = ns.count + 1 %}
{{ m | tojson }}|{{ m | tojson(indent=2) }}|{{ m | tojson(separators=(",", ":"), sort_keys=true) }}
  {% endfor %}
{% generation %}count={{ ns.count }} {{ dict(a=1) | tojson }} {{ eos_token }} {{ bos_token }}{% endgeneration %}
{{ strftime_now("%Y-%m-%d") }} {{ custom | default("none") }}
{% if messages[-1].role == "boom" %}{{ raise_exception("no boom allowed") }}{% endif %}
"""


def test_jinja_environment_matches_transformers(tiny_tokenizer):
    """trim/lstrip blocks, loopcontrols, namespace, dict(), tojson options, generation, strftime_now."""
    messages = [
        {"role": "user", "content": "<b>é</b> & 'q'"},
        {"role": "skip", "content": "hidden"},
        {"role": "assistant", "content": {"nested": [1, 2.5, None, True]}},
        {"role": "stop", "content": "x"},
        {"role": "user", "content": "never"},
    ]
    for kwargs in ({}, {"custom": "set"}):
        ours = render_chat(ENVIRONMENT_TEMPLATE, messages, eos_token="<|im_end|>", **kwargs)
        theirs = _theirs(tiny_tokenizer, messages, chat_template=ENVIRONMENT_TEMPLATE, **kwargs)
        assert ours == theirs
    with pytest.raises(UserError, match="no boom allowed"):
        render_chat(ENVIRONMENT_TEMPLATE, [{"role": "boom", "content": ""}])


def test_namespace_refuses_underscore_attributes():
    with pytest.raises(Exception, match="underscore"):
        render_chat("{% set ns = namespace(_x=1) %}", [{"role": "user", "content": ""}])


# --- loading ----------------------------------------------------------------------------------------------


def test_load_chat_template_sources(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "from config"}))
    assert load_chat_template(tmp_path) == "from config"
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"chat_template": [{"name": "tool_use", "template": "t"}, {"name": "default", "template": "d"}]})
    )
    assert load_chat_template(tmp_path) == "d"
    (tmp_path / "chat_template.jinja").write_text("from file ✓", encoding="utf-8")
    assert load_chat_template(tmp_path) == "from file ✓"  # the file wins, as in transformers


def test_load_chat_template_missing_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no chat template"):
        load_chat_template(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>"}))
    with pytest.raises(UserError, match="chat_template.jinja"):
        load_chat_template(tmp_path)


def test_load_special_tokens(tmp_path):
    folder = shared_model("LFM2-1.2B")
    expected = {"bos_token": "<|startoftext|>", "eos_token": "<|im_end|>", "pad_token": "<|pad|>"}
    assert load_special_tokens(folder) == expected
    assert load_special_tokens(tmp_path) == {}


@pytest.mark.parametrize("name", ["LFM2-1.2B", "LFM2.5-8B-A1B"])
def test_chat_template_renders_as_the_runtime_does(model_folders, name):
    """ChatTemplate: the folder's special tokens, a generation prompt, tool calls inlined only for
    templates that ignore them, and whether the prompt opened <think>."""
    folder = _folder(model_folders, name)
    template = ChatTemplate.from_folder(folder)
    source = load_chat_template(folder)
    assert template == ChatTemplate(source, load_special_tokens(folder))
    openai_call = _with_string_arguments(WEATHER_CALL)
    messages = [{"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": None, "tool_calls": [openai_call]},
                {"role": "tool", "tool_call_id": openai_call["id"], "content": "sunny"}]
    inline = not template_renders_tool_calls(source)
    assert inline == (name == "LFM2-1.2B")
    text, started = template.render(messages, [WEATHER_TOOL])
    assert text == _ours(folder, messages, [WEATHER_TOOL], inline_tool_calls=inline)
    assert not started
    thinking = ChatTemplate(source + '{%- if think is defined -%}{{- "<think>" -}}{%- endif -%}', {})
    assert thinking.render(messages[:1]) == (render_chat(thinking.source, messages[:1]), False)
    text, started = thinking.render(messages[:1], template_kwargs={"think": True})
    assert started and text.endswith("<think>")


def test_bad_inputs_are_user_errors():
    with pytest.raises(UserError, match="empty conversation"):
        render_chat("{{ messages }}", [])
    with pytest.raises(UserError, match="not valid Jinja"):
        render_chat("{% if %}", [{"role": "user", "content": "x"}])
    with pytest.raises(UserError, match="tools must be JSON schemas"):
        render_chat("x", [{"role": "user", "content": "x"}], tools=[print])
    bad_call = {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "[1]"}}]}
    with pytest.raises(UserError, match="malformed tool call"):
        render_chat("x", [bad_call], inline_tool_calls=True)
    with pytest.raises(UserError, match="text content"):
        render_chat("x", [{**bad_call, "content": [{"type": "text", "text": "x"}]}], inline_tool_calls=True)


def test_chat_package_never_imports_torch_or_transformers():
    code = "import sys, lfm2_onnx.chat; assert not {'torch', 'transformers'} & set(sys.modules), sys.modules.keys()"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
