"""The OpenAI request bodies the server accepts, and its errors in OpenAI's shape.

Fields we don't know are ignored (clients send vendor extras); fields we know are type-checked, and
values we can't honour (n > 1, logprobs, frequency/presence penalties) are a 400 that says so.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field


class ApiError(Exception):
    """An error response: {"error": {"message", "type", "param", "code"}} with this HTTP status."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param=param)


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Body):
    include_usage: bool = False


class FunctionSpec(_Body):
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema: an object
    strict: bool | None = None


class Tool(_Body):
    type: Literal["function"]
    function: FunctionSpec


class NamedFunction(_Body):
    name: str


class NamedToolChoice(_Body):
    type: Literal["function"]
    function: NamedFunction


class FunctionCall(_Body):
    name: str
    arguments: str | dict[str, Any] = "{}"


class ToolCall(_Body):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ImageUrl(_Body):
    url: str = Field(min_length=1)  # a data: URL (the server fetches nothing)
    detail: str | None = None  # OpenAI's low/high/auto: LFM2-VL's processor decides the resolution itself


class ImageUrlPart(_Body):
    type: Literal["image_url"]
    image_url: ImageUrl


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[Annotated[Union[TextPart, ImageUrlPart], Field(discriminator="type")]], None] = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None

    def as_template_message(self) -> dict:
        """The dict render_chat takes: text content (a list of parts when it has images: text parts and
        image_url parts as OpenAI sends them), the system role for OpenAI's developer role."""
        content = self.content
        if isinstance(content, list):
            if any(isinstance(part, ImageUrlPart) for part in content):
                content = [part.model_dump(exclude_none=True) for part in content]
            else:
                content = "".join(part.text for part in content)
        message: dict = {"role": "system" if self.role == "developer" else self.role, "content": content}
        for key in ("name", "tool_call_id", "reasoning_content"):
            if getattr(self, key) is not None:
                message[key] = getattr(self, key)
        if self.tool_calls:
            message["tool_calls"] = [call.model_dump() for call in self.tool_calls]
        return message


class SamplingFields(_Body):
    """The generation options /v1/chat/completions and /v1/completions share."""

    model: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    stop: Union[str, list[str], None] = None
    seed: int | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=-1)  # -1 or 0: off
    min_p: float | None = Field(default=None, ge=0, lt=1)
    repetition_penalty: float | None = Field(default=None, gt=0)
    n: int = Field(default=1, ge=1)
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logprobs: bool | int | None = None
    user: str | None = None
    ignore_eos: bool = False  # vLLM's extension: generate max_tokens whatever the model says (benchmarks)

    def unsupported(self) -> ApiError | None:
        if self.n != 1:
            return bad_request("n > 1 is not supported by this server; send n separate requests", "n")
        for name in ("frequency_penalty", "presence_penalty"):
            if getattr(self, name):
                return bad_request(f"{name} is not supported; use repetition_penalty", name)
        if self.logprobs:
            return bad_request("logprobs are not supported by this server", "logprobs")
        return None

    def stop_strings(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s]


class ChatCompletionRequest(SamplingFields):
    messages: list[Message] = Field(min_length=1)
    tools: list[Tool] | None = None
    tool_choice: Union[Literal["none", "auto", "required"], NamedToolChoice, None] = None
    parallel_tool_calls: bool = True
    max_completion_tokens: int | None = Field(default=None, ge=1)
    chat_template_kwargs: dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None


class CompletionRequest(SamplingFields):
    prompt: Union[str, list[int], list[str], list[list[int]]]
    max_tokens: int | None = Field(default=16, ge=1)  # OpenAI's default for completions
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None
