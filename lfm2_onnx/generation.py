"""The generation loop: prefill, then one decode step per token with every tensor bound in place.

    model = Lfm2Model.load("lfm2-350m-onnx", ep="cuda")
    for delta in model.generate("Tell me a story", max_new_tokens=200, preset="lfm2", stream=True):
        print(delta, end="")

Prompts are right-padded into one batch; each row stops on its own. Decode steps bind the same
device buffers every time (KV shared in place, conv states alternating between two buffers, a
fixed-width attention mask), so on CUDA each of the two binding sets is captured once as a CUDA
graph and replayed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .caches import DeviceCaches
from .errors import UserError
from .sampling import PRESETS, Sampler, SamplingParams, from_generation_config
from .session import ModelLayout, create_session
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
        self.session = create_session(layout, ep, cuda_graph=self.cuda_graph)
        self.codec = TextCodec(layout.folder)
        inputs = {i.name: i.type for i in self.session.get_inputs()}
        self._cache_type = next((inputs[n] for n in inputs if n.startswith(("past", "past_"))), "tensor(float)")
        self._logits_type = self.session.get_outputs()[0].type
        self.head = _logits_head(self._logits_type, ep)
        self._caches: dict[int, DeviceCaches] = {}  # by batch size; buffers never move once captured
        self._graph_ids: dict[int, int] = {}
        self.generation_defaults = _read_generation_config(layout.folder)
        self._chat_template: str | None = None
        self._special_tokens: dict = {}

    # -- loading ------------------------------------------------------------------------------
    @classmethod
    def load(cls, folder: str | Path, ep: str = "cpu", *, max_length: int | None = None,
             cuda_graph: bool = True) -> Lfm2Model:
        """Open an export. max_length: KV positions per row (prompt + new tokens), default 4096."""
        layout = ModelLayout.from_folder(folder)
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
        caches.reset()
        sampler = Sampler(params, batch, self.layout.vocab_size)
        penalised = params.repetition_penalty != 1.0
        if penalised:
            sampler.observe([np.asarray(p, dtype=np.int64) for p in prompts])
        step = Step(lengths=np.array([len(p) for p in prompts], dtype=np.int64),
                    done=np.zeros(batch, dtype=bool), generated=[[] for _ in prompts])
        self._last_step = step

        parity = self._prefill(prompts, caches)  # parity: the conv buffer holding the state
        caches.host_mask[:] = 0
        for row, prompt in enumerate(prompts):
            caches.host_mask[row, :len(prompt)] = 1
        plain_greedy = params.greedy and not penalised
        eos = np.array(self.layout.eos_token_ids or [-1])
        for produced in range(max_new_tokens):
            # Greedy copies B token ids from the device; sampling copies the float32 scores.
            tokens = caches.greedy.numpy() if plain_greedy else sampler(caches.scores.numpy())
            tokens = np.where(step.done, self.layout.pad_token_id, tokens)
            finished = np.isin(tokens, eos) & ~step.done
            for row in np.flatnonzero(~step.done & ~finished):
                step.generated[row].append(int(tokens[row]))
            if penalised:
                sampler.observe([tokens[r:r + 1] if not (step.done[r] or finished[r]) else tokens[:0]
                                 for r in range(batch)])
            step.done |= finished
            yield tokens
            if step.done.all() or produced == max_new_tokens - 1:
                return
            self._decode(tokens, step.lengths, caches, parity)
            step.lengths += 1
            parity = 1 - parity

    # -- runs -----------------------------------------------------------------------------------
    def _caches_for(self, batch: int) -> DeviceCaches:
        if batch not in self._caches:
            self._caches[batch] = DeviceCaches(self.layout, self._cache_type, batch, self.capacity, self.device)
            self._graph_ids[batch] = 2 * len(self._graph_ids) + 1  # two graphs (parities) per batch size
            self._decode_buffers(batch)
        return self._caches[batch]

    def _decode_buffers(self, batch: int) -> None:
        """Fixed decode inputs/outputs and, per conv parity, one binding and run options, made once."""
        from onnxruntime import OrtValue

        caches = self._caches[batch]
        caches.input_ids = OrtValue.ortvalue_from_numpy(np.zeros((batch, 1), np.int64), self.device, 0)
        caches.mask = OrtValue.ortvalue_from_numpy(np.zeros((batch, self.capacity), np.int64), self.device, 0)
        dtype = np.float16 if self._logits_type == "tensor(float16)" else np.float32
        caches.logits = OrtValue.ortvalue_from_numpy(np.zeros((batch, 1, self.layout.vocab_size), dtype),
                                                     self.device, 0)
        caches.host_mask = np.zeros((batch, self.capacity), np.int64)
        caches.scores = OrtValue.ortvalue_from_numpy(np.zeros((batch, self.layout.vocab_size), np.float32),
                                                     self.device, 0)
        caches.greedy = OrtValue.ortvalue_from_numpy(np.zeros(batch, np.int64), self.device, 0)
        caches.head_binding = self.head.io_binding()
        caches.head_binding.bind_ortvalue_input("logits", caches.logits)
        caches.head_binding.bind_ortvalue_input(
            "positions", OrtValue.ortvalue_from_numpy(np.zeros(batch, np.int64), self.device, 0))
        caches.head_binding.bind_ortvalue_output("scores", caches.scores)
        caches.head_binding.bind_ortvalue_output("greedy", caches.greedy)
        caches.bindings, caches.run_options = [], []
        for parity in (0, 1):
            binding = self.session.io_binding()
            binding.bind_ortvalue_input("input_ids", caches.input_ids)
            binding.bind_ortvalue_input("attention_mask", caches.mask)
            binding.bind_ortvalue_output("logits", caches.logits)
            caches.bind(binding, parity)
            caches.bindings.append(binding)
            caches.run_options.append(self._run_options(self._graph_ids[batch] + parity))

    def _run_options(self, graph_id: int):
        from onnxruntime import RunOptions

        options = RunOptions()
        if self.cuda_graph:
            options.add_run_config_entry("gpu_graph_id", str(graph_id))
        return options

    def _prefill(self, prompts: list[list[int]], caches: DeviceCaches) -> int:
        """Right-padded prompts in one run (chunks for a long single prompt).

        Leaves each row's last-position scores in caches.scores / caches.greedy and returns the conv
        buffer that now holds the state. Buffers are never swapped: a captured CUDA graph keeps
        the addresses it was recorded with.
        """
        batch, width = len(prompts), max(len(p) for p in prompts)
        ids = np.full((batch, width), self.layout.pad_token_id, dtype=np.int64)
        for row, prompt in enumerate(prompts):
            ids[row, :len(prompt)] = prompt
        lengths = np.array([len(p) for p in prompts], dtype=np.int64)
        # Chunks keep the activations and the [B, S, vocab] logits small; GroupQueryAttention needs
        # every row full in all but the last chunk, so batches of unequal prompts run in one go.
        chunk = PREFILL_CHUNK if (lengths == width).all() else width
        parity = 0
        for start in range(0, width, chunk):
            piece = ids[:, start:start + chunk]
            mask = (np.arange(start + piece.shape[1])[None, :] < lengths[:, None]).astype(np.int64)
            binding = self.session.io_binding()
            binding.bind_cpu_input("input_ids", piece)
            binding.bind_cpu_input("attention_mask", mask)
            binding.bind_output("logits", self.device)  # first: get_outputs() follows binding order
            caches.bind(binding, parity)
            self.session.run_with_iobinding(binding, self._run_options(-1))
            parity = 1 - parity
        head = self.head.io_binding()  # every row ends in the last chunk (chunks only when rows are equal)
        head.bind_ortvalue_input("logits", binding.get_outputs()[0])
        head.bind_cpu_input("positions", lengths - 1 - start)
        head.bind_ortvalue_output("scores", caches.scores)
        head.bind_ortvalue_output("greedy", caches.greedy)
        self.head.run_with_iobinding(head)
        return parity

    def _decode(self, tokens: np.ndarray, lengths: np.ndarray, caches: DeviceCaches, parity: int) -> None:
        """One token per row at position lengths[row]; the scores land in caches.scores / .greedy.

        The fixed-width mask gains one column of ones per row; only the token ids and the mask are
        copied in, only the chosen ids (or the scores, when sampling) copied out.
        """
        caches.input_ids.update_inplace(tokens.reshape(-1, 1).astype(np.int64, copy=False))
        caches.host_mask[np.arange(len(tokens)), lengths] = 1
        caches.mask.update_inplace(caches.host_mask)
        self.session.run_with_iobinding(caches.bindings[parity], caches.run_options[parity])
        self.head.run_with_iobinding(caches.head_binding)

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


def _logits_head(logits_type: str, ep: str):
    """The small device-side session that turns decoder logits into scores and argmax."""
    import onnxruntime as ort

    name = "fp16" if logits_type == "tensor(float16)" else "fp32"
    path = Path(__file__).parent / "assets" / f"logits_head_{name}.onnx"
    options = ort.SessionOptions()
    options.log_severity_level = 3
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if ep == "cuda" else ["CPUExecutionProvider"]
    return ort.InferenceSession(str(path), options, providers=providers)


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


def _read_generation_config(folder: Path) -> SamplingParams:
    import json

    path = folder / "generation_config.json"
    return from_generation_config(json.loads(path.read_text())) if path.exists() else SamplingParams()
