"""The engine: onnxruntime sessions, device caches in slots, prefill into free slots, batched decode steps.

    engine = Engine(layout, ep="cuda", capacity=4096, max_slots=64)
    request = engine.add(Request(prompt_ids, max_new_tokens=128, params=SamplingParams()))
    while not request.finished:
        engine.step()           # advances every request in the engine by at most one token
    request.generated           # token ids (eos excluded), request.finish_reason

Continuous batching: each request owns one slot (one row of every KV / conv buffer) from the step
that prefills its prompt to the step that stops it; requests join and leave between steps. A step
is either a prefill of waiting requests into free slots (GroupQueryAttention refuses a multi-token
step for rows with past context, so running requests wait that one step) or one decode step over
slots [0, n), n the smallest bucket holding every running slot; each row has its own length.
Requests admitted together prefill in one run when their slots are contiguous, so before admitting
several the engine moves running requests down into the free slots below them (a device copy of
their rows); while requests decode, a prefill step takes at most PREFILL_BUDGET prompt tokens, and
with prefill_wait_steps an arrival may wait a few decode steps for others to share its run.
Decode steps of one bucket bind the same addresses every time (two parities), so on CUDA each is
captured once as a CUDA graph and replayed.

LFM2-VL folders: a request may carry images (the processor's pixel inputs, its prompt holding
one image token per feature). Prefill runs the vision encoder over the admitted requests' images
and the decoder writes the features over the embeddings of the image tokens, in order (the
embedding table is glued into the decoder graph, lfm2_onnx.runtime_graphs.glue_embeddings); a
prompt prefilled in chunks takes each chunk's share of its features. Decode steps are as for text.

Each request has its own sampling parameters, seed (its own random generator), eos ids and token
budget. Greedy rows take the argmax the graph computes on the device; as long as every row does and
no request joins or leaves, the next step reads its token ids and lengths from the previous step's
outputs with no copy in. A row's numbers never depend on the other rows, so greedy output does
not depend on what else runs (on CPU; GPU matmuls may pick other kernels for other batch sizes).

The engine is not thread-safe: one thread drives it (Lfm2Model serialises its callers with a lock,
the server runs it in one worker thread).
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from .caches import SlotCaches
from .errors import UserError
from .sampling import Sampler, SamplingParams
from .session import DecoderSessions, ModelLayout
from .vision.image_processor import ProcessedImages

PREFILL_CHUNK = 2048  # a longer prompt is prefilled in chunks of this many tokens (one request per run)
PREFILL_TOKENS = 65536  # prompt tokens (padded) prefilled together in one step at most
# While requests decode, a prefill step stalls them all: it takes at most this many prompt tokens
# (the first request is always taken), so their inter-token latency stays bounded.
PREFILL_BUDGET = 4096


@dataclass(eq=False)
class Request:
    """One generation: what to do (set by the caller) and how far it got (set by the engine)."""

    prompt: list[int]
    max_new_tokens: int
    params: SamplingParams = field(default_factory=SamplingParams)
    eos_token_ids: frozenset[int] | None = None  # None: the model's eos ids
    tag: object = None  # the caller's handle (the server's job)
    # LFM2-VL: the images' encoder inputs (lfm2_onnx.vision.ProcessedImages, in prompt order);
    # the prompt holds one image token per feature they make (Lfm2VlProcessor expands it so).
    images: ProcessedImages | None = None
    # Progress, written by the engine.
    generated: list[int] = field(default_factory=list)  # eos excluded
    finish_reason: str | None = None  # "stop" (an eos id), "length" (max_new_tokens), "cancelled"
    slot: int | None = None
    cached: int = 0  # tokens of this request in its slot's KV cache
    _sampler: Sampler | None = field(default=None, repr=False)
    _image_features: np.ndarray | None = field(default=None, repr=False)  # set by prefill, dropped after it

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def greedy_on_device(self) -> bool:
        """Its token is the graph's argmax (greedy without repetition penalty)."""
        return self.params.greedy and self.params.repetition_penalty == 1.0


class Engine:
    def __init__(self, layout: ModelLayout, ep: str, capacity: int, *, cuda_graph: bool = True,
                 max_slots: int | None = None, prefill_wait_steps: int = 0):
        """max_slots: a fixed number of slots, allocated now; None grows the slots (when idle) to fit
        the waiting requests, which is what a caller that submits whole batches wants.

        prefill_wait_steps: while requests decode, a request that arrives may wait up to this many
        decode steps so that the ones arriving after it share its prefill run (0: prefill at the
        next step). A server whose clients arrive one by one wants a few: one prefill of k prompts
        costs about one of a single prompt on a GPU, and every prefill stalls every running request."""
        if prefill_wait_steps < 0:
            raise UserError(f"prefill_wait_steps must be at least 0 (got {prefill_wait_steps})")
        self.prefill_wait_steps = prefill_wait_steps
        self.layout, self.ep, self.capacity = layout, ep, capacity
        self.device = "cuda" if ep == "cuda" else "cpu"
        self.cuda_graph = cuda_graph and ep == "cuda"
        self.sessions = DecoderSessions(layout, ep, cuda_graph=self.cuda_graph, positions=capacity)
        inputs = {i.name: i for i in self.sessions.uniform.get_inputs()}
        self._cache_type = next((inputs[n].type for n in inputs if n.startswith(("past", "past_"))), "tensor(float)")
        conv = inputs.get(layout.past_conv % layout.conv_layers[0]) if layout.conv_layers else None
        dims = tuple(conv.shape[1:]) if conv else ()
        self._conv_state = dims if all(isinstance(d, int) for d in dims) and dims else (layout.hidden_size,
                                                                                        layout.conv_size)
        self.eos_token_ids = frozenset(layout.eos_token_ids)
        self._no_image_features, self._no_images_on_device = None, None
        if layout.vision is not None:
            from .caches import HOST_TYPES, device_array, device_zeros

            features = inputs["image_features"]
            if features.type not in HOST_TYPES:
                raise UserError(f"{layout.onnx_path.name}: inputs_embeds of type {features.type}; this runtime "
                                "runs LFM2-VL folders of fp32, fp16 or bf16 activations")
            # bfloat16 travels as raw uint16 (caches.HOST_TYPES): bound as an OrtValue of that element type.
            host_dtype, self._feature_element = HOST_TYPES[features.type]
            self._no_image_features = np.zeros((0, layout.hidden_size), host_dtype)
            self._no_images_on_device = (device_zeros([0, layout.hidden_size], features.type, self.device),
                                         device_array(np.zeros((0, 2), np.int64), self.device))
        self.fixed_slots = max_slots is not None
        self.caches: SlotCaches | None = None
        self._slots: list[Request | None] = []
        self._waiting: deque[Request] = deque()
        self._parity = 0  # which conv / ids / seqlens buffers hold the running rows' state
        self._fed_rows = 0  # the previous decode step left valid ids and lengths for rows [0, n) on the device
        self._last_was_prefill = False
        self._waited_steps = 0  # decode steps run while the oldest waiting request waited
        self._decode_bindings: dict[tuple[int, int], tuple] = {}
        self._graph_ids = itertools.count(1)
        if max_slots is not None:
            if max_slots < 1:
                raise UserError(f"max_slots must be at least 1 (got {max_slots})")
            self._allocate(max_slots)

    # -- requests -------------------------------------------------------------------------------
    def add(self, request: Request) -> Request:
        """Queue a request; the next steps prefill it into a free slot. Raises UserError for bad ones."""
        if not request.prompt:
            raise UserError("every prompt needs at least one token")
        if request.max_new_tokens < 1:
            raise UserError(f"max_new_tokens must be at least 1 (got {request.max_new_tokens})")
        if len(request.prompt) + request.max_new_tokens > self.capacity:
            raise UserError(f"prompt ({len(request.prompt)} tokens) + max_new_tokens ({request.max_new_tokens}) "
                            f"exceeds the context of {self.capacity}; shorten the prompt, lower max_new_tokens, "
                            f"or load with a larger max_length (the model allows {self.layout.context_length})")
        if any(not 0 <= t < self.layout.vocab_size for t in request.prompt):
            raise UserError(f"token ids must be in [0, {self.layout.vocab_size})")
        self._check_images(request)
        request.params.validate()
        if request.eos_token_ids is None:
            request.eos_token_ids = self.eos_token_ids
        self._waiting.append(request)
        return request

    def _check_images(self, request: Request) -> None:
        """A request's image tokens and images agree (one feature per image token), on a VL folder."""
        vision = self.layout.vision
        if vision is None:
            if request.images is not None:
                raise UserError(f"{self.layout.folder.name} is a text-only export, so a request can't carry "
                                "images; run an LFM2-VL export for images")
            return
        if request.images is not None and not isinstance(request.images, ProcessedImages):
            raise UserError(f"Request.images takes the processor's ProcessedImages (VlInputs.images), "
                            f"not {type(request.images).__name__}")
        tokens = sum(1 for t in request.prompt if t == vision.image_token_id)
        features = 0 if request.images is None else sum(vision.features_per_entry(request.images.spatial_shapes))
        if tokens != features:
            raise UserError(f"the prompt has {tokens} image token(s) (id {vision.image_token_id}) but its images "
                            f"make {features} feature(s); build prompt and images together with the folder's "
                            "processor (lfm2_onnx.vision.Lfm2VlProcessor)")

    def cancel(self, request: Request) -> None:
        """Stop a request now: it leaves the queue or frees its slot for the next step."""
        if request.finished:
            return
        if request.slot is None:
            try:
                self._waiting.remove(request)
            except ValueError:
                pass
        request.finish_reason = "cancelled"
        self._release(request)

    @property
    def running(self) -> int:
        return sum(r is not None for r in self._slots)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def slots(self) -> int:
        return len(self._slots)

    @property
    def last_step_prefill(self) -> bool:
        """Whether the last step prefilled (else it decoded)."""
        return self._last_was_prefill

    @property
    def idle(self) -> bool:
        return not self._waiting and self.running == 0

    # -- one step -------------------------------------------------------------------------------
    def step(self) -> list[Request]:
        """Prefill waiting requests or run one decode step; returns the requests that advanced."""
        if self._waiting and (self.running == 0 or self._prefill_due()):
            if self.running == 0 and not self.fixed_slots and len(self._waiting) > len(self._slots):
                self._allocate(len(self._waiting))
            admitted = self._admit()
            if admitted:
                self._last_was_prefill = True
                self._waited_steps = 0
                self._prefill(admitted)
                return admitted
        self._last_was_prefill = False
        if self.running == 0:
            return []
        if self._waiting:
            self._waited_steps += 1
        return self._decode()

    def _prefill_due(self) -> bool:
        """Requests decode and some wait: prefill now, or decode once more to gather more arrivals?

        Never two prefills in a row (the running requests would stall twice); then now if the wait
        is over, the waiting prompts fill a prefill step, or they would take every free slot."""
        if self._last_was_prefill:
            return False
        if self._waited_steps >= self.prefill_wait_steps:
            return True
        free = len(self._slots) - self.running
        return (len(self._waiting) >= free
                or sum(len(r.prompt) for r in itertools.islice(self._waiting, free)) >= PREFILL_BUDGET)

    # -- slots ----------------------------------------------------------------------------------
    def _allocate(self, slots: int) -> None:
        """New caches for `slots` rows (only while no request runs: captured graphs keep old addresses)."""
        self.caches = None  # free the old buffers first
        self.caches = SlotCaches(self.layout, self._cache_type, slots, self.capacity, self.device, self._conv_state)
        self._slots = [None] * slots
        self._decode_bindings.clear()  # new addresses: new bindings, new graph ids
        self._fed_rows = 0

    def _admit(self) -> list[Request]:
        """Move waiting requests into the lowest free slots, up to PREFILL_TOKENS of prompt (up to
        PREFILL_BUDGET while others decode); with more than one, the running requests first move
        down into the lowest slots so that the new ones take contiguous slots: one prefill run."""
        budget = PREFILL_BUDGET if self.running else PREFILL_TOKENS
        if len(self._waiting) > 1:
            self._compact()
        admitted, tokens = [], 0
        free = (s for s, r in enumerate(self._slots) if r is None)
        while self._waiting:
            request = self._waiting[0]
            if admitted and tokens + len(request.prompt) > budget:
                break
            slot = next(free, None)
            if slot is None:
                break
            self._waiting.popleft()
            request.slot, self._slots[slot] = slot, request
            tokens += len(request.prompt)
            admitted.append(request)
        return admitted

    def _compact(self) -> None:
        """Running requests into slots [0, running): each one above a free slot below moves down
        (its caches are copied on the device). Free slots then form one run at the top."""
        running = self.running
        holes = [s for s in range(running) if self._slots[s] is None]
        movers = [r for r in self._slots[running:] if r is not None]
        for slot, request in zip(holes, movers):
            self.caches.move_row(request.slot, slot, self.sessions.helper_session)
            self._slots[request.slot], self._slots[slot] = None, request
            request.slot = slot
        if holes:
            self._fed_rows = 0  # rows moved: the host writes the next step's inputs

    def _release(self, request: Request) -> None:
        if request.slot is not None:
            self._slots[request.slot] = None
            request.slot = None
            self._fed_rows = 0  # the rows changed: the host writes the next step's inputs

    def _bucket(self, rows: int) -> int:
        """Decode steps run over a power of two of slots (or all of them): few shapes, few CUDA graphs."""
        return min(1 << (rows - 1).bit_length(), len(self._slots))

    # -- prefill --------------------------------------------------------------------------------
    def _prefill(self, requests: list[Request]) -> None:
        """Prompts of contiguous slots run together (equal lengths: uniform graph; else ragged graph).

        Where the sessions have no ragged graph (CPU: a second session would hold a second copy of
        the weights, lfm2_onnx.session.DecoderSessions), unequal prompts prefill one at a time, as
        do equal prompts longer than PREFILL_CHUNK. Images are encoded first, in one run.
        """
        self._encode_images(requests)
        for run in _contiguous(requests):
            lengths = {len(r.prompt) for r in run}
            # GroupQueryAttention takes a chunk after the first only for one row at a time.
            if len(lengths) == 1 and (len(run) == 1 or max(lengths) <= PREFILL_CHUNK):
                scores, tokens = self._prefill_uniform(run)
            elif max(lengths) <= PREFILL_CHUNK and self.sessions.ragged_prefill:
                scores, tokens = self._prefill_ragged(run)
            else:
                for request in run:
                    scores, tokens = self._prefill_uniform([request])
                    self._first_token(request, scores, tokens, 0)
                continue
            for row, request in enumerate(run):
                self._first_token(request, scores, tokens, row)
        self._fed_rows = 0

    def _encode_images(self, requests: list[Request]) -> None:
        """Image features of these requests' images: one vision encoder run for all of them."""
        with_images = [r for r in requests if r.images is not None]
        if not with_images:
            return
        entries = [r.images for r in with_images]
        counts = [sum(self.layout.vision.features_per_entry(e.spatial_shapes)) for e in entries]
        if len({e.pixel_values.shape[1:] for e in entries}) > 1:  # processors padded differently: run apart
            outputs = [self.sessions.vision(e) for e in entries]
        else:
            merged = ProcessedImages(
                np.concatenate([e.pixel_values for e in entries]),
                np.concatenate([e.pixel_attention_mask for e in entries]),
                np.concatenate([e.spatial_shapes for e in entries]), [], [], [], [])
            features = self.sessions.vision(merged)
            outputs = np.split(features, np.cumsum(counts)[:-1]) if features.shape[0] == sum(counts) else [features]
        if [len(f) for f in outputs] != counts:
            raise UserError(f"the vision encoder wrote {sum(len(f) for f in outputs)} feature rows for images that "
                            f"make {sum(counts)}; the folder's vision encoder and genai_config.json disagree, "
                            "build the folder again")
        for request, features in zip(with_images, outputs):
            request._image_features = features

    def _image_inputs(self, run: list[Request], begin: int, end: int):
        """image_features and image_positions (row, column) for columns [begin, end) of these rows."""
        vision, features, positions = self.layout.vision, [], []
        if vision is None:
            return None
        for row, request in enumerate(run):
            if request._image_features is None:
                continue
            is_image = np.asarray(request.prompt) == vision.image_token_id
            columns = np.flatnonzero(is_image[begin:end])
            before = int(is_image[:begin].sum())
            features.append(request._image_features[before:before + len(columns)])
            positions.append(np.stack([np.full(len(columns), row), columns], axis=1))
        if not features:
            return self._no_image_features, np.zeros((0, 2), np.int64)
        return (np.ascontiguousarray(np.concatenate(features), dtype=self._no_image_features.dtype),
                np.concatenate(positions).astype(np.int64))

    def _bind_images(self, binding, run: list[Request], begin: int, end: int):
        """Binds the run's image inputs; returns what the binding reads (keep it until the run ends)."""
        inputs = self._image_inputs(run, begin, end)
        if inputs is None:
            return None
        features, positions = inputs
        if self._feature_element == 16:
            from onnxruntime import OrtValue

            value = OrtValue.ortvalue_from_numpy_with_onnx_type(features, self._feature_element)
            binding.bind_ortvalue_input("image_features", value)
        else:
            value = features
            binding.bind_cpu_input("image_features", features)
        binding.bind_cpu_input("image_positions", positions)
        return value, features

    def _first_token(self, request: Request, scores, tokens, row: int) -> None:
        request._image_features = None
        request.cached = len(request.prompt)
        if not request.greedy_on_device:
            request._sampler = Sampler(request.params, 1, self.layout.vocab_size)
            if request.params.repetition_penalty != 1.0:
                request._sampler.observe([np.asarray(request.prompt, np.int64)])
        self._accept(request, self._pick(request, int(tokens[row]), scores, row))

    def _prefill_uniform(self, run: list[Request]):
        """Rows of equal length, in chunks of PREFILL_CHUNK positions; the last chunk leaves each
        row's conv state in buffer `parity`, where the decode steps read it."""
        start, rows = run[0].slot, len(run)
        ids = np.array([r.prompt for r in run], dtype=np.int64)
        width = ids.shape[1]
        chunks = list(range(0, width, PREFILL_CHUNK))
        for k, begin in enumerate(chunks):
            piece = ids[:, begin:begin + PREFILL_CHUNK]
            cached = begin + piece.shape[1]
            target = self._parity if (len(chunks) - 1 - k) % 2 == 0 else 1 - self._parity
            binding = self.sessions.prefill.io_binding()
            for name in ("scores", "next_token", "next_seqlens_k"):  # first: get_outputs() keeps this order
                binding.bind_output(name, "cpu")
            binding.bind_cpu_input("input_ids", piece)
            images = self._bind_images(binding, run, begin, cached)  # noqa: F841 (read by the run below)
            binding.bind_cpu_input("seqlens_k", np.full(rows, cached - 1, np.int32))
            binding.bind_cpu_input("total_sequence_length", np.array(cached, np.int32))
            self.caches.bind_kv(binding, start, rows)
            self.caches.bind_conv(binding, start, rows, None if k == 0 else 1 - target, target)
            self.sessions.prefill.run_with_iobinding(binding, self._run_options(-1))
        return self._host_outputs(binding)

    def _prefill_ragged(self, run: list[Request]):
        """Right-padded prompts of unequal length: the ragged graph, each row's head at its last token."""
        start, rows = run[0].slot, len(run)
        lengths = np.array([len(r.prompt) for r in run], dtype=np.int64)
        ids = np.full((rows, int(lengths.max())), self.layout.pad_token_id, dtype=np.int64)
        for row, request in enumerate(run):
            ids[row, :len(request.prompt)] = request.prompt
        session = self.sessions.ragged
        binding = session.io_binding()
        for name in ("scores", "next_token"):  # first: get_outputs() keeps this order
            binding.bind_output(name, "cpu")
        binding.bind_cpu_input("input_ids", ids)
        images = self._bind_images(binding, run, 0, ids.shape[1])  # noqa: F841 (read by the run below)
        binding.bind_cpu_input("attention_mask",
                               (np.arange(ids.shape[1])[None, :] < lengths[:, None]).astype(np.int64))
        binding.bind_cpu_input("last_positions", lengths - 1)
        self.caches.bind_kv(binding, start, rows)
        self.caches.bind_conv(binding, start, rows, None, self._parity)
        session.run_with_iobinding(binding, self._run_options(-1))
        return self._host_outputs(binding)

    @staticmethod
    def _host_outputs(binding):
        """(scores [rows, V], argmax [rows]) of a prefill run, bound first and to the host."""
        scores, tokens = binding.get_outputs()[:2]
        return scores.numpy(), tokens.numpy().reshape(-1)

    # -- decode ---------------------------------------------------------------------------------
    def _decode(self) -> list[Request]:
        """One decode step over the running slots, or two queued back to back when they can be.

        Two steps: every row takes the device's argmax and no request waits, so the second step
        reads the first one's tokens on the device. The host then waits once and reads both, which
        keeps the device busy while it handles the first (a row that stops after the first step
        wastes the second; its token is dropped).
        """
        running = [r for r in self._slots if r is not None]
        rows = self._bucket(max(r.slot for r in running) + 1)
        caches = self.caches
        if self._fed_rows != rows:  # rows joined, left, or took a token the device didn't choose
            ids = np.full(len(self._slots), self.layout.pad_token_id, np.int64)
            seqlens = np.zeros(len(self._slots), np.int32)  # idle rows: position 0, never read
            for r in running:
                ids[r.slot], seqlens[r.slot] = r.generated[-1], r.cached
            caches.write_step_inputs(self._parity, ids, seqlens)
        two = (self._fed_rows == rows and not self._waiting
               and all(r.greedy_on_device and r.max_new_tokens - len(r.generated) >= 2 for r in running))
        parities = [self._parity, 1 - self._parity] if two else [self._parity]
        for k, parity in enumerate(parities):
            binding, queued, waited = self._decode_binding(rows, parity)
            # The last run waits for the device inside run_with_iobinding, which releases the GIL
            # (synchronize_outputs holds it): the server's event loop streams the previous tokens meanwhile.
            self.sessions.uniform.run_with_iobinding(binding, waited if k == len(parities) - 1 else queued)
        fed = True
        for parity in parities:
            self._parity = 1 - parity
            device_tokens = caches.ids[1 - parity].value.numpy().reshape(-1)
            scores = None
            if not all(r.greedy_on_device for r in running):
                scores = caches.scores(rows).value.numpy()
            for r in running:
                if r.finished:
                    continue
                r.cached += 1
                token = self._pick(r, int(device_tokens[r.slot]), scores, r.slot)
                fed &= token == device_tokens[r.slot]
                self._accept(r, token)
        self._fed_rows = rows if fed and all(not r.finished for r in running) else 0
        return running

    def _decode_binding(self, rows: int, parity: int):
        """(binding, options that return once the run is queued, options that wait for the device)."""
        key = (rows, parity)
        if key not in self._decode_bindings:  # made once: a captured CUDA graph keeps the addresses it recorded
            binding = self.sessions.uniform.io_binding()
            self.caches.bind_decode(binding, rows, parity)
            if self._no_images_on_device is not None:  # decode steps: no image features (T = 0)
                for name, value in zip(("image_features", "image_positions"), self._no_images_on_device):
                    binding.bind_ortvalue_input(name, value)
            graph_id = next(self._graph_ids)
            self._decode_bindings[key] = (binding, self._run_options(graph_id, wait=False),
                                          self._run_options(graph_id))
        return self._decode_bindings[key]

    def _run_options(self, graph_id: int, wait: bool = True):
        from onnxruntime import RunOptions

        options = RunOptions()
        # Always set: onnxruntime's Python run looks the entry up, and a missing one costs ~0.1 ms (an exception).
        options.add_run_config_entry("gpu_graph_id", str(graph_id if self.cuda_graph else -1))
        options.add_run_config_entry("disable_synchronize_execution_providers", "0" if wait else "1")
        return options

    # -- tokens ---------------------------------------------------------------------------------
    def _pick(self, request: Request, device_token: int, scores: np.ndarray | None, row: int) -> int:
        """The request's next token: the device's argmax, or its own sampler over its scores row."""
        if request.greedy_on_device:
            return device_token
        return int(request._sampler(scores[row:row + 1])[0])

    def _accept(self, request: Request, token: int) -> None:
        if request.finished:  # cancelled while its step ran
            return
        if token in request.eos_token_ids:
            request.finish_reason = "stop"
        else:
            request.generated.append(token)
            if request._sampler is not None and request.params.repetition_penalty != 1.0:
                request._sampler.observe([np.array([token], np.int64)])
            if len(request.generated) >= request.max_new_tokens:
                request.finish_reason = "length"
        if request.finished:
            self._release(request)


def _contiguous(requests: list[Request]) -> list[list[Request]]:
    """Requests in runs of consecutive slots (admission hands out the lowest free slots in order)."""
    runs: list[list[Request]] = []
    for request in sorted(requests, key=lambda r: r.slot):
        if runs and runs[-1][-1].slot + 1 == request.slot:
            runs[-1].append(request)
        else:
            runs.append([request])
    return runs
