"""lfm2_onnx.vision against transformers' Lfm2VlProcessor: pixel values, masks, spatial shapes, token ids.

transformers' processor needs torchvision, which can't load in the main venv (beside the CPU torch
2.13), so it runs in its own venv (tests/vl_reference/install.sh) through tests/vl_reference/reference.py,
once for every case here. The images are random noise (every resampling weight shows) and a gradient.

Tolerance: pixel values must be bit-identical. transformers resizes uint8 tensors with torch's native
uint8 kernel wherever torchvision uses it (x86 with AVX2/AVX-512, aarch64), and lfm2_onnx.vision.resize
replays that integer arithmetic; rescale + normalise are the same float32 operations. Only where the
reference host resizes in float32 instead (torchvision's fallback on older CPUs) may a resized pixel
differ by one uint8 level, i.e. 1/255/std = 2/255 in pixel values, which is then the bound.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess

import numpy as np
import pytest
from conftest import REPO, shared_model, vl_reference_python

from lfm2_onnx.text import TextCodec
from lfm2_onnx.vision import Lfm2VlProcessor, ProcessedImages

PROMPT = "<|startoftext|><|im_start|>user\n{images}Describe this.<|im_end|>\n<|im_start|>assistant\n"

# folder variants: name -> (layout, processor settings changed from LFM2-VL-450M's)
FOLDERS = {
    "legacy": ("legacy", {}),  # as shipped: splitting on, use_thumbnail false
    "legacy_thumbnail": ("legacy", {"use_thumbnail": True}),
    "legacy_nosplit": ("legacy", {"do_image_splitting": False}),
    "legacy_plain_tokens": ("legacy", {"use_image_special_tokens": False, "use_thumbnail": True}),
    "nested": ("nested", {"use_thumbnail": True}),
    "nested_bicubic": ("nested", {"resample": 3, "max_image_tokens": 128, "min_image_tokens": 32, "max_tiles": 6}),
    "nested_plain_tokens": ("nested", {"use_image_special_tokens": False}),
    # what lfm2_onnx.build writes: the nested processor_config.json and a flat preprocessor_config.json
    # (for transformers.js); here the flat one disagrees, and transformers 5 reads the nested one
    "nested_and_flat": ("both", {"use_thumbnail": True}),
}

# case -> (folder, [image specs], convert_rgb); an image spec is (kind, height, width) with kind
# noise / gradient (RGB PNG), rgba / gray / palette / gray_alpha (PNG modes), npy3 / npy4 / npy1 (arrays)
CASES = {
    "tiny_20x30": ("legacy", [("noise", 20, 30)], False),
    "tall_1000x100": ("legacy", [("noise", 1000, 100)], False),
    "wide_100x1000": ("legacy", [("noise", 100, 1000)], False),
    "large_1500x2000": ("legacy", [("noise", 1500, 2000)], False),
    "large_2000x1500_thumbnail": ("legacy_thumbnail", [("gradient", 2000, 1500)], False),
    "boundary_512": ("legacy_thumbnail", [("noise", 512, 512)], False),
    "medium_768x1024": ("legacy_thumbnail", [("noise", 768, 1024)], False),
    "odd_777x333": ("legacy_thumbnail", [("noise", 777, 333)], False),
    "huge_3000x4000": ("legacy_thumbnail", [("gradient", 3000, 4000)], False),
    "nosplit_2000x1500": ("legacy_nosplit", [("noise", 2000, 1500)], False),
    "nosplit_tall_1000x100": ("legacy_nosplit", [("noise", 1000, 100)], False),
    "plain_tokens_large": ("legacy_plain_tokens", [("noise", 1200, 1600)], False),
    "plain_tokens_small": ("legacy_plain_tokens", [("noise", 200, 300)], False),
    "rgba_png": ("legacy", [("rgba", 300, 200)], True),
    "gray_png": ("legacy", [("gray", 300, 200)], True),
    "palette_png": ("legacy", [("palette", 120, 90)], True),
    "gray_alpha_png": ("legacy", [("gray_alpha", 90, 120)], True),
    "jpeg_by_path": ("legacy_thumbnail", [("jpeg", 900, 1300)], False),  # transformers decodes it itself
    "array_rgb": ("legacy", [("npy3", 64, 80)], False),
    "array_rgba": ("legacy", [("npy4", 64, 80)], True),
    "array_gray": ("legacy", [("npy1", 64, 80)], True),
    "several_images": ("legacy_thumbnail", [("noise", 20, 30), ("gradient", 1500, 2000), ("noise", 600, 300)],
                       False),
    "nested_large": ("nested", [("noise", 1500, 2000)], False),
    "nested_several": ("nested", [("noise", 100, 1000), ("noise", 333, 777)], False),
    "nested_bicubic_large": ("nested_bicubic", [("noise", 1100, 1700)], False),
    "nested_bicubic_small": ("nested_bicubic", [("gradient", 90, 70)], False),
    "nested_plain_tokens": ("nested_plain_tokens", [("noise", 1024, 1024)], False),
    "nested_and_flat": ("nested_and_flat", [("noise", 1500, 2000)], False),
    "no_images": ("legacy", [], False),
}

# chat cases: folder, messages; ("img", kind, height, width, spelling) stands for an image part, spelled
# as {"type": "image", "image": path} ("path") or OpenAI's image_url with a data: URL ("data_url")
CHAT_CASES = {
    "chat_one_image": ("legacy", [
        {"role": "user", "content": [("img", "noise", 300, 400, "path"), {"type": "text", "text": "What is this?"}]}]),
    "chat_multi_turn": ("legacy_thumbnail", [
        {"role": "system", "content": "You look at pictures."},
        {"role": "user", "content": [{"type": "text", "text": "Compare "}, ("img", "noise", 20, 30, "data_url"),
                                     {"type": "text", "text": " and "}, ("img", "gradient", 1500, 2000, "path")]},
        {"role": "assistant", "content": "The second is larger."},
        {"role": "user", "content": [("img", "noise", 100, 1000, "data_url"), {"type": "text", "text": "And this?"}]}]),
    "chat_nested": ("nested", [
        {"role": "user", "content": [("img", "noise", 1024, 768, "data_url"), {"type": "text", "text": "Describe."}]}]),
    "chat_text_only": ("legacy", [{"role": "user", "content": [{"type": "text", "text": "No picture today."}]}]),
}


def _make_folder(base, dest, layout, changes):
    dest.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        if (base / name).exists():
            shutil.copy(base / name, dest / name)
    preprocessor = json.loads((base / "preprocessor_config.json").read_text())
    processor = json.loads((base / "processor_config.json").read_text())
    if layout == "legacy":
        image_keys = {"resample", "image_mean", "image_std", "rescale_factor"}
        preprocessor.update({k: v for k, v in changes.items() if k in image_keys})
        processor.update({k: v for k, v in changes.items() if k not in image_keys})
        (dest / "preprocessor_config.json").write_text(json.dumps(preprocessor))
        (dest / "processor_config.json").write_text(json.dumps(processor))
        return
    # transformers 5's layout: one processor_config.json, image settings nested (as save_pretrained writes it)
    image = {k: preprocessor[k] for k in ("do_normalize", "do_rescale", "image_mean", "image_std", "resample",
                                          "rescale_factor")}
    image.update({k: v for k, v in processor.items() if k in (
        "do_image_splitting", "downsample_factor", "encoder_patch_size", "max_image_tokens", "max_pixels_tolerance",
        "max_tiles", "min_image_tokens", "min_tiles", "tile_size", "use_thumbnail")})
    image.update({"image_processor_type": "Lfm2VlImageProcessor", "do_resize": True, "do_pad": True})
    top = {"processor_class": "Lfm2VlProcessor"}
    for key, value in changes.items():
        (top if key == "use_image_special_tokens" else image)[key] = value
    (dest / "processor_config.json").write_text(json.dumps({"image_processor": image, **top}, indent=2))
    if layout == "both":
        flat = {**image, "max_tiles": 4, "use_thumbnail": False, "resample": 3, "processor_class": "Lfm2VlProcessor"}
        (dest / "preprocessor_config.json").write_text(json.dumps(flat, indent=2))


def _make_image(kind, height, width, rng, path_stem):
    from PIL import Image

    if kind in ("gradient", "jpeg"):
        y, x = np.mgrid[0:height, 0:width]
        rgb = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], -1)
        if kind == "jpeg":
            rgb[height // 4:height // 2, width // 4:width // 2] = rng.integers(0, 256, (height // 2 - height // 4,
                                                                                 width // 2 - width // 4, 3))
            Image.fromarray(rgb.astype(np.uint8)).save(f"{path_stem}.jpg", quality=85)
            return f"{path_stem}.jpg"
        Image.fromarray(rgb.astype(np.uint8)).save(f"{path_stem}.png")
        return f"{path_stem}.png"
    if kind.startswith("npy"):
        channels = int(kind[3:])
        np.save(f"{path_stem}.npy", rng.integers(0, 256, (height, width, channels), dtype=np.uint8))
        return f"{path_stem}.npy"
    rgb = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    if kind == "rgba":
        image = rgb.convert("RGBA")
        image.putalpha(Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8)))
    elif kind == "gray":
        image = rgb.convert("L")
    elif kind == "gray_alpha":
        image = rgb.convert("LA")
    elif kind == "palette":
        image = rgb.convert("P")
        image.info["transparency"] = 0
    else:
        image = rgb
    image.save(f"{path_stem}.png", **({"transparency": 0} if kind == "palette" else {}))
    return f"{path_stem}.png"


@pytest.fixture(scope="module")
def vl_cases(tmp_path_factory):
    """(folders, image paths per case, transformers' outputs), one reference run for all cases."""
    python = vl_reference_python()
    base = shared_model("LFM2-VL-450M")
    root = tmp_path_factory.mktemp("vl")
    folders = {}
    for name, (layout, changes) in FOLDERS.items():
        folders[name] = root / name
        _make_folder(base, folders[name], layout, changes)
    rng = np.random.default_rng(0)
    images, request = {}, []
    for case, (folder, specs, convert_rgb) in CASES.items():
        images[case] = [_make_image(kind, h, w, rng, root / f"{case}_{i}") for i, (kind, h, w) in enumerate(specs)]
        text = PROMPT.format(images="<image>" * len(specs))
        request.append({"name": case, "folder": str(folders[folder]), "text": text, "images": images[case],
                        "convert_rgb": convert_rgb})
    for case, (folder, messages) in CHAT_CASES.items():
        ours, theirs = [], []
        for m, message in enumerate(messages):
            if isinstance(message["content"], str):
                ours.append(message), theirs.append(message)
                continue
            our_parts, their_parts = [], []
            for i, part in enumerate(message["content"]):
                if isinstance(part, dict):
                    our_parts.append(part), their_parts.append(part)
                    continue
                _, kind, h, w, spelling = part
                path = _make_image(kind, h, w, rng, root / f"{case}_{m}_{i}")
                their_parts.append({"type": "image", "image_path": path})
                if spelling == "path":
                    our_parts.append({"type": "image", "image": path})
                else:
                    url = "data:image/png;base64," + base64.b64encode(open(path, "rb").read()).decode()
                    our_parts.append({"type": "image_url", "image_url": {"url": url}})
            ours.append({**message, "content": our_parts}), theirs.append({**message, "content": their_parts})
        images[case] = ours
        request.append({"name": case, "folder": str(folders[folder]), "messages": theirs})
    (root / "request.json").write_text(json.dumps({"cases": request}))
    result = subprocess.run([str(python), str(REPO / "tests/vl_reference/reference.py"), str(root / "request.json"),
                             str(root / "reference.npz")], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    reference = dict(np.load(root / "reference.npz"))
    return folders, images, reference


def _ours(folders, images, case) -> tuple[list[int], ProcessedImages | None, Lfm2VlProcessor]:
    from PIL import Image

    folder, specs, _ = CASES[case]
    processor = Lfm2VlProcessor.from_folder(folders[folder], TextCodec(folders[folder]))
    sources = []
    for path in images[case]:
        if path.endswith(".npy"):
            array = np.load(path)
            sources.append(array[:, :, 0] if array.shape[2] == 1 else array)  # a 2-D array: grayscale
        elif path.endswith(".jpg"):
            sources.append(path)  # decoded by lfm2_onnx.vision (Pillow), as transformers decodes it
        else:
            sources.append(Image.open(path))
    inputs = processor(PROMPT.format(images="<image>" * len(specs)), sources)
    return inputs.input_ids, inputs.images, processor


@pytest.mark.parametrize("case", list(CASES))
def test_equals_transformers(vl_cases, case):
    folders, images, reference = vl_cases
    ids, processed, processor = _ours(folders, images, case)
    assert ids == reference[f"{case}.input_ids"].tolist()
    if processed is None:
        assert f"{case}.pixel_values" not in reference
        return
    np.testing.assert_array_equal(processed.spatial_shapes, reference[f"{case}.spatial_shapes"])
    np.testing.assert_array_equal(processed.pixel_attention_mask, reference[f"{case}.pixel_attention_mask"])
    assert processed.pixel_attention_mask.dtype == reference[f"{case}.pixel_attention_mask"].dtype
    ref_values = reference[f"{case}.pixel_values"]
    assert processed.pixel_values.shape == ref_values.shape and processed.pixel_values.dtype == ref_values.dtype
    meta = json.loads(str(reference["meta"]))
    if meta["native_uint8_bilinear"] or processor.settings.resample == 3:
        np.testing.assert_array_equal(processed.pixel_values, ref_values)
    else:  # the reference resized in float32 (see the module docstring)
        assert np.abs(processed.pixel_values - ref_values).max() <= 2 / 255 + 1e-6
    # one feature per <image> token: the encoder's output count equals the placeholder count
    p = processor.settings.downsample_factor
    features = sum(-(-int(h) // p) * -(-int(w) // p) for h, w in processed.spatial_shapes)
    assert features == ids.count(processor.image_token_id)


@pytest.mark.parametrize("case", list(CHAT_CASES))
def test_chat_with_images_equals_apply_chat_template(vl_cases, case):
    """Image parts through the folder's chat template, expanded and tokenized: transformers'
    processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)."""
    from lfm2_onnx.chat import ChatTemplate
    from lfm2_onnx.vision.chat import vl_chat_inputs

    folders, messages, reference = vl_cases
    folder = folders[CHAT_CASES[case][0]]
    processor = Lfm2VlProcessor.from_folder(folder, TextCodec(folder))
    inputs, _ = vl_chat_inputs(processor, ChatTemplate.from_folder(folder), messages[case])
    assert inputs.input_ids == reference[f"{case}.input_ids"].tolist()
    if inputs.images is None:
        assert f"{case}.pixel_values" not in reference
        return
    np.testing.assert_array_equal(inputs.images.pixel_values, reference[f"{case}.pixel_values"])
    np.testing.assert_array_equal(inputs.images.pixel_attention_mask, reference[f"{case}.pixel_attention_mask"])
    np.testing.assert_array_equal(inputs.images.spatial_shapes, reference[f"{case}.spatial_shapes"])
