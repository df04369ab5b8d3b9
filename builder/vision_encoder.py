"""LFM2-VL's vision encoder graph: SigLIP2 NaFlex tower, per-image unpad, pixel unshuffle, projector.

Math as transformers 5's Lfm2VlModel.get_image_features (modeling_lfm2_vl.py) over Siglip2VisionModel
(modeling_siglip2.py); tensor names are transformers 5's state_dict names (`model.vision_tower.*`,
`model.multi_modal_projector.*`). Comments give shapes with N images, L patch slots per image (the
padded width of pixel_values), D the vision hidden size, T image tokens over all images.

Graph I/O, as transformers.js 4.3.1 feeds its `vision_encoder` session (Lfm2VlForConditionalGeneration
extends LlavaForConditionalGeneration: `pick(inputs, session.inputNames)`, output `image_features`):
  pixel_values          float32 [N, L, C*P*P]  patches in (row, column, channel) order, always float32:
                                               transformers.js hands the processor's float32 tensor over
                                               uncast, whatever the export's precision
  pixel_attention_mask  int64   [N, L]         1 for an image's h*w real patches, 0 for padding slots
  spatial_shapes        int64   [N, 2]         (h, w) patch rows and columns of each image
  image_features        io dtype [T, text hidden]  images in order, each image's tokens row-major;
                                               transformers.js copies these bytes into inputs_embeds
                                               as they are, so the dtype must be embed_tokens' output's
onnxruntime-genai 0.18's lfm2_vl pipeline names the vision model's inputs in genai_config.json:
model.vision.inputs takes the keys pixel_values, attention_mask and image_sizes (its config parser
refuses pixel_attention_mask and spatial_shapes as keys), so the folder's genai_config maps
{"pixel_values": "pixel_values", "attention_mask": "pixel_attention_mask", "image_sizes":
"spatial_shapes"} and model.vision.outputs {"image_features": "image_features"}, with
model.vision.patch_size, spatial_merge_size (= downsample_factor) and max_num_patches beside them.
Its C++ processor's messages say it wants the mask and sizes as int64 and pixel_values as float or
float16, and it patchifies to [N, max_num_patches, C*P*P] itself; that it fills image_sizes with
patch rows and columns, as spatial_shapes holds, is for the folder's onnxruntime-genai client test
to confirm (not checked here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
import torch

from lfm2_onnx import __version__
from lfm2_onnx.errors import UserError

from .blocks import Weights
from .graph_builder import GraphBuilder
from .options import BuildOptions
from .weights import to_numpy

VISION_TOWER = "model.vision_tower"
PROJECTOR = "model.multi_modal_projector"

# transformers' ACT2FN names -> the ONNX Gelu approximation computing them.
GELU_APPROXIMATIONS = {"gelu": "none", "gelu_pytorch_tanh": "tanh"}

# Defaults of transformers 5's Siglip2VisionConfig and Lfm2VlConfig, for fields a config leaves out
# (tests/test_vision_encoder.py checks them against the classes).
SIGLIP2_VISION_DEFAULTS = {
    "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
    "num_channels": 3, "patch_size": 16, "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6,
    "vision_use_head": True, "num_patches": 256,
}
LFM2_VL_DEFAULTS = {
    "projector_hidden_act": "gelu", "projector_hidden_size": 2560, "projector_bias": True,
    "projector_use_layernorm": True, "downsample_factor": 2,
}
TEXT_HIDDEN_DEFAULT = 2560  # Lfm2Config.hidden_size
PROJECTOR_NORM_EPS = 1e-5  # the projector's nn.LayerNorm keeps torch's default eps


@dataclass(frozen=True)
class VisionSpec:
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_hidden_layers: int
    num_channels: int
    patch_size: int
    num_patches: int  # position table rows: a square grid of sqrt(num_patches) per side
    layer_norm_eps: float
    hidden_act: str
    use_head: bool  # vision_use_head: the checkpoint holds SigLIP2's pooling head, which LFM2-VL never uses
    downsample_factor: int
    projector_hidden_size: int
    projector_bias: bool
    projector_hidden_act: str
    projector_use_layernorm: bool
    text_hidden_size: int

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def position_grid(self) -> int:
        return math.isqrt(self.num_patches)

    @property
    def patch_dim(self) -> int:
        return self.num_channels * self.patch_size * self.patch_size

    @property
    def projector_in(self) -> int:
        return self.hidden_size * self.downsample_factor ** 2

    @classmethod
    def from_config(cls, config: dict) -> VisionSpec:
        """The vision half of an LFM2-VL config.json (legacy `lfm2-vl` or transformers' `lfm2_vl`)."""
        vision = config.get("vision_config")
        if vision is None:
            vision = {}
        if not isinstance(vision, dict):
            raise UserError("config.json: vision_config must be an object")
        kind = vision.get("model_type", "siglip2_vision_model")
        if kind != "siglip2_vision_model":
            raise UserError(f"config.json: vision_config.model_type is {kind!r}; LFM2-VL's vision tower is "
                            "siglip2_vision_model")
        layer = config.get("vision_feature_layer", -1)
        if layer != -1:
            raise UserError(f"config.json: vision_feature_layer={layer!r}; only -1 (the last layer, followed by "
                            "the post layernorm, as transformers runs it) is supported")
        text = config.get("text_config") or {}
        if not isinstance(text, dict):
            raise UserError("config.json: text_config must be an object")
        v = {**SIGLIP2_VISION_DEFAULTS, **{k: vision[k] for k in SIGLIP2_VISION_DEFAULTS if k in vision}}
        top = {**LFM2_VL_DEFAULTS, **{k: config[k] for k in LFM2_VL_DEFAULTS if k in config}}
        spec = cls(
            hidden_size=_positive_int(v, "hidden_size", "vision_config."),
            intermediate_size=_positive_int(v, "intermediate_size", "vision_config."),
            num_attention_heads=_positive_int(v, "num_attention_heads", "vision_config."),
            num_hidden_layers=_positive_int(v, "num_hidden_layers", "vision_config."),
            num_channels=_positive_int(v, "num_channels", "vision_config."),
            patch_size=_positive_int(v, "patch_size", "vision_config."),
            num_patches=_positive_int(v, "num_patches", "vision_config."),
            layer_norm_eps=_positive_float(v, "layer_norm_eps", "vision_config."),
            hidden_act=_activation(v, "hidden_act", "vision_config."),
            use_head=_bool(v, "vision_use_head", "vision_config."),
            downsample_factor=_positive_int(top, "downsample_factor"),
            projector_hidden_size=_positive_int(top, "projector_hidden_size"),
            projector_bias=_bool(top, "projector_bias"),
            projector_hidden_act=_activation(top, "projector_hidden_act"),
            projector_use_layernorm=_bool(top, "projector_use_layernorm"),
            # Lfm2Config's spelling: hidden_size, or the legacy block_dim
            text_hidden_size=_positive_int({"hidden_size": text.get("hidden_size", text.get(
                "block_dim", TEXT_HIDDEN_DEFAULT))}, "hidden_size", "text_config."),
        )
        if spec.hidden_size % spec.num_attention_heads:
            raise UserError(f"config.json: vision_config.hidden_size={spec.hidden_size} is not a multiple of "
                            f"num_attention_heads={spec.num_attention_heads}")
        if spec.position_grid ** 2 != spec.num_patches:
            raise UserError(f"config.json: vision_config.num_patches={spec.num_patches} is not a square; the "
                            "position table is a square grid")
        return spec


def _positive_int(fields: dict, key: str, where: str = "") -> int:
    value = fields[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"config.json: {where}{key}={value!r}; it must be a positive integer")
    return value


def _positive_float(fields: dict, key: str, where: str = "") -> float:
    value = fields[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise UserError(f"config.json: {where}{key}={value!r}; it must be a positive number")
    return float(value)


def _bool(fields: dict, key: str, where: str = "") -> bool:
    value = fields[key]
    if not isinstance(value, bool):
        raise UserError(f"config.json: {where}{key}={value!r}; it must be true or false")
    return value


def _activation(fields: dict, key: str, where: str = "") -> str:
    value = fields[key]
    if value not in GELU_APPROXIMATIONS:
        raise UserError(f"config.json: {where}{key}={value!r} is not supported; choose one of "
                        f"{', '.join(GELU_APPROXIMATIONS)}")
    return value


# --- tensor table ---------------------------------------------------------------------------------


def _linear_shapes(prefix: str, out_features: int, in_features: int, bias: bool = True) -> dict:
    shapes = {f"{prefix}.weight": (out_features, in_features)}
    if bias:
        shapes[f"{prefix}.bias"] = (out_features,)
    return shapes


def _norm_shapes(prefix: str, size: int) -> dict:
    return {f"{prefix}.weight": (size,), f"{prefix}.bias": (size,)}


def encoder_layer_tensors(spec: VisionSpec, i: int) -> dict[str, tuple[int, ...]]:
    p, d, ff = f"{VISION_TOWER}.encoder.layers.{i}", spec.hidden_size, spec.intermediate_size
    shapes = {**_norm_shapes(f"{p}.layer_norm1", d), **_norm_shapes(f"{p}.layer_norm2", d)}
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
        shapes.update(_linear_shapes(f"{p}.self_attn.{proj}", d, d))
    shapes.update(_linear_shapes(f"{p}.mlp.fc1", ff, d))
    shapes.update(_linear_shapes(f"{p}.mlp.fc2", d, ff))
    return shapes


def pooling_head_tensors(spec: VisionSpec) -> dict[str, tuple[int, ...]]:
    """Siglip2MultiheadAttentionPoolingHead: in the checkpoint when vision_use_head, unused by LFM2-VL."""
    p, d, ff = f"{VISION_TOWER}.head", spec.hidden_size, spec.intermediate_size
    return {f"{p}.probe": (1, 1, d), f"{p}.attention.in_proj_weight": (3 * d, d),
            f"{p}.attention.in_proj_bias": (3 * d,), **_linear_shapes(f"{p}.attention.out_proj", d, d),
            **_norm_shapes(f"{p}.layernorm", d), **_linear_shapes(f"{p}.mlp.fc1", ff, d),
            **_linear_shapes(f"{p}.mlp.fc2", d, ff)}


def vision_expected_shapes(spec: VisionSpec) -> dict[str, tuple[int, ...]]:
    """Every vision tower and projector tensor of a transformers 5 LFM2-VL checkpoint, with its shape."""
    d, e = spec.hidden_size, f"{VISION_TOWER}.embeddings"
    shapes = {**_linear_shapes(f"{e}.patch_embedding", d, spec.patch_dim),
              f"{e}.position_embedding.weight": (spec.num_patches, d)}
    for i in range(spec.num_hidden_layers):
        shapes.update(encoder_layer_tensors(spec, i))
    shapes.update(_norm_shapes(f"{VISION_TOWER}.post_layernorm", d))
    if spec.use_head:
        shapes.update(pooling_head_tensors(spec))
    if spec.projector_use_layernorm:
        shapes.update(_norm_shapes(f"{PROJECTOR}.layer_norm", spec.projector_in))
    shapes.update(_linear_shapes(f"{PROJECTOR}.linear_1", spec.projector_hidden_size, spec.projector_in,
                                 spec.projector_bias))
    shapes.update(_linear_shapes(f"{PROJECTOR}.linear_2", spec.text_hidden_size, spec.projector_hidden_size,
                                 spec.projector_bias))
    return shapes


# --- graph ----------------------------------------------------------------------------------------


@dataclass
class VisionContext:
    g: GraphBuilder
    spec: VisionSpec
    opts: BuildOptions
    w: Weights

    def scalar(self, value: float) -> ir.Value:
        """A scalar constant in the activation dtype."""
        return self.g.const(to_numpy(torch.tensor(value, dtype=torch.float32), self.opts.float_precision))


def build_vision_encoder(spec: VisionSpec, ckpt, opts: BuildOptions) -> ir.Model:
    """pixel_values, pixel_attention_mask, spatial_shapes -> image_features (module docstring)."""
    g = GraphBuilder("lfm2_vl_vision_encoder")
    ctx = VisionContext(g=g, spec=spec, opts=opts, w=Weights(g, ckpt, opts))
    pixel_values = g.input("pixel_values", ir.DataType.FLOAT, ["num_images", "num_patches", spec.patch_dim])
    pixel_mask = g.input("pixel_attention_mask", ir.DataType.INT64, ["num_images", "num_patches"])
    spatial_shapes = g.input("spatial_shapes", ir.DataType.INT64, ["num_images", 2])

    with g.scope("vision_tower"):
        with g.scope("embeddings"):
            hidden = g.op("Add", patch_embeddings(ctx, pixel_values),
                          position_embeddings(ctx, pixel_values, spatial_shapes), name="embeddings")
        bias = attention_bias(ctx, pixel_mask)
        for i in range(spec.num_hidden_layers):
            with g.scope(f"layers.{i}"):
                hidden = encoder_layer(ctx, i, hidden, bias)
        hidden = layer_norm(ctx, hidden, f"{VISION_TOWER}.post_layernorm", spec.layer_norm_eps)
    with g.scope("merge_patches"):
        tokens = unpad_and_unshuffle(ctx, hidden, spatial_shapes)
    with g.scope("projector"):
        features = projector(ctx, tokens)
    g.output(features, "image_features", opts.io_dtype, ["num_image_tokens", spec.text_hidden_size])
    return g.model("lfm2_onnx", __version__)


def _linear(ctx: VisionContext, x: ir.Value, prefix: str, *parts: str, bias: bool = True,
            name: str = "linear") -> ir.Value:
    """x @ W.T + b for `prefix.part` (several parts fuse along the output, e.g. Q|K|V)."""
    names = [f"{prefix}.{p}" for p in parts]
    fused = f"{prefix}.{'_'.join(parts)}" if len(parts) > 1 else names[0]
    y = ctx.g.op("MatMul", x, ctx.w.linear(f"{fused}.weight", *[f"{n}.weight" for n in names]), name=name)
    if bias:
        y = ctx.g.op("Add", y, ctx.w.bias(f"{fused}.bias", *[f"{n}.bias" for n in names]), name=f"{name}_bias")
    return y


def layer_norm(ctx: VisionContext, x: ir.Value, prefix: str, eps: float) -> ir.Value:
    return ctx.g.op("LayerNormalization", x, ctx.w.tensor(f"{prefix}.weight"), ctx.w.tensor(f"{prefix}.bias"),
                    axis=-1, epsilon=eps, name=prefix.rsplit(".", 1)[-1])


def gelu(ctx: VisionContext, x: ir.Value, act: str) -> ir.Value:
    return ctx.g.op("Gelu", x, approximate=GELU_APPROXIMATIONS[act], name="act")


def patch_embeddings(ctx: VisionContext, pixel_values: ir.Value) -> ir.Value:
    """The patch Linear, in the model's dtype (transformers casts pixel_values to the weight's dtype)."""
    if ctx.opts.io_dtype != ir.DataType.FLOAT:
        pixel_values = ctx.g.op("Cast", pixel_values, to=ctx.opts.io_dtype, name="pixels_to_io")
    return _linear(ctx, pixel_values, f"{VISION_TOWER}.embeddings", "patch_embedding", name="patch_embedding")


def position_embeddings(ctx: VisionContext, pixel_values: ir.Value, spatial_shapes: ir.Value) -> ir.Value:
    """The G x G position table resized to each image's (h, w) grid: [N, L, D].

    F.interpolate(mode="bilinear", align_corners=False, antialias=True) is separable: each output
    cell is the table weighted by its row's weights over the G source rows times its column's over
    the G source columns. Those weights are computed here in fp32 from spatial_shapes, op for op as
    transformers' Siglip2VisionEmbeddings.resize_positional_embeddings computes them (a triangle
    filter widened by the downscale factor, normalised), then one MatMul with the fp32 table. Padding
    slots take cell (0, 0)'s embedding, as there (their outputs are dropped later).

    ONNX Resize(mode=linear, antialias=1, half_pixel) is not a substitute: onnxruntime 1.32's kernel
    differs from torch by up to 0.33 on a N(0, 1) 16x16 table when downscaling (e.g. to 7x40), and
    one Resize can't give each image of a batch its own size.
    """
    g, grid = ctx.g, ctx.spec.position_grid
    f32 = ir.DataType.FLOAT
    with g.scope("position"):
        sizes = g.op("Unsqueeze", g.op("Cast", spatial_shapes, to=f32), g.i64(1), name="sizes")  # [N, 1, 2]
        heights, widths = g.op("Split", sizes, g.i64(1, 1), axis=-1, outputs=2, name="split_sizes")  # [N, 1, 1]
        slots = g.op("Gather", g.op("Shape", pixel_values), g.const(np.int64(1)), axis=0, name="slots")
        slot = g.op("Range", g.const(np.float32(0)), g.op("Cast", slots, to=f32), g.const(np.float32(1)))
        slot = g.op("Reshape", slot, g.i64(1, -1, 1), name="slot")  # [1, L, 1]
        rows = g.op("Floor", g.op("Div", slot, widths), name="rows")  # [N, L, 1]
        columns = g.op("Sub", slot, g.op("Mul", rows, widths), name="columns")
        cell = g.op("Concat", rows, columns, axis=-1, name="cell")  # [N, L, 2]
        real = g.op("Cast", g.op("Less", slot, g.op("Mul", heights, widths)), to=f32, name="is_real")
        cell = g.op("Mul", cell, real, name="cell_or_origin")
        scale = g.op("Div", g.const(np.float32(grid)), sizes, name="scale")  # [N, 1, 2]
        support = g.op("Max", scale, g.const(np.float32(1)), name="support")
        center = g.op("Sub", g.op("Mul", g.op("Add", cell, g.const(np.float32(0.5))), scale),
                      g.const(np.float32(0.5)), name="center")
        source = g.const(np.arange(grid, dtype=np.float32))
        distance = g.op("Abs", g.op("Sub", source, g.op("Unsqueeze", center, g.i64(-1))))  # [N, L, 2, G]
        taps = g.op("Max", g.op("Sub", g.const(np.float32(1)),
                                g.op("Div", distance, g.op("Unsqueeze", support, g.i64(-1)))),
                    g.const(np.float32(0)), name="taps")
        taps = g.op("Div", taps, g.op("ReduceSum", taps, g.i64(-1), keepdims=1), name="weights")
        row_taps, column_taps = g.op("Split", taps, g.i64(1, 1), axis=2, outputs=2)  # [N, L, 1, G]
        row_taps = g.op("Reshape", row_taps, g.i64(0, 0, grid, 1))
        weights = g.op("Mul", row_taps, column_taps, name="cell_weights")  # [N, L, G, G]
        weights = g.op("Reshape", weights, g.i64(0, 0, grid * grid))
        table = ctx.w.tensor(f"{VISION_TOWER}.embeddings.position_embedding.weight")  # [G*G, D]
        if ctx.opts.io_dtype != f32:
            table = g.op("Cast", table, to=f32, name="table_fp32")
        resized = g.op("MatMul", weights, table, name="resized")
        if ctx.opts.io_dtype != f32:
            resized = g.op("Cast", resized, to=ctx.opts.io_dtype, name="resized_io")
    return resized


def attention_bias(ctx: VisionContext, pixel_mask: ir.Value) -> ir.Value:
    """[N, 1, 1, L]: 0 at real patches, the dtype's lowest value at padding (keys only), as transformers'
    eager mask; every image has real patches, so no softmax row is all padding."""
    g = ctx.g
    lowest = float(torch.finfo({"fp32": torch.float32, "fp16": torch.float16,
                                "bf16": torch.bfloat16}[ctx.opts.float_precision]).min)
    with g.scope("attention_bias"):
        real = g.op("Cast", pixel_mask, to=ir.DataType.BOOL)
        # Chosen in fp32 (the io dtype's lowest is exact there), then cast: Where has float kernels everywhere.
        bias = g.op("Where", real, g.const(np.float32(0)), g.const(np.float32(lowest)))
        if ctx.opts.io_dtype != ir.DataType.FLOAT:
            bias = g.op("Cast", bias, to=ctx.opts.io_dtype)
        return g.op("Unsqueeze", bias, g.i64(1, 2), name="key_padding_bias")


def encoder_layer(ctx: VisionContext, i: int, hidden: ir.Value, bias: ir.Value) -> ir.Value:
    """Pre-norm residual block: h + attn(ln1(h)), then h + mlp(ln2(h))."""
    g, eps, p = ctx.g, ctx.spec.layer_norm_eps, f"{VISION_TOWER}.encoder.layers.{i}"
    with g.scope("attn"):
        attended = self_attention(ctx, i, layer_norm(ctx, hidden, f"{p}.layer_norm1", eps), bias)
    hidden = g.op("Add", hidden, attended, name="residual_attn")
    with g.scope("mlp"):
        mixed = mlp(ctx, i, layer_norm(ctx, hidden, f"{p}.layer_norm2", eps))
    return g.op("Add", hidden, mixed, name="residual_mlp")


def self_attention(ctx: VisionContext, i: int, h: ir.Value, bias: ir.Value) -> ir.Value:
    """Bidirectional multi-head attention over each image's slots, padding keys masked out.

    Plain ops in the order of transformers' eager_attention_forward: (Q K^T) * scale + bias, softmax,
    then V.
    """
    g, spec = ctx.g, ctx.spec
    p = f"{VISION_TOWER}.encoder.layers.{i}.self_attn"
    d, heads, head_dim = spec.hidden_size, spec.num_attention_heads, spec.head_dim
    qkv = _linear(ctx, h, p, "q_proj", "k_proj", "v_proj", name="qkv_proj")
    q, k, v = g.op("Split", qkv, g.i64(d, d, d), axis=-1, outputs=3, name="split_qkv")
    q, k, v = (g.op("Reshape", t, g.i64(0, 0, heads, head_dim)) for t in (q, k, v))
    q = g.op("Transpose", q, perm=[0, 2, 1, 3], name="q_heads")  # [N, H, L, d]
    k = g.op("Transpose", k, perm=[0, 2, 3, 1], name="k_heads_t")  # [N, H, d, L]
    v = g.op("Transpose", v, perm=[0, 2, 1, 3], name="v_heads")
    scores = g.op("Mul", g.op("MatMul", q, k, name="qk"), ctx.scalar(head_dim ** -0.5), name="scaled")
    probs = g.op("Softmax", g.op("Add", scores, bias, name="masked"), axis=-1, name="softmax")
    out = g.op("Transpose", g.op("MatMul", probs, v, name="pv"), perm=[0, 2, 1, 3])
    out = g.op("Reshape", out, g.i64(0, 0, d), name="merge_heads")
    return _linear(ctx, out, p, "out_proj", name="out_proj")


def mlp(ctx: VisionContext, i: int, h: ir.Value) -> ir.Value:
    p = f"{VISION_TOWER}.encoder.layers.{i}.mlp"
    return _linear(ctx, gelu(ctx, _linear(ctx, h, p, "fc1", name="fc1"), ctx.spec.hidden_act), p, "fc2", name="fc2")


def unpad_and_unshuffle(ctx: VisionContext, hidden: ir.Value, spatial_shapes: ir.Value) -> ir.Value:
    """[N, L, D] -> [T, f*f*D]: each image's real h x w patches, every f x f block one token.

    Token (r, c) of an image with w patch columns concatenates patches (r*f + i, c*f + j) for i, j in
    0..f-1, i major: the channel order of transformers' Lfm2VlMultiModalProjector.pixel_unshuffle.
    Tokens run row-major within an image, images in order; slots past an image's (h/f)*(w/f) tokens
    are dropped (Compress), so the projector only sees real tokens.
    """
    g, f, d = ctx.g, ctx.spec.downsample_factor, ctx.spec.hidden_size
    shape = g.op("Shape", hidden)
    images = g.op("Gather", shape, g.const(np.int64(0)), axis=0, name="images")
    slots = g.op("Gather", shape, g.const(np.int64(1)), axis=0, name="slots")
    heights, widths = g.op("Split", spatial_shapes, g.i64(1, 1), axis=-1, outputs=2)  # [N, 1]
    # A grid narrower than f has no token (transformers would divide by zero); Max keeps the Div safe.
    blocks_per_row = g.op("Max", g.op("Div", widths, g.i64(f)), g.i64(1), name="blocks_per_row")
    tokens = g.op("Mul", g.op("Div", heights, g.i64(f)), g.op("Div", widths, g.i64(f)), name="tokens")
    token = g.op("Range", g.const(np.int64(0)), g.op("Div", slots, g.const(np.int64(f * f))),
                 g.const(np.int64(1)), name="token_slot")
    token = g.op("Unsqueeze", token, g.i64(0))  # [1, L/f^2]
    top = g.op("Mul", g.op("Div", token, blocks_per_row), g.i64(f), name="block_top")  # [N, L/f^2]
    left = g.op("Mul", g.op("Mod", token, blocks_per_row), g.i64(f), name="block_left")
    rows = g.op("Add", g.op("Unsqueeze", top, g.i64(2, 3)), g.const(np.arange(f, dtype=np.int64).reshape(f, 1)))
    columns = g.op("Add", g.op("Unsqueeze", left, g.i64(2, 3)), g.const(np.arange(f, dtype=np.int64)))
    first = g.op("Mul", g.op("Range", g.const(np.int64(0)), images, g.const(np.int64(1))), slots)
    first = g.op("Reshape", first, g.i64(-1, 1, 1, 1), name="image_first_slot")
    row_width = g.op("Unsqueeze", widths, g.i64(2, 3))
    index = g.op("Add", first, g.op("Add", g.op("Mul", rows, row_width), columns), name="patch_index")
    is_token = g.op("Less", token, tokens, name="is_token")  # [N, L/f^2]
    index = g.op("Compress", g.op("Reshape", index, g.i64(-1, f * f)), g.op("Reshape", is_token, g.i64(-1)),
                 axis=0, name="token_patches")  # [T, f*f]
    patches = g.op("Reshape", hidden, g.i64(-1, d), name="all_patches")
    gathered = g.op("Gather", patches, index, axis=0, name="gather_patches")  # [T, f*f, D]
    return g.op("Reshape", gathered, g.i64(-1, f * f * d), name="unshuffled")


def projector(ctx: VisionContext, x: ir.Value) -> ir.Value:
    """[layernorm], linear_1, activation, linear_2: [T, f*f*D] -> [T, text hidden]."""
    spec = ctx.spec
    if spec.projector_use_layernorm:
        x = layer_norm(ctx, x, f"{PROJECTOR}.layer_norm", PROJECTOR_NORM_EPS)
    x = _linear(ctx, x, PROJECTOR, "linear_1", bias=spec.projector_bias, name="linear_1")
    x = gelu(ctx, x, spec.projector_hidden_act)
    return _linear(ctx, x, PROJECTOR, "linear_2", bias=spec.projector_bias, name="linear_2")
