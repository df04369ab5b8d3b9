"""The generation loop: prefill, then one decode step per token with every tensor bound in place.

    model = Lfm2Model.load("lfm2-350m-onnx", ep="cuda")
    for delta in model.generate("Tell me a story", max_new_tokens=200, preset="lfm2", stream=True):
        print(delta, end="")

Prompts are right-padded into one batch; each row stops on its own. Decode steps bind the same
device buffers every time (KV shared in place, conv states alternating between two buffers, a
token ids and lengths fed back from the previous step), so on CUDA each of the two binding sets
is captured once as a CUDA graph and replayed. The graphs run are the folder's, specialised at load
time (lfm2_onnx.graphs): the LM head on the last position only, argmax and fp32 scores inside.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .caches import DeviceCaches
from .errors import UserError
from .sampling import PRESETS, Sampler, SamplingParams, from_generation_config
from .hub import resolve_export
from .session import DecoderSessions, ModelLayout
from .text import IncrementalDecoder, TextCodec

DEFAULT_CAPACITY = 4096  # KV positions allocated per row unless load() is told otherwise
PREFILL_CHUNK = 2048  # longer single prompts are prefilled in chunks of this many tokens


@dataclass
class Step:
    """Host-side state of one batch between steps."""

    lengths: np.ndarray  # tokens in the cache per row
    done: np.ndarray  # rows that have stopped
    generated: list[list[int]] = field(default_factory=list)


class Lfm2Model:
    def __init__(self, layout: ModelLayout, ep: str, capacity: int, cuda_graph: bool):
        self.layout, self.ep, self.capacity = layout, ep, capacity
        self.device = "cuda" if ep == "cuda" else "cpu"
        self.cuda_graph = cuda_graph and ep == "cuda"
        self.sessions = DecoderSessions(layout, ep, cuda_graph=self.cuda_graph)
        self.codec = TextCodec(layout.folder)
        inputs = {i.name: i for i in self.sessions.uniform.get_inputs()}
        self._cache_type = next((inputs[n].type for n in inputs if n.startswith(("past", "past_"))), "tensor(float)")
        conv = inputs.get(layout.past_conv % layout.conv_layers[0]) if layout.conv_layers else None
        dims = tuple(conv.shape[1:]) if conv else ()
        self._conv_state = dims if all(isinstance(d, int) for d in dims) and dims else (layout.hidden_size,
                                                                                        layout.conv_size)
        self._caches: dict[int, DeviceCaches] = {}  # by batch size; buffers never move once captured
        self._graph_ids: dict[int, int] = {}
        self.generation_defaults = _read_generation_config(layout.folder)
        self._chat_template: str | None = None
        self._special_tokens: dict = {}

    # -- loading ------------------------------------------------------------------------------
    @classmethod
    def load(cls, folder: str | Path, ep: str = "cpu", *, precision: str | None = None,
             revision: str | None = None, max_length: int | None = None, cuda_graph: bool = True) -> Lfm2Model:
        """Open an export: a folder or a published repo id (org/name, downloads only the variant run).

        precision: which of its variants (default: the best one for `ep`, lfm2_onnx.variants);
        revision: the Hub branch, tag or commit; max_length: KV positions per row, default 4096.
        """
        layout = resolve_export(folder, ep, precision, revision=revision)
        if max_length is not None:
            check_max_length(max_length, layout.context_length)
        capacity = min(max_length or DEFAULT_CAPACITY, layout.context_length)
        return cls(layout, ep, capacity, cuda_graph)

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
        ids = [self.encode(p) for p in prompts]
        params = self.sampling_params(preset, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                      repetition_penalty=repetition_penalty, seed=seed)
        if stream:
            if batch:
                raise UserError("stream=True takes one prompt; call generate() per prompt or stream=False")
            return self._stream_text(ids[0], max_new_tokens, params, stop or [])
        texts = [self.codec.decode(row) for row in self.generate_ids(ids, max_new_tokens, params)]
        texts = [_cut_at_stop(t, stop or []) for t in texts]
        return texts if batch else texts[0]

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

    # -- the loop -------------------------------------------------------------------------------
    def generate_ids(self, prompts: list[list[int]], max_new_tokens: int,
                     params: SamplingParams | None = None) -> list[list[int]]:
        """Generated token ids per prompt (eos excluded)."""
        for _ in self.steps(prompts, max_new_tokens, params):
            pass
        return self._last_step.generated

    def steps(self, prompts: list[list[int]], max_new_tokens: int,
              params: SamplingParams | None = None) -> Iterator[np.ndarray]:
        """Yields the new token of every row after each step (rows that stopped repeat the pad id)."""
        params = params or SamplingParams()
        if not prompts or any(len(p) == 0 for p in prompts):
            raise UserError("every prompt needs at least one token")
        if max_new_tokens < 1:
            raise UserError(f"max_new_tokens must be at least 1 (got {max_new_tokens})")
        longest = max(len(p) for p in prompts)
        if longest + max_new_tokens > self.capacity:
            raise UserError(f"prompt ({longest} tokens) + max_new_tokens ({max_new_tokens}) exceeds the context "
                            f"of {self.capacity}; shorten the prompt, lower max_new_tokens, or load with a larger "
                            f"max_length (the model allows {self.layout.context_length})")
        batch = len(prompts)
        caches = self._caches_for(batch)
        caches.bindings[0].synchronize_outputs()  # nothing of an abandoned generation still running
        caches.reset()
        sampler = Sampler(params, batch, self.layout.vocab_size)
        penalised = params.repetition_penalty != 1.0
        if penalised:
            sampler.observe([np.asarray(p, dtype=np.int64) for p in prompts])
        step = Step(lengths=np.array([len(p) for p in prompts], dtype=np.int64),
                    done=np.zeros(batch, dtype=bool), generated=[[] for _ in prompts])
        self._last_step = step

        parity = self._prefill(prompts, caches)  # parity: the buffers holding the state and the next ids
        if params.greedy and not penalised:
            chosen = self._greedy_tokens(caches, parity, max_new_tokens)
        else:
            chosen = self._sampled_tokens(caches, parity, max_new_tokens, sampler)
        is_eos = np.zeros(self.layout.vocab_size + 1, dtype=bool)  # a lookup: np.isin costs ~15 us a step
        is_eos[[t for t in self.layout.eos_token_ids if 0 <= t < self.layout.vocab_size]] = True
        for tokens in chosen:
            tokens = np.where(step.done, self.layout.pad_token_id, tokens)
            finished = is_eos[tokens] & ~step.done
            for row in np.flatnonzero(~step.done & ~finished):
                step.generated[row].append(int(tokens[row]))
            if penalised:
                sampler.observe([tokens[r:r + 1] if not (step.done[r] or finished[r]) else tokens[:0]
                                 for r in range(batch)])
            step.done |= finished
            step.lengths += 1
            yield tokens
            if step.done.all():
                return

    def _greedy_tokens(self, caches: DeviceCaches, parity: int, max_new_tokens: int) -> Iterator[np.ndarray]:
        """Greedy ids per step. Each step reads the argmax the previous one left on the device, so
        two steps are queued back to back and the host reads both ids after one wait: it decides
        about token t while step t+1 runs, at the cost of one wasted step when generation stops.
        """
        yield caches.ids[parity].numpy().reshape(-1)  # the prefill's choice
        produced = 1
        try:
            while produced < max_new_tokens:
                queued = []
                for _ in range(min(2, max_new_tokens - produced)):
                    self._decode(None, caches, parity)
                    parity = 1 - parity
                    queued.append(caches.ids[parity])
                caches.bindings[parity].synchronize_outputs()
                for ids in queued:
                    yield ids.numpy().reshape(-1)
                produced += len(queued)
        finally:  # a step may still be queued when the caller stops early: host copies must not race it
            caches.bindings[parity].synchronize_outputs()

    def _sampled_tokens(self, caches: DeviceCaches, parity: int, max_new_tokens: int,
                        sampler: Sampler) -> Iterator[np.ndarray]:
        """Sampled ids per step: the float32 scores come to the host, the choice goes back (B int64)."""
        for produced in range(max_new_tokens):
            tokens = sampler(caches.scores.numpy())
            yield tokens  # the caller observes them (repetition penalty) before the next step
            if produced == max_new_tokens - 1:
                return
            self._decode(tokens, caches, parity)
            caches.bindings[parity].synchronize_outputs()
            parity = 1 - parity

    # -- runs -----------------------------------------------------------------------------------
    def _caches_for(self, batch: int) -> DeviceCaches:
        if batch not in self._caches:
            caches = DeviceCaches(self.layout, self._cache_type, batch, self.capacity, self.device, self._conv_state)
            self._graph_ids[batch] = 2 * len(self._graph_ids) + 1  # two graphs (parities) per batch size
            caches.bindings, caches.run_options = [], []
            for parity in (0, 1):  # made once: a captured CUDA graph keeps the addresses it recorded
                binding = self.sessions.uniform.io_binding()
                caches.bind_step(binding, parity)
                caches.bindings.append(binding)
                caches.run_options.append(self._run_options(self._graph_ids[batch] + parity))
            self._caches[batch] = caches
        return self._caches[batch]

    def _run_options(self, graph_id: int):
        from onnxruntime import RunOptions

        options = RunOptions()
        if self.cuda_graph:
            options.add_run_config_entry("gpu_graph_id", str(graph_id))
        if graph_id != -1:  # decode steps return once queued; the loop waits where it reads
            options.add_run_config_entry("disable_synchronize_execution_providers", "1")
        return options

    def _prefill(self, prompts: list[list[int]], caches: DeviceCaches) -> int:
        """All prompts in one run (chunks for long prompts of equal length).

        Leaves each row's last-position scores in caches.scores, its argmax and next lengths in
        pair `parity` of caches.ids / caches.seqlens, and returns that parity (also the conv
        buffer holding the state). Buffers are never swapped: a captured CUDA graph keeps the
        addresses it was recorded with.
        """
        batch, width = len(prompts), max(len(p) for p in prompts)
        lengths = np.array([len(p) for p in prompts], dtype=np.int64)
        ids = np.full((batch, width), self.layout.pad_token_id, dtype=np.int64)
        for row, prompt in enumerate(prompts):
            ids[row, :len(prompt)] = prompt
        if not (lengths == width).all():
            return self._prefill_ragged(ids, lengths, caches)
        # Chunks keep the activations small; the head only ever sees the last position.
        parity = 0
        for start in range(0, width, PREFILL_CHUNK):
            piece = ids[:, start:start + PREFILL_CHUNK]
            cached = start + piece.shape[1]
            binding = self.sessions.prefill.io_binding()
            binding.bind_cpu_input("input_ids", piece)
            binding.bind_cpu_input("seqlens_k", np.full(batch, cached - 1, np.int32))
            binding.bind_cpu_input("total_sequence_length", np.array(cached, np.int32))
            caches.bind_outputs(binding, parity, next_seqlens=True)
            self.sessions.prefill.run_with_iobinding(binding, self._run_options(-1))
            parity = 1 - parity
        return parity

    def _prefill_ragged(self, ids: np.ndarray, lengths: np.ndarray, caches: DeviceCaches) -> int:
        """Right-padded prompts of unequal length: the ragged graph, each row's head at its last token."""
        session = self.sessions.ragged
        binding = session.io_binding()
        binding.bind_cpu_input("input_ids", ids)
        binding.bind_cpu_input("attention_mask", (np.arange(ids.shape[1])[None, :] < lengths[:, None]).astype(np.int64))
        binding.bind_cpu_input("last_positions", lengths - 1)
        caches.bind_outputs(binding, 0, next_seqlens=False)
        session.run_with_iobinding(binding, self._run_options(-1))
        caches.seqlens[1].update_inplace(lengths.astype(np.int32))  # the next step adds position `lengths`
        return 1

    def _decode(self, tokens: np.ndarray | None, caches: DeviceCaches, parity: int) -> None:
        """Queue one token per row; the scores land in caches.scores, the argmax in caches.ids[1 - parity].

        tokens None: greedy, the step reads the argmax the previous step left on the device.
        Otherwise the host's choice is copied in (B int64). Returns without waiting for the device:
        call caches.bindings[...].synchronize_outputs() before reading what it wrote.
        """
        if tokens is not None:
            caches.ids[parity].update_inplace(tokens.reshape(-1, 1).astype(np.int64, copy=False))
        self.sessions.uniform.run_with_iobinding(caches.bindings[parity], caches.run_options[parity])

    # -- streaming ------------------------------------------------------------------------------
    def _stream_text(self, ids: list[int], max_new_tokens: int, params: SamplingParams, stop: list[str],
                     *, skip_special_tokens: bool = True) -> Iterator[str]:
        decoder = IncrementalDecoder(self.codec, skip_special_tokens=skip_special_tokens)
        emitted, held = "", ""
        for _tokens in self.steps([ids], max_new_tokens, params):
            new = self._last_step.generated[0][len(decoder.ids):]
            if self._last_step.done[0] and not new:
                break
            for token in new:
                held += decoder.push(token)
            out, held, hit = _release(emitted, held, stop)
            emitted += out
            if out:
                yield out
            if hit:
                return
        held += decoder.flush()
        out, _, _ = _release(emitted, held, stop, final=True)
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

        ids, reasoning_started = self.chat_prompt(messages, tools)
        params = self.sampling_params(preset, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                      repetition_penalty=repetition_penalty, seed=seed)
        # Special tokens stay in the text: <|tool_call_start|> is one, in LFM2's tokenizer.
        deltas = self._stream_text(ids, max_new_tokens, params, stop or [], skip_special_tokens=False)
        if stream:
            return ChatStream(deltas, ChatStreamParser(reasoning_started=reasoning_started))
        return parse_assistant_message("".join(deltas), reasoning_started=reasoning_started)

    def chat_prompt(self, messages: list[dict], tools: list[dict] | None = None) -> tuple[list[int], bool]:
        """Token ids of the rendered conversation, and whether the prompt already opened <think>."""
        from .chat import THINK_START, load_chat_template, load_special_tokens, render_chat, \
            template_renders_tool_calls

        if self._chat_template is None:
            self._chat_template = load_chat_template(self.layout.folder)
            self._special_tokens = load_special_tokens(self.layout.folder)
        template = self._chat_template
        # Templates that ignore an assistant turn's tool_calls get them written into its content.
        text = render_chat(template, messages, tools=tools, add_generation_prompt=True,
                           inline_tool_calls=not template_renders_tool_calls(template), **self._special_tokens)
        return self.codec.encode(text, add_special_tokens=False), text.rstrip().endswith(THINK_START)


class ChatStream:
    """Events of a streamed chat reply; .message holds the assembled reply once iterated."""

    def __init__(self, deltas: Iterator[str], parser):
        self._deltas, self._parser, self.message = deltas, parser, None

    def __iter__(self):
        for delta in self._deltas:
            yield from self._parser.feed(delta)
        yield from self._parser.finish()
        self.message = self._parser.final_message()


def _release(emitted: str, held: str, stop: list[str], final: bool = False) -> tuple[str, str, bool]:
    """Split held text into what can be shown now and what might still begin a stop string."""
    if not stop:
        return held, "", False
    text = emitted + held
    for s in stop:
        at = text.find(s)
        if at != -1:
            return text[len(emitted):at] if at > len(emitted) else "", "", True
    if final:
        return held, "", False
    keep = max((k for s in stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
    return held[:len(held) - keep] if keep else held, held[len(held) - keep:] if keep else "", False


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
