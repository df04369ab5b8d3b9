"""LFM2's layer kinds: the names config.json / genai_config.json use in `layer_types`, and which
layer indices are of each kind. The export spec (builder/spec.py) and the runtime's ModelLayout
both read layer_types through here."""

from __future__ import annotations

from collections.abc import Sequence

ATTENTION_LAYER = "full_attention"  # GroupQueryAttention; KV cache past_key_values.<i>.key|value
CONV_LAYER = "conv"  # short causal conv; state past_conv.<i>
LAYER_TYPES = (CONV_LAYER, ATTENTION_LAYER)


def attention_layers(layer_types: Sequence[str]) -> list[int]:
    """Indices of the attention layers, in order."""
    return [i for i, kind in enumerate(layer_types) if kind == ATTENTION_LAYER]


def conv_layers(layer_types: Sequence[str]) -> list[int]:
    """Indices of the conv layers, in order."""
    return [i for i, kind in enumerate(layer_types) if kind == CONV_LAYER]

