"""LFM2-VL (Lfm2VlForConditionalGeneration): three graphs and the processor files of one export folder.

Graphs, as transformers.js 4.3.1 names its sessions (LlavaForConditionalGeneration's) and
onnxruntime-genai 0.18's `lfm2_vl` pipeline reads them:
  onnx/vision_encoder{suffix}.onnx        pixel_values, pixel_attention_mask, spatial_shapes -> image_features
  onnx/embed_tokens{suffix}.onnx          input_ids -> inputs_embeds
  onnx/decoder_model_merged{suffix}.onnx  inputs_embeds, attention_mask, caches -> logits, caches
transformers.js puts image_features at the image-token positions of inputs_embeds itself;
onnxruntime-genai's embedding model takes them as an input and merges them:
  onnx/genai_embed_tokens{suffix}.onnx    input_ids, image_features -> inputs_embeds  (embed_tokens' data)
The vision encoder (vision_encoder.py) stays float at the export's activation precision (fp32 on
CPU, fp16 on CUDA for int8/int4), so its features have embed_tokens' dtype.

Tensor names: LiquidAI's remote-code checkpoints and transformers 4.x / 5 save the same weights
under different prefixes; vl_tensor_name presents them all under transformers 5's state_dict names,
with the text model's tensors under the names the LFM2 blocks read (model.layers.*, lm_head.weight).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import onnx_ir as ir

from lfm2_onnx.errors import UserError

from .genai_config import make_genai_config
from .model import build_embed_tokens, build_model
from .options import BuildOptions, file_suffix
from .spec import Lfm2Spec
from .vision_encoder import VisionSpec, build_vision_encoder, vision_expected_shapes
from .weights import Checkpoint

DECODER, EMBED_TOKENS, VISION_ENCODER = "decoder_model_merged", "embed_tokens", "vision_encoder"
# onnxruntime-genai's embedding model: embed_tokens plus the image-feature merge, reading
# embed_tokens' external data file (the table is stored once).
GENAI_EMBEDDING = "genai_embed_tokens"
# onnxruntime-genai's image processor settings; processor_config.json is transformers' (and
# transformers.js's) file of that name, so genai's gets its own.
GENAI_PROCESSOR_CONFIG = "genai_processor_config.json"

# Stored name -> transformers 5 name, first match wins: llava-style top-level prefixes (transformers
# 4.x's Lfm2Vl save format), then SigLIP2's vision_model level, which transformers 5 drops.
_RENAMES = (
    (re.compile(r"^language_model\.lm_head\."), "lm_head."),
    (re.compile(r"^language_model\.model\."), "model.language_model."),
    (re.compile(r"^language_model\."), "model.language_model."),
    (re.compile(r"^vision_tower\."), "model.vision_tower."),
    (re.compile(r"^multi_modal_projector\."), "model.multi_modal_projector."),
)
_VISION_MODEL_LEVEL = re.compile(r"^model\.vision_tower\.vision_model\.")
_TEXT = "model.language_model."


def vl_tensor_name(stored: str) -> str:
    """The name the builder reads a VL checkpoint's tensor under: text tensors as an LFM2 checkpoint
    names them (model.layers.*, model.embed_tokens.weight, lm_head.weight), vision tower and projector
    as transformers 5 does (model.vision_tower.*, model.multi_modal_projector.*)."""
    name = stored
    for pattern, replacement in _RENAMES:
        if pattern.match(name):
            name = pattern.sub(replacement, name, count=1)
            break
    name = _VISION_MODEL_LEVEL.sub("model.vision_tower.", name)
    if name.startswith(_TEXT):
        name = "model." + name[len(_TEXT):]
    return name


def open_checkpoint(folder: Path, spec: Lfm2Spec) -> Checkpoint:
    return Checkpoint(folder, rename=vl_tensor_name if spec.is_vl else None)


def vision_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """The vision tower's and projector's tensors with their shapes, for Checkpoint.validate."""
    return vision_expected_shapes(VisionSpec.from_config(config))


# --- graphs -----------------------------------------------------------------------------------------


def vision_js_dtype(opts: BuildOptions) -> str:
    """The vision encoder's transformers.js dtype: float at the export's activation precision."""
    return BuildOptions(opts.float_precision, opts.ep).js_dtype


def graph_files(opts: BuildOptions, taken: set[str]) -> dict[str, str]:
    """{session: file} of one variant; a file another EP's variant holds gets the EP appended."""
    dtypes = {VISION_ENCODER: vision_js_dtype(opts), EMBED_TOKENS: opts.js_dtype, GENAI_EMBEDDING: opts.js_dtype,
              DECODER: opts.js_dtype}
    files = {}
    for session, dtype in dtypes.items():
        file = f"onnx/{session}{file_suffix(dtype)}.onnx"
        files[session] = file if file not in taken else f"onnx/{session}{file_suffix(dtype)}_{opts.ep}.onnx"
    return files


def js_dtypes(opts: BuildOptions) -> dict[str, str]:
    """transformers.js_config.dtype for a VL variant: one dtype per session."""
    return {VISION_ENCODER: vision_js_dtype(opts), EMBED_TOKENS: opts.js_dtype, DECODER: opts.js_dtype}


def build_graph(session: str, spec: Lfm2Spec, config: dict, ckpt: Checkpoint, opts: BuildOptions) -> ir.Model:
    if session == DECODER:
        return build_model(spec, ckpt, opts, on_embeddings=True)
    if session in (EMBED_TOKENS, GENAI_EMBEDDING):
        return build_embed_tokens(spec, ckpt, opts, image_features=session == GENAI_EMBEDDING)
    return build_vision_encoder(VisionSpec.from_config(config), ckpt, opts)


def share_weights(model: ir.Model, saved: ir.Model) -> None:
    """Point model's initializers at the tensors `saved` was written with (its external data file):
    the genai embedding model reads embed_tokens' table instead of storing a second copy."""
    written = saved.graph.initializers
    for name, value in model.graph.initializers.items():
        if name in written:  # the merge's own small constants stay in the graph
            value.const_value = written[name].const_value


# --- processor files --------------------------------------------------------------------------------

# Keys of a processor config that name remote code or the processor class, not image settings.
_NOT_SETTINGS = ("auto_map", "processor_class", "image_processor_type", "image_processor")


def image_processor_settings(checkpoint: Path, config: dict) -> dict:
    """The image processor's settings from either layout: transformers 5 nests them in
    processor_config.json's image_processor (no preprocessor_config.json); LiquidAI's remote-code
    folders split them over preprocessor_config.json (SigLIP2's resize/normalize) and
    processor_config.json (tiling). Config.json's copies of the tiling keys fill what both lack."""
    settings = {k: config[k] for k in ("downsample_factor", "encoder_patch_size", "max_image_tokens",
                                       "min_image_tokens", "max_num_patches", "max_tiles", "min_tiles",
                                       "tile_size", "use_thumbnail", "do_image_splitting",
                                       "max_pixels_tolerance", "use_image_special_tokens") if k in config}
    for name in ("preprocessor_config.json", "processor_config.json"):
        path = checkpoint / name
        if not path.exists():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{path}: not valid JSON ({e}); download it again") from None
        nested = data.get("image_processor")
        settings.update({k: v for k, v in data.items() if k not in _NOT_SETTINGS})
        if isinstance(nested, dict):
            settings.update({k: v for k, v in nested.items() if k not in _NOT_SETTINGS})
    if not any((checkpoint / n).exists() for n in ("preprocessor_config.json", "processor_config.json")):
        raise UserError(f"{checkpoint}: no processor_config.json or preprocessor_config.json; an LFM2-VL "
                        "checkpoint needs its image processor settings")
    settings.setdefault("encoder_patch_size", settings.get("patch_size", 16))
    settings.setdefault("downsample_factor", config.get("downsample_factor", 2))
    settings.pop("return_tensors", None)  # "pt": transformers' torch tensors, not a setting
    return settings


def processor_files(checkpoint: Path, config: dict) -> dict[str, dict]:
    """{file name: JSON} for the folder: preprocessor_config.json (flat, Lfm2VlImageProcessor: what
    transformers.js's AutoImageProcessor reads), processor_config.json (the Lfm2VlProcessor with its
    image processor nested, as transformers 5 saves it) and onnxruntime-genai's processor config."""
    settings = image_processor_settings(checkpoint, config)
    image_processor = {"image_processor_type": "Lfm2VlImageProcessor", **settings}
    processor = {"processor_class": "Lfm2VlProcessor", "image_processor": image_processor}
    source = checkpoint / "processor_config.json"
    source = json.loads(source.read_text(encoding="utf-8")) if source.exists() else {}
    for key in ("image_token", "image_start_token", "image_end_token", "image_thumbnail"):  # prompt markup
        if key in source:
            processor[key] = source[key]
    return {"preprocessor_config.json": {**image_processor, "processor_class": "Lfm2VlProcessor"},
            "processor_config.json": processor,
            GENAI_PROCESSOR_CONFIG: genai_processor_config(settings)}


_GENAI_INTERPOLATION = {2: "LINEAR", 3: "CUBIC"}  # PIL resample codes


def genai_processor_config(settings: dict) -> dict:
    """onnxruntime-genai's lfm2_vl image pipeline: smart resize within min/max image tokens, rescale,
    normalize, channels first, sizes. It does not tile (images that transformers splits into 512²
    tiles are resized whole instead), so genai's prompts differ from transformers' for large images."""
    patch, merge = settings["encoder_patch_size"], settings["downsample_factor"]
    pixels_per_token = (patch * merge) ** 2
    resample = settings.get("resample", 2)
    if resample not in _GENAI_INTERPOLATION:
        raise UserError(f"image processor: resample={resample!r}; onnxruntime-genai's processor takes 2 (bilinear) "
                        "or 3 (bicubic)")
    tile = settings.get("tile_size", 512)
    op = lambda name, kind, **attrs: {"operation": {"name": name, "type": kind, **({"attrs": attrs} if attrs else {})}}  # noqa: E731
    return {"processor": {"name": "lfm2_vl_image_processor", "transforms": [
        op("decode_image", "DecodeImage", color_space="RGB"),
        op("resize", "Resize", height=tile, width=tile, interpolation=_GENAI_INTERPOLATION[resample], smart_resize=1,
           min_pixels=settings.get("min_image_tokens", 64) * pixels_per_token,
           max_pixels=settings.get("max_image_tokens", 256) * pixels_per_token, patch_size=patch, merge_size=merge),
        op("rescale", "Rescale", rescale_factor=settings.get("rescale_factor", 1 / 255)),
        op("normalize", "Normalize", mean=settings.get("image_mean", [0.5] * 3), std=settings.get("image_std", [0.5] * 3)),
        op("to_channel_first", "Permute3D", dims=[2, 0, 1]),
        op("image_sizes", "PixtralImageSizes"),
    ]}}


# --- genai_config.json ------------------------------------------------------------------------------


def make_vl_genai_config(spec: Lfm2Spec, opts: BuildOptions, generation: dict | None, settings: dict,
                         files: dict[str, str] | None = None) -> dict:
    """The decoder section on inputs_embeds, plus the embedding and vision sections of genai's
    lfm2_vl pipeline (vision inputs under genai's keys: attention_mask, image_sizes)."""
    files = files or graph_files(opts, set())
    genai = make_genai_config(spec, opts, generation, onnx_file=files[DECODER])
    model = genai["model"]
    inputs = model["decoder"]["inputs"]
    model["decoder"]["inputs"] = {"inputs_embeds": "inputs_embeds",
                                  **{k: v for k, v in inputs.items() if k != "input_ids"}}
    session_options = model["decoder"]["session_options"]
    model["embedding"] = {"filename": files[GENAI_EMBEDDING], "inputs": {"input_ids": "input_ids", "image_features": "image_features"},
                          "outputs": {"inputs_embeds": "inputs_embeds"}, "session_options": session_options}
    model["vision"] = {
        "filename": files[VISION_ENCODER],
        "config_filename": GENAI_PROCESSOR_CONFIG,
        "patch_size": settings["encoder_patch_size"],
        "spatial_merge_size": settings["downsample_factor"],
        "max_num_patches": settings.get("max_num_patches", 1024),
        "inputs": {"pixel_values": "pixel_values", "attention_mask": "pixel_attention_mask",
                   "image_sizes": "spatial_shapes"},
        "outputs": {"image_features": "image_features"},
        "session_options": session_options,
    }
    model["image_token_id"] = spec.image_token_id
    genai["model"] = dict(sorted(model.items()))
    return genai


def client_config(config: dict, spec: Lfm2Spec) -> dict:
    """config.json for transformers and transformers.js: transformers' native lfm2_vl spelling
    (no remote code), text_config's layer_types (transformers.js sizes its caches from them)."""
    config = {k: v for k, v in config.items() if k != "auto_map"}
    config["model_type"] = "lfm2_vl"
    config["image_token_id"] = spec.image_token_id
    text = dict(config.get("text_config") or {})
    text["layer_types"] = list(spec.layer_types)
    text.setdefault("model_type", "lfm2")
    config["text_config"] = text
    return config
