"""The OpenAI-compatible HTTP API (FastAPI) over one engine worker.

Handlers validate and render the request on the event loop, hand the prompt to the engine's
thread (worker.EngineWorker) and turn the token ids that come back into text (TextStream: stop
strings), then into chat events (lfm2_onnx.chat.ChatStreamParser: reasoning, tool calls) and
into OpenAI's JSON or server-sent events. A client that goes away cancels its request.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..chat import TOOL_CALL_START, ChatStreamParser, ContentDelta, ReasoningDelta, ToolCallEvent
from ..errors import UserError, one_line
from ..engine import Request as EngineRequest
from ..hub import looks_like_repo_id, resolve_export
from ..text import TextStream
from ..vision.chat import has_image_parts
from ..vision.processor import IMAGE_TOKEN
from .metrics import Metrics
from .protocol import ApiError, ChatCompletionRequest, CompletionRequest, SamplingFields, bad_request
from .worker import EngineWorker, Job, Overloaded

log = logging.getLogger("lfm2_onnx.serve")

# Template variables a request may not set through chat_template_kwargs (render_chat sets them).
_RESERVED_TEMPLATE_VARS = {"messages", "tools", "documents", "add_generation_prompt", "inline_tool_calls",
                           "template_source"}
_TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list", "none", "function-after", "literal"}
_PART_TAGS = {"text", "image_url"}  # message content part types (protocol.Message)
_FINISH = {"stop": "stop", "length": "length", "cancelled": "stop"}
_TEXT_DELTAS = ("content", "reasoning_content")  # chat deltas streamed through an _SseTemplate


@dataclass
class ServerConfig:
    folder: str  # an export folder, or a repo id published by lfm2_onnx.publish (as Lfm2Model.load takes)
    ep: str = "cpu"
    precision: str | None = None  # which variant (default: the best one for ep, lfm2_onnx.variants)
    revision: str | None = None  # Hub branch, tag or commit, with a repo id
    max_batch: int = 64
    max_length: int | None = None
    max_waiting: int = 256
    api_key: str | None = None
    model_name: str | None = None
    cuda_graph: bool = True
    # Decode steps an arriving request may wait so that later arrivals share its prefill (Engine).
    prefill_wait_steps: int = 4


class _State:
    def __init__(self, config: ServerConfig):
        self.config = config
        # Resolved now, before the server listens: a wrong folder, id or variant fails in one line, a
        # repo id is downloaded once, and load() opens exactly this variant.
        self.layout = resolve_export(config.folder, config.ep, config.precision, revision=config.revision)
        self.model = None
        self.worker: EngineWorker | None = None
        self.error: str | None = None
        self.metrics = Metrics()
        self.name = config.model_name or _model_id(config.folder)

    def load(self) -> None:
        from ..lfm2_model import Lfm2Model

        try:
            c = self.config
            model = Lfm2Model.from_layout(self.layout, c.ep, max_length=c.max_length, cuda_graph=c.cuda_graph,
                                          max_batch=c.max_batch)
            model.engine.prefill_wait_steps = c.prefill_wait_steps
            worker = EngineWorker(model.engine, max_waiting=c.max_waiting, metrics=self.metrics)
            worker.start()
            self.model, self.worker = model, worker
            self.metrics.engine_state(0, 0, model.engine.slots)
            log.info("ready: %s (%s) on %s, %d slots of %d positions", self.name,
                     self.layout.onnx_path.relative_to(self.layout.folder).as_posix(), c.ep, model.engine.slots,
                     model.capacity)
        except Exception as e:  # shown by /health; the process keeps answering
            self.error = one_line(e)
            log.error("loading %s failed: %s", self.config.folder, self.error)

    def ready(self):
        if self.model is None:
            message = f"the model failed to load: {self.error}" if self.error else "the model is loading; retry soon"
            raise ApiError(503, message, type="service_unavailable")
        return self.model


def _model_id(source: str) -> str:
    """What clients call the model: the repo id as given, or the folder's name."""
    from pathlib import Path

    return str(source) if looks_like_repo_id(source) else Path(source).resolve().name


def create_app(config: ServerConfig) -> FastAPI:
    """The app. The export is resolved here (a bad one is a UserError); the model loads once it starts."""
    state = _State(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        threading.Thread(target=state.load, name="lfm2-load", daemon=True).start()
        yield
        if state.worker is not None:
            state.worker.stop()

    app = FastAPI(title="lfm2_onnx", lifespan=lifespan)
    app.state.lfm2 = state

    # -- errors, always in OpenAI's shape ------------------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(_request, e: ApiError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request, e: RequestValidationError):
        return JSONResponse(_validation_error(e.errors()).body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request, e: StarletteHTTPException):
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return JSONResponse(ApiError(e.status_code, str(e.detail), type=kind).body(), status_code=e.status_code)

    @app.exception_handler(UserError)
    async def _user_error(_request, e: UserError):
        return JSONResponse(bad_request(one_line(e)).body(), status_code=400)

    @app.exception_handler(Exception)
    async def _unexpected(_request, e: Exception):
        log.exception("unexpected error")
        return JSONResponse(ApiError(500, f"internal error: {one_line(e)}", type="server_error").body(),
                            status_code=500)

    async def authorized(request: Request) -> None:
        key = state.config.api_key
        if key is None:
            return
        header = request.headers.get("authorization", "")
        given = header[7:].strip() if header.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(given.encode(), key.encode()):
            raise ApiError(401, "missing or wrong API key: send Authorization: Bearer <key>",
                           code="invalid_api_key")

    guarded = [Depends(authorized)]

    # -- routes ---------------------------------------------------------------------------------
    @app.get("/health")
    async def health():
        if state.model is None:
            return JSONResponse({"status": "error" if state.error else "loading", "message": state.error},
                                status_code=503)
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics():
        return Response(state.metrics.render(), media_type=state.metrics.content_type)

    @app.get("/v1/models", dependencies=guarded)
    async def models():
        capacity = state.model.capacity if state.model is not None else None
        return {"object": "list", "data": [{"id": state.name, "object": "model", "created": 0,
                                            "owned_by": "lfm2_onnx", "max_model_len": capacity}]}

    @app.post("/v1/chat/completions", dependencies=guarded)
    async def chat_completions(request: Request):
        body = await _parse(request, ChatCompletionRequest)
        model = state.ready()
        _check_common(state, body)
        if body.response_format and body.response_format.get("type", "text") != "text":
            raise bad_request("response_format other than text is not supported", "response_format")
        plan = _chat_plan(body)
        max_tokens = body.max_completion_tokens or body.max_tokens
        if has_image_parts(plan.messages):  # decoding and preprocessing take a while: off the event loop
            inputs, reasoning_started = await asyncio.to_thread(_image_chat_inputs, model, plan, max_tokens)
            ids, images = inputs.input_ids, inputs.images
        else:
            try:
                ids, reasoning_started = model.chat_prompt(plan.messages, plan.tools,
                                                           template_kwargs=plan.template_kwargs,
                                                           generation_prefix=plan.prefix)
            except UserError as e:
                raise bad_request(one_line(e), "messages") from None
            images = None
        job = _submit(state, ids, max_tokens, body, "chat", images=images)
        text = TextStream(model.codec, body.stop_strings(), skip_special_tokens=False)
        chat = _Chat(state, job, text, plan, reasoning_started, body)
        if body.stream:
            return _sse(chat.chunks())
        return await _unless_disconnected(request, chat.response(), state, job)

    @app.post("/v1/completions", dependencies=guarded)
    async def completions(request: Request):
        body = await _parse(request, CompletionRequest)
        model = state.ready()
        _check_common(state, body)
        if body.echo:
            raise bad_request("echo is not supported", "echo")
        if body.suffix:
            raise bad_request("suffix is not supported", "suffix")
        if body.best_of not in (None, 1):
            raise bad_request("best_of > 1 is not supported", "best_of")
        ids = _completion_prompt(model, body.prompt)
        job = _submit(state, ids, body.max_tokens, body, "completions")
        text = TextStream(model.codec, body.stop_strings())
        completion = _Completion(state, job, text, body)
        if body.stream:
            return _sse(completion.chunks())
        return await _unless_disconnected(request, completion.response(), state, job)

    return app


# -- requests -> engine jobs ----------------------------------------------------------------------
def _check_common(state: _State, body: SamplingFields) -> None:
    if body.model is not None and body.model != state.name:
        raise ApiError(404, f"model {body.model!r} does not exist; this server serves {state.name!r}",
                       param="model", code="model_not_found")
    error = body.unsupported()
    if error is not None:
        raise error


def _sampling(model, body: SamplingFields):
    try:
        return model.sampling_params(temperature=body.temperature, top_p=body.top_p,
                                     top_k=0 if body.top_k == -1 else body.top_k, min_p=body.min_p,
                                     repetition_penalty=body.repetition_penalty, seed=body.seed)
    except UserError as e:
        raise bad_request(one_line(e)) from None


def _submit(state: _State, ids: list[int], max_tokens: int | None, body: SamplingFields, endpoint: str, *,
            images=None) -> Job:
    """images: the prompt's images as the processor made them (its image tokens take their features)."""
    model = state.model
    room = model.capacity - len(ids)
    if max_tokens is None:
        max_tokens = room
    if room < 1 or max_tokens > room:
        raise bad_request(f"the prompt ({len(ids)} tokens) + max_tokens ({max_tokens}) exceeds the context of "
                          f"{model.capacity} tokens; shorten the messages or lower max_tokens", "max_tokens")
    if any(not 0 <= t < model.layout.vocab_size for t in ids):
        raise bad_request(f"token ids must be in [0, {model.layout.vocab_size})", "prompt")
    if images is None and model.takes_images and model.layout.vision.image_token_id in ids:
        raise bad_request(f"the prompt holds image tokens ({IMAGE_TOKEN}, id {model.layout.vision.image_token_id}) "
                          "but no images; send each image as an image_url part of a chat message "
                          "(/v1/chat/completions)", "messages" if endpoint == "chat" else "prompt")
    request = EngineRequest(ids, max_tokens, _sampling(model, body), frozenset() if body.ignore_eos else None,
                            images=images)
    job = Job(request, asyncio.get_running_loop(), endpoint=endpoint)
    job.request.tag = job
    try:
        state.worker.submit(job)
    except Overloaded:
        raise ApiError(429, f"the server is busy: {state.config.max_waiting} requests are already waiting; "
                            "retry later", type="rate_limit_exceeded", code="queue_full") from None
    state.metrics.prompt_tokens.inc(len(ids))
    return job


def _completion_prompt(model, prompt) -> list[int]:
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        if len(prompt) != 1:
            raise bad_request("one prompt per request: send a batch as separate requests", "prompt")
        prompt = prompt[0]
    if isinstance(prompt, str):
        ids = model.codec.encode(prompt)
    else:
        ids = list(prompt)
    if not ids:
        raise bad_request("the prompt is empty", "prompt")
    return ids


async def _text(state: _State, job: Job) -> AsyncIterator[str]:
    """The job's text as it comes; job.finish_reason is set when it ends. Leaving early cancels it."""
    metrics, last = state.metrics, None
    try:
        while True:
            tokens, finish = [], None
            for item in await job.mailbox.take():  # a reader that fell behind: one chunk for all
                if isinstance(item, ApiError):
                    raise item
                tokens, finish = tokens + item[0], item[1]
            now = time.perf_counter()
            if tokens:
                if last is None:
                    metrics.ttft.observe(now - job.submitted)
                else:
                    for _ in tokens:
                        metrics.itl.observe((now - last) / len(tokens))
                last = now
                metrics.generation_tokens.inc(len(tokens))
            # The tokens of one delivery (one or more steps) go out as one piece: fewer chunks to write.
            out = "".join(job.text.push(token) for token in tokens)
            if job.text.stopped:
                if out:
                    yield out
                job.finish_reason = "stop"
                return
            if finish is not None:
                out += job.text.finish()
                job.finish_reason = _FINISH[finish]
                job.eos = finish == "stop"
            if out:
                yield out
            if finish is not None:
                return
    finally:
        if not job.request.finished:  # a stop string, or the client went away
            state.worker.cancel(job)
        metrics.requests.labels(job.endpoint, job.finish_reason or "cancelled").inc()


def _usage(job: Job) -> dict:
    completion = job.delivered + (1 if job.eos else 0)
    prompt = len(job.request.prompt)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


@dataclass
class _ChatPlan:
    messages: list[dict]
    tools: list[dict] | None
    prefix: str  # forced start of the reply (tool_choice required / named)
    template_kwargs: dict | None
    parallel: bool


def _image_chat_inputs(model, plan: _ChatPlan, max_tokens: int | None):
    """(VlInputs, whether <think> opened) of a chat with image parts; a 400 for a bad image, a text-only
    model, or images whose tokens leave no room for max_tokens in the context."""
    messages = _decoded_images(plan.messages)
    try:
        return model.chat_inputs(messages, plan.tools, template_kwargs=plan.template_kwargs,
                                 generation_prefix=plan.prefix, max_new_tokens=max_tokens)
    except UserError as e:
        raise bad_request(one_line(e), "messages") from None


def _decoded_images(messages: list[dict]) -> list[dict]:
    """Each image_url part's data: URL decoded into an image part, or a 400 naming the part."""
    from ..vision import load_image

    out = []
    for i, message in enumerate(messages):
        content = message.get("content")
        if not isinstance(content, list):
            out.append(message)
            continue
        parts = []
        for j, part in enumerate(content):
            if part.get("type") != "image_url":
                parts.append(part)
                continue
            where, url = f"messages.{i}.content.{j}", part["image_url"]["url"]
            if not url.startswith("data:"):
                raise bad_request(f"{where}: images must come as data: URLs (data:image/png;base64,...); "
                                  "this server fetches nothing", where)
            try:
                parts.append({"type": "image", "image": load_image(url)})
            except UserError as e:
                raise bad_request(f"{where}: {one_line(e)}", where) from None
        out.append({**message, "content": parts})
    return out


def _chat_plan(body: ChatCompletionRequest) -> _ChatPlan:
    tools = [t.model_dump(exclude_none=True) for t in body.tools] if body.tools else None
    choice, prefix = body.tool_choice, ""
    if choice is not None and choice != "none" and not tools:
        if choice != "auto":
            raise bad_request("tool_choice needs tools", "tool_choice")
    if choice == "required":
        prefix = TOOL_CALL_START + "["
    elif choice not in (None, "auto", "none"):
        names = [t["function"]["name"] for t in tools]
        if choice.function.name not in names:
            raise bad_request(f"tool_choice names {choice.function.name!r}, which is not in tools ({', '.join(names)})",
                              "tool_choice")
        prefix = TOOL_CALL_START + f"[{choice.function.name}("
    for tool in tools or []:
        schema = tool["function"].get("parameters")
        if schema is not None and schema.get("type", "object") != "object":
            raise bad_request(f"tool {tool['function']['name']!r}: parameters must be a JSON schema of an object",
                              "tools")
    kwargs = body.chat_template_kwargs
    if kwargs and _RESERVED_TEMPLATE_VARS & set(kwargs):
        raise bad_request(f"chat_template_kwargs may not set {sorted(_RESERVED_TEMPLATE_VARS & set(kwargs))}",
                          "chat_template_kwargs")
    return _ChatPlan([m.as_template_message() for m in body.messages], None if choice == "none" else tools, prefix,
                     kwargs, body.parallel_tool_calls)


class _Chat:
    def __init__(self, state: _State, job: Job, text: TextStream, plan: _ChatPlan, reasoning_started: bool,
                 body: ChatCompletionRequest):
        self.state, self.job, self.plan, self.body = state, job, plan, body
        self.reasoning_started = reasoning_started
        job.text = text
        self.parser = ChatStreamParser(reasoning_started=reasoning_started)
        self.head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": state.name}
        self.templates: dict[str, _SseTemplate] = {}  # content / reasoning_content chunks

    def _events(self, events, calls: list) -> list[dict]:
        """Chunk deltas for parser events; tool calls the OpenAI way: id/type/name first, then arguments."""
        deltas = []
        for event in events:
            if isinstance(event, ContentDelta):
                deltas.append({"content": event.text})
            elif isinstance(event, ReasoningDelta):
                deltas.append({"reasoning_content": event.text})
            elif isinstance(event, ToolCallEvent):
                if calls and not self.plan.parallel:
                    continue
                call, index = event.call, len(calls)
                calls.append(call)
                deltas.append({"tool_calls": [{"index": index, "id": call["id"], "type": "function",
                                               "function": {"name": call["function"]["name"], "arguments": ""}}]})
                deltas.append({"tool_calls": [{"index": index,
                                               "function": {"arguments": call["function"]["arguments"]}}]})
        return deltas

    def _chunk(self, delta: dict | None, finish: str | None = None, usage: dict | None = None) -> str:
        if finish is None and usage is None and delta is not None and len(delta) == 1:
            (key, value), = delta.items()
            if key in _TEXT_DELTAS and isinstance(value, str):  # most chunks: one piece of text
                if key not in self.templates:
                    self.templates[key] = _SseTemplate(self.head, "chat.completion.chunk", {"delta": {key: ""}},
                                                       self.body)
                return self.templates[key](value)
        choice = None if delta is None else {"delta": delta}
        return _sse_chunk(self.head, "chat.completion.chunk", choice, finish, self.body, usage)

    def chunks(self) -> AsyncIterator[str]:
        return _sse_stream(self._content_chunks(), self._chunk, self.body, self.job)

    async def _content_chunks(self) -> AsyncIterator[str]:
        calls: list = []
        yield self._chunk({"role": "assistant", "content": ""})
        for delta in self._events(self.parser.feed(self.plan.prefix), calls):
            yield self._chunk(delta)
        async for text in _text(self.state, self.job):
            for delta in self._events(self.parser.feed(text), calls):
                yield self._chunk(delta)
        for delta in self._events(self.parser.finish(), calls):
            yield self._chunk(delta)
        yield self._chunk({}, "tool_calls" if calls else self.job.finish_reason)

    async def response(self) -> dict:
        from ..chat import parse_assistant_message

        parts = [part async for part in _text(self.state, self.job)]
        message = parse_assistant_message(self.plan.prefix + "".join(parts),
                                          reasoning_started=self.reasoning_started)
        if message.get("tool_calls") and not self.plan.parallel:
            message["tool_calls"] = message["tool_calls"][:1]
        finish = "tool_calls" if message.get("tool_calls") else self.job.finish_reason
        return {**self.head, "object": "chat.completion",
                "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
                "usage": _usage(self.job)}


def _sse_chunk(head: dict, kind: str, choice: dict | None, finish: str | None, body, usage: dict | None) -> str:
    """One streamed event; choice None is the usage-only chunk. With include_usage every chunk carries
    `usage` (null until the last one), as OpenAI sends it."""
    chunk = {**head, "object": kind,
             "choices": [] if choice is None else [{"index": 0, **choice, "logprobs": None, "finish_reason": finish}]}
    if usage is not None or (body.stream_options and body.stream_options.include_usage):
        chunk["usage"] = usage
    return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"


class _SseTemplate:
    """The events of one stream that differ only in one text (a content delta): _sse_chunk's output
    around that text is made once, and each event JSON-encodes just the text."""

    _MARK = "\x00text\x00"

    def __init__(self, head: dict, kind: str, choice: dict, body):
        field = next(iter(choice))
        marked = {field: self._MARK} if isinstance(choice[field], str) else {field: {k: self._MARK for k in choice[field]}}
        event = _sse_chunk(head, kind, marked, None, body, None)
        self.before, self.after = event.split(json.dumps(self._MARK, ensure_ascii=False))

    def __call__(self, text: str) -> str:
        return f"{self.before}{json.dumps(text, ensure_ascii=False)}{self.after}"


async def _sse_stream(content: AsyncIterator[str], chunk, body, job: Job) -> AsyncIterator[str]:
    """A completion's content chunks, the usage chunk when stream_options asks for it, then [DONE];
    an ApiError mid-stream becomes an error event (the status line has already gone out)."""
    try:
        async with aclosing(content):  # a client gone: close it now, and with it the job
            async for event in content:
                yield event
        if body.stream_options and body.stream_options.include_usage:
            yield chunk(None, usage=_usage(job))
    except ApiError as e:
        yield f"data: {json.dumps(e.body())}\n\n"
    yield "data: [DONE]\n\n"


class _Completion:
    def __init__(self, state: _State, job: Job, text: TextStream, body: CompletionRequest):
        self.state, self.job, self.body = state, job, body
        job.text = text
        self.head = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": state.name}
        self.template = _SseTemplate(self.head, "text_completion", {"text": ""}, body)

    def _chunk(self, text: str | None, finish: str | None = None, usage: dict | None = None) -> str:
        if finish is None and usage is None and text is not None:
            return self.template(text)
        choice = None if text is None else {"text": text}
        return _sse_chunk(self.head, "text_completion", choice, finish, self.body, usage)

    def chunks(self) -> AsyncIterator[str]:
        return _sse_stream(self._content_chunks(), self._chunk, self.body, self.job)

    async def _content_chunks(self) -> AsyncIterator[str]:
        async for text in _text(self.state, self.job):
            yield self._chunk(text)
        yield self._chunk("", self.job.finish_reason)

    async def response(self) -> dict:
        text = "".join([part async for part in _text(self.state, self.job)])
        return {**self.head, "object": "text_completion",
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": self.job.finish_reason}],
                "usage": _usage(self.job)}


def _sse(chunks: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(chunks, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _unless_disconnected(request: Request, work, state: _State, job: Job):
    """Await a non-streamed response, cancelling the generation if the client disconnects first."""
    task = asyncio.ensure_future(work)
    while True:
        done, _ = await asyncio.wait({task}, timeout=0.5)
        if done:
            return task.result()
        if await request.is_disconnected():
            task.cancel()
            state.worker.cancel(job)
            return Response(status_code=499)


async def _parse(request: Request, schema):
    """The body as JSON whatever its content type (curl -d sends a form type), checked against the schema."""
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise bad_request(f"the request body is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise bad_request("the request body must be a JSON object")
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        raise _validation_error(e.errors()) from None


def _validation_error(errors: list) -> ApiError:
    if not errors:
        return bad_request("invalid request body")
    # The deepest error: for a union (content: a string or a list of parts) the branch that got
    # furthest says what is wrong, e.g. an image part without its url.
    first = max(errors, key=lambda e: len(e.get("loc", ())))
    if first.get("type") == "json_invalid":
        return bad_request(f"the request body is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')})")
    # Drop pydantic's union-branch tags ("str", "list[TextPart]", ...) from the field path, and the
    # content part's type that a tagged union puts after the part's index.
    loc = first.get("loc", ())
    where = [str(p) for k, p in enumerate(loc) if p != "body" and (isinstance(p, int) or p not in _TYPE_TAGS)
             and "[" not in str(p) and not (k and isinstance(loc[k - 1], int) and p in _PART_TAGS)]
    param = ".".join(where) or None
    if first.get("type") == "missing" and where:
        return bad_request(f"{param} is required", param)
    if not where:
        return bad_request(f"the request body must be a JSON object ({first.get('msg')})")
    return bad_request(f"{param}: {first.get('msg')}", param)
