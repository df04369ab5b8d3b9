"""transformers' LFM2-VL processor on test cases, run in the reference venv (tests/vl_reference/install.sh).

    .venv-vlref/bin/python tests/vl_reference/reference.py REQUEST.json OUT.npz

REQUEST: {"cases": [{"name", "folder", "text", "images": [paths], "convert_rgb"}]}: .png files are opened
with PIL, .npy loaded as arrays, .jpg paths given to transformers as paths (its own decoding); a case
with "messages" instead of text/images goes through processor.apply_chat_template (image parts name their
file as {"type": "image", "image_path": ...}).
A folder whose processor_config.json nests "image_processor" (transformers 5's layout) loads with
Lfm2VlProcessor.from_pretrained. A legacy folder (preprocessor_config.json + processor_config.json
with top-level tiling settings, LiquidAI's original layout) loads in transformers 5.24 as a
Siglip2ImageProcessor that then fails, so it is built here the way the settings read: the image
processor from both files' image settings. use_image_special_tokens is read from processor_config.json's
top level in both layouts and passed at call time (see load_processor).
OUT holds NAME.input_ids, NAME.pixel_values, NAME.pixel_attention_mask, NAME.spatial_shapes per case,
and "meta" (versions, and whether torchvision resized uint8 natively, the exact integer path).
"""

import json
import platform
import sys
import warnings

import numpy as np
import torch
import transformers
from PIL import Image
from torchvision.transforms.v2.functional import _geometry
from transformers import AutoTokenizer
from transformers.models.lfm2_vl import Lfm2VlImageProcessor, Lfm2VlProcessor

IMAGE_KEYS = {"downsample_factor", "do_image_splitting", "min_tiles", "max_tiles", "use_thumbnail",
              "min_image_tokens", "max_image_tokens", "encoder_patch_size", "tile_size", "max_pixels_tolerance",
              "resample", "do_rescale", "rescale_factor", "do_normalize", "image_mean", "image_std"}


def load_processor(folder):
    processor_config = json.load(open(f"{folder}/processor_config.json"))
    # transformers 5.24 takes use_image_special_tokens only at call time (from_pretrained ignores the
    # key, the constructor refuses it); LiquidAI's processor read it from processor_config.json
    special = processor_config.get("use_image_special_tokens")
    call_kwargs = {} if special is None else {"use_image_special_tokens": special}
    if isinstance(processor_config.get("image_processor"), dict):
        return Lfm2VlProcessor.from_pretrained(folder), call_kwargs
    preprocessor = json.load(open(f"{folder}/preprocessor_config.json"))
    settings = {k: v for k, v in {**preprocessor, **processor_config}.items() if k in IMAGE_KEYS and v is not None}
    template = open(f"{folder}/chat_template.jinja").read()
    processor = Lfm2VlProcessor(Lfm2VlImageProcessor(**settings), AutoTokenizer.from_pretrained(folder),
                                chat_template=template)
    return processor, call_kwargs


def load(path):
    if path.endswith(".npy"):
        return np.load(path)
    if path.endswith(".jpg"):
        return path  # transformers decodes the file itself (load_image_as_tensor)
    image = Image.open(path)
    image.load()
    return image


def main(request_path, out_path):
    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    request = json.load(open(request_path))
    processors, out = {}, {}
    for case in request["cases"]:
        folder = case["folder"]
        if folder not in processors:
            processors[folder] = load_processor(folder)
        processor, call_kwargs = processors[folder]
        kwargs = dict(call_kwargs)
        if case.get("convert_rgb"):
            kwargs["do_convert_rgb"] = True
        if "messages" in case:  # the chat path: apply_chat_template renders, collects the images, processes
            messages = [{**m, "content": [({"type": "image", "image": load(part["image_path"])} if "image_path" in part
                                           else part) for part in m["content"]]}
                        if isinstance(m["content"], list) else m for m in case["messages"]]
            result = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                   return_dict=True, return_tensors="np", **kwargs)
        else:
            images = [load(p) for p in case["images"]]
            result = processor(images=[images] if images else None, text=[case["text"]], return_tensors="np",
                               **kwargs)
        name = case["name"]
        out[f"{name}.input_ids"] = np.asarray(result["input_ids"][0], dtype=np.int64)
        for key in ("pixel_values", "pixel_attention_mask", "spatial_shapes"):
            if key in result:
                out[f"{name}.{key}"] = np.asarray(result[key])
    meta = {"transformers": transformers.__version__, "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "machine": platform.machine(),
            "native_uint8_bilinear": bool(_geometry._do_native_uint8_resize_on_cpu(
                _geometry.InterpolationMode.BILINEAR))}
    out["meta"] = np.array(json.dumps(meta))
    np.savez(out_path, **out)


if __name__ == "__main__":
    main(*sys.argv[1:3])
