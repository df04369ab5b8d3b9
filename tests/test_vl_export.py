"""LFM2-VL export (builder/vl.py): the decoder on inputs_embeds, embed_tokens, names, configs, the folder.

The decoder is checked against transformers' Lfm2VlForConditionalGeneration fed the same
inputs_embeds (no pixels: its language model and LM head), over a prefill and 32 greedy steps, and
right-padded batches against single runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
ort = pytest.importorskip("onnxruntime")

from conftest import shared_model  # noqa: E402
from lfm2_onnx.builder import vl  # noqa: E402
from lfm2_onnx.builder.model import build_embed_tokens, build_model  # noqa: E402
from lfm2_onnx.builder.options import BuildOptions  # noqa: E402
from lfm2_onnx.builder.spec import load_spec, spec_from_config  # noqa: E402
from lfm2_onnx.builder.tiny import tiny_vl_config, write_tiny_checkpoint  # noqa: E402
from lfm2_onnx.builder.writer import save_with_external_data  # noqa: E402
from lfm2_onnx.errors import UserError  # noqa: E402

STEPS = 32
PROMPT_LENGTHS = (7, 3, 5)


@pytest.fixture(scope="module")
def vl_checkpoint(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("vl") / "ckpt", vl=True, seed=3)


@pytest.fixture(scope="module")
def reference(vl_checkpoint):
    model = transformers.Lfm2VlForConditionalGeneration.from_pretrained(vl_checkpoint, dtype=torch.float32)
    return model.eval()


def _session(model, folder: Path, name: str) -> ort.InferenceSession:
    path = folder / f"{name}.onnx"
    save_with_external_data(model, path, progress=False)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def graphs(vl_checkpoint, tmp_path_factory):
    spec, _, _ = load_spec(vl_checkpoint)
    ckpt = vl.open_checkpoint(vl_checkpoint, spec)
    folder = tmp_path_factory.mktemp("vl_graphs")
    opts = BuildOptions("fp32", "cpu")
    return (spec, _session(build_model(spec, ckpt, opts, on_embeddings=True), folder, "decoder"),
            _session(build_embed_tokens(spec, ckpt, opts), folder, "embed"))


class EmbedsDriver:
    """The decoder_model_merged graph driven with caches, on inputs_embeds."""

    def __init__(self, spec, session):
        self.spec, self.session = spec, session

    def empty(self, batch: int) -> dict:
        s = self.spec
        caches = {}
        for i, kind in enumerate(s.layer_types):
            if kind == "full_attention":
                for part in ("key", "value"):
                    caches[f"past_key_values.{i}.{part}"] = np.zeros(
                        (batch, s.num_key_value_heads, 0, s.head_dim), np.float32)
            else:
                caches[f"past_conv.{i}"] = np.zeros((batch, s.hidden_size, s.conv_state_size), np.float32)
        return caches

    def run(self, embeds: np.ndarray, mask: np.ndarray, caches: dict) -> tuple[np.ndarray, dict]:
        outputs = [o.name for o in self.session.get_outputs()]
        values = dict(zip(outputs, self.session.run(outputs, {"inputs_embeds": embeds, "attention_mask": mask,
                                                              **caches})))
        present = {name.replace("present_conv", "past_conv").replace("present.", "past_key_values."): v
                   for name, v in values.items() if name != "logits"}
        return values["logits"], present


def _prompts(spec, seed=0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(3, spec.vocab_size, size=n) for n in PROMPT_LENGTHS]


def test_embed_tokens_is_the_embedding_table(graphs, reference):
    spec, _, embed = graphs
    ids = np.array([[0, 1, 5, spec.vocab_size - 1], [396, 2, 3, 4]], dtype=np.int64)
    (embeds,) = embed.run(["inputs_embeds"], {"input_ids": ids})
    table = reference.get_input_embeddings().weight.detach().numpy()
    np.testing.assert_array_equal(embeds, table[ids])


def test_genai_embedding_merges_image_features_in_order(vl_checkpoint, reference, tmp_path):
    spec, _, _ = load_spec(vl_checkpoint)
    ckpt = vl.open_checkpoint(vl_checkpoint, spec)
    session = _session(build_embed_tokens(spec, ckpt, BuildOptions("fp32", "cpu"), image_features=True), tmp_path,
                       "genai_embed")
    image = spec.image_token_id
    ids = np.array([[1, image, image, 5, image]], dtype=np.int64)
    features = np.random.default_rng(0).standard_normal((3, spec.hidden_size)).astype(np.float32)
    (embeds,) = session.run(["inputs_embeds"], {"input_ids": ids, "image_features": features})
    table = reference.get_input_embeddings().weight.detach().numpy()
    np.testing.assert_array_equal(embeds[0, [0, 3]], table[[1, 5]])
    np.testing.assert_array_equal(embeds[0, [1, 2, 4]], features)


def test_decoder_on_embeddings_matches_transformers_over_32_steps(graphs, reference):
    spec, decoder, _ = graphs
    driver, table = EmbedsDriver(spec, decoder), reference.get_input_embeddings().weight.detach()
    worst = 0.0
    for prompt in _prompts(spec):
        # Prompt embeddings with a random perturbation: the decoder sees embeddings that are no row
        # of the table, as at image positions.
        embeds = table[torch.tensor(prompt)][None] + 0.1 * torch.randn(1, len(prompt), spec.hidden_size)
        with torch.no_grad():
            out = reference(inputs_embeds=embeds, use_cache=True)
        logits, caches = driver.run(embeds.numpy(), np.ones((1, len(prompt)), np.int64), driver.empty(1))
        worst = max(worst, float(np.abs(logits - out.logits.numpy()).max()))
        past, mask = out.past_key_values, np.ones((1, len(prompt)), np.int64)
        ours, theirs = [], []
        token = int(out.logits[0, -1].argmax())
        our_token = int(logits[0, -1].argmax())
        for _ in range(STEPS):
            theirs.append(token)
            ours.append(our_token)
            step = table[torch.tensor([[token]])]
            mask = np.concatenate([mask, np.ones((1, 1), np.int64)], axis=1)
            with torch.no_grad():
                out = reference(inputs_embeds=step, past_key_values=past, use_cache=True,
                                attention_mask=torch.from_numpy(mask))
            logits, caches = driver.run(step.numpy(), mask, caches)  # teacher-forced: the same token
            worst = max(worst, float(np.abs(logits - out.logits.numpy()).max()))
            past, token, our_token = out.past_key_values, int(out.logits[0, -1].argmax()), int(logits[0, -1].argmax())
        assert ours == theirs
    assert worst <= 1e-4, worst


def test_ragged_batch_rows_equal_single_runs(graphs):
    spec, decoder, embed = graphs
    driver = EmbedsDriver(spec, decoder)
    prompts = _prompts(spec, seed=1)
    width = max(len(p) for p in prompts)
    ids = np.zeros((len(prompts), width), np.int64)
    mask = np.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, :len(prompt)], mask[row, :len(prompt)] = prompt, 1
    (embeds,) = embed.run(["inputs_embeds"], {"input_ids": ids})
    batch_logits, batch_caches = driver.run(embeds, mask, driver.empty(len(prompts)))
    singles = []
    for prompt in prompts:
        (e,) = embed.run(["inputs_embeds"], {"input_ids": prompt[None]})
        singles.append(driver.run(e, np.ones((1, len(prompt)), np.int64), driver.empty(1)))
    for row, (prompt, (logits, _)) in enumerate(zip(prompts, singles)):
        np.testing.assert_allclose(batch_logits[row, :len(prompt)], logits[0], atol=1e-5)
    # Decode steps: each row continues from its own last real token.
    tokens = np.array([[int(logits[0, -1].argmax())] for logits, _ in singles], np.int64)
    for _ in range(4):
        (step,) = embed.run(["inputs_embeds"], {"input_ids": tokens})
        mask = np.concatenate([mask, np.ones((len(prompts), 1), np.int64)], axis=1)
        batch_logits, batch_caches = driver.run(step, mask, batch_caches)
        for row, (logits, caches) in enumerate(singles):
            single_mask = np.ones((1, mask[row].sum()), np.int64)
            singles[row] = driver.run(step[row:row + 1], single_mask, caches)
            np.testing.assert_allclose(batch_logits[row], singles[row][0][0], atol=1e-5)
        tokens = batch_logits[:, -1].argmax(-1)[:, None].astype(np.int64)


@pytest.mark.parametrize("precision", ["fp16", "int8", "int4"])
def test_other_precisions_build_and_run(vl_checkpoint, precision, tmp_path):
    spec, _, _ = load_spec(vl_checkpoint)
    ckpt = vl.open_checkpoint(vl_checkpoint, spec)
    opts = BuildOptions(precision, "cpu", **({"accuracy_level": 1} if precision.startswith("int") else {}))
    embed = _session(build_embed_tokens(spec, ckpt, opts), tmp_path, "embed")
    decoder = _session(build_model(spec, ckpt, opts, on_embeddings=True), tmp_path, "decoder")
    ops = {n.op_type for n in __import__("onnx").load(str(tmp_path / "embed.onnx"), load_external_data=False).graph.node}
    assert ("GatherBlockQuantized" in ops) == precision.startswith("int")
    (embeds,) = embed.run(["inputs_embeds"], {"input_ids": np.array([[1, 5, 9]], np.int64)})
    feeds = EmbedsDriver(spec, decoder).empty(1)
    dtype = np.float16 if precision == "fp16" else np.float32
    feeds = {k: v.astype(dtype) for k, v in feeds.items()}
    (logits,) = decoder.run(["logits"], {"inputs_embeds": embeds, "attention_mask": np.ones((1, 3), np.int64),
                                         **feeds})
    assert logits.shape == (1, 3, spec.vocab_size) and np.isfinite(logits).all()


# --- names and configs ------------------------------------------------------------------------------


@pytest.mark.parametrize("stored, presented", [
    ("model.language_model.layers.0.conv.in_proj.weight", "model.layers.0.conv.in_proj.weight"),
    ("model.language_model.embed_tokens.weight", "model.embed_tokens.weight"),
    ("model.language_model.embedding_norm.weight", "model.embedding_norm.weight"),
    ("lm_head.weight", "lm_head.weight"),
    ("model.vision_tower.encoder.layers.0.mlp.fc1.weight", "model.vision_tower.encoder.layers.0.mlp.fc1.weight"),
    # transformers 4.x / LiquidAI's remote code: SigLIP2's vision_model level
    ("model.vision_tower.vision_model.post_layernorm.weight", "model.vision_tower.post_layernorm.weight"),
    ("model.multi_modal_projector.linear_1.weight", "model.multi_modal_projector.linear_1.weight"),
    # llava-style top-level prefixes
    ("language_model.model.layers.3.ffn_norm.weight", "model.layers.3.ffn_norm.weight"),
    ("language_model.lm_head.weight", "lm_head.weight"),
    ("vision_tower.vision_model.embeddings.patch_embedding.weight",
     "model.vision_tower.embeddings.patch_embedding.weight"),
    ("multi_modal_projector.layer_norm.bias", "model.multi_modal_projector.layer_norm.bias"),
])
def test_vl_tensor_names(stored, presented):
    assert vl.vl_tensor_name(stored) == presented


def _legacy(config: dict) -> dict:
    """The same model in LiquidAI's remote-code spelling (model_type lfm2-vl, old text fields)."""
    text = dict(config["text_config"])
    text["block_dim"] = text.pop("hidden_size")
    text["block_ff_dim"] = text.pop("intermediate_size")
    text["block_norm_eps"] = text.pop("norm_eps")
    text["num_heads"] = text.pop("num_attention_heads")
    text["rope_theta"] = text.pop("rope_parameters")["rope_theta"]
    text.pop("tie_word_embeddings")
    legacy = {k: v for k, v in config.items() if k not in ("image_token_id", "tie_word_embeddings")}
    return {**legacy, "model_type": "lfm2-vl", "image_token_index": config["image_token_id"], "text_config": text}


def test_both_config_spellings_give_one_spec():
    native = tiny_vl_config()
    assert spec_from_config(_legacy(native)) == spec_from_config(native)
    assert spec_from_config(native).image_token_id == native["image_token_id"]


def test_real_config_spec():
    spec, _, _ = load_spec(shared_model("LFM2-VL-450M"))
    assert (spec.architecture, spec.hidden_size, spec.num_layers, spec.vocab_size) == \
        ("Lfm2VlForConditionalGeneration", 1024, 16, 65536)
    assert spec.image_token_id == 396 and spec.tie_word_embeddings


def test_missing_and_misshaped_tensors_are_named(vl_checkpoint, tmp_path):
    from safetensors.torch import load_file, save_file

    spec, _, _ = load_spec(vl_checkpoint)
    state = load_file(vl_checkpoint / "model.safetensors")
    for name in ("config.json", "generation_config.json"):
        (tmp_path / name).write_bytes((vl_checkpoint / name).read_bytes())
    broken = {k: v for k, v in state.items() if k != "model.language_model.layers.1.self_attn.q_proj.weight"}
    save_file(broken, tmp_path / "model.safetensors")
    with pytest.raises(UserError, match=r"missing.*model\.layers\.1\.self_attn\.q_proj\.weight"):
        vl.open_checkpoint(tmp_path, spec).validate(spec)
    state["model.language_model.embedding_norm.weight"] = torch.ones(3)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(UserError, match=r"model\.embedding_norm\.weight is \[3\]"):
        vl.open_checkpoint(tmp_path, spec).validate(spec)


def test_processor_settings_from_both_layouts(vl_checkpoint):
    real = shared_model("LFM2-VL-450M")
    config = json.loads((real / "config.json").read_text())
    legacy = vl.image_processor_settings(real, config)
    native = vl.image_processor_settings(vl_checkpoint, tiny_vl_config())
    for settings in (legacy, native):
        for key in ("encoder_patch_size", "downsample_factor", "tile_size", "max_image_tokens", "image_mean"):
            assert key in settings
    assert legacy["max_tiles"] == 10 and legacy["use_thumbnail"] is False  # processor_config.json's
    assert legacy["image_mean"] == [0.5, 0.5, 0.5]  # preprocessor_config.json's
    files = vl.processor_files(real, config)
    assert files["preprocessor_config.json"]["image_processor_type"] == "Lfm2VlImageProcessor"
    assert "auto_map" not in files["processor_config.json"]


def test_genai_config_sections(vl_checkpoint):
    spec, config, generation = load_spec(vl_checkpoint)
    settings = vl.image_processor_settings(vl_checkpoint, config)
    genai = vl.make_vl_genai_config(spec, BuildOptions("int4", "cpu"), generation, settings)
    model = genai["model"]
    assert model["type"] == "lfm2_vl" and model["image_token_id"] == spec.image_token_id
    assert model["decoder"]["filename"] == "onnx/decoder_model_merged_q4.onnx"
    assert "input_ids" not in model["decoder"]["inputs"] and model["decoder"]["inputs"]["inputs_embeds"]
    assert model["embedding"]["filename"] == "onnx/genai_embed_tokens_q4.onnx"  # embed_tokens + the merge
    assert model["embedding"]["inputs"] == {"input_ids": "input_ids", "image_features": "image_features"}
    assert model["vision"]["filename"] == "onnx/vision_encoder.onnx"  # float for a quantized decoder
    assert model["vision"]["inputs"] == {"pixel_values": "pixel_values", "attention_mask": "pixel_attention_mask",
                                         "image_sizes": "spatial_shapes"}
    assert model["vision"]["config_filename"] == vl.GENAI_PROCESSOR_CONFIG


def test_vl_goldens_are_current():
    from lfm2_onnx.builder.goldens import REPO, goldens

    models = shared_model("LFM2-VL-450M").parent
    files = {rel: text for rel, text in goldens(models).items() if rel.parts[0] == "LFM2-VL-450M"}
    assert files, "no LFM2-VL-450M goldens were generated"
    for rel, text in files.items():
        assert (REPO / "genai_configs" / rel).read_text() == text, rel


# --- the folder ----------------------------------------------------------


def test_folder_layout(vl_checkpoint, tmp_path):
    from lfm2_onnx.builder.export import export

    out = export(vl_checkpoint, tmp_path / "out", [BuildOptions("fp32", "cpu"), BuildOptions("int4", "cpu")],
                 progress=False).folder
    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    for name in ("onnx/decoder_model_merged.onnx", "onnx/embed_tokens.onnx", "onnx/vision_encoder.onnx",
                 "onnx/genai_embed_tokens.onnx", "onnx/genai_embed_tokens_q4.onnx",
                 "onnx/decoder_model_merged_q4.onnx", "onnx/embed_tokens_q4.onnx", "config.json",
                 "genai_config.json", "preprocessor_config.json", "processor_config.json",
                 vl.GENAI_PROCESSOR_CONFIG, "tokenizer.json", "chat_template.jinja", "variants.json"):
        assert name in names, name
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "lfm2_vl" and config["text_config"]["layer_types"]
    assert config["transformers.js_config"]["dtype"] == {"vision_encoder": "fp32", "embed_tokens": "fp32",
                                                         "decoder_model_merged": "fp32"}


def test_whole_model_with_an_image_matches_transformers(vl_checkpoint, reference, tmp_path):
    """Vision encoder -> image features at the image-token positions of embed_tokens' output ->
    decoder, against Lfm2VlForConditionalGeneration on the same pixels (built directly: transformers'
    processor needs torchvision)."""
    from lfm2_onnx.builder.export import export

    out = export(vl_checkpoint, tmp_path / "out", BuildOptions("fp32", "cpu"), progress=False).folder
    sessions = {name: ort.InferenceSession(str(out / "onnx" / f"{name}.onnx"), providers=["CPUExecutionProvider"])
                for name in ("vision_encoder", "embed_tokens", "decoder_model_merged")}
    spec, _, _ = load_spec(vl_checkpoint)
    rng = np.random.default_rng(5)
    grids = [(4, 4), (2, 4)]  # patch rows, columns per image; the second padded to 16 slots
    slots = 16
    pixels = rng.standard_normal((len(grids), slots, 3 * 16 * 16)).astype(np.float32)
    mask = np.zeros((len(grids), slots), np.int64)
    for i, (h, w) in enumerate(grids):
        mask[i, :h * w] = 1
    shapes = np.array(grids, np.int64)
    tokens = sum(h * w // 4 for h, w in grids)
    ids = np.array([[1, 5] + [spec.image_token_id] * 4 + [9, 10] + [spec.image_token_id] * 2 + [11]], np.int64)
    assert (ids == spec.image_token_id).sum() == tokens
    (features,) = sessions["vision_encoder"].run(["image_features"], {"pixel_values": pixels,
                                                                      "pixel_attention_mask": mask,
                                                                      "spatial_shapes": shapes})
    (embeds,) = sessions["embed_tokens"].run(["inputs_embeds"], {"input_ids": ids})
    embeds[ids == spec.image_token_id] = features
    driver = EmbedsDriver(spec, sessions["decoder_model_merged"])
    logits, _ = driver.run(embeds, np.ones_like(ids), driver.empty(1))
    with torch.no_grad():
        expected = reference(input_ids=torch.from_numpy(ids), pixel_values=torch.from_numpy(pixels),
                             pixel_attention_mask=torch.from_numpy(mask),
                             spatial_shapes=torch.from_numpy(shapes)).logits.numpy()
    assert np.abs(logits - expected).max() <= 1e-4
    assert (logits.argmax(-1) == expected.argmax(-1)).all()


class _ShapesOnly:
    """A checkpoint that knows shapes only: graphs are built with lazy weights never loaded."""

    def __init__(self, shapes):
        self.shapes = shapes

    def shape(self, name):
        return self.shapes[name]

    def load(self, name):
        raise AssertionError(f"{name} loaded while only building the graph")


def test_real_shape_graphs_without_weights():
    from collections import Counter

    from lfm2_onnx.builder.tensors import expected_shapes

    spec, _, _ = load_spec(shared_model("LFM2-VL-450M"))
    ckpt = _ShapesOnly(expected_shapes(spec))
    for precision, ep in (("fp32", "cpu"), ("fp16", "cuda"), ("bf16", "cuda"), ("int8", "cuda"), ("int4", "cpu")):
        opts = BuildOptions(precision, ep)
        decoder = build_model(spec, ckpt, opts, on_embeddings=True)
        inputs = [v.name for v in decoder.graph.inputs]
        assert inputs[:2] == ["inputs_embeds", "attention_mask"] and "input_ids" not in inputs
        assert len(inputs) == 2 + len(spec.conv_layers) + 2 * len(spec.attention_layers)
        ops = Counter(n.op_type for n in decoder.graph)
        assert ops["GroupQueryAttention"] == len(spec.attention_layers) == 6
        assert ops["CausalConvWithState"] == len(spec.conv_layers) == 10
        assert ops["Gather"] == 1 and ops["GatherBlockQuantized"] == 0  # no embedding table; Gather: mask width
        projections = 4 * spec.num_layers  # per layer: the mixer's in and out projections, the MLP's w1|w3 and w2
        if opts.bits:
            assert ops["MatMulNBits"] == projections + 1  # + the LM head
        else:
            assert ops["MatMul"] == projections and ops["Gemm"] == 1
        embed = build_embed_tokens(spec, ckpt, opts)
        assert [v.name for v in embed.graph.outputs] == ["inputs_embeds"]
        assert Counter(n.op_type for n in embed.graph)["GatherBlockQuantized" if opts.bits else "Gather"] == 1


# --- clients ----------------------------------------------------------------------------------------


def _write_png(path: Path, pixels: np.ndarray) -> None:
    """An RGB PNG written with zlib alone (onnxruntime-genai decodes image files itself)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    h, w, _ = pixels.shape
    raw = b"".join(b"\x00" + row.tobytes() for row in pixels.astype(np.uint8))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_genai_runs_the_folder_with_an_image_as_transformers_does(tmp_path):
    """onnxruntime-genai 0.18 loads the folder as written and generates from a prompt with an image;
    its greedy tokens equal transformers' on the pixels and ids genai's own processor made (genai's
    processor resizes without tiling and writes no <|image_start|> markup: what differs from
    transformers' processor is the prompt, not the model)."""
    og = pytest.importorskip("onnxruntime_genai")
    import shutil

    real = shared_model("LFM2-VL-450M")  # the tokenizer with LFM2-VL's image tokens
    text = tiny_vl_config()["text_config"]
    checkpoint = write_tiny_checkpoint(tmp_path / "ckpt", vl=True, seed=1, text_config={**text, "vocab_size": 65536})
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        shutil.copyfile(real / name, checkpoint / name)
    from lfm2_onnx.builder.export import export

    out = export(checkpoint, tmp_path / "out", BuildOptions("fp32", "cpu"), progress=False).folder
    _write_png(tmp_path / "image.png", np.random.default_rng(0).integers(0, 256, (64, 96, 3)))
    model = og.Model(str(out))
    tokenizer = og.Tokenizer(model)
    prompt = tokenizer.apply_chat_template(
        messages=json.dumps([{"role": "user", "content": "<image>What is in the picture?"}]), add_generation_prompt=True)
    inputs = model.create_multimodal_processor()(prompt, images=og.Images.open(str(tmp_path / "image.png")))
    ids = inputs["input_ids"].as_numpy().astype(np.int64)
    pixels, sizes = inputs["pixel_values"].as_numpy(), inputs["image_sizes"].as_numpy()
    steps = 16
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=ids.shape[1] + steps, do_sample=False)
    generator = og.Generator(model, params)
    generator.set_inputs(inputs)
    while not generator.is_done():
        generator.generate_next_token()
    genai_tokens = [int(t) for t in generator.get_sequence(0)][ids.shape[1]:]

    spec, _, _ = load_spec(checkpoint)
    assert (ids == spec.image_token_id).sum() == int(np.prod(sizes[0])) // 4 > 0
    mask = np.zeros(pixels.shape[:2], np.int64)
    mask[0, :int(np.prod(sizes[0]))] = 1
    reference = transformers.Lfm2VlForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = reference.generate(input_ids=torch.from_numpy(ids), pixel_values=torch.from_numpy(pixels),
                                      pixel_attention_mask=torch.from_numpy(mask),
                                      spatial_shapes=torch.from_numpy(sizes), max_new_tokens=steps,
                                      do_sample=False)[0, ids.shape[1]:].tolist()
    # genai's sequence stops before an EOS token, transformers' keeps it.
    assert genai_tokens == expected[:len(genai_tokens)]
    assert len(genai_tokens) == steps or expected[len(genai_tokens)] in spec.eos_token_ids


@pytest.mark.parametrize("precision", ["fp32", "int4"])
def test_transformers_js_runs_the_folder_with_images(vl_checkpoint, reference, tmp_path, precision):
    """transformers.js 4.3.1 loads the folder as written (its dtype per session from config.json) and
    generates from a prompt with two images: greedy tokens equal transformers' in fp32; int4 (q4)
    runs its quantized decoder/embed_tokens beside the float vision encoder."""
    import shutil
    import subprocess

    node = shutil.which("node")
    clients = Path(__file__).parent / "clients"
    if node is None or not (clients / "node_modules" / "@huggingface" / "transformers").is_dir():
        pytest.skip("node or transformers.js missing; run tests/clients/install.sh")
    from lfm2_onnx.builder.export import export

    out = export(vl_checkpoint, tmp_path / "out", BuildOptions(precision, "cpu"), progress=False).folder
    spec, _, _ = load_spec(vl_checkpoint)
    rng = np.random.default_rng(7)
    grids, slots = [(4, 4), (2, 4)], 16
    pixels = rng.standard_normal((len(grids), slots, 3 * 16 * 16)).astype(np.float32)
    mask = np.zeros((len(grids), slots), np.int64)
    for i, (h, w) in enumerate(grids):
        mask[i, :h * w] = 1
    image = spec.image_token_id
    ids = [1, 5] + [image] * 4 + [9, 10] + [image] * 2 + [11]
    inputs = {"input_ids": [ids], "pixel_values": {"data": pixels.ravel().tolist(), "dims": list(pixels.shape)},
              "pixel_attention_mask": {"data": mask.ravel().tolist(), "dims": list(mask.shape)},
              "spatial_shapes": {"data": np.ravel(grids).tolist(), "dims": [len(grids), 2]}}
    (tmp_path / "inputs.json").write_text(json.dumps(inputs))
    steps = 16
    result = subprocess.run([node, str(clients / "generate_vl.mjs"), "--model", str(out), "--inputs",
                             str(tmp_path / "inputs.json"), "--max-new-tokens", str(steps)],
                            cwd=clients, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["versions"]["transformers_js"] == "4.3.1"
    generated = report["generated"]
    with torch.no_grad():
        expected = reference.generate(input_ids=torch.tensor([ids]), pixel_values=torch.from_numpy(pixels),
                                      pixel_attention_mask=torch.from_numpy(mask),
                                      spatial_shapes=torch.tensor(grids), max_new_tokens=steps,
                                      do_sample=False)[0, len(ids):].tolist()
    if precision == "fp32":
        assert generated == expected
    else:
        assert len(generated) >= 1 and all(0 <= t < spec.vocab_size for t in generated)


def test_build_verify_checks_text_prompts_through_embed_tokens(tmp_path, capsys):
    """build -m lfm2-vl-tiny-random --verify: the variants' embed_tokens + decoder on text prompts
    against Lfm2VlForConditionalGeneration (int4 against its own dequantized weights)."""
    from lfm2_onnx.build import main
    from lfm2_onnx.variants import read_manifest

    out = tmp_path / "out"
    assert main(["-m", "lfm2-vl-tiny-random", "-p", "fp32,int4", "-o", str(out), "--verify", "--quiet"]) == 0
    assert capsys.readouterr().out.count("PASS") == 2
    verified = {v.name: v.verify for v in read_manifest(out).variants}
    assert verified["cpu-fp32"]["passed"] and verified["cpu-fp32"]["greedy_match"] == [3, 3]
    assert verified["cpu-int4"]["passed"] and verified["cpu-int4"]["judged_against"] == "dequantized weights"


def _legacy_name(name: str) -> str:
    """LiquidAI's remote-code / transformers 4.x layout: SigLIP2's vision_model level kept, and the
    llava-style top-level prefixes."""
    name = name.replace("model.vision_tower.", "vision_tower.vision_model.", 1)
    name = name.replace("model.multi_modal_projector.", "multi_modal_projector.", 1)
    return name.replace("model.language_model.", "language_model.model.", 1)


def test_legacy_checkpoint_builds_the_same_folder(vl_checkpoint, tmp_path):
    """model_type lfm2-vl with old text_config fields, legacy tensor names, and the image settings
    split over preprocessor_config.json + processor_config.json: the same graphs' outputs and the same
    image settings as the native checkpoint."""
    import shutil

    from safetensors.torch import load_file, save_file

    from lfm2_onnx.builder.export import export

    legacy = tmp_path / "legacy"
    shutil.copytree(vl_checkpoint, legacy)
    config = json.loads((vl_checkpoint / "config.json").read_text())
    (legacy / "config.json").write_text(json.dumps(_legacy(config)))
    state = load_file(vl_checkpoint / "model.safetensors")
    save_file({_legacy_name(k): v for k, v in state.items()}, legacy / "model.safetensors")
    nested = json.loads((vl_checkpoint / "processor_config.json").read_text())["image_processor"]
    siglip = ("do_normalize", "do_rescale", "do_resize", "resample", "rescale_factor", "image_mean", "image_std")
    (legacy / "preprocessor_config.json").write_text(json.dumps(
        {"image_processor_type": "Siglip2ImageProcessor", "processor_class": "Lfm2VlProcessor",
         "auto_map": {"AutoProcessor": "processing_lfm2_vl.Lfm2VlProcessor"}, **{k: nested[k] for k in siglip}}))
    (legacy / "processor_config.json").write_text(json.dumps(
        {"processor_class": "Lfm2VlProcessor", **{k: v for k, v in nested.items() if k not in siglip
                                                 and k != "image_processor_type"}}))

    folders = [export(c, tmp_path / name, BuildOptions("fp32", "cpu"), progress=False).folder
               for c, name in ((vl_checkpoint, "native_out"), (legacy, "legacy_out"))]
    for name in ("preprocessor_config.json", "genai_processor_config.json", "genai_config.json"):
        texts = [json.loads((f / name).read_text()) for f in folders]
        assert texts[0] == texts[1], name
    spec, _, _ = load_spec(vl_checkpoint)
    ids = np.array([[1, 5, 9, 10, 11]], np.int64)
    outputs = []
    for folder in folders:
        embed = ort.InferenceSession(str(folder / "onnx/embed_tokens.onnx"), providers=["CPUExecutionProvider"])
        decoder = ort.InferenceSession(str(folder / "onnx/decoder_model_merged.onnx"),
                                       providers=["CPUExecutionProvider"])
        vision = ort.InferenceSession(str(folder / "onnx/vision_encoder.onnx"), providers=["CPUExecutionProvider"])
        driver = EmbedsDriver(spec, decoder)
        (embeds,) = embed.run(["inputs_embeds"], {"input_ids": ids})
        logits, _ = driver.run(embeds, np.ones_like(ids), driver.empty(1))
        pixels = np.random.default_rng(0).standard_normal((1, 16, 768)).astype(np.float32)
        (features,) = vision.run(["image_features"], {"pixel_values": pixels,
                                                     "pixel_attention_mask": np.ones((1, 16), np.int64),
                                                     "spatial_shapes": np.array([[4, 4]], np.int64)})
        outputs.append((logits, features))
    for a, b in zip(*outputs):
        np.testing.assert_array_equal(a, b)
