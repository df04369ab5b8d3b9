"""An export folder as the runtime sees it: names, sizes and special ids from genai_config.json,
and an onnxruntime session for the chosen execution provider."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UserError
from .layers import attention_layers, conv_layers

REQUIRED_FILES = ("genai_config.json", "tokenizer.json")
# onnxruntime-genai's embedding model of an LFM2-VL folder, and the plain table our runtime reads
# (same data file, written beside it by builder/vl.py): its file name with this prefix replaced.
GENAI_EMBEDDING_PREFIX, EMBEDDING_PREFIX = "genai_embed_tokens", "embed_tokens"


@dataclass(frozen=True)
class VisionLayout:
    """An LFM2-VL folder's image side: the vision encoder and the embedding table in front of the decoder."""

    encoder_path: Path  # pixel_values, pixel_attention_mask, spatial_shapes -> image_features
    embed_path: Path  # input_ids -> inputs_embeds
    image_token_id: int  # the prompt positions that take image features, in order
    merge: int  # patches per feature along each side (pixel unshuffle factor)

    def features_per_entry(self, spatial_shapes) -> list[int]:
        """Feature rows the encoder writes per pixel_values entry of these patch grids."""
        return [(int(h) // self.merge) * (int(w) // self.merge) for h, w in spatial_shapes]


@dataclass(frozen=True)
class ModelLayout:
    folder: Path
    onnx_path: Path
    layer_types: tuple[str, ...]
    num_kv_heads: int
    head_size: int
    hidden_size: int
    conv_size: int
    vocab_size: int
    context_length: int
    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    bos_token_id: int | None
    past_key: str
    past_value: str
    past_conv: str
    present_key: str
    present_value: str
    present_conv: str
    provider_options: dict
    vision: VisionLayout | None = None  # LFM2-VL: the decoder takes inputs_embeds

    @classmethod
    def from_folder(cls, folder: str | Path, genai_config: str | Path | None = None) -> ModelLayout:
        """The folder's default variant, or the one whose genai config is given (lfm2_onnx.variants)."""
        folder = Path(folder)
        config_path = Path(genai_config) if genai_config is not None else folder / "genai_config.json"
        if not folder.is_dir():
            raise UserError(f"{folder}: no such model folder; build one with python -m lfm2_onnx.build")
        missing = [f for f in REQUIRED_FILES if not (folder / f).is_file()]
        if missing:
            raise UserError(f"{folder}: missing {', '.join(missing)}; is this a folder written by lfm2_onnx.build?")
        if not config_path.is_file():
            raise UserError(f"{folder}: {config_path.name} is missing; the export is incomplete, build it again")
        try:
            config = json.loads(config_path.read_text())
            model, decoder = config["model"], config["model"]["decoder"]
            vision = _vision_layout(folder, model) if "vision" in model else None
            inputs, outputs = decoder["inputs"], decoder["outputs"]
            onnx_path = folder / decoder["filename"]
            eos = model.get("eos_token_id")
            eos = tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,))
            providers = decoder.get("session_options", {}).get("provider_options", [])
            layout = cls(
                folder=folder, onnx_path=onnx_path, layer_types=tuple(decoder["layer_types"]),
                num_kv_heads=decoder["num_key_value_heads"], head_size=decoder["head_size"],
                hidden_size=decoder["hidden_size"], conv_size=decoder.get("conv_cache_size", 0),
                vocab_size=model["vocab_size"], context_length=model["context_length"],
                eos_token_ids=eos, pad_token_id=model.get("pad_token_id") or 0,
                bos_token_id=model.get("bos_token_id"),
                past_key=inputs["past_key_names"], past_value=inputs["past_value_names"],
                past_conv=inputs.get("past_conv_names", ""), present_key=outputs["present_key_names"],
                present_value=outputs["present_value_names"], present_conv=outputs.get("present_conv_names", ""),
                provider_options={k: v for p in providers for k, v in p.items()}, vision=vision,
            )
        except (KeyError, TypeError, json.JSONDecodeError) as e:
            raise UserError(f"{config_path} is not an LFM2 genai config ({e!r}); rebuild the folder") from None
        graphs = [onnx_path] + ([vision.encoder_path, vision.embed_path] if vision else [])
        for path in graphs:
            if not path.is_file():
                raise UserError(f"{folder}: {path.relative_to(folder)} is missing; the export is incomplete, "
                                "build it again")
            missing = missing_external_data(path, folder)
            if missing:
                raise UserError(f"{folder}: {', '.join(missing)} (the weights of {path.relative_to(folder)}) "
                                f"{'is' if len(missing) == 1 else 'are'} missing; the export is incomplete, "
                                "build it again")
        return layout

    @property
    def attention_layers(self) -> list[int]:
        return attention_layers(self.layer_types)

    @property
    def conv_layers(self) -> list[int]:
        return conv_layers(self.layer_types)


def _vision_layout(folder: Path, model: dict) -> VisionLayout:
    """The genai config's vision and embedding sections (KeyError/TypeError when malformed)."""
    embedding = Path(model["embedding"]["filename"])
    if not embedding.name.startswith(GENAI_EMBEDDING_PREFIX):
        raise KeyError(f"embedding file {embedding.name} is not {GENAI_EMBEDDING_PREFIX}*.onnx")
    table = embedding.with_name(EMBEDDING_PREFIX + embedding.name[len(GENAI_EMBEDDING_PREFIX):])
    return VisionLayout(encoder_path=folder / model["vision"]["filename"], embed_path=folder / table,
                        image_token_id=int(model["image_token_id"]),
                        merge=int(model["vision"].get("spatial_merge_size", 2)))


def missing_external_data(onnx_path: Path, root: Path) -> list[str]:
    """The external weight files the ONNX file names that are not beside it (paths relative to root)."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    locations = {entry.value for tensor in graph.initializer if tensor.data_location == onnx.TensorProto.EXTERNAL
                 for entry in tensor.external_data if entry.key == "location"}
    paths = [onnx_path.parent / location for location in locations]
    return sorted(str(path.relative_to(root)) for path in paths if not path.is_file())


def cuda_unavailable() -> str | None:
    """Why onnxruntime's CUDA provider can't be used here, with the fix; None when it can."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        return None
    from importlib import metadata

    def installed(name: str) -> bool:
        try:
            metadata.version(name)
            return True
        except metadata.PackageNotFoundError:
            return False

    if installed("onnxruntime"):  # the CPU build owns the module: installing the GPU one beside it breaks both
        genai = " onnxruntime-genai" if installed("onnxruntime-genai") else ""
        return (f"needs onnxruntime-gpu, but the CPU onnxruntime is installed (both install the module onnxruntime): "
                f"pip uninstall -y onnxruntime{genai}, then pip install onnxruntime-gpu"
                + (" onnxruntime-genai-cuda" if genai else ""))
    return "needs onnxruntime-gpu with a CUDA device: pip install onnxruntime-gpu"


def check_ep_flag(ep: str) -> None:
    """A CLI's --ep, refused before anything loads when this environment can't run it."""
    why = cuda_unavailable() if ep == "cuda" else None
    if why:
        raise UserError(f"--ep cuda {why}; or use --ep cpu")


def providers_for(ep: str, layout: ModelLayout, *, cuda_graph: bool = False) -> list:
    import onnxruntime as ort

    if ep == "cuda":
        why = cuda_unavailable()
        if why:
            raise UserError(f"ep='cuda' {why}; or use ep='cpu'")
        if hasattr(ort, "preload_dlls"):
            ort.preload_dlls()  # CUDA/cuDNN from the pip packages, before the first CUDA session
        cuda = {**layout.provider_options.get("cuda", {}), "enable_cuda_graph": "1" if cuda_graph else "0"}
        return [("CUDAExecutionProvider", cuda), "CPUExecutionProvider"]
    if ep == "cpu":
        return ["CPUExecutionProvider"]
    raise UserError(f"unknown execution provider {ep!r}; choose cpu or cuda")


# CPU session settings (benchmarks/cpu_vs_llamacpp.py measures the alternatives; BENCHMARKS.md).
CPU_THREADS: int | None = None  # intra-op threads; None: onnxruntime's default, one per physical core
CPU_SESSION_CONFIG: dict[str, str] = {
    # Worker threads spin at most 100 us between ops, then sleep. Spinning without a bound (the
    # default) is fastest on idle cores but collapses beside other busy processes; not spinning is
    # robust but slower when idle. LFM2-350M q4, 2 threads, decode tokens/s (BENCHMARKS.md):
    # idle 89 / 89 / 78 and beside two busy processes 30 / 39 / 43 (unbounded / 100 us / none).
    "session.intra_op.spin_duration_us": "100",
}
CPU_MEMORY_ARENA = False  # onnxruntime's CPU arena; why it's off: cpu_session_options


# Ops whose CPU kernels need their weights prepacked (MatMulNBits without it: 0.2 tokens/s). MoE
# experts are left as onnxruntime chooses: not measured without prepacking.
PREPACKED_OPS = {"MatMulNBits", "QMoE", "MoE"}


def cpu_session_options(options, prepack: bool) -> None:
    """CPU_THREADS and CPU_SESSION_CONFIG, plus prepacking only where it pays (PREPACKED_OPS).

    Prepacking copies every MatMul weight into MLAS' blocked layout. MatMulNBits can't run without
    it (0.2 tokens/s), but float MatMul can: its one-row decode kernel reads the weights as stored,
    and prefill packs panels on the fly at no measured cost (BENCHMARKS.md), so a float model
    keeps one (memory-mapped) copy of its weights instead of two.
    """
    if CPU_THREADS:
        options.intra_op_num_threads = CPU_THREADS
    # No arena: it keeps the largest prefill's activations for good (about 0.2 MB per prompt token
    # at 350M: +140 MB after a 512-token prompt and a batch); decode steps allocate a few small
    # buffers. Shrinking it after each prefill instead kept 20-40 MB more (BENCHMARKS.md).
    options.enable_cpu_mem_arena = CPU_MEMORY_ARENA
    config = {"session.disable_prepacking": "0" if prepack else "1", **CPU_SESSION_CONFIG}
    for key, value in config.items():
        options.add_session_config_entry(key, value)


class DecoderSessions:
    """The runtime's variants of the folder's decoder (lfm2_onnx.runtime_graphs), one copy of the weights.

    An LFM2-VL folder's decoder gets its embedding table glued in front (runtime_graphs.glue_embeddings:
    every variant takes input_ids plus image_features / image_positions) and `vision` runs its
    vision encoder; text folders have `vision` None.

    `uniform` runs every decode step; `prefill` (the same graph) any prefill whose rows are all
    real tokens; `ragged`, made on first use, prefills right-padded prompts of unequal length.
    With CUDA graphs, `prefill` is a second session without them: in a session that captures,
    uncaptured runs were measured 0.2-0.4 ms slower (BENCHMARKS.md).

    Weights on CUDA are uploaded once by this class and given to every session, so extra sessions
    add no weight memory. On CPU that can't hold: each session prepacks the MatMul/MatMulNBits
    weights it is given into a copy of its own (onnxruntime's Python API can't share prepacked
    weights between sessions), so the CPU keeps one session, `ragged_prefill` is False and callers
    prefill unequal rows one at a time through `prefill` (no padding work either). onnxruntime reads
    the folder's data files itself (memory-mapped) and drops what it prepacked, so a loaded CPU model
    holds about one copy of the weights (BENCHMARKS.md, benchmarks/cpu_memory.py). Two constants
    onnxruntime would otherwise build at load are avoided on CPU: the rotary tables are computed for
    `positions` rows (the KV capacity) rather than the model's context, and reshaped weights are
    declared over the same file bytes (runtime_graphs.external_reshapes_as_views).
    """

    def __init__(self, layout: ModelLayout, ep: str, *, cuda_graph: bool = False, positions: int | None = None):
        from . import runtime_graphs

        self.layout, self.ep, self.cuda_graph = layout, ep, cuda_graph
        self.device = "cuda" if ep == "cuda" else "cpu"
        self._providers = providers_for(ep, layout, cuda_graph=cuda_graph)  # checks the EP before any upload
        try:
            self._folder_graph = runtime_graphs.load(layout.onnx_path)
            if layout.vision is not None:  # its decoder takes inputs_embeds: the embedding table goes in front
                runtime_graphs.glue_embeddings(self._folder_graph, runtime_graphs.load(layout.vision.embed_path))
            if self.device == "cpu":  # what onnxruntime would otherwise copy at load (BENCHMARKS.md, CPU memory)
                runtime_graphs.external_reshapes_as_views(self._folder_graph)
                if positions:
                    runtime_graphs.bound_rotary_tables(self._folder_graph, positions)
            uniform = runtime_graphs.uniform(self._folder_graph)
        except runtime_graphs.NotSpecialisable as e:
            raise UserError(f"{layout.onnx_path}: not an LFM2 decoder this runtime can run ({e})") from None
        except Exception as e:  # a truncated or foreign file
            raise UserError(f"{layout.onnx_path}: can't read the ONNX graph ({e}); build the folder again") from None
        # CPU: no upload; the session maps the files itself (see the class docstring).
        self.weights = {} if self.device == "cpu" else runtime_graphs.upload_weights(self._folder_graph, self.device)
        self.uniform = self._session(uniform, cuda_graph=cuda_graph)
        self.prefill = self._session(uniform, cuda_graph=False) if cuda_graph else self.uniform
        self._ragged = None
        self.vision = VisionEncoder(layout, ep) if layout.vision is not None else None

    @property
    def ragged_prefill(self) -> bool:
        """Whether right-padded prompts of unequal length should prefill through `ragged` together."""
        return self.device != "cpu"

    @property
    def ragged(self):
        if self._ragged is None:
            from . import runtime_graphs

            # No CUDA graphs: this session only prefills, and prefill shapes vary.
            self._ragged = self._session(runtime_graphs.ragged(self._folder_graph), cuda_graph=False)
        return self._ragged

    def helper_session(self, model):
        """A session for a small weightless graph (lfm2_onnx.caches.row_copy_model) on this EP."""
        import onnxruntime as ort

        from . import runtime_graphs

        options = ort.SessionOptions()
        options.log_severity_level = 3
        return ort.InferenceSession(runtime_graphs.serialize(model), options,
                                    providers=providers_for(self.ep, self.layout, cuda_graph=False))

    def _session(self, model, *, cuda_graph: bool):
        import onnxruntime as ort

        from . import runtime_graphs

        options = ort.SessionOptions()
        options.log_severity_level = 3
        # The derived graph comes as bytes; its remaining external data (small tables) is beside the file.
        options.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                         str(self.layout.onnx_path.parent))
        for name, value in self.weights.items():
            options.add_initializer(name, value)
        if self.device == "cpu":
            cpu_session_options(options, prepack=any(n.op_type in PREPACKED_OPS for n in model.graph))
        providers = providers_for(self.ep, self.layout, cuda_graph=cuda_graph)
        return ort.InferenceSession(runtime_graphs.serialize(model), options, providers=providers)


class VisionEncoder:
    """An LFM2-VL folder's vision encoder: the processor's pixel inputs -> one feature row per image token."""

    def __init__(self, layout: ModelLayout, ep: str):
        import onnxruntime as ort

        self.layout, self.hidden_size = layout.vision, layout.hidden_size
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if ep != "cuda":
            cpu_session_options(options, prepack=False)
        path = self.layout.encoder_path
        try:
            # No CUDA graphs: every image batch has its own shape.
            self.session = ort.InferenceSession(str(path), options, providers=providers_for(ep, layout))
        except UserError:
            raise
        except Exception as e:  # a truncated or foreign file
            raise UserError(f"{path}: can't load the vision encoder ({e}); build the folder again") from None
        self._types = {i.name: i.type for i in self.session.get_inputs()}
        self._output_type = self.session.get_outputs()[0].type

    def __call__(self, images) -> np.ndarray:
        """image_features [sum of features_per_entry, hidden] for a ProcessedImages, images in order
        (bfloat16 ones as their raw uint16 words, as lfm2_onnx.caches carries bfloat16)."""
        float_type = {"tensor(float)": np.float32, "tensor(float16)": np.float16}.get(self._types["pixel_values"])
        if float_type is None:
            raise UserError(f"{self.layout.encoder_path.name} takes pixel_values as {self._types['pixel_values']}, "
                            "which this runtime does not feed; build the folder with fp32 or fp16 precision")
        feeds = {"pixel_values": np.ascontiguousarray(images.pixel_values, dtype=float_type),
                 "pixel_attention_mask": np.ascontiguousarray(images.pixel_attention_mask, dtype=np.int64),
                 "spatial_shapes": np.ascontiguousarray(images.spatial_shapes, dtype=np.int64)}
        if self._output_type != "tensor(bfloat16)":
            (features,) = self.session.run(["image_features"], feeds)
            return features
        # numpy has no bfloat16: the features land as raw 16-bit words in a buffer of the known size.
        from onnxruntime import OrtValue

        rows = sum(self.layout.features_per_entry(images.spatial_shapes))
        features = np.empty((rows, self.hidden_size), np.uint16)
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        binding.bind_ortvalue_output("image_features", OrtValue.ortvalue_from_numpy_with_onnx_type(features, 16))
        self.session.run_with_iobinding(binding)
        return features
