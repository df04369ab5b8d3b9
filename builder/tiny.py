"""`lfm2-tiny-random`: a small random-weight LFM2 checkpoint, made offline in a second or two.

It has every feature of a real LFM2 checkpoint that the exporter cares about (conv and attention
layers, grouped-query attention, the auto-adjusted SwiGLU width, tied embeddings, LFM2's special
tokens at their real ids, an LFM2-style chat template) at a size that tests can build and run fast.
The tokenizer is a 768-token byte-level BPE bundled in assets/ (see assets/make_tiny_tokenizer.py).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

TINY_ID = "lfm2-tiny-random"
TINY_VL_ID = "lfm2-vl-tiny-random"  # tiny_vl_config: the tiny decoder behind a 2-layer SigLIP2 tower

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
TOKENIZER_ASSET = ASSETS_DIR / "tiny_tokenizer.json"
CHAT_TEMPLATE_ASSET = ASSETS_DIR / "tiny_chat_template.jinja"
VL_CHAT_TEMPLATE_ASSET = ASSETS_DIR / "tiny_vl_chat_template.jinja"  # image parts as <image>, as LFM2-VL's

PAD_TOKEN, BOS_TOKEN, EOS_TOKEN = "<|pad|>", "<|startoftext|>", "<|im_end|>"
PAD_ID, BOS_ID, EOS_ID, ENDOFTEXT_ID = 0, 1, 7, 2  # ids as in the real LFM2 tokenizer

_DEFAULT_LAYER_TYPES = ["conv", "full_attention", "conv", "conv", "full_attention", "conv"]


def bundled_vocab_size() -> int:
    """Vocab size of the bundled tokenizer, special tokens included (the model's vocab_size)."""
    tokenizer = json.loads(TOKENIZER_ASSET.read_text(encoding="utf-8"))
    ids = set(tokenizer["model"]["vocab"].values()) | {t["id"] for t in tokenizer["added_tokens"]}
    return max(ids) + 1


def tiny_config(**overrides) -> dict:
    """config.json dict of the tiny model, with overrides applied.

    Overrides replace keys. A layer_types override also sets num_hidden_layers to its length
    (unless num_hidden_layers is given too, in which case the two must agree).
    """
    config = {
        "model_type": "lfm2",
        "architectures": ["Lfm2ForCausalLM"],
        "vocab_size": bundled_vocab_size(),
        "hidden_size": 64,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_hidden_layers": len(_DEFAULT_LAYER_TYPES),
        "layer_types": list(_DEFAULT_LAYER_TYPES),
        # Real checkpoints use the auto-adjusted width (2/3 of this, rounded up to block_multiple_of);
        # 256 -> 170 -> 192 with a multiple of 32, instead of 256 with LFM2's usual 256.
        "intermediate_size": 256,
        "block_auto_adjust_ff_dim": True,
        "block_ffn_dim_multiplier": 1.0,
        "block_multiple_of": 32,
        "conv_L_cache": 3,
        "conv_bias": False,
        "norm_eps": 1e-5,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
        "max_position_embeddings": 4096,
        # At the usual 0.02 the random logits are nearly flat and greedy decoding repeats one
        # token; 0.1 gives varied output, which makes decode tests meaningful.
        "initializer_range": 0.1,
        "tie_word_embeddings": True,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "pad_token_id": PAD_ID,
        "use_cache": True,
        "dtype": "float32",
    }
    overrides = copy.deepcopy(overrides)
    if "layer_types" in overrides:
        overrides.setdefault("num_hidden_layers", len(overrides["layer_types"]))
    config.update(overrides)
    if len(config["layer_types"]) != config["num_hidden_layers"]:
        raise ValueError(
            f"layer_types lists {len(config['layer_types'])} layers but num_hidden_layers is "
            f"{config['num_hidden_layers']}; override layer_types to change the depth"
        )
    return config


# Lfm2MoeConfig has no block_* fields: its dense layers use intermediate_size as is.
_DENSE_ONLY_KEYS = ("block_auto_adjust_ff_dim", "block_ffn_dim_multiplier", "block_multiple_of")


def tiny_moe_config(**overrides) -> dict:
    """config.json dict of a tiny Lfm2MoeForCausalLM: the tiny model's layers, the first dense, the
    rest routed over 8 small experts (top-2, expert bias, normalised weights), with overrides applied."""
    config = tiny_config()
    for key in _DENSE_ONLY_KEYS:
        del config[key]
    config.update({
        "model_type": "lfm2_moe",
        "architectures": ["Lfm2MoeForCausalLM"],
        "intermediate_size": 128,
        "moe_intermediate_size": 32,
        "num_experts": 8,
        "num_experts_per_tok": 2,
        "num_dense_layers": 1,
        "use_expert_bias": True,
        "norm_topk_prob": True,
        "routed_scaling_factor": 1.0,
        # At 0.1, routed layers damp the signal enough that greedy decoding settles on one token
        # within a few steps for some prompts; 0.2 keeps the output varied.
        "initializer_range": 0.2,
    })
    return tiny_config(**{**config, **overrides})


# The image token of the tiny VL model, and its prompt markup: at LFM2-VL's ids (tiny_vl_tokenizer).
TINY_IMAGE_TOKEN_ID = 396


def vl_special_tokens() -> dict[int, str]:
    """LFM2-VL's image tokens at their ids in LiquidAI's tokenizer: <image>, a marker per tile of a
    grid of up to 10 x 10, the thumbnail, image start / end / split."""
    tiles = [f"<|img_row_{r}_col_{c}|>" for r in range(1, 11) for c in range(1, 11)]
    names = ["<image>", *tiles, "<|img_thumbnail|>", "<|image_start|>", "<|image_end|>", "<|image_split|>"]
    return {TINY_IMAGE_TOKEN_ID + i: name for i, name in enumerate(names)}


def tiny_vl_tokenizer() -> dict:
    """tokenizer.json of the tiny VL model: the bundled tokenizer with vl_special_tokens as special
    added tokens in place of the BPE pieces at those ids (and of every merge that needs one of
    them), so the vocabulary size and every other id stay as they are."""
    tokenizer = json.loads(TOKENIZER_ASSET.read_text(encoding="utf-8"))
    special = vl_special_tokens()
    model = tokenizer["model"]
    # The vocabulary holds added tokens too (tokenizers gives an added token the vocabulary's id for
    # its text): the special names take over their ids from the BPE pieces there.
    vocab = {token: i for token, i in model["vocab"].items() if i not in special}
    vocab.update({name: i for i, name in special.items()})
    model["vocab"] = vocab

    def pair(merge):
        return merge.split(" ", 1) if isinstance(merge, str) else merge

    model["merges"] = [m for m in model["merges"]
                       if all(p in vocab for p in pair(m)) and "".join(pair(m)) in vocab]
    tokenizer["added_tokens"] += [{"id": i, "content": name, "single_word": False, "lstrip": False, "rstrip": False,
                                   "normalized": False, "special": True} for i, name in special.items()]
    return tokenizer


def tiny_vl_config(**overrides) -> dict:
    """config.json dict of a tiny Lfm2VlForConditionalGeneration (transformers' native lfm2_vl
    spelling): the tiny LFM2 decoder as text_config behind a 2-layer SigLIP2 tower, with overrides
    applied to the VL level (text_config/vision_config replace the whole sub-config)."""
    text = tiny_config()
    for key in ("architectures", "bos_token_id", "eos_token_id", "pad_token_id", "dtype"):
        text.pop(key)
    config = {
        "model_type": "lfm2_vl",
        "architectures": ["Lfm2VlForConditionalGeneration"],
        "text_config": text,
        "vision_config": {"model_type": "siglip2_vision_model", "hidden_size": 32, "intermediate_size": 64,
                          "num_hidden_layers": 2, "num_attention_heads": 2, "num_channels": 3,
                          "num_patches": 16, "patch_size": 16, "layer_norm_eps": 1e-6,
                          "hidden_act": "gelu_pytorch_tanh", "vision_use_head": False},
        "image_token_id": TINY_IMAGE_TOKEN_ID,
        "projector_hidden_act": "gelu",
        "projector_hidden_size": 48,
        "projector_bias": True,
        "projector_use_layernorm": True,
        "downsample_factor": 2,
        "tie_word_embeddings": True,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "pad_token_id": PAD_ID,
        "initializer_range": 0.1,
        "dtype": "float32",
    }
    config.update(copy.deepcopy(overrides))
    return config


def tiny_vl_processor_config() -> dict:
    """processor_config.json as transformers 5 saves an Lfm2VlProcessor: the image processor nested."""
    return {
        "processor_class": "Lfm2VlProcessor",
        "image_processor": {
            "image_processor_type": "Lfm2VlImageProcessorFast",
            "do_image_splitting": True, "downsample_factor": 2, "encoder_patch_size": 16,
            "max_image_tokens": 256, "min_image_tokens": 64, "max_num_patches": 1024, "max_tiles": 10,
            "min_tiles": 2, "tile_size": 512, "use_thumbnail": True, "max_pixels_tolerance": 2.0,
            "do_normalize": True, "do_rescale": True, "do_resize": True, "resample": 2,
            "rescale_factor": 1 / 255, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        },
    }


def generation_config() -> dict:
    # The real LFM2 generation_config.json has no sampling defaults, so neither does this one.
    # Both <|im_end|> (end of a chat turn) and <|endoftext|> stop generation.
    return {"bos_token_id": BOS_ID, "eos_token_id": [EOS_ID, ENDOFTEXT_ID], "pad_token_id": PAD_ID}


def _added_tokens_decoder(tokenizer: dict | None = None) -> dict:
    """tokenizer_config.json's view of a tokenizer's added tokens (default: the bundled one), as in LFM2's file."""
    tokenizer = tokenizer or json.loads(TOKENIZER_ASSET.read_text(encoding="utf-8"))
    fields = ("content", "lstrip", "normalized", "rstrip", "single_word", "special")
    return {str(t["id"]): {k: t[k] for k in fields} for t in tokenizer["added_tokens"]}


def tokenizer_config(model_max_length: int, tokenizer: dict | None = None) -> dict:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": _added_tokens_decoder(tokenizer),
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        # The real file says true; false keeps decode(encode(s)) == s for text like "a , b".
        "clean_up_tokenization_spaces": False,
        "extra_special_tokens": {},
        "legacy": False,
        "model_max_length": model_max_length,
        "spaces_between_special_tokens": False,
        "use_default_system_prompt": False,
    }


def special_tokens_map() -> dict:
    def entry(content: str) -> dict:
        return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}

    return {"bos_token": entry(BOS_TOKEN), "eos_token": entry(EOS_TOKEN), "pad_token": entry(PAD_TOKEN)}


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_random_weights(path: Path, config: dict, seed: int) -> None:
    """HF's own random init of the config's architecture under seed, saved as float32 safetensors.

    MoE expert biases, which transformers initialises to zero, get random values: a zero bias
    would leave untested that the bias selects experts without weighting them.
    """
    # Imported here: torch/transformers are export-time dependencies and slow to import.
    import torch
    from safetensors.torch import save_file

    from .architectures import hf_classes

    model_class, config_class = hf_classes(config["architectures"][0])
    torch.manual_seed(seed)
    model = model_class(config_class(**config)).to(torch.float32)
    if config["architectures"][0] == "Lfm2VlForConditionalGeneration":
        # transformers initialises SigLIP2 and the projector with small or zero biases and unit
        # norms; random ones everywhere keep every term of the vision graph under test.
        with torch.no_grad():
            for name, tensor in model.named_parameters():
                if name.startswith(("model.vision_tower", "model.multi_modal_projector")):
                    tensor.normal_(0.0, config["initializer_range"]).add_(1.0 if "norm" in name else 0.0)
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    for name, tensor in state.items():
        if name.endswith(".expert_bias"):
            tensor.normal_(0.0, config["initializer_range"])
    if model.config.tie_word_embeddings:
        # Tied checkpoints store only the embedding, as save_pretrained and real LFM2 ones do.
        del state["lm_head.weight"]
    save_file(state, str(path), metadata={"format": "pt"})


def write_tiny_checkpoint(dest: Path, *, seed: int = 0, moe: bool = False, vl: bool = False, **overrides) -> Path:
    """Write a complete HF checkpoint folder to dest (created if missing) and return dest.

    moe=True: a Lfm2MoeForCausalLM (tiny_moe_config); vl=True: an Lfm2VlForConditionalGeneration
    (tiny_vl_config, with transformers 5's processor_config.json); else the dense Lfm2ForCausalLM."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    config = (tiny_vl_config if vl else tiny_moe_config if moe else tiny_config)(**overrides)
    if vl:
        _write_json(dest / "processor_config.json", tiny_vl_processor_config())
    _write_random_weights(dest / "model.safetensors", config, seed)
    _write_json(dest / "config.json", config)
    _write_json(dest / "generation_config.json", generation_config())
    tokenizer = tiny_vl_tokenizer() if vl else None  # with LFM2-VL's image tokens
    if tokenizer:
        (dest / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False), encoding="utf-8")
    else:
        (dest / "tokenizer.json").write_bytes(TOKENIZER_ASSET.read_bytes())
    max_positions = config.get("max_position_embeddings") or config["text_config"]["max_position_embeddings"]
    _write_json(dest / "tokenizer_config.json", tokenizer_config(max_positions, tokenizer))
    _write_json(dest / "special_tokens_map.json", special_tokens_map())
    # transformers 5 reads the template from chat_template.jinja, not from tokenizer_config.json.
    (dest / "chat_template.jinja").write_bytes((VL_CHAT_TEMPLATE_ASSET if vl else CHAT_TEMPLATE_ASSET).read_bytes())
    return dest
