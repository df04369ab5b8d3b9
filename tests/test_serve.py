"""python -m lfm2_onnx.serve with the tiny model: a real uvicorn server on 127.0.0.1, the official openai client.

Random weights never write a tool call or a think block, so those tests run a second server in this
process (still uvicorn on a socket) whose engine takes its tokens from a script.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from lfm2_onnx.lfm2_model import Lfm2Model  # noqa: E402
from lfm2_onnx.serve import wait_until_healthy  # noqa: E402

KEY = "sk-test-0123456789"
MAX_BATCH, MAX_LENGTH = 8, 512
WEATHER = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather",
                                               "parameters": {"type": "object",
                                                              "properties": {"city": {"type": "string"},
                                                                             "days": {"type": "integer"}}}}}]
THINKING = ('{%- if add_generation_prompt and enable_thinking is defined and enable_thinking -%}'
            '{{- "<think>" -}}{%- endif -%}\n')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def folder(tiny_export, tmp_path_factory):
    """The tiny export, its template opening a think block when asked (chat_template_kwargs)."""
    folder = tmp_path_factory.mktemp("serve") / "lfm2-tiny"
    shutil.copytree(tiny_export, folder)
    template = folder / "chat_template.jinja"
    template.write_text(template.read_text() + THINKING)
    return folder


class ServeProcess:
    """python -m lfm2_onnx.serve ARGS on a free port: healthy on enter; stopped on exit, its output kept
    (and checked for tracebacks)."""

    def __init__(self, *args, env: dict | None = None, cwd=None):
        port = free_port()
        self.command = [sys.executable, "-m", "lfm2_onnx.serve", *map(str, args), "--port", str(port),
                        "--log-level", "warning"]
        self.env, self.cwd = env, cwd
        self.base = f"http://127.0.0.1:{port}"
        self.output = ""

    def client(self, api_key: str = "unused"):
        return openai.OpenAI(base_url=f"{self.base}/v1", api_key=api_key, max_retries=0, timeout=60)

    def __enter__(self) -> ServeProcess:
        self.process = subprocess.Popen(self.command, env=self.env, cwd=self.cwd, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        try:
            wait_until_healthy(self.base, process=self.process)
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(self, kind, *exc) -> None:
        self._stop()
        if kind is None:
            assert "Traceback" not in self.output, self.output

    def _stop(self) -> None:
        self.process.terminate()
        try:
            self.output, _ = self.process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.output, _ = self.process.communicate()


@pytest.fixture(scope="module")
def server(folder):
    with ServeProcess(folder, "--max-batch", MAX_BATCH, "--max-length", MAX_LENGTH, "--api-key", KEY) as process:
        yield process.base
    assert KEY not in process.output  # keys are never logged


@pytest.fixture(scope="module")
def multi(tiny_checkpoint, tmp_path_factory):
    """fp32 (the default) and int4 for the CPU in one folder."""
    from lfm2_onnx.builder.export import export
    from lfm2_onnx.builder.options import BuildOptions

    out = tmp_path_factory.mktemp("serve-variants") / "lfm2-tiny-multi"
    export(tiny_checkpoint, out, [BuildOptions("fp32", "cpu"), BuildOptions("int4", "cpu")], progress=False)
    return out


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def local(folder):
    """The same folder in this process: what a request gets alone."""
    return Lfm2Model.load(folder, max_length=MAX_LENGTH)


def metric(base: str, name: str, labels: str = "") -> float:
    text = httpx.get(f"{base}/metrics").text
    match = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def chat_messages(i: int) -> list[dict]:
    return [{"role": "user", "content": f"Question {i}: " + "tell me more " * (i % 5)}]


# -- the subprocess server -------------------------------------------------------------------------
def test_models_health_and_metrics(server, client, folder):
    assert httpx.get(f"{server}/health").json() == {"status": "ok"}
    assert [m.id for m in client.models.list().data] == [folder.name]
    client.completions.create(model=folder.name, prompt="hi", max_tokens=3)
    text = httpx.get(f"{server}/metrics").text
    for name in ("lfm2_requests_running", "lfm2_requests_waiting", "lfm2_prompt_tokens_total",
                 "lfm2_generation_tokens_total", "lfm2_time_to_first_token_seconds_bucket",
                 "lfm2_inter_token_latency_seconds_bucket", "lfm2_slot_use_ratio"):
        assert name in text, name
    assert metric(server, "lfm2_slots") == MAX_BATCH
    assert metric(server, "lfm2_time_to_first_token_seconds_count") >= 1


def test_chat_equals_the_runtime_streamed_or_not(client, local, folder):
    messages = chat_messages(1)
    expected = local.chat(messages, max_new_tokens=20)["content"]
    reply = client.chat.completions.create(model=folder.name, messages=messages, max_tokens=20)
    assert reply.choices[0].message.content == expected
    assert reply.choices[0].finish_reason in ("length", "stop")
    prompt_tokens = len(local.chat_prompt(messages)[0])
    assert reply.usage.prompt_tokens == prompt_tokens and 0 < reply.usage.completion_tokens <= 20
    chunks = list(client.chat.completions.create(model=folder.name, messages=messages, max_tokens=20, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == reply.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == reply.usage.model_dump()


def test_completions_streamed_or_not(client, local, folder):
    expected = local.generate("The capital of France is", max_new_tokens=12)
    reply = client.completions.create(model=folder.name, prompt="The capital of France is", max_tokens=12)
    assert reply.choices[0].text == expected
    streamed = client.completions.create(model=folder.name, prompt="The capital of France is", max_tokens=12,
                                         stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == expected
    ids = local.codec.encode("The capital of France is")
    assert client.completions.create(model=folder.name, prompt=ids, max_tokens=12).choices[0].text == expected


def test_stop_seed_and_sampling_options(client, local, folder):
    text = local.generate("Once upon a time", max_new_tokens=30)
    stop = text[8:11]
    cut = client.completions.create(model=folder.name, prompt="Once upon a time", max_tokens=30, stop=[stop])
    assert cut.choices[0].text == text[:text.index(stop)] and cut.choices[0].finish_reason == "stop"
    options = dict(model=folder.name, prompt="Once upon a time", max_tokens=16, temperature=0.9, top_p=0.9, seed=5,
                   extra_body={"top_k": 40, "min_p": 0.01, "repetition_penalty": 1.1})
    first, again = (client.completions.create(**options).choices[0].text for _ in range(2))
    assert first == again == local.generate("Once upon a time", max_new_tokens=16, temperature=0.9, top_p=0.9,
                                            seed=5, top_k=40, min_p=0.01, repetition_penalty=1.1)


def test_reasoning_goes_to_reasoning_content(client, folder):
    """The template opens <think> (chat_template_kwargs): everything generated is reasoning."""
    options = dict(model=folder.name, messages=chat_messages(2), max_tokens=16,
                   extra_body={"chat_template_kwargs": {"enable_thinking": True}})
    reply = client.chat.completions.create(**options).choices[0].message
    assert reply.reasoning_content and not reply.content
    chunks = list(client.chat.completions.create(stream=True, **options))
    assert "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices) \
        == reply.reasoning_content


def test_concurrent_streams_each_get_their_text_alone(server, client, folder):
    """32 streaming clients at once (8 slots: the rest wait), each text equal to the one it gets alone."""
    n, max_tokens = 32, 24
    alone = [client.chat.completions.create(model=folder.name, messages=chat_messages(i), max_tokens=max_tokens)
             .choices[0].message.content for i in range(n)]

    async def one(aclient, i):
        stream = await aclient.chat.completions.create(model=folder.name, messages=chat_messages(i),
                                                       max_tokens=max_tokens, stream=True)
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    async def all_at_once():
        async with openai.AsyncOpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=120) as aclient:
            return await asyncio.gather(*(one(aclient, i) for i in range(n)))

    assert asyncio.run(all_at_once()) == alone
    assert metric(server, "lfm2_requests_running") == 0


def _png_data_url(width: int = 8, height: int = 6) -> str:
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _image_message(url: str, **image_url) -> dict:
    return {"messages": [{"role": "user", "content": [{"type": "text", "text": "What is it?"},
                                                      {"type": "image_url", "image_url": {"url": url, **image_url}}]}]}


BAD_BODIES = [
    ("not json", '{"messages": [', "not valid JSON"),
    ("not an object", "[1, 2]", "JSON object"),
    ("no messages", {"model": "m"}, "messages is required"),
    ("empty messages", {"messages": []}, "at least 1"),
    ("wrong type", {"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, "temperature"),
    ("unknown role", {"messages": [{"role": "robot", "content": "x"}]}, "role"),
    ("content type", {"messages": [{"role": "user", "content": 5}]}, "content"),
    ("past the context", {"messages": [{"role": "user", "content": "x"}], "max_tokens": 10**6}, "exceeds the context"),
    ("n > 1", {"messages": [{"role": "user", "content": "x"}], "n": 3}, "n > 1"),
    ("schema not an object", {"messages": [{"role": "user", "content": "x"}],
                              "tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]},
     "parameters"),
    ("schema of a string", {"messages": [{"role": "user", "content": "x"}],
                            "tools": [{"type": "function", "function": {"name": "f",
                                                                        "parameters": {"type": "string"}}}]},
     "object"),
    ("named tool not in tools", {"messages": [{"role": "user", "content": "x"}], "tools": WEATHER,
                                 "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "not in tools"),
    ("tool_choice without tools", {"messages": [{"role": "user", "content": "x"}], "tool_choice": "required"},
     "needs tools"),
    ("negative max_tokens", {"messages": [{"role": "user", "content": "x"}], "max_tokens": -1}, "max_tokens"),
    ("bad top_p", {"messages": [{"role": "user", "content": "x"}], "top_p": 0}, "top_p"),
    ("logprobs", {"messages": [{"role": "user", "content": "x"}], "logprobs": True}, "logprobs"),
    ("reserved template variable", {"messages": [{"role": "user", "content": "x"}],
                                    "chat_template_kwargs": {"messages": []}}, "chat_template_kwargs"),
    ("image by web URL", _image_message("https://example.com/cat.png"), "must come as data: URLs"),
    ("image by file path", _image_message("/etc/hostname"), "this server fetches nothing"),
    ("unreadable image", _image_message("data:image/png;base64,bm90IGFuIGltYWdl"), "not a readable image"),
    ("image not base64", _image_message("data:image/png;base64,@@@"), "not valid base64"),
    ("image_url without url", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     "url"),
    ("unknown content part", {"messages": [{"role": "user", "content": [{"type": "audio", "audio": "x"}]}]},
     "content"),
    ("image on a text-only model", _image_message(_png_data_url(), detail="low"), "text-only export"),
]


@pytest.mark.parametrize("name,body,says", BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_malformed_requests_are_400_in_openai_shape(server, name, body, says):
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    content = body if isinstance(body, str) else json.dumps(body)
    response = httpx.post(f"{server}/v1/chat/completions", content=content, headers=headers)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert says in error["message"], error["message"]


def test_other_errors_and_the_server_keeps_serving(server, client, folder):
    headers = {"Authorization": f"Bearer {KEY}"}
    bad = [("/v1/completions", {"prompt": ["a", "b"]}), ("/v1/completions", {"prompt": []}),
           ("/v1/completions", {"prompt": [1, 10**9]}), ("/v1/completions", {"prompt": "x", "echo": True})]
    for path, body in bad:
        response = httpx.post(f"{server}{path}", json=body, headers=headers)
        assert response.status_code == 400 and "error" in response.json(), (body, response.text)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=chat_messages(0), max_tokens=2)
    assert httpx.get(f"{server}/v1/nowhere", headers=headers).json()["error"]["type"] == "not_found_error"
    assert client.chat.completions.create(model=folder.name, messages=chat_messages(0), max_tokens=2).choices


def test_api_key(server, folder):
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0).models.list()
    response = httpx.post(f"{server}/v1/chat/completions", json={"messages": []})
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{server}/health").status_code == 200  # health and metrics stay open


# -- an in-process server with scripted tokens -------------------------------------------------------
SCRIPTS = {
    "tool_call": 'Let me check.<|tool_call_start|>[get_weather(city="Paris", days=2)]<|tool_call_end|>',
    "forced": 'city="Paris")]<|tool_call_end|>',  # after the forced `<|tool_call_start|>[get_weather(`
    "answer": "It is 18°C and sunny in Paris.",
    "reasoning": "<think>The user wants a greeting.</think>Hello there! 🙂",
}


class ScriptedServer:
    """uvicorn in a thread; each request's reply is chosen from SCRIPTS by what its prompt ends with."""

    def __init__(self, folder, **config):
        import uvicorn

        from lfm2_onnx.server import ServerConfig, create_app

        self.port = free_port()
        self.app = create_app(ServerConfig(folder=str(folder), max_length=MAX_LENGTH, **config))
        self.uvicorn = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.uvicorn.run, daemon=True)
        self.base = f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self.thread.start()
        wait_until_healthy(self.base)  # raises at once if the load fails (/health says so)
        model = self.app.state.lfm2.model
        eos = model.layout.eos_token_ids[0]
        scripts = {k: model.codec.encode(v, add_special_tokens=False) + [eos] for k, v in SCRIPTS.items()}
        self.prompts = []

        def pick(request, device_token, scores, row):
            prompt = model.codec.decode(request.prompt, skip_special_tokens=False)
            if not request.generated:
                self.prompts.append(prompt)
            if "Hold" in prompt:  # slow, and never ends on its own
                time.sleep(0.005)
                return scripts["answer"][0]
            kind = ("forced" if prompt.endswith("get_weather(") else "answer" if "<|tool_response_start|>" in prompt
                    else "reasoning" if "Hi" in prompt else "tool_call")
            script = scripts[kind]
            return script[min(len(request.generated), len(script) - 1)]

        model.engine._pick = pick
        self.client = openai.OpenAI(base_url=f"{self.base}/v1", api_key="unused", max_retries=0, timeout=60)
        return self

    def __exit__(self, *exc):
        self.uvicorn.should_exit = True
        self.thread.join(timeout=20)


@pytest.fixture(scope="module")
def scripted(folder):
    with ScriptedServer(folder, max_batch=2) as server:
        yield server


def test_tool_round_trip(scripted, folder):
    client, ask = scripted.client, [{"role": "user", "content": "What's the weather in Paris?"}]
    reply = client.chat.completions.create(model=folder.name, messages=ask, tools=WEATHER, tool_choice="auto")
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Let me check."
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris", "days": 2}
    assert "<|tool_list_start|>" in scripted.prompts[-1]  # the tools reached the template

    chunks = list(client.chat.completions.create(model=folder.name, messages=ask, tools=WEATHER, stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    parts = [t for d in deltas for t in (d.tool_calls or [])]
    assert parts[0].index == 0 and parts[0].id.startswith("call_") and parts[0].function.name == "get_weather"
    assert all(p.index == 0 and p.id is None for p in parts[1:])
    assert json.loads("".join(p.function.arguments or "" for p in parts)) == {"city": "Paris", "days": 2}
    assert "".join(d.content or "" for d in deltas) == "Let me check."
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"

    history = ask + [choice.message.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": call.id, "content": "18°C, sunny"}]
    answer = client.chat.completions.create(model=folder.name, messages=history, tools=WEATHER)
    assert answer.choices[0].message.content == SCRIPTS["answer"] and answer.choices[0].finish_reason == "stop"
    assert '<|tool_call_start|>[get_weather(city="Paris", days=2)]<|tool_call_end|>' in scripted.prompts[-1]
    assert "<|tool_response_start|>18°C, sunny<|tool_response_end|>" in scripted.prompts[-1]


def test_tool_choice_named_required_and_none(scripted, folder):
    client, ask = scripted.client, [{"role": "user", "content": "Weather?"}]
    named = {"type": "function", "function": {"name": "get_weather"}}
    reply = client.chat.completions.create(model=folder.name, messages=ask, tools=WEATHER, tool_choice=named)
    (call,) = reply.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    assert scripted.prompts[-1].endswith("<|tool_call_start|>[get_weather(")
    client.chat.completions.create(model=folder.name, messages=ask, tools=WEATHER, tool_choice="required",
                                   max_tokens=3)
    assert scripted.prompts[-1].endswith("<|im_start|>assistant\n<|tool_call_start|>[")
    client.chat.completions.create(model=folder.name, messages=ask, tools=WEATHER, tool_choice="none", max_tokens=3)
    assert "<|tool_list_start|>" not in scripted.prompts[-1]
    two = client.chat.completions.create(model=folder.name, messages=ask, tools=WEATHER, parallel_tool_calls=False)
    assert len(two.choices[0].message.tool_calls) == 1


def test_reasoning_split_streamed_and_not(scripted, folder):
    client, hi = scripted.client, [{"role": "user", "content": "Hi"}]
    message = client.chat.completions.create(model=folder.name, messages=hi).choices[0].message
    assert message.reasoning_content == "The user wants a greeting." and message.content == "Hello there! 🙂"
    deltas = [c.choices[0].delta for c in client.chat.completions.create(model=folder.name, messages=hi, stream=True)
              if c.choices]
    assert "".join(getattr(d, "reasoning_content", None) or "" for d in deltas) == "The user wants a greeting."
    assert "".join(d.content or "" for d in deltas) == "Hello there! 🙂"


def test_clients_that_disconnect_free_their_slots(scripted, folder):
    base, client = scripted.base, scripted.client
    hold = [{"role": "user", "content": "Hold the slot"}]
    cancelled = '{endpoint="%s",finish_reason="cancelled"}'
    streams = [client.chat.completions.create(model=folder.name, messages=hold, max_tokens=400, stream=True)
               for _ in range(2)]
    for stream in streams:  # both slots taken; read a little, then hang up
        next(iter(stream))
        next(iter(stream))
        stream.close()
    try:  # a non-streamed request whose client gives up
        httpx.post(f"{base}/v1/completions", json={"prompt": "Hold", "max_tokens": 400}, timeout=0.5)
        raise AssertionError("the request should have outlived the client")
    except httpx.TimeoutException:
        pass
    deadline = time.time() + 3  # well before 400 slow tokens would end them
    while time.time() < deadline and (metric(base, "lfm2_requests_total", cancelled % "chat") < 2
                                      or metric(base, "lfm2_requests_total", cancelled % "completions") < 1
                                      or metric(base, "lfm2_requests_running") > 0):
        time.sleep(0.05)
    assert metric(base, "lfm2_requests_total", cancelled % "chat") == 2
    assert metric(base, "lfm2_requests_total", cancelled % "completions") == 1
    assert metric(base, "lfm2_requests_running") == 0
    # The slots are free again.
    reply = client.chat.completions.create(model=folder.name, messages=[{"role": "user", "content": "Hi"}])
    assert reply.choices[0].message.content == "Hello there! 🙂"


def test_full_queue_is_429_and_loading_is_503(folder):
    with ScriptedServer(folder, max_batch=1, max_waiting=0) as server:
        body = {"messages": [{"role": "user", "content": "Hold the slot"}], "max_tokens": 400, "stream": True}
        with httpx.stream("POST", f"{server.base}/v1/chat/completions", json=body, timeout=30) as first:
            lines = first.iter_lines()  # kept: dropping it would close the connection
            next(lines)  # the first request holds the only slot
            response = httpx.post(f"{server.base}/v1/chat/completions", json=body, timeout=30)
            assert response.status_code == 429 and "busy" in response.json()["error"]["message"]
            assert response.json()["error"]["type"] == "rate_limit_exceeded"
    from fastapi.testclient import TestClient

    from lfm2_onnx.server import ServerConfig, create_app

    app = create_app(ServerConfig(folder=str(folder)))
    app.state.lfm2.load = lambda: None  # still loading
    with TestClient(app) as loading:
        assert loading.get("/health").status_code == 503
        response = loading.post("/v1/completions", json={"prompt": "hi"})
        assert response.status_code == 503 and "loading" in response.json()["error"]["message"]


def test_wait_until_healthy_waits_for_the_load_and_names_why_it_stops(folder):
    silent = f"http://127.0.0.1:{free_port()}"  # nothing listens
    with pytest.raises(TimeoutError, match="did not answer 200 within 0.5 s"):
        wait_until_healthy(silent, timeout=0.5)
    exited = subprocess.Popen([sys.executable, "-c", "print('no model here')"], stdout=subprocess.PIPE, text=True)
    exited.wait()
    with pytest.raises(RuntimeError, match="exited with code 0: no model here"):
        wait_until_healthy(silent, process=exited)
    server = ScriptedServer(folder)
    state = server.app.state.lfm2
    state.load = lambda: None  # listening, the model still loading: /health is 503 and waiting goes on
    server.thread.start()
    try:
        with pytest.raises(TimeoutError):
            wait_until_healthy(server.base, timeout=1)
        state.error = "model.onnx: can't read the ONNX graph"
        start = time.monotonic()
        with pytest.raises(RuntimeError, match="model failed to load: model.onnx: can't read the ONNX graph"):
            wait_until_healthy(server.base, timeout=60)
        assert time.monotonic() - start < 10  # at once, not at the timeout
    finally:
        server.__exit__(None, None, None)


def test_serves_the_variant_chosen_with_precision(multi):
    prompt = [1, 5, 6, 8, 9]
    with ServeProcess(multi, "--precision", "int4", "--max-length", MAX_LENGTH) as server:
        client = server.client()
        assert [m.id for m in client.models.list().data] == [multi.name]
        reply = client.completions.create(model=multi.name, prompt=prompt, max_tokens=16)
    int4 = Lfm2Model.load(multi, precision="int4", max_length=MAX_LENGTH)
    assert int4.layout.onnx_path.name == "model_q4.onnx"
    expected = int4.generate(prompt, max_new_tokens=16)
    assert reply.choices[0].text == expected
    assert reply.usage.completion_tokens == len(int4.generate_ids([prompt], 16)[0]) + (reply.choices[0].finish_reason
                                                                                        == "stop")
    # The root genai_config.json runs fp32, whose tokens differ: the server did not load the default.
    default = Lfm2Model.load(multi, max_length=MAX_LENGTH)
    assert default.layout.onnx_path.name == "model.onnx"
    assert default.generate(prompt, max_new_tokens=16) != expected


def test_cli_errors_are_one_line(tmp_path, multi, capsys):
    from lfm2_onnx.serve import main

    assert main([str(tmp_path / "missing")]) == 2
    assert main([str(tmp_path), "--max-batch", "0"]) == 2
    assert main([str(multi), "--precision", "int8"]) == 2
    assert main([str(multi), "--revision", "v1"]) == 2
    assert main([str(multi), "--max-length", "999999"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 5 and all(line.startswith("error: ") for line in err), err
    assert "no such model folder" in err[0]
    assert "no int8 variant" in err[2] and "it holds: cpu-fp32, cpu-int4" in err[2]
    assert "--revision applies to a Hub id" in err[3]
    assert "--max-length 999999 exceeds the model's context" in err[4]


# -- the per-token path, without a server ---------------------------------------------------------
TRICKY = ["", "plain", 'quo"te', "back\\slash", "new\nline\ttab", "ctl\x00\x1f\x7f", "héllo 世界 🙂", "\u2028\u2029",
          "\ufffd", "</s>", "\x00text\x00"]


@pytest.mark.parametrize("include_usage", [False, True])
def test_sse_template_chunks_equal_the_general_chunk(include_usage):
    """Content chunks come from a prebuilt template; each must be byte-equal to the general encoder's."""
    from lfm2_onnx.server.app import _SseTemplate, _sse_chunk
    from lfm2_onnx.server.protocol import ChatCompletionRequest, CompletionRequest

    options = {"stream": True, "stream_options": {"include_usage": include_usage}}
    head = {"id": "cmpl-1", "created": 7, "model": 'm"odel'}
    completion = CompletionRequest.model_validate({"prompt": "x", **options})
    chat = ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "x"}], **options})
    for text in TRICKY:
        fast = _SseTemplate(head, "text_completion", {"text": ""}, completion)(text)
        assert fast == _sse_chunk(head, "text_completion", {"text": text}, None, completion, None)
        for key in ("content", "reasoning_content"):
            fast = _SseTemplate(head, "chat.completion.chunk", {"delta": {key: ""}}, chat)(text)
            assert fast == _sse_chunk(head, "chat.completion.chunk", {"delta": {key: text}}, None, chat, None)
            assert json.loads(fast[6:])["choices"][0]["delta"] == {key: text}


def test_a_reader_that_falls_behind_gets_every_token_in_order(folder):
    """Steps delivered while the handler was busy come out together, in order, nothing lost."""
    from types import SimpleNamespace

    from lfm2_onnx.engine import Request
    from lfm2_onnx.server.app import _text
    from lfm2_onnx.server.metrics import Metrics
    from lfm2_onnx.server.worker import Job, _dispatch
    from lfm2_onnx.text import TextCodec, TextStream

    codec = TextCodec(folder)
    ids = codec.encode("one two three four five six seven eight nine ten", add_special_tokens=False)
    state = SimpleNamespace(metrics=Metrics(), worker=None)

    async def run(batches: list[int]) -> list[str]:
        """Deliver one token per step; the reader runs only after each batch of `batches` steps."""
        job = Job(Request(list(ids[:1]), len(ids)), asyncio.get_running_loop(), endpoint="completions")
        job.text = TextStream(codec)
        pieces, step = [], 0

        async def read():
            async for piece in _text(state, job):
                pieces.append(piece)

        reader = asyncio.create_task(read())
        for size in batches:
            for _ in range(min(size, len(ids) - step)):
                finish = "length" if step == len(ids) - 1 else None
                if finish:
                    job.request.finish_reason = finish
                _dispatch([(job, [ids[step]], finish)])
                step += 1
            for _ in range(3):  # the reader takes what has arrived
                await asyncio.sleep(0)
        await reader
        assert job.finish_reason == "length"
        return pieces

    whole = codec.decode(ids)
    behind = asyncio.run(run([len(ids)]))
    assert behind == [whole]  # all steps in one chunk
    uneven = asyncio.run(run([1, 3, 1, 4, len(ids)]))
    assert "".join(uneven) == whole and len(uneven) > 1
