"""lfm2_onnx.vision without the transformers reference: image sources, settings from both config layouts,
prompt expansion's structure, and the one-line errors."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import shared_model
from PIL import Image

from lfm2_onnx.errors import UserError
from lfm2_onnx.text import TextCodec
from lfm2_onnx.vision import ImageProcessorSettings, Lfm2VlImageProcessor, Lfm2VlProcessor, load_image
from lfm2_onnx.vision.resize import resize


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def rgb():
    return np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)


def test_every_source_gives_the_same_pixels(tmp_path, rgb):
    image = Image.fromarray(rgb)
    data = _png_bytes(image)
    (tmp_path / "a.png").write_bytes(data)
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    for source in (rgb, image, data, bytearray(data), str(tmp_path / "a.png"), tmp_path / "a.png", url):
        out = load_image(source)
        assert out.dtype == np.uint8 and out.shape == (37, 53, 3)
        np.testing.assert_array_equal(out, rgb)


def test_grayscale_and_alpha_become_rgb(rgb):
    gray = rgb[:, :, 0]
    np.testing.assert_array_equal(load_image(gray), np.repeat(gray[:, :, None], 3, axis=2))
    np.testing.assert_array_equal(load_image(gray[:, :, None]), load_image(gray))
    opaque = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
    np.testing.assert_array_equal(load_image(opaque), rgb)  # alpha 255 changes nothing
    clear = opaque.copy()
    clear[..., 3] = 0
    assert (load_image(clear) == 255).all()  # fully transparent: the white background
    rgba = Image.fromarray(clear, "RGBA")
    assert (load_image(rgba) == 255).all()


def test_exif_orientation_is_applied(rgb):
    image = Image.fromarray(rgb)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif, quality=95)
    assert load_image(buffer.getvalue()).shape == (53, 37, 3)


@pytest.mark.parametrize("source, words", [
    ("https://example.com/cat.png", "never fetched"),
    ("http://example.com/cat.png", "never fetched"),
    ("/no/such/image.png", "does not exist"),
    (b"not an image at all", "not a readable image"),
    ("data:image/png;base64,@@@", "not valid base64"),
    ("data:image/png,rawdata", "base64-encoded"),
    (np.zeros((4, 4, 3), np.float32), "must be uint8"),
    (np.zeros((4, 4, 2), np.uint8), "channels"),
    (np.zeros((0, 4, 3), np.uint8), "no pixels"),
    (12345, "must be a path"),
])
def test_bad_images_are_one_line_errors(source, words):
    with pytest.raises(UserError) as info:
        load_image(source)
    message = str(info.value)
    assert words in message and "\n" not in message


def test_unreadable_file_names_the_file(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(UserError, match="broken.png.*not a readable image"):
        load_image(tmp_path / "broken.png")


def test_resize_identity_and_constant():
    image = np.random.default_rng(1).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    np.testing.assert_array_equal(resize(image, 40, 30), image)
    flat = np.full((90, 70, 3), 200, np.uint8)
    for resample in (2, 3):  # normalised weights keep a constant image constant, up and down
        assert (resize(flat, 33, 250, resample) == 200).all()


def test_settings_from_the_legacy_pair():
    folder = shared_model("LFM2-VL-450M")
    s = ImageProcessorSettings.from_folder(folder)
    # processor_config.json's tiling settings over the class defaults, preprocessor_config.json's normalisation
    assert (s.use_thumbnail, s.min_tiles, s.max_tiles, s.tile_size, s.max_image_tokens) == (False, 2, 10, 512, 256)
    assert (s.image_mean, s.image_std, s.resample, s.use_image_special_tokens) == ((0.5,) * 3, (0.5,) * 3, 2, True)
    assert s.max_num_patches == 1024


def test_settings_from_transformers_5_nested_config(tmp_path):
    (tmp_path / "processor_config.json").write_text(json.dumps({
        "image_processor": {"image_processor_type": "Lfm2VlImageProcessor", "use_thumbnail": True, "max_tiles": 4,
                            "resample": 3, "image_mean": [0.4, 0.5, 0.6], "max_image_tokens": 128},
        "processor_class": "Lfm2VlProcessor", "use_image_special_tokens": False}))
    s = ImageProcessorSettings.from_folder(tmp_path)
    assert (s.use_thumbnail, s.max_tiles, s.resample, s.image_mean, s.use_image_special_tokens) == (
        True, 4, 3, (0.4, 0.5, 0.6), False)
    assert s.max_num_patches == 1024  # max(128 * 4, (512 / 16)^2)


@pytest.mark.parametrize("files, words", [
    ({}, "neither processor_config.json nor preprocessor_config.json"),
    ({"processor_config.json": "{not json"}, "cannot be read"),
    ({"processor_config.json": json.dumps({"image_processor": {"resample": 1}})}, "resample 1 is not supported"),
    ({"processor_config.json": json.dumps({"min_tiles": 5, "max_tiles": 2})}, "min_tiles 5 > max_tiles 2"),
])
def test_bad_settings_are_one_line_errors(tmp_path, files, words):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(UserError, match=words):
        ImageProcessorSettings.from_folder(tmp_path)


@pytest.fixture
def vl_processor():
    folder = shared_model("LFM2-VL-450M")
    return Lfm2VlProcessor.from_folder(folder, TextCodec(folder))


def test_placeholder_structure(vl_processor):
    image = np.zeros((1500, 2000, 3), np.uint8)
    processed = vl_processor.image_processor([image])
    rows, cols = processed.rows[0], processed.cols[0]
    assert rows * cols > 1 and processed.entries == [rows * cols]  # split; no thumbnail in LFM2-VL-450M
    text = vl_processor.expand("<image>", processed)
    assert text.startswith("<|image_start|><|img_row_1_col_1|>" + "<image>" * 256 + "<|img_row_1_col_2|>")
    assert text.endswith(f"<|img_row_{rows}_col_{cols}|>" + "<image>" * 256 + "<|image_end|>")
    assert "<|img_thumbnail|>" not in text
    small = vl_processor.image_processor([np.zeros((64, 64, 3), np.uint8)])
    # 64 x 64 grows to the minimum of 64 tokens: 256 x 256 pixels, 16 x 16 patches, 8 x 8 tokens
    assert small.sizes == [(256, 256)] and small.spatial_shapes.tolist() == [[16, 16]]
    assert vl_processor.expand("a<image>b", small) == "a<|image_start|>" + "<image>" * 64 + "<|image_end|>b"


def test_marker_count_must_match_images(vl_processor):
    with pytest.raises(UserError, match=r"2 <image> marker\(s\) but 1 image\(s\)"):
        vl_processor("<image><image>", [np.zeros((32, 32, 3), np.uint8)])
    with pytest.raises(UserError, match=r"0 <image> marker\(s\) but 1 image\(s\)"):
        vl_processor("no marker", [np.zeros((32, 32, 3), np.uint8)])


def test_too_many_image_tokens_for_the_context(vl_processor):
    inputs = vl_processor("<image>", [np.zeros((1500, 2000, 3), np.uint8)])
    with pytest.raises(UserError) as info:
        vl_processor("<image>", [np.zeros((1500, 2000, 3), np.uint8)], max_tokens=len(inputs.input_ids) - 1)
    assert f"{inputs.num_image_tokens} of them for 1 image(s)" in str(info.value)
    assert "max_length" in str(info.value) and "\n" not in str(info.value)


def test_tokenizer_without_image_tokens_is_refused(tiny_checkpoint):
    with pytest.raises(UserError, match="no <image>"):
        Lfm2VlProcessor(Lfm2VlImageProcessor(), TextCodec(tiny_checkpoint))


def test_vision_imports_no_torch():
    code = "import sys, lfm2_onnx.vision; assert not {'torch', 'torchvision', 'transformers'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_split_image_parts_in_prompt_order(rgb):
    from lfm2_onnx.vision.chat import has_image_parts, split_image_parts

    url = "data:image/png;base64," + base64.b64encode(_png_bytes(Image.fromarray(rgb))).decode()
    messages = [
        {"role": "system", "content": "plain"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image", "image": rgb},
                                     {"type": "image_url", "image_url": {"url": url}}]},
        {"role": "user", "content": [{"type": "image", "path": "/x.png"}, {"type": "image_url", "image_url": url},
                                     {"type": "image", "url": "data:b"}]},
    ]
    assert has_image_parts(messages) and not has_image_parts(messages[:1])
    template_messages, images = split_image_parts(messages)
    assert images[0] is rgb and images[1:] == [url, "/x.png", url, "data:b"]
    assert template_messages[0] == messages[0]
    assert template_messages[1]["content"] == [{"type": "text", "text": "a"}, {"type": "image"}, {"type": "image"}]
    assert template_messages[2]["content"] == [{"type": "image"}] * 3
    assert messages[1]["content"][1]["image"] is rgb  # the caller's messages are left as they were


@pytest.mark.parametrize("part, words", [
    ({"type": "image"}, r"messages\[0\]\.content\[0\]: an image part needs its image"),
    ({"type": "image_url", "image_url": {}}, r"messages\[0\]\.content\[0\]: an image_url part needs"),
    ({"type": "image_url"}, "an image_url part needs"),
])
def test_image_parts_without_an_image(part, words):
    from lfm2_onnx.vision.chat import split_image_parts

    with pytest.raises(UserError, match=words):
        split_image_parts([{"role": "user", "content": [part]}])


def test_decompression_bombs_are_refused(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # PIL refuses beyond twice this
    big = _png_bytes(Image.new("RGB", (20, 20)))
    with pytest.raises(UserError, match="too large to decode safely"):
        load_image(big)


def test_image_token_is_the_models(vl_processor):
    # the token the processor expands is the one whose embeddings the model replaces by image features
    config = json.loads((shared_model("LFM2-VL-450M") / "config.json").read_text())
    assert vl_processor.image_token_id == config["image_token_index"] == 396


def test_processor_feeds_the_exported_vision_encoder(factory):
    """The processor's arrays run the exported vision encoder (tiny random LFM2-VL, lfm2_onnx.build), one
    feature per <image> token the prompt expansion writes. The graph takes the mask as int64 (what
    transformers.js feeds); transformers' processor, and so this one, gives int32: cast at the session."""
    import onnxruntime as ort

    folder = factory.export(factory.checkpoint(vl=True))
    processor = Lfm2VlImageProcessor.from_folder(folder)
    images = [np.random.default_rng(0).integers(0, 256, (700, 900, 3), dtype=np.uint8), np.zeros((30, 20, 3), np.uint8)]
    processed = processor(images)
    session = ort.InferenceSession(str(folder / "onnx" / "vision_encoder.onnx"), providers=["CPUExecutionProvider"])
    (features,) = session.run(["image_features"], {
        "pixel_values": processed.pixel_values, "spatial_shapes": processed.spatial_shapes,
        "pixel_attention_mask": processed.pixel_attention_mask.astype(np.int64)})
    # the expansion with these settings, through the real tokenizer (the tiny one has no image tokens)
    text = Lfm2VlProcessor(processor, TextCodec(shared_model("LFM2-VL-450M"))).expand("<image><image>", processed)
    assert features.shape[0] == text.count("<image>") and np.isfinite(features).all()
