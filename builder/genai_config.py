"""genai_config.json: how onnxruntime-genai (and our runtime) finds names, shapes and defaults.

A pure function of the spec, the build options and generation_config.json, so the golden files in
genai_configs/ can be regenerated from config.json alone.
"""

from __future__ import annotations

from .architectures import ARCHITECTURES
from .model import PAST_CONV, PAST_KEY, PAST_VALUE, PRESENT_CONV, PRESENT_KEY, PRESENT_VALUE
from .options import BuildOptions
from .spec import Lfm2Spec

# generation_config.json key -> (genai "search" key, default when the checkpoint says nothing).
# onnxruntime-genai 0.18 rejects unknown search keys, so min_p (in generation_config.json, which
# our runtime reads) has no place here.
_SEARCH_DEFAULTS = {
    "do_sample": ("do_sample", False),
    "temperature": ("temperature", 1.0),
    "top_k": ("top_k", 50),
    "top_p": ("top_p", 1.0),
    "repetition_penalty": ("repetition_penalty", 1.0),
}


def make_genai_config(spec: Lfm2Spec, opts: BuildOptions, generation: dict | None = None, *,
                      onnx_file: str | None = None) -> dict:
    """onnx_file: where the graph is when not at its usual name (BuildOptions.onnx_file_beside)."""
    generation = generation or {}
    provider_options = [] if opts.ep == "cpu" else [{"cuda": {"enable_cuda_graph": "0"}}]
    search = {
        "diversity_penalty": 0.0,
        "early_stopping": True,
        "length_penalty": 1.0,
        "max_length": spec.max_position_embeddings,
        "min_length": 0,
        "no_repeat_ngram_size": 0,
        "num_beams": 1,
        "num_return_sequences": 1,
        "past_present_share_buffer": True,  # GroupQueryAttention updates a shared buffer in place
    }
    for source_key, (key, default) in _SEARCH_DEFAULTS.items():
        value = generation.get(source_key)
        search[key] = default if value is None else value
    eos = list(spec.eos_token_ids)
    return {
        "model": {
            "bos_token_id": spec.bos_token_id,
            "context_length": spec.max_position_embeddings,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": provider_options},
                "filename": onnx_file or opts.onnx_file,
                "head_size": spec.head_dim,
                "hidden_size": spec.hidden_size,
                "inputs": {
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                    "past_key_names": PAST_KEY,
                    "past_value_names": PAST_VALUE,
                    "past_conv_names": PAST_CONV,
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": PRESENT_KEY,
                    "present_value_names": PRESENT_VALUE,
                    "present_conv_names": PRESENT_CONV,
                },
                "num_attention_heads": spec.num_attention_heads,
                "num_hidden_layers": spec.num_layers,
                "num_key_value_heads": spec.num_key_value_heads,
                "layer_types": list(spec.layer_types),
                "conv_cache_size": spec.conv_state_size,
            },
            "eos_token_id": eos[0] if len(eos) == 1 else eos,
            "pad_token_id": spec.pad_token_id,
            "type": ARCHITECTURES[spec.architecture].genai_type,
            "vocab_size": spec.vocab_size,
        },
        "search": dict(sorted(search.items())),
    }
