"""model.chat() and the --chat --tools CLI, on scripted token streams through the real decode path.

Random weights never write a tool call, so these tests replace the model's token loop with a script
(token ids from the folder's tokenizer, or LFM2's real ones) and check everything downstream of it:
detokenization with special tokens kept, tool-call and <think> parsing, streaming == non-streaming.
"""

from __future__ import annotations

import builtins
import json

import pytest

from conftest import SHARED_MODELS
from lfm2_onnx.chat import ContentDelta, ReasoningDelta, ToolCallEvent
from lfm2_onnx.errors import UserError
from lfm2_onnx.lfm2_model import Lfm2Model
from lfm2_onnx.text import TextCodec

WEATHER = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather",
                                               "parameters": {"type": "object",
                                                              "properties": {"city": {"type": "string"},
                                                                             "days": {"type": "integer"}}}}}]
SCRIPTS = {
    "tool_call": 'Let me check.<|tool_call_start|>[get_weather(city="Paris", days=2)]<|tool_call_end|>',
    "two_calls_json": '<|tool_call_start|>[{"name": "get_weather", "arguments": {"city": "Köln"}}, '
                      '{"name": "get_weather", "arguments": {"city": "東京"}}]<|tool_call_end|>',
    "reasoning": "<think>The user wants a greeting.</think>Hello there! 🙂",
    "plain": "Paris is the capital of France. 世界",
    "malformed": "<|tool_call_start|>[get_weather(Paris)]<|tool_call_end|> sorry",
}


def script(model: Lfm2Model, monkeypatch, *texts: str) -> None:
    """The next chat turns produce these texts, one token at a time, through model.stream_ids()."""
    turns = [model.codec.encode(t, add_special_tokens=False) for t in texts]

    def stream_ids(prompt, max_new_tokens, params=None):
        yield from turns.pop(0)[:max_new_tokens]

    monkeypatch.setattr(model, "stream_ids", stream_ids)


@pytest.fixture(params=["tiny", "LFM2-1.2B", "LFM2.5-1.2B-Base"])
def model(request, tiny_export):
    model = Lfm2Model.load(tiny_export, max_length=512)
    if request.param != "tiny":  # the real tokenizer: call markers special (LFM2) or not (LFM2.5)
        folder = SHARED_MODELS / request.param
        if not (folder / "tokenizer.json").exists():
            pytest.skip(f"{folder} not present")
        model.codec = TextCodec(folder)
    return model


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_stream_equals_non_stream(model, monkeypatch, name):
    messages = [{"role": "user", "content": "What's the weather in Paris?"}]
    script(model, monkeypatch, SCRIPTS[name], SCRIPTS[name])
    whole = model.chat(messages, tools=WEATHER)
    stream = model.chat(messages, tools=WEATHER, stream=True)
    events = list(stream)
    assert _without_ids(stream.message) == _without_ids(whole)
    assert "".join(e.text for e in events if isinstance(e, ContentDelta)) == (whole["content"] or "")
    assert len([e for e in events if isinstance(e, ToolCallEvent)]) == len(whole.get("tool_calls", []))


def test_tool_call_message(model, monkeypatch):
    script(model, monkeypatch, SCRIPTS["tool_call"])
    reply = model.chat([{"role": "user", "content": "Weather?"}], tools=WEATHER)
    assert reply["role"] == "assistant" and reply["content"] == "Let me check."
    (call,) = reply["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris", "days": 2}


def test_json_calls_and_unicode(model, monkeypatch):
    script(model, monkeypatch, SCRIPTS["two_calls_json"])
    reply = model.chat([{"role": "user", "content": "Weather?"}], tools=WEATHER)
    cities = [json.loads(c["function"]["arguments"])["city"] for c in reply["tool_calls"]]
    assert cities == ["Köln", "東京"]


def test_reasoning_is_separated(model, monkeypatch):
    script(model, monkeypatch, SCRIPTS["reasoning"], SCRIPTS["reasoning"])
    reply = model.chat([{"role": "user", "content": "Hi"}])
    assert reply["reasoning_content"] == "The user wants a greeting."
    assert reply["content"] == "Hello there! 🙂"
    events = list(model.chat([{"role": "user", "content": "Hi"}], stream=True))
    assert "".join(e.text for e in events if isinstance(e, ReasoningDelta)) == "The user wants a greeting."


def test_malformed_call_stays_content(model, monkeypatch):
    script(model, monkeypatch, SCRIPTS["malformed"])
    reply = model.chat([{"role": "user", "content": "Weather?"}], tools=WEATHER)
    assert "tool_calls" not in reply
    assert reply["content"] == SCRIPTS["malformed"]


def test_content_before_a_call_streams_before_the_call_completes(tiny_export, monkeypatch):
    model = Lfm2Model.load(tiny_export, max_length=512)
    script(model, monkeypatch, SCRIPTS["tool_call"])
    seen = []
    for event in model.chat([{"role": "user", "content": "Weather?"}], tools=WEATHER, stream=True):
        seen.append(type(event).__name__)
    assert seen.index("ContentDelta") < seen.index("ToolCallEvent")


def test_prompt_ids_equal_transformers(tiny_export):
    """The rendered conversation (system, tools, a tool call and its result) tokenizes as transformers does.

    LFM2 templates ignore an assistant turn's tool_calls, so the runtime writes the call block into
    that turn's content (LFM2's own convention); a transformers user passes that content directly.
    """
    from transformers import AutoTokenizer

    from lfm2_onnx.chat import format_tool_calls

    model = Lfm2Model.load(tiny_export, max_length=512)
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    head = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"}]
    tail = [{"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": "18°C, sunny"}]
    ours = head + [{"role": "assistant", "content": None, "tool_calls": [call]}] + tail
    theirs = head + [{"role": "assistant", "content": format_tool_calls([call])}] + tail
    tokenizer = AutoTokenizer.from_pretrained(tiny_export)
    for mine, reference in ((head, head), (ours, theirs)):
        ids, _ = model.chat_prompt(mine, WEATHER)
        text = tokenizer.apply_chat_template(reference, tools=WEATHER, tokenize=False, add_generation_prompt=True)
        assert ids == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert "<|tool_call_start|>[get_weather(city=\"Paris\")]<|tool_call_end|>" in model.codec.decode(
        model.chat_prompt(ours, WEATHER)[0], skip_special_tokens=False)


def test_cli_tool_round_trip(tiny_export, monkeypatch, capsys, tmp_path):
    """The user asks, the model calls a tool, the user types its result, the model answers."""
    from lfm2_onnx import generate

    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps(WEATHER))
    prompts_seen = []
    original_load = Lfm2Model.load

    def load(*args, **kwargs):
        model = original_load(*args, **kwargs)
        script(model, monkeypatch, SCRIPTS["tool_call"], "It is 18°C and sunny in Paris.")
        original_prompt = model.chat_prompt
        monkeypatch.setattr(model, "chat_prompt", lambda m, t=None: prompts_seen.append(list(m)) or original_prompt(m, t))
        return model

    monkeypatch.setattr(Lfm2Model, "load", load)
    answers = iter(["What's the weather in Paris?", "18°C, sunny"])

    def fake_input(prompt=""):
        print(prompt, end="")
        try:
            return next(answers)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr(builtins, "input", fake_input)
    assert generate.main([str(tiny_export), "--chat", "--tools", str(tools), "--stream"]) == 0
    out = capsys.readouterr().out
    assert '[tool call] get_weather({"city": "Paris", "days": 2})' in out
    assert "result of get_weather> " in out
    assert "It is 18°C and sunny in Paris." in out
    second_turn = prompts_seen[-1]  # the last prompt rendered (the CLI also renders each one to check its length)
    assert second_turn[-1] == {"role": "tool", "tool_call_id": second_turn[-2]["tool_calls"][0]["id"],
                               "name": "get_weather", "content": "18°C, sunny"}


def test_tools_file_errors(tiny_export, tmp_path, capsys):
    from lfm2_onnx import generate

    assert generate.main([str(tiny_export), "--chat", "--tools", str(tmp_path / "none.json")]) == 2
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    assert generate.main([str(tiny_export), "--chat", "--tools", str(bad)]) == 2
    assert generate.main([str(tiny_export), "--prompt", "hi", "--tools", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("error: ") for line in err)


def _without_ids(message: dict) -> dict:
    message = dict(message)
    if "tool_calls" in message:
        message["tool_calls"] = [{**c, "id": "-"} for c in message["tool_calls"]]
    return message


def test_images_on_a_text_only_export_are_one_line_errors(tiny_export):
    import numpy as np

    model = Lfm2Model.load(tiny_export, max_length=512)
    image = np.zeros((8, 8, 3), np.uint8)
    for part in ({"type": "image", "image": image},
                 {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}):
        messages = [{"role": "user", "content": [{"type": "text", "text": "What is it?"}, part]}]
        for call in (lambda: model.chat(messages, max_new_tokens=2), lambda: model.generate(messages, max_new_tokens=2)):
            with pytest.raises(UserError, match="text-only export, so its messages can't hold images") as info:
                call()
            assert "\n" not in str(info.value)
