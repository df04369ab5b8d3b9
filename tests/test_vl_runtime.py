"""The runtime on LFM2-VL folders (session.VisionEncoder, runtime_graphs.glue_embeddings, the engine's
image prefill, Lfm2Model's image chat) against transformers' Lfm2VlForConditionalGeneration.

Pixels come from our processor (bit-identical to transformers', tests/test_vision_processor.py) and
go unchanged to both sides. Transformers follows the runtime's tokens (it is fed the token the
engine chose at each step), so every step's logits compare even where reduced precision flips a
near-tie; in fp32 the engine's tokens must also be transformers' greedy ones.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
ort = pytest.importorskip("onnxruntime")

from lfm2_onnx import engine as engine_module  # noqa: E402
from lfm2_onnx.chat.stream import ContentDelta  # noqa: E402
from lfm2_onnx.builder.parity import THRESHOLDS, PhaseStats, _margin  # noqa: E402
from lfm2_onnx.engine import Engine, Request  # noqa: E402
from lfm2_onnx.errors import UserError  # noqa: E402
from lfm2_onnx.lfm2_model import Lfm2Model  # noqa: E402
from lfm2_onnx.session import DecoderSessions, ModelLayout  # noqa: E402

STEPS = 32
NO_EOS = frozenset()  # random weights: run every step


def _image(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# Varied layouts: upscaled small images, an extreme aspect ratio, a large one split into 512² tiles + thumbnail.
SMALL, SMALL_TWIN, WIDE, OTHER, LARGE = (_image(64, 96, 1), _image(64, 96, 2), _image(40, 400, 3),
                                         _image(300, 200, 4), _image(600, 1100, 5))


def _user(*parts) -> list[dict]:
    """A user message: str parts are text, dicts are content parts as given, anything else an image."""
    content = [{"type": "text", "text": p} if isinstance(p, str) else p if isinstance(p, dict)
               else {"type": "image", "image": p} for p in parts]
    return [{"role": "user", "content": content}]


@pytest.fixture(scope="module")
def vl_checkpoint(factory):
    return factory.checkpoint(vl=True, seed=3)


@pytest.fixture(scope="module")
def reference(vl_checkpoint):
    model = transformers.Lfm2VlForConditionalGeneration.from_pretrained(vl_checkpoint, dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="module")
def model(factory, vl_checkpoint) -> Lfm2Model:
    return Lfm2Model.load(factory.export(vl_checkpoint, "fp32"), max_length=2048)


class Recorded(Request):
    """A greedy request whose scores reach the host every step (the sampler's path), recorded."""

    @property
    def greedy_on_device(self) -> bool:
        return False


def run(engine: Engine, requests: list[Request], record: bool = False) -> dict:
    """Drain these requests; {request: [scores per step]} when recording."""
    scores: dict = {}
    if record:
        pick = engine._pick

        def recording(request, device_token, step_scores, row):
            scores.setdefault(request, []).append(np.array(step_scores[row], np.float32))
            return pick(request, device_token, step_scores, row)

        engine._pick = recording
    try:
        for request in requests:
            engine.add(request)
        while not all(r.finished for r in requests):
            engine.step()
    finally:
        engine.__dict__.pop("_pick", None)
    return scores


def reference_logits(reference, inputs, tokens: list[int]) -> np.ndarray:
    """transformers' last-position logits after the prompt and after each of tokens[:-1]."""
    ids = torch.tensor([inputs.input_ids])
    images = inputs.images
    pixels = {} if images is None else {
        "pixel_values": torch.from_numpy(images.pixel_values),
        "pixel_attention_mask": torch.from_numpy(images.pixel_attention_mask.astype(np.int64)),
        "spatial_shapes": torch.from_numpy(images.spatial_shapes)}
    mask = torch.ones_like(ids)
    with torch.no_grad():
        out = reference(input_ids=ids, attention_mask=mask, use_cache=True, **pixels)
        logits = [out.logits[0, -1].numpy()]
        for token in tokens[:-1]:
            mask = torch.cat([mask, torch.ones((1, 1), dtype=mask.dtype)], dim=1)
            out = reference(input_ids=torch.tensor([[token]]), attention_mask=mask,
                            past_key_values=out.past_key_values, use_cache=True)
            logits.append(out.logits[0, -1].numpy())
    return np.stack(logits)


def judge(theirs: np.ndarray, ours: np.ndarray, precision: str) -> tuple[PhaseStats, PhaseStats]:
    """Prefill and decode phases judged by build --verify's thresholds for the precision."""
    prefill, decode = PhaseStats("prefill"), PhaseStats("decode")
    prefill.add(theirs[:1], ours[:1])
    decode.add(theirs[1:], ours[1:])
    t = THRESHOLDS[precision]
    for phase in (prefill, decode):
        if t["max_abs"] is not None:
            assert phase.max_abs <= t["max_abs"], (phase.label, phase.max_abs)
        assert phase.mean_kl <= t["mean_kl"], (phase.label, phase.mean_kl)
        assert phase.decisive_top1(_margin(t, phase)) >= t["top1"], phase.label
    return prefill, decode


def check_parity(model: Lfm2Model, reference, messages, precision: str) -> None:
    inputs, _ = model.chat_inputs(messages)
    assert inputs.num_image_tokens > 0
    recorded = Recorded(inputs.input_ids, STEPS, eos_token_ids=NO_EOS, images=inputs.images)
    scores = np.stack(run(model.engine, [recorded], record=True)[recorded])
    tokens = recorded.generated
    assert len(tokens) == STEPS and scores.shape[0] == STEPS
    theirs = reference_logits(reference, inputs, tokens)
    judge(theirs, scores, precision)
    # The device's argmax path (decode steps fed on the device, CUDA graphs where on): the same tokens.
    greedy = Request(inputs.input_ids, STEPS, eos_token_ids=NO_EOS, images=inputs.images)
    run(model.engine, [greedy])
    assert greedy.generated == tokens
    if precision == "fp32":
        assert tokens == [int(t) for t in theirs.argmax(-1)]  # transformers' greedy tokens


# --- parity with transformers ------------------------------------------------------------------


@pytest.mark.parametrize("images", [(SMALL,), (WIDE, LARGE)], ids=["one_image", "extreme_and_tiled"])
def test_logits_and_greedy_match_transformers(model, reference, images):
    check_parity(model, reference, _user(*images, "What is in these pictures?"), "fp32")


def test_text_prompt_on_a_vl_folder_matches_transformers(model, reference):
    check_parity_text = [{"role": "user", "content": "Tell me a story."}]
    inputs, _ = model.chat_inputs(check_parity_text)
    assert inputs.images is None
    recorded = Recorded(inputs.input_ids, 8, eos_token_ids=NO_EOS)
    scores = np.stack(run(model.engine, [recorded], record=True)[recorded])
    judge(reference_logits(reference, inputs, recorded.generated), scores, "fp32")


# --- batches and chunks -------------------------------------------------------------------------


def _prompts(model) -> list:
    messages = [_user(SMALL, "Describe it."), _user(SMALL_TWIN, "Describe it."),  # equal lengths
                _user(WIDE, "and", OTHER, "compare them"), [{"role": "user", "content": "No picture here."}],
                _user("First", LARGE)]
    return [model.chat_inputs(m)[0] for m in messages]


def _alone(model, inputs, steps=12) -> list[int]:
    request = Request(inputs.input_ids, steps, eos_token_ids=NO_EOS, images=inputs.images)
    run(model.engine, [request])
    return request.generated


@pytest.fixture(scope="module")
def alone(model):
    return [_alone(model, inputs) for inputs in _prompts(model)]


def _batch(model, prompts, steps=12) -> list[list[int]]:
    requests = [Request(i.input_ids, steps, eos_token_ids=NO_EOS, images=i.images) for i in prompts]
    run(model.engine, requests)
    return [r.generated for r in requests]


def test_image_rows_prefilled_together_equal_single_runs(model, alone, monkeypatch):
    """Equal-length image prompts share one uniform prefill (features row-major over the rows)."""
    prompts = _prompts(model)
    assert len(prompts[0].input_ids) == len(prompts[1].input_ids)
    runs = []
    prefill = model.engine._prefill_uniform
    monkeypatch.setattr(model.engine, "_prefill_uniform", lambda run: runs.append(len(run)) or prefill(run))
    assert _batch(model, prompts[:2]) == alone[:2]
    assert runs == [2]


def test_ragged_batch_of_image_and_text_prompts_equals_single_runs(model, alone, monkeypatch):
    """Different image sizes and counts and a text-only row in one right-padded prefill (the ragged
    graph, which the CPU otherwise leaves to the GPU), then decoded together."""
    monkeypatch.setattr(DecoderSessions, "ragged_prefill", property(lambda self: True))
    runs = []
    ragged = model.engine._prefill_ragged
    monkeypatch.setattr(model.engine, "_prefill_ragged", lambda run: runs.append(len(run)) or ragged(run))
    assert _batch(model, _prompts(model)) == alone
    assert runs == [5]


def test_batch_prefilled_one_by_one_on_cpu_equals_single_runs(model, alone):
    assert _batch(model, _prompts(model)) == alone


def test_chunked_prefill_cuts_through_images(model, alone, monkeypatch):
    """Chunks of 32 positions: image token runs start and end inside chunks; each chunk takes its share."""
    prompts = _prompts(model)
    monkeypatch.setattr(engine_module, "PREFILL_CHUNK", 32)
    image = model.layout.vision.image_token_id
    ids = np.array(prompts[2].input_ids)
    cut = [k for k in range(32, len(ids), 32) if ids[k - 1] == image and ids[k] == image]
    assert cut, "no chunk boundary inside an image's tokens"
    assert _batch(model, [prompts[2]]) == [alone[2]]
    assert _batch(model, [prompts[0], prompts[1]]) == alone[:2]  # two equal rows: chunked one at a time


def test_image_request_joins_running_text_requests(model, alone):
    """A prefill with an image while other requests decode, then all decode together."""
    prompts = _prompts(model)
    text = Request(prompts[3].input_ids, 12, eos_token_ids=NO_EOS)
    model.engine.add(text)
    model.engine.step()
    model.engine.step()
    later = Request(prompts[2].input_ids, 12, eos_token_ids=NO_EOS, images=prompts[2].images)
    run(model.engine, [later])
    while not text.finished:
        model.engine.step()
    assert text.generated == alone[3] and later.generated == alone[2]


# --- Lfm2Model ----------------------------------------------------------------------------------


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_chat_with_an_image_returns_text(model, tmp_path):
    png = _png(SMALL)
    path = tmp_path / "small.png"
    path.write_bytes(png)
    data_url = "data:image/png;base64," + base64.b64encode(png).decode()
    question = "What is in this picture?"
    replies = []
    for source in (SMALL, str(path), png, data_url):
        reply = model.chat(_user({"type": "image", "image": source}, question), max_new_tokens=12)
        assert reply["role"] == "assistant" and isinstance(reply["content"], str) and reply["content"]
        replies.append(reply["content"])
    assert len(set(replies)) == 1  # the same pixels however given
    openai = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url}},
                                           {"type": "text", "text": question}]}]
    assert model.chat(openai, max_new_tokens=12)["content"] == replies[0]
    stream = model.chat(_user(SMALL, question), max_new_tokens=12, stream=True)
    assert "".join(e.text for e in stream if isinstance(e, ContentDelta)) == replies[0] == stream.message["content"]
    # generate takes the same messages; a batch mixes image and text conversations.
    text_only = [{"role": "user", "content": "Hello"}]
    batch = model.generate([_user(SMALL, question), text_only], max_new_tokens=8)
    assert batch[1] == model.generate(text_only, max_new_tokens=8)
    # The token-level API takes the processor's images beside the ids.
    inputs, _ = model.chat_inputs(_user(SMALL, question))
    ids = model.generate_ids([inputs.input_ids], 8, images=[inputs.images])[0]
    assert [int(row[0]) for row in model.steps([inputs.input_ids], 8, images=[inputs.images])] == ids
    assert list(model.stream_ids(inputs.input_ids, 8, images=inputs.images)) == ids


def test_image_tokens_of_the_tiny_tokenizer(model):
    """The tiny VL tokenizer has LFM2-VL's image tokens at their ids, as the config says."""
    codec = model.codec
    assert codec.token_id("<image>") == model.layout.vision.image_token_id == 396
    for name in ("<|image_start|>", "<|image_end|>", "<|img_thumbnail|>", "<|img_row_2_col_3|>"):
        ids = codec.encode(name, add_special_tokens=False)
        assert len(ids) == 1 and codec.decode(ids, skip_special_tokens=False) == name
    inputs, _ = model.chat_inputs(_user(LARGE, "Hi"))
    assert inputs.num_image_tokens == sum(model.layout.vision.features_per_entry(inputs.images.spatial_shapes))


def test_chat_inputs_from_the_folder_alone_equal_the_models(model):
    """vision.chat.vl_chat_inputs on the folder's processor and template (no sessions: what
    benchmarks/vl_generate.py builds before loading) gives what Lfm2Model.chat_inputs gives."""
    from lfm2_onnx.chat import ChatTemplate
    from lfm2_onnx.vision import Lfm2VlProcessor
    from lfm2_onnx.vision.chat import vl_chat_inputs

    folder = model.layout.folder
    processor, template = Lfm2VlProcessor.from_folder(folder), ChatTemplate.from_folder(folder)
    messages = [{"role": "system", "content": "Look closely."}, *_user(WIDE, "and", LARGE, "compare them")]
    ours, started = vl_chat_inputs(processor, template, messages, generation_prefix="They")
    theirs, model_started = model.chat_inputs(messages, generation_prefix="They")
    assert ours.input_ids == theirs.input_ids and started == model_started is False
    assert ours.num_image_tokens == theirs.num_image_tokens > 0
    for name in ("pixel_values", "pixel_attention_mask", "spatial_shapes"):
        np.testing.assert_array_equal(getattr(ours.images, name), getattr(theirs.images, name))


# --- errors -------------------------------------------------------------------------------------


def test_unreadable_image_is_one_line(model):
    with pytest.raises(UserError, match="not a readable image") as error:
        model.chat(_user(b"not an image at all", "Hi"))
    assert "\n" not in str(error.value)
    with pytest.raises(UserError, match="does not exist"):
        model.chat([{"role": "user", "content": [{"type": "image", "image": "/no/such/picture.png"}]}])


def test_too_many_image_tokens_for_the_context(factory, vl_checkpoint):
    small = Lfm2Model.load(factory.export(vl_checkpoint, "fp32"), max_length=256)
    with pytest.raises(UserError, match=r"image\(s\), but at most .* fit the context") as error:
        small.chat(_user(LARGE, "Describe"), max_new_tokens=16)
    assert "\n" not in str(error.value)


def test_image_tokens_must_match_the_images(model):
    inputs = _prompts(model)[0]
    with pytest.raises(UserError, match=r"image token\(s\) .* but its images make"):
        model.engine.add(Request(inputs.input_ids, 4))  # image tokens, no images
    with pytest.raises(UserError, match=r"has 0 image token\(s\)"):
        model.engine.add(Request([1, 5, 9], 4, images=inputs.images))
    with pytest.raises(UserError, match="takes the processor's ProcessedImages"):
        model.engine.add(Request(inputs.input_ids, 4, images=inputs))  # the VlInputs, not its .images
    assert model.engine.idle


def test_text_folder_refuses_images(tiny_export):
    text = Lfm2Model.load(tiny_export, max_length=128)
    inputs_like = type("Images", (), {"spatial_shapes": np.array([[4, 4]])})()
    with pytest.raises(UserError, match="text-only export"):
        text.engine.add(Request([1, 5, 9], 4, images=inputs_like))
    with pytest.raises(UserError, match="text-only export"):
        text.chat(_user(SMALL, "Hi"))


def test_glue_names_what_it_needs(tiny_export, model):
    """The embedding glue refuses, with its reason, a decoder that takes no inputs_embeds."""
    from lfm2_onnx import runtime_graphs

    text = runtime_graphs.load(ModelLayout.from_folder(tiny_export).onnx_path)
    embed = runtime_graphs.load(model.layout.vision.embed_path)
    with pytest.raises(runtime_graphs.NotSpecialisable, match="no inputs_embeds input"):
        runtime_graphs.glue_embeddings(text, embed)
    vl = runtime_graphs.load(model.layout.onnx_path)
    with pytest.raises(runtime_graphs.NotSpecialisable, match="not input_ids -> inputs_embeds"):
        runtime_graphs.glue_embeddings(vl, runtime_graphs.load(model.layout.vision.encoder_path))


def test_missing_vision_encoder_is_named(factory, vl_checkpoint, tmp_path):
    import shutil

    folder = tmp_path / "broken"
    shutil.copytree(factory.export(vl_checkpoint, "fp32"), folder)
    (folder / "onnx" / "vision_encoder.onnx").unlink()
    with pytest.raises(UserError, match=r"onnx/vision_encoder.onnx is missing"):
        ModelLayout.from_folder(folder)


# --- CUDA ---------------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(),
                    reason="needs onnxruntime-gpu and a CUDA device")
@pytest.mark.parametrize("precision", ["fp16", "bf16"])  # CUDA GroupQueryAttention has no fp32
def test_cuda_logits_and_greedy_match_transformers(factory, vl_checkpoint, reference, precision):
    """The same parity on the GPU (CUDA graphs for decode, weights uploaded once; fp16/bf16 judged by
    build --verify's rules for them; bf16 features travel as raw 16-bit words), plus a ragged batch of
    image and text prompts equal to single runs."""
    layout = ModelLayout.from_folder(factory.export(vl_checkpoint, precision, "cuda"))
    gpu = Lfm2Model.from_layout(layout, "cuda", max_length=2048)
    assert gpu.cuda_graph
    for images in ((SMALL,), (WIDE, LARGE)):
        check_parity(gpu, reference, _user(*images, "What is in these pictures?"), precision)
    if precision == "fp16":
        prompts = _prompts(gpu)
        singles = [_alone(gpu, inputs) for inputs in prompts]
        assert _batch(gpu, prompts) == singles


@pytest.mark.parametrize("precision", ["fp16", "int4"])
def test_other_precisions_run_images_on_cpu(factory, vl_checkpoint, reference, precision):
    """fp16 judged against transformers by build --verify's fp16 rule; int4 (GatherBlockQuantized
    table glued in, MatMulNBits decoder, float vision encoder) runs and batches equal single runs."""
    other = Lfm2Model.load(factory.export(vl_checkpoint, precision), max_length=2048)
    if precision == "fp16":
        check_parity(other, reference, _user(WIDE, LARGE, "What is in these pictures?"), "fp16")
    prompts = _prompts(other)
    singles = [_alone(other, inputs, steps=6) for inputs in prompts]
    assert _batch(other, prompts, steps=6) == singles
    assert isinstance(other.chat(_user(SMALL, "Hi"), max_new_tokens=4)["content"], str)


def test_real_lfm2_vl_tokenizer_and_template(factory, tmp_path):
    """LFM2-VL-450M's own tokenizer and chat template (../shared/models) on a tiny random model of its
    vocabulary: image parts render as its template writes them, expand with its markers, and the
    logits match transformers'."""
    import shutil

    from conftest import shared_model
    from lfm2_onnx.builder.tiny import tiny_vl_config

    real = shared_model("LFM2-VL-450M")
    text = tiny_vl_config()["text_config"]
    checkpoint = factory.checkpoint(vl=True, seed=4, text_config={**text, "vocab_size": 65536})
    folder = tmp_path / "real_tokenizer"
    shutil.copytree(factory.export(checkpoint, "fp32"), folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        shutil.copyfile(real / name, folder / name)
    model = Lfm2Model.load(folder, max_length=2048)
    messages = _user(LARGE, "What is in this picture?")
    inputs, _ = model.chat_inputs(messages)
    codec = model.codec
    assert inputs.input_ids[:4] == codec.encode("<|startoftext|><|im_start|>user\n", add_special_tokens=False)
    for marker in ("<|image_start|>", "<|img_row_1_col_1|>", "<|img_row_1_col_2|>", "<|img_thumbnail|>",
                   "<|image_end|>"):
        assert codec.token_id(marker) in inputs.input_ids, marker
    reference = transformers.Lfm2VlForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).eval()
    recorded = Recorded(inputs.input_ids, 8, eos_token_ids=NO_EOS, images=inputs.images)
    scores = np.stack(run(model.engine, [recorded], record=True)[recorded])
    judge(reference_logits(reference, inputs, recorded.generated), scores, "fp32")
    assert isinstance(model.chat(messages, max_new_tokens=4)["content"], str)
