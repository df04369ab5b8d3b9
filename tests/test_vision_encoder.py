"""LFM2-VL's vision encoder graph: spec, tensor table, image features against transformers, I/O contract."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
ort = pytest.importorskip("onnxruntime")

from conftest import shared_model  # noqa: E402
from lfm2_onnx.builder.graph_builder import GraphBuilder  # noqa: E402
from lfm2_onnx.builder.options import BuildOptions  # noqa: E402
from lfm2_onnx.builder.blocks import Weights  # noqa: E402
from lfm2_onnx.builder.vision_encoder import (  # noqa: E402
    LFM2_VL_DEFAULTS, SIGLIP2_VISION_DEFAULTS, TEXT_HIDDEN_DEFAULT, VisionContext, VisionSpec, build_vision_encoder,
    position_embeddings, vision_expected_shapes,
)
from lfm2_onnx.builder.weights import Checkpoint  # noqa: E402
from lfm2_onnx.builder.writer import save_with_external_data  # noqa: E402
from lfm2_onnx.errors import UserError  # noqa: E402

PATCH = 4
TINY_VISION = {"model_type": "siglip2_vision_model", "hidden_size": 32, "intermediate_size": 64,
               "num_hidden_layers": 3, "num_attention_heads": 4, "num_patches": 64, "patch_size": PATCH,
               "vision_use_head": False}
TINY_TEXT = {"model_type": "lfm2", "hidden_size": 48, "intermediate_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512,
             "layer_types": ["conv", "full_attention"]}
# Varied towers and projectors: layer counts (odd ones too), projector layernorm on/off, bias off,
# erf/tanh GELUs swapped, downsample 2 and 3, a non-default layernorm eps and head count.
CONFIGS = {
    "ln_3layers": {},
    "no_ln_1layer": {"vision": {"num_hidden_layers": 1}, "projector_use_layernorm": False},
    "no_bias_swapped_acts": {"vision": {"hidden_act": "gelu", "num_attention_heads": 2, "layer_norm_eps": 1e-5},
                             "projector_bias": False, "projector_hidden_act": "gelu_pytorch_tanh"},
    "downsample3_5layers": {"vision": {"num_hidden_layers": 5, "num_patches": 36}, "downsample_factor": 3},
}
# (rows, columns) patch grids of one batch, by downsample factor: downscaled from the position table
# (antialiased) and upscaled, non-square both ways, tiny, and one not a multiple of the factor (its
# last row and column are dropped, as transformers drops them); all padded past the largest image.
GRIDS = {2: [(4, 6), (10, 12), (2, 2), (6, 4), (2, 14), (5, 7)],
         3: [(3, 6), (9, 12), (3, 3), (6, 3), (3, 15), (7, 5)]}


def tiny_vl_config(**overrides) -> transformers.Lfm2VlConfig:
    vision = {**TINY_VISION, **overrides.pop("vision", {})}
    return transformers.Lfm2VlConfig(vision_config=vision, text_config=dict(TINY_TEXT), projector_hidden_size=40,
                                     **overrides)


def write_tiny_vl_checkpoint(folder, seed=0, **overrides):
    """A transformers-saved LFM2-VL checkpoint whose vision and projector weights are random enough to
    make every feature depend on every block (std 0.1; norm weights around 1; a stronger position table)."""
    torch.manual_seed(seed)
    model = transformers.Lfm2VlForConditionalGeneration(tiny_vl_config(**overrides)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "vision_tower" in name or "multi_modal_projector" in name:
                scale = 0.3 if "position_embedding" in name else 0.1
                p.copy_((1.0 if "norm" in name and name.endswith("weight") else 0.0) + scale * torch.randn_like(p))
    model.save_pretrained(folder)
    return model


def image_batch(grids, patch_dim, slots=None, seed=1):
    """Patches the way the processor lays them out: each image's h*w patches first, zeros after."""
    g = torch.Generator().manual_seed(seed)
    slots = slots or max(h * w for h, w in grids) + 3
    pixels = torch.zeros(len(grids), slots, patch_dim)
    mask = torch.zeros(len(grids), slots, dtype=torch.int64)
    for i, (h, w) in enumerate(grids):
        pixels[i, :h * w] = torch.randn(h * w, patch_dim, generator=g)
        mask[i, :h * w] = 1
    return pixels, mask, torch.tensor(grids, dtype=torch.int64)


def reference_features(model, pixels, mask, shapes) -> np.ndarray:
    with torch.no_grad():
        out = model.model.get_image_features(pixel_values=pixels, spatial_shapes=shapes, pixel_attention_mask=mask)
    return torch.cat(out.pooler_output).float().numpy()


class Encoder:
    """A built vision encoder in an onnxruntime CPU session."""

    def __init__(self, folder, precision="fp32", ep="cpu"):
        self.spec = VisionSpec.from_config(json.loads((folder / "config.json").read_text()))
        self.model = build_vision_encoder(self.spec, Checkpoint(folder), BuildOptions(precision, ep))
        path = folder / f"vision_encoder_{precision}_{ep}.onnx"
        save_with_external_data(self.model, path, progress=False)
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def __call__(self, pixels, mask, shapes) -> np.ndarray:
        feed = {"pixel_values": pixels.numpy(), "pixel_attention_mask": mask.numpy(), "spatial_shapes": shapes.numpy()}
        return self.session.run(["image_features"], feed)[0].astype(np.float32)


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def case(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"vl_{request.param}")
    model = write_tiny_vl_checkpoint(folder, **CONFIGS[request.param])
    return folder, model, Encoder(folder)


# --- spec -----------------------------------------------------------------------------------------


def test_defaults_are_transformers_defaults():
    vision = transformers.Siglip2VisionConfig()
    assert SIGLIP2_VISION_DEFAULTS == {k: getattr(vision, k) for k in SIGLIP2_VISION_DEFAULTS}
    vl = transformers.Lfm2VlConfig()
    assert LFM2_VL_DEFAULTS == {k: getattr(vl, k) for k in LFM2_VL_DEFAULTS}
    assert TEXT_HIDDEN_DEFAULT == transformers.Lfm2Config().hidden_size


def test_legacy_and_native_configs_read_the_same():
    legacy = json.loads((shared_model("LFM2-VL-450M") / "config.json").read_text())
    assert legacy["model_type"] == "lfm2-vl" and "projector_use_layernorm" not in legacy
    spec = VisionSpec.from_config(legacy)
    assert (spec.hidden_size, spec.intermediate_size, spec.num_attention_heads, spec.num_hidden_layers) == \
        (768, 3072, 12, 12)
    assert (spec.patch_size, spec.num_patches, spec.position_grid, spec.patch_dim) == (16, 256, 16, 768)
    assert (spec.downsample_factor, spec.projector_in, spec.projector_hidden_size, spec.text_hidden_size) == \
        (2, 3072, 2560, 1024)
    assert spec.projector_use_layernorm is True  # absent: Lfm2VlConfig's default, as transformers reads it
    assert (spec.hidden_act, spec.projector_hidden_act, spec.layer_norm_eps, spec.use_head) == \
        ("gelu_pytorch_tanh", "gelu", 1e-6, False)
    native = transformers.Lfm2VlConfig(**{k: v for k, v in legacy.items() if k != "model_type"}).to_dict()
    assert native["model_type"] == "lfm2_vl"
    assert VisionSpec.from_config(native) == spec


def _meta_shapes(config: transformers.Lfm2VlConfig) -> dict:
    with torch.device("meta"):
        model = transformers.Lfm2VlForConditionalGeneration(config)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()
            if name.startswith(("model.vision_tower.", "model.multi_modal_projector."))}


def test_tensor_table_is_transformers_state_dict_on_the_real_config():
    legacy = json.loads((shared_model("LFM2-VL-450M") / "config.json").read_text())
    config = transformers.Lfm2VlConfig(**{k: v for k, v in legacy.items() if k != "model_type"})
    assert vision_expected_shapes(VisionSpec.from_config(legacy)) == _meta_shapes(config)


@pytest.mark.parametrize("overrides", [
    {"vision": {"vision_use_head": True}, "projector_use_layernorm": False, "projector_bias": False},
    {"downsample_factor": 3, "vision": {"num_patches": 49, "num_channels": 1}},
])
def test_tensor_table_is_transformers_state_dict(overrides):
    config = tiny_vl_config(**overrides)
    assert vision_expected_shapes(VisionSpec.from_config(config.to_dict())) == _meta_shapes(config)


@pytest.mark.parametrize("change, needle", [
    ({"vision_config": {"model_type": "clip_vision_model"}}, "vision_config.model_type is 'clip_vision_model'"),
    ({"vision_config": {"num_patches": 250}}, "num_patches=250 is not a square"),
    ({"vision_config": {"hidden_size": 30}}, "hidden_size=30 is not a multiple of num_attention_heads=4"),
    ({"vision_config": {"hidden_act": "relu"}}, "vision_config.hidden_act='relu' is not supported"),
    ({"vision_config": {"patch_size": 0}}, "vision_config.patch_size=0; it must be a positive integer"),
    ({"vision_config": {"layer_norm_eps": "small"}}, "layer_norm_eps='small'; it must be a positive number"),
    ({"projector_hidden_act": "silu"}, "projector_hidden_act='silu' is not supported"),
    ({"projector_use_layernorm": "yes"}, "projector_use_layernorm='yes'; it must be true or false"),
    ({"downsample_factor": 0}, "downsample_factor=0; it must be a positive integer"),
    ({"vision_feature_layer": -2}, "vision_feature_layer=-2; only -1"),
    ({"text_config": {"hidden_size": 2.5}}, "text_config.hidden_size=2.5"),
])
def test_bad_fields_are_one_line_errors(change, needle):
    config = tiny_vl_config().to_dict()
    for key, value in change.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) else value
    with pytest.raises(UserError) as e:
        VisionSpec.from_config(config)
    assert needle in str(e.value) and "\n" not in str(e.value)


# --- graph against transformers -------------------------------------------------------------------


def test_image_features_match_transformers(case):
    """Several images of different grids in one batch, padded slots included, fp32 to 1e-4."""
    folder, model, encoder = case
    pixels, mask, shapes = image_batch(GRIDS[encoder.spec.downsample_factor], encoder.spec.patch_dim)
    expected = reference_features(model, pixels, mask, shapes)
    got = encoder(pixels, mask, shapes)
    f = encoder.spec.downsample_factor
    assert got.shape == expected.shape == (sum((h // f) * (w // f) for h, w in GRIDS[f]), encoder.spec.text_hidden_size)
    assert np.abs(expected).max() > 0.5  # features that a wrong block would visibly change
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_one_unpadded_image_and_batch_independence(case):
    """An image alone without padding slots gives the features it gets inside a padded batch."""
    folder, model, encoder = case
    pixels, mask, shapes = image_batch(GRIDS[encoder.spec.downsample_factor], encoder.spec.patch_dim)
    batch = encoder(pixels, mask, shapes)
    f = encoder.spec.downsample_factor
    start = 0
    for i, (h, w) in enumerate(GRIDS[f]):
        count = (h // f) * (w // f)
        alone = encoder(pixels[i:i + 1, :h * w], mask[i:i + 1, :h * w], shapes[i:i + 1])
        np.testing.assert_allclose(alone, reference_features(model, pixels[i:i + 1, :h * w], mask[i:i + 1, :h * w],
                                                             shapes[i:i + 1]), rtol=0, atol=1e-4)
        np.testing.assert_allclose(alone, batch[start:start + count], rtol=0, atol=1e-5)
        start += count


def test_padding_slots_do_not_matter(case):
    folder, model, encoder = case
    pixels, mask, shapes = image_batch(GRIDS[encoder.spec.downsample_factor], encoder.spec.patch_dim)
    noisy = pixels + 100.0 * (1 - mask[..., None])
    np.testing.assert_array_equal(encoder(noisy, mask, shapes), encoder(pixels, mask, shapes))


def test_position_resize_is_antialiased_bilinear_interpolate():
    """The in-graph resize of the 16x16 table equals transformers' resize_positional_embeddings and
    F.interpolate(bilinear, align_corners=False, antialias=True): downscaled (where antialiasing
    matters), upscaled, extreme aspect ratios, 1x1.

    torch's CPU antialias kernel is not symmetric for an output one column wide (h x 1 differs from
    the transpose of 1 x h by up to 0.8 here); transformers computes the separable weights itself, and
    the graph with it, so h x 1 is compared with the transposed call. The processor never makes a
    grid narrower than 2 patches.
    """
    from transformers.models.siglip2.modeling_siglip2 import Siglip2VisionEmbeddings

    grid, dim = 16, 8
    table = torch.randn(grid * grid, dim, generator=torch.Generator().manual_seed(3))
    sizes = [(1, 1), (1, 32), (32, 1), (3, 5), (8, 24), (16, 16), (32, 32), (7, 40), (13, 11), (64, 4), (2, 2)]
    spec = VisionSpec.from_config({"vision_config": {"hidden_size": dim, "num_attention_heads": 1}})

    class OneTensor:
        def shape(self, name):
            return tuple(table.shape)

        def load(self, name):
            return table

    g = GraphBuilder("position")
    ctx = VisionContext(g=g, spec=spec, opts=BuildOptions(), w=Weights(g, OneTensor(), BuildOptions()))
    pixels = g.input("pixel_values", ir.DataType.FLOAT, ["n", "slots", 1])
    shapes = g.input("spatial_shapes", ir.DataType.INT64, ["n", 2])
    g.output(position_embeddings(ctx, pixels, shapes), "resized", ir.DataType.FLOAT, ["n", "slots", dim])
    session = ort.InferenceSession(ir.to_proto(g.model("test", "0")).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    slots = max(h * w for h, w in sizes) + 5
    resized = session.run(None, {"pixel_values": np.zeros((len(sizes), slots, 1), np.float32),
                                 "spatial_shapes": np.array(sizes, np.int64)})[0]
    transformers_resized = Siglip2VisionEmbeddings.resize_positional_embeddings(
        table.reshape(grid, grid, dim), torch.tensor(sizes), slots).numpy()
    np.testing.assert_allclose(resized, transformers_resized, rtol=0, atol=1e-6)  # padding slots included

    def interpolate(image, size):
        return torch.nn.functional.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)

    image = table.reshape(grid, grid, dim).permute(2, 0, 1)[None]  # [1, D, G, G]
    for i, (h, w) in enumerate(sizes):
        if w > 1:
            expected = interpolate(image, (h, w))
        else:
            expected = interpolate(image.transpose(2, 3), (w, h)).transpose(2, 3)
        expected = expected[0].permute(1, 2, 0).reshape(h * w, dim)
        np.testing.assert_allclose(resized[i, :h * w], expected.numpy(), rtol=0, atol=1e-6, err_msg=f"{h}x{w}")


def test_fp16_features_close_to_fp32(tmp_path):
    """fp16 weights and activations (position weights and the resize stay fp32): measured against
    transformers fp32 on the GRIDS batch, max |diff| 1.6e-3 for features up to ~2 (cosine 0.9999998)."""
    model = write_tiny_vl_checkpoint(tmp_path)
    pixels, mask, shapes = image_batch(GRIDS[2], TINY_VISION["patch_size"] ** 2 * 3)
    expected = reference_features(model, pixels, mask, shapes)
    got = Encoder(tmp_path, "fp16")(pixels, mask, shapes)
    cosine = (got * expected).sum() / np.linalg.norm(got) / np.linalg.norm(expected)
    assert cosine > 0.99999
    assert np.abs(got - expected).max() < 5e-3 * max(1.0, np.abs(expected).max())


# --- I/O contract ---------------------------------------------------------------------------------


@pytest.mark.parametrize("precision, ep, io", [
    ("fp32", "cpu", ir.DataType.FLOAT), ("fp16", "cpu", ir.DataType.FLOAT16), ("fp16", "cuda", ir.DataType.FLOAT16),
    ("bf16", "cuda", ir.DataType.BFLOAT16),
    # Quantized exports keep the vision encoder float: their activation precision (fp32 cpu, fp16 cuda).
    ("int8", "cpu", ir.DataType.FLOAT), ("int4", "cpu", ir.DataType.FLOAT), ("int4", "cuda", ir.DataType.FLOAT16),
])
def test_io_contract_is_what_transformers_js_feeds(tmp_path, precision, ep, io):
    write_tiny_vl_checkpoint(tmp_path)
    spec = VisionSpec.from_config(json.loads((tmp_path / "config.json").read_text()))
    model = build_vision_encoder(spec, Checkpoint(tmp_path), BuildOptions(precision, ep))
    graph = model.graph
    inputs = {v.name: (v.dtype, list(v.shape)) for v in graph.inputs}
    assert inputs == {
        "pixel_values": (ir.DataType.FLOAT, ["num_images", "num_patches", spec.patch_dim]),
        "pixel_attention_mask": (ir.DataType.INT64, ["num_images", "num_patches"]),
        "spatial_shapes": (ir.DataType.INT64, ["num_images", 2]),
    }
    assert [(v.name, v.dtype, list(v.shape)) for v in graph.outputs] == \
        [("image_features", io, ["num_image_tokens", spec.text_hidden_size])]
    assert not any(n.op_type in ("MatMulNBits", "GatherBlockQuantized") for n in graph)
    weights = {v.const_value.dtype for v in graph.initializers.values() if v.name.startswith("model.")}
    assert weights == {io}
    onnx.checker.check_model(ir.to_proto(model), full_check=True)  # strict types: bf16 can't run on this CPU


def test_quantized_precision_runs_the_float_graph(case):
    folder, model, encoder = case
    pixels, mask, shapes = image_batch(GRIDS[encoder.spec.downsample_factor], encoder.spec.patch_dim)
    np.testing.assert_array_equal(Encoder(folder, "int4")(pixels, mask, shapes), encoder(pixels, mask, shapes))


def _transformers_unshuffles_any_grid() -> bool:
    """transformers 5.17 (seen on the H200 image) refuses a patch grid that isn't a multiple of the
    downsample factor in Lfm2VlMultiModalProjector ("shape ... is invalid"); 5.24 pads it, as we do."""
    from packaging.version import Version

    return Version(transformers.__version__) >= Version("5.24")


@pytest.mark.cuda
@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(),
                    reason="needs onnxruntime-gpu and a CUDA device")
@pytest.mark.skipif(not _transformers_unshuffles_any_grid(),
                    reason="the reference needs transformers >= 5.24 (older Lfm2Vl refuses grids not a multiple "
                           "of the downsample factor)")
@pytest.mark.parametrize("precision", ["fp16", "int4"])  # bf16: benchmarks/vision_encoder.py reads it
def test_cuda_features_close_to_transformers(case, precision):
    """On the GPU, int4 exports included (their vision encoder is fp16 there)."""
    folder, model, encoder = case
    pixels, mask, shapes = image_batch(GRIDS[encoder.spec.downsample_factor], encoder.spec.patch_dim)
    expected = reference_features(model, pixels, mask, shapes)
    built = build_vision_encoder(encoder.spec, Checkpoint(folder), BuildOptions(precision, "cuda"))
    path = folder / f"vision_encoder_{precision}_cuda_run.onnx"
    save_with_external_data(built, path, progress=False)
    session = ort.InferenceSession(str(path), providers=["CUDAExecutionProvider"])
    got = session.run(None, {"pixel_values": pixels.numpy(), "pixel_attention_mask": mask.numpy(),
                             "spatial_shapes": shapes.numpy()})[0].astype(np.float32)
    cosine = (got * expected).sum() / np.linalg.norm(got) / np.linalg.norm(expected)
    assert cosine > 0.99999
    assert np.abs(got - expected).max() < 5e-3 * max(1.0, np.abs(expected).max())


def test_transformers_js_runtime_runs_it(case):
    """transformers.js 4.3.1's bundled onnxruntime-node, fed as its Lfm2VlImageProcessor feeds (float32
    pixels, int64 mask and shapes), loads the graph and computes the same features."""
    import shutil
    import subprocess
    from pathlib import Path

    clients = Path(__file__).parent / "clients"
    node = shutil.which("node")
    if node is None or not (clients / "node_modules" / "@huggingface" / "transformers").is_dir():
        pytest.skip("needs node and tests/clients/install.sh (transformers.js)")
    folder, model, encoder = case
    pixels, mask, shapes = image_batch(GRIDS[encoder.spec.downsample_factor], encoder.spec.patch_dim)
    inputs = {name: {"dims": list(t.shape), "data": t.flatten().tolist()}
              for name, t in {"pixel_values": pixels, "pixel_attention_mask": mask, "spatial_shapes": shapes}.items()}
    (folder / "js_inputs.json").write_text(json.dumps(inputs))
    result = subprocess.run([node, str(clients / "vision_encoder.mjs"), "--model",
                             str(folder / "vision_encoder_fp32_cpu.onnx"), "--inputs", str(folder / "js_inputs.json")],
                            cwd=clients, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["versions"]["transformers_js"] == "4.3.1"
    assert report["inputNames"] == ["pixel_values", "pixel_attention_mask", "spatial_shapes"]
    assert report["outputNames"] == ["image_features"] and report["type"] == "float32"
    got = np.array(report["data"], dtype=np.float32).reshape(report["dims"])
    np.testing.assert_allclose(got, reference_features(model, pixels, mask, shapes), rtol=0, atol=1e-4)
