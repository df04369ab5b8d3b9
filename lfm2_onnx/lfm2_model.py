"""The user API: prompts in, text or token ids out, on the engine (lfm2_onnx.engine).

    model = Lfm2Model.load("lfm2-350m-onnx", ep="cuda")
    for delta in model.generate("Tell me a story", max_new_tokens=200, preset="lfm2", stream=True):
        print(delta, end="")

An LFM2-VL export takes images in chat messages (content parts {"type": "image", "image": path,
PIL image, uint8 array, bytes or data: URL}, or OpenAI's image_url parts with data: URLs):
    model.chat([{"role": "user", "content": [{"type": "image", "image": "photo.jpg"},
                                             {"type": "text", "text": "What is in this picture?"}]}])

Every call submits its prompts as engine requests and steps the engine until they finish; calls
keep no state on the model, so they may interleave (two streams iterated in turn, or threads:
a lock serialises the steps) and share the decode steps. Each prompt keeps its own length, stop
and sampling. The engine's docstring says how the steps run on the device.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .engine import Engine, Request
from .errors import UserError
from .hub import resolve_export
from .sampling import PRESETS, SamplingParams, from_generation_config
from .session import ModelLayout
from .text import TextCodec, TextStream
from .vision.image_processor import ProcessedImages
from .vision.processor import VlInputs

if TYPE_CHECKING:
    from .chat import ChatTemplate

DEFAULT_CAPACITY = 4096  # KV positions allocated per row unless load() is told otherwise


class Lfm2Model:
    def __init__(self, layout: ModelLayout, ep: str, capacity: int, cuda_graph: bool, max_batch: int | None = None):
        self.layout, self.ep, self.capacity = layout, ep, capacity
        self.device = "cuda" if ep == "cuda" else "cpu"
        self.engine = Engine(layout, ep, capacity, cuda_graph=cuda_graph, max_slots=max_batch)
        self.cuda_graph = self.engine.cuda_graph
        self.codec = TextCodec(layout.folder)
        self.generation_defaults = _read_generation_config(layout.folder)
        self._lock = threading.RLock()  # one engine step at a time, whoever drives it
        self._chat_template: ChatTemplate | None = None  # read on first use
        self._processor = None  # LFM2-VL: lfm2_onnx.vision.Lfm2VlProcessor, made on first use

    @property
    def sessions(self):
        return self.engine.sessions

    @property
    def takes_images(self) -> bool:
        """Whether this export is an LFM2-VL one (image parts in chat messages)."""
        return self.layout.vision is not None

    @property
    def chat_template(self) -> ChatTemplate:
        """The folder's chat template and special tokens, as every chat prompt renders them."""
        if self._chat_template is None:
            from .chat import ChatTemplate

            self._chat_template = ChatTemplate.from_folder(self.layout.folder)
        return self._chat_template

    @property
    def processor(self):
        """The folder's image processor and prompt expansion (lfm2_onnx.vision.Lfm2VlProcessor)."""
        if not self.takes_images:
            raise UserError(f"{self.layout.folder.name} is a text-only export, so it has no image processor; "
                            "run an LFM2-VL export for images")
        if self._processor is None:
            from .vision import Lfm2VlProcessor

            self._processor = Lfm2VlProcessor.from_folder(self.layout.folder, self.codec)
        return self._processor

    # -- loading ------------------------------------------------------------------------------
    @classmethod
    def load(cls, folder: str | Path, ep: str = "cpu", *, precision: str | None = None,
             revision: str | None = None, max_length: int | None = None, cuda_graph: bool = True,
             max_batch: int | None = None) -> Lfm2Model:
        """Open an export: a folder or a published repo id (org/name, downloads only the variant run).

        precision: which of its variants (default: the best one for `ep`, lfm2_onnx.variants);
        revision: the Hub branch, tag or commit; max_length: KV positions per row, default 4096;
        max_batch: requests decoded together at most (slots allocated now); None grows to each batch.
        """
        layout = resolve_export(folder, ep, precision, revision=revision)
        return cls.from_layout(layout, ep, max_length=max_length, cuda_graph=cuda_graph, max_batch=max_batch)

    @classmethod
    def from_layout(cls, layout: ModelLayout, ep: str = "cpu", *, max_length: int | None = None,
                    cuda_graph: bool = True, max_batch: int | None = None) -> Lfm2Model:
        """Open the one variant a layout names (hub.resolve_export's answer), as load() does."""
        if max_length is not None:
            check_max_length(max_length, layout.context_length)
        capacity = min(max_length or DEFAULT_CAPACITY, layout.context_length)
        return cls(layout, ep, capacity, cuda_graph, max_batch)

    # -- public API -----------------------------------------------------------------------------
    def generate(self, prompt, *, max_new_tokens: int = 256, stream: bool = False, preset: str | None = None,
                 temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                 min_p: float | None = None, repetition_penalty: float | None = None, seed: int | None = None,
                 stop: list[str] | None = None):
        """Text for a prompt (str), a chat (list of messages) or a batch (list of either).

        Returns the generated text (a list for a batch), or with stream=True an iterator of text
        deltas (single prompt only) whose concatenation equals the returned text.
        """
        # Single prompts: a str, a list of token ids, a list of messages. A batch: a list of those.
        batch = isinstance(prompt, list) and bool(prompt) and isinstance(prompt[0], (str, list))
        prompts = prompt if batch else [prompt]
        inputs = [self._inputs(p, max_new_tokens) for p in prompts]
        ids, images = [i for i, _ in inputs], [im for _, im in inputs]
        params = self.sampling_params(preset, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                      repetition_penalty=repetition_penalty, seed=seed)
        if stream:
            if batch:
                raise UserError("stream=True takes one prompt; call generate() per prompt or stream=False")
            return self._stream_text(ids[0], max_new_tokens, params, stop or [], images=images[0])
        texts = [self.codec.decode(row) for row in self.generate_ids(ids, max_new_tokens, params, images=images)]
        texts = [_cut_at_stop(t, stop or []) for t in texts]
        return texts if batch else texts[0]

    def _inputs(self, prompt, max_new_tokens: int):
        """(token ids, the images' encoder inputs or None) of a prompt; chats with image parts on VL exports."""
        if isinstance(prompt, list) and prompt and all(isinstance(m, dict) for m in prompt):
            from .vision.chat import has_image_parts

            if has_image_parts(prompt):
                inputs, _ = self.chat_inputs(prompt, max_new_tokens=max_new_tokens)
                return inputs.input_ids, inputs.images
        return self.encode(prompt), None

    def encode(self, prompt) -> list[int]:
        if isinstance(prompt, str):
            return self.codec.encode(prompt)
        if isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt):
            return self.chat_prompt(prompt)[0]  # the template writes <|startoftext|> itself
        if isinstance(prompt, list) and all(isinstance(t, (int, np.integer)) for t in prompt):
            return [int(t) for t in prompt]
        raise UserError("a prompt is a string, a list of chat messages ({'role', 'content'}) or a list of token ids")

    def sampling_params(self, preset: str | None = None, **overrides) -> SamplingParams:
        if preset is not None and preset not in PRESETS:
            raise UserError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
        base = PRESETS[preset] if preset else self.generation_defaults
        changes = {k: v for k, v in overrides.items() if v is not None}
        params = SamplingParams(**{**base.__dict__, **changes})
        params.validate()
        return params

    # -- token loops on the engine --------------------------------------------------------------
    def generate_ids(self, prompts: list[list[int]], max_new_tokens: int, params: SamplingParams | None = None,
                     *, images: list[ProcessedImages | None] | None = None) -> list[list[int]]:
        """Generated token ids per prompt (eos excluded); images: per prompt, its images' encoder
        inputs (the processor's VlInputs.images) or None."""
        requests = self._submit(prompts, max_new_tokens, params, images)
        for _ in self._drive(requests):
            pass
        return [list(r.generated) for r in requests]

    def steps(self, prompts: list[list[int]], max_new_tokens: int, params: SamplingParams | None = None, *,
              images: list[ProcessedImages | None] | None = None) -> Iterator[np.ndarray]:
        """Yields one new token per row after each step (rows with none this time show the pad id)."""
        requests = self._submit(prompts, max_new_tokens, params, images)
        shown = [0] * len(requests)
        pad = self.layout.pad_token_id
        for _ in self._drive(requests, until_new=shown):
            tokens = np.full(len(requests), pad, dtype=np.int64)
            for row, r in enumerate(requests):
                if shown[row] < len(r.generated):
                    tokens[row] = r.generated[shown[row]]
                    shown[row] += 1
            yield tokens

    def stream_ids(self, prompt: list[int], max_new_tokens: int, params: SamplingParams | None = None, *,
                   images: ProcessedImages | None = None) -> Iterator[int]:
        """The generated token ids of one prompt as they come (eos excluded)."""
        (request,) = self._submit([prompt], max_new_tokens, params, [images])
        shown = [0]
        for _ in self._drive([request], until_new=shown):
            while shown[0] < len(request.generated):
                shown[0] += 1
                yield request.generated[shown[0] - 1]

    def _submit(self, prompts: list[list[int]], max_new_tokens: int, params: SamplingParams | None,
                images: list[ProcessedImages | None] | None = None) -> list[Request]:
        params = params or SamplingParams()
        if not prompts or any(len(p) == 0 for p in prompts):
            raise UserError("every prompt needs at least one token")
        images = images or [None] * len(prompts)
        if len(images) != len(prompts):
            raise UserError(f"{len(prompts)} prompts but images for {len(images)}; give one entry (or None) per prompt")
        requests = [Request(list(p), max_new_tokens, params, images=im) for p, im in zip(prompts, images)]
        with self._lock:
            try:
                for r in requests:
                    self.engine.add(r)
            except UserError:
                for r in requests:
                    self.engine.cancel(r)
                raise
        return requests

    def _drive(self, requests: list[Request], until_new: list[int] | None = None) -> Iterator[None]:
        """Step the engine until these requests finish; yields whenever one of them has new tokens
        (until_new: tokens the caller has seen per request). Stopping early cancels them."""
        try:
            while True:
                fresh = until_new is not None and any(s < len(r.generated) for s, r in zip(until_new, requests))
                if fresh:
                    yield
                    continue
                if all(r.finished for r in requests):
                    return
                with self._lock:
                    self.engine.step()
                if until_new is None:
                    yield
        finally:
            with self._lock:
                for r in requests:
                    self.engine.cancel(r)

    # -- streaming ------------------------------------------------------------------------------
    def _stream_text(self, ids: list[int], max_new_tokens: int, params: SamplingParams, stop: list[str],
                     *, skip_special_tokens: bool = True, images: ProcessedImages | None = None) -> Iterator[str]:
        text = TextStream(self.codec, stop, skip_special_tokens=skip_special_tokens)
        # Text prompts call stream_ids as before images existed (callers and tests stand in for it).
        tokens = self.stream_ids(ids, max_new_tokens, params, **({"images": images} if images is not None else {}))
        try:
            for token in tokens:
                out = text.push(token)
                if out:
                    yield out
                if text.stopped:
                    return
        finally:
            tokens.close()  # a stop string (or the caller) ended it: the request leaves the engine
        out = text.finish()
        if out:
            yield out

    # -- chat -----------------------------------------------------------------------------------
    def chat(self, messages: list[dict], *, tools: list[dict] | None = None, stream: bool = False,
             max_new_tokens: int = 512, preset: str | None = None, temperature: float | None = None,
             top_k: int | None = None, top_p: float | None = None, min_p: float | None = None,
             repetition_penalty: float | None = None, seed: int | None = None, stop: list[str] | None = None):
        """The assistant's reply to a conversation, as an OpenAI-style message.

        Returns {"role": "assistant", "content", "tool_calls"?, "reasoning_content"?}; with
        stream=True a ChatStream: iterate it for ContentDelta / ReasoningDelta / ToolCallEvent
        events, then read .message (equal to the non-streamed reply).
        """
        from .chat import ChatStreamParser, parse_assistant_message

        from .vision.chat import has_image_parts

        if has_image_parts(messages):
            inputs, reasoning_started = self.chat_inputs(messages, tools, max_new_tokens=max_new_tokens)
            ids, images = inputs.input_ids, inputs.images
        else:
            (ids, reasoning_started), images = self.chat_prompt(messages, tools), None
        params = self.sampling_params(preset, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                      repetition_penalty=repetition_penalty, seed=seed)
        # Special tokens stay in the text: <|tool_call_start|> is one, in LFM2's tokenizer.
        deltas = self._stream_text(ids, max_new_tokens, params, stop or [], skip_special_tokens=False, images=images)
        if stream:
            return ChatStream(deltas, ChatStreamParser(reasoning_started=reasoning_started))
        return parse_assistant_message("".join(deltas), reasoning_started=reasoning_started)

    def chat_prompt(self, messages: list[dict], tools: list[dict] | None = None, *,
                    template_kwargs: dict | None = None, generation_prefix: str = "") -> tuple[list[int], bool]:
        """Token ids of the rendered conversation, and whether the prompt already opened <think>.

        template_kwargs: extra template variables (e.g. enable_thinking); generation_prefix: text
        the assistant's turn starts with (the server forces a tool call that way). Messages with
        images need chat_inputs (the ids alone can't carry them)."""
        from .vision.chat import has_image_parts

        if has_image_parts(messages):
            if self.takes_images:
                raise UserError("messages with image parts need chat_inputs() (token ids and images together)")
            raise UserError(f"{self.layout.folder.name} is a text-only export, so its messages can't hold images; "
                            "send text content, or run an LFM2-VL export for image parts")
        text, reasoning_started = self.chat_template.render(messages, tools, template_kwargs)
        return self.codec.encode(text + generation_prefix, add_special_tokens=False), reasoning_started

    def chat_inputs(self, messages: list[dict], tools: list[dict] | None = None, *,
                    template_kwargs: dict | None = None, generation_prefix: str = "",
                    max_new_tokens: int | None = None) -> tuple[VlInputs, bool]:
        """chat_prompt for messages that may hold image parts: (VlInputs: token ids with each image's
        tokens expanded + the images' encoder inputs, or None without images; whether <think> opened).

        Images are read and preprocessed here (a UserError names an unreadable one); with
        max_new_tokens, a prompt whose images leave no room for them in the context is a UserError."""
        from .vision import VlInputs
        from .vision.chat import has_image_parts, vl_chat_inputs

        if not has_image_parts(messages) or not self.takes_images:  # chat_prompt refuses images on text exports
            ids, reasoning_started = self.chat_prompt(messages, tools, template_kwargs=template_kwargs,
                                                      generation_prefix=generation_prefix)
            token = self.layout.vision.image_token_id if self.takes_images else -1
            return VlInputs(ids, None, token), reasoning_started
        room = self.capacity - (max_new_tokens or 0)  # else the engine names max_new_tokens as the problem
        return vl_chat_inputs(self.processor, self.chat_template, messages, tools, template_kwargs=template_kwargs,
                              generation_prefix=generation_prefix, max_tokens=room if room >= 1 else None)


class ChatStream:
    """Events of a streamed chat reply; .message holds the assembled reply once iterated."""

    def __init__(self, deltas: Iterator[str], parser):
        self._deltas, self._parser, self.message = deltas, parser, None

    def __iter__(self):
        for delta in self._deltas:
            yield from self._parser.feed(delta)
        yield from self._parser.finish()
        self.message = self._parser.final_message()


def _cut_at_stop(text: str, stop: list[str]) -> str:
    cuts = [text.find(s) for s in stop if s and s in text]
    return text[:min(cuts)] if cuts else text


def check_max_length(max_length, context_length: int, shown: str = "max_length") -> None:
    """UserError unless max_length is a whole number of positions the model has (a CLI passes its flag)."""
    if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)) or max_length < 1:
        raise UserError(f"{shown} must be an integer >= 1 (KV positions per row: prompt + new tokens), "
                        f"got {max_length!r}")
    if max_length > context_length:
        raise UserError(f"{shown} {max_length} exceeds the model's context of {context_length} tokens; "
                        f"give at most {context_length}")


def _read_generation_config(folder: Path) -> SamplingParams:
    import json

    path = folder / "generation_config.json"
    return from_generation_config(json.loads(path.read_text())) if path.exists() else SamplingParams()
