"""Assemble the LFM2 decoder graph: I/O contract, shared metadata, the layer stack, the LM head."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from lfm2_onnx import __version__
from lfm2_onnx.layers import ATTENTION_LAYER

from . import blocks
from .graph_builder import GraphBuilder
from .moe import moe
from .options import BuildOptions
from .spec import Lfm2Spec
from .weights import Checkpoint

# The folder contract, shared with genai_config.json and every client.
PAST_KEY, PAST_VALUE, PAST_CONV = "past_key_values.%d.key", "past_key_values.%d.value", "past_conv.%d"
PRESENT_KEY, PRESENT_VALUE, PRESENT_CONV = "present.%d.key", "present.%d.value", "present_conv.%d"

# Lfm2Spec.feed_forward_types -> the block that builds it (their tensors: tensors.FEED_FORWARD_TENSORS).
FEED_FORWARD_BLOCKS = {"mlp": blocks.mlp, "moe": moe}


def build_model(spec: Lfm2Spec, ckpt: Checkpoint, opts: BuildOptions, *, on_embeddings: bool = False) -> ir.Model:
    """The decoder; on_embeddings: it takes inputs_embeds [B, S, hidden] instead of input_ids (LFM2-VL's
    decoder_model_merged, fed by embed_tokens and the vision encoder), same caches and outputs."""
    g = GraphBuilder("lfm2")
    ctx = blocks.Context(g=g, spec=spec, opts=opts, w=blocks.Weights(g, ckpt, opts))
    dtype = opts.io_dtype
    kv_shape = ["batch_size", spec.num_key_value_heads, "past_sequence_length", spec.head_dim]
    present_kv_shape = ["batch_size", spec.num_key_value_heads, "total_sequence_length", spec.head_dim]
    conv_shape = ["batch_size", spec.hidden_size, spec.conv_state_size]

    if on_embeddings:
        inputs_embeds = g.input("inputs_embeds", dtype, ["batch_size", "sequence_length", spec.hidden_size])
        token_shape, tokens = blocks.token_grid_of_embeddings(ctx, inputs_embeds)
    else:
        input_ids = g.input("input_ids", ir.DataType.INT64, ["batch_size", "sequence_length"])
        token_shape, tokens = g.op("Shape", input_ids), input_ids
    attention_mask = g.input("attention_mask", ir.DataType.INT64, ["batch_size", "total_sequence_length"])
    past = {}
    for i, kind in enumerate(spec.layer_types):
        if kind == ATTENTION_LAYER:
            past[i] = (g.input(PAST_KEY % i, dtype, kv_shape), g.input(PAST_VALUE % i, dtype, kv_shape))
        else:
            past[i] = (g.input(PAST_CONV % i, dtype, conv_shape),)

    if spec.attention_layers:
        blocks.attention_metadata(ctx, attention_mask)
        blocks.rotary_caches(ctx)
    if spec.conv_layers:
        blocks.conv_state_index(ctx, token_shape, tokens, attention_mask)

    present = {}
    with g.scope("model"):
        hidden = inputs_embeds if on_embeddings else blocks.embeddings(ctx, input_ids)
        residual, block_out = hidden, None
        for i, kind in enumerate(spec.layer_types):
            with g.scope(f"layers.{i}"):
                prefix = f"model.layers.{i}"
                if block_out is None:
                    normed = blocks.rms_norm(ctx, hidden, f"{prefix}.operator_norm.weight")
                else:
                    normed, residual = blocks.skip_rms_norm(ctx, block_out, residual, f"{prefix}.operator_norm.weight")
                if kind == ATTENTION_LAYER:
                    with g.scope("attn"):
                        mixed, *present[i] = blocks.attention(ctx, i, normed, *past[i])
                else:
                    with g.scope("conv"):
                        mixed, *present[i] = blocks.short_conv(ctx, i, normed, *past[i])
                normed, residual = blocks.skip_rms_norm(ctx, mixed, residual, f"{prefix}.ffn_norm.weight")
                feed_forward = spec.feed_forward_types[i]
                with g.scope(feed_forward):
                    block_out = FEED_FORWARD_BLOCKS[feed_forward](ctx, i, normed)
        with g.scope("final"):
            normed, _ = blocks.skip_rms_norm(ctx, block_out, residual, "model.embedding_norm.weight")
        logits = blocks.lm_head(ctx, normed, token_shape)

    g.output(logits, "logits", opts.logits_dtype, ["batch_size", "sequence_length", spec.vocab_size])
    present_kv_shape_conv = conv_shape
    for i, kind in enumerate(spec.layer_types):
        if kind == ATTENTION_LAYER:
            g.output(present[i][0], PRESENT_KEY % i, dtype, present_kv_shape)
            g.output(present[i][1], PRESENT_VALUE % i, dtype, present_kv_shape)
        else:
            g.output(present[i][0], PRESENT_CONV % i, dtype, present_kv_shape_conv)
    return g.model("lfm2_onnx", __version__)


def build_embed_tokens(spec: Lfm2Spec, ckpt: Checkpoint, opts: BuildOptions, *,
                       image_features: bool = False) -> ir.Model:
    """input_ids -> inputs_embeds: the decoder's embedding on its own (LFM2-VL's embed_tokens graph).

    The table is stored as the decoder stores it: float, or the quantized table GatherBlockQuantized
    reads when the export quantizes its vocabulary tables.
    image_features: also take image_features [T, hidden] and write them over the image-token
    positions, row-major (onnxruntime-genai's lfm2_vl embedding model; transformers.js merges the
    features itself and feeds input_ids only, and neither client sees an input with a default)."""
    g = GraphBuilder("lfm2_embed_tokens")
    ctx = blocks.Context(g=g, spec=spec, opts=opts, w=blocks.Weights(g, ckpt, opts))
    input_ids = g.input("input_ids", ir.DataType.INT64, ["batch_size", "sequence_length"])
    features = g.input("image_features", opts.io_dtype, ["num_image_tokens", spec.hidden_size]) \
        if image_features else None
    with g.scope("model"):
        hidden = blocks.embeddings(ctx, input_ids)
    if features is not None:
        with g.scope("merge_image_features"):
            is_image = g.op("Equal", input_ids, g.const(np.int64(spec.image_token_id)), name="is_image_token")
            positions = g.op("Transpose", g.op("NonZero", is_image), perm=[1, 0], name="image_positions")  # [T, 2]
            hidden = g.op("ScatterND", hidden, positions, features, name="merge")
    g.output(hidden, "inputs_embeds", opts.io_dtype, ["batch_size", "sequence_length", spec.hidden_size])
    return g.model("lfm2_onnx", __version__)
