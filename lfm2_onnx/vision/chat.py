"""Chat messages with images: content parts -> the template's `<image>` markers + the images, in order.

Image parts, in either spelling:
    {"type": "image", "image": <path | PIL image | uint8 array | bytes | data: URL>}   (transformers'; also
        "url" / "path" in place of "image")
    {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}           (OpenAI's; or "image_url": "...")
Each becomes {"type": "image"} for the chat template (LFM2-VL's writes `<image>` for it), and its
source joins the image list in message order, then part order: the order transformers collects them
in and the order of the `<image>` markers in the rendered prompt.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..errors import UserError
from .images import ImageInput
from .processor import Lfm2VlProcessor, VlInputs

if TYPE_CHECKING:
    from ..chat import ChatTemplate

IMAGE_PART_TYPES = ("image", "image_url")


def _image_source(part: Mapping, where: str) -> ImageInput:
    if part.get("type") == "image_url":
        spec = part.get("image_url")
        url = spec.get("url") if isinstance(spec, Mapping) else spec
        if not isinstance(url, str) or not url:
            raise UserError(f"{where}: an image_url part needs {{\"image_url\": {{\"url\": \"data:image/...;base64,...\"}}}}")
        return url
    for key in ("image", "url", "path"):
        if part.get(key) is not None:
            return part[key]
    raise UserError(f"{where}: an image part needs its image: {{\"type\": \"image\", \"image\": path, PIL image, "
                    "array, bytes or data: URL}")


def has_image_parts(messages) -> bool:
    return any(isinstance(m, Mapping) and isinstance(m.get("content"), list)
               and any(isinstance(p, Mapping) and p.get("type") in IMAGE_PART_TYPES for p in m["content"])
               for m in messages or [])


def split_image_parts(messages: list[dict]) -> tuple[list[dict], list[ImageInput]]:
    """(messages with each image part as {"type": "image"}, the images in prompt order)."""
    out, images = [], []
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, Mapping) else None
        if not isinstance(content, list):
            out.append(message)
            continue
        parts = []
        for j, part in enumerate(content):
            if isinstance(part, Mapping) and part.get("type") in IMAGE_PART_TYPES:
                images.append(_image_source(part, f"messages[{i}].content[{j}]"))
                parts.append({"type": "image"})
            else:
                parts.append(part)
        out.append({**message, "content": parts})
    return out, images


def vl_chat_inputs(processor: Lfm2VlProcessor, template: ChatTemplate, messages: list[dict],
                   tools: list[dict] | None = None, *, template_kwargs: dict | None = None,
                   generation_prefix: str = "", max_tokens: int | None = None) -> tuple[VlInputs, bool]:
    """The conversation's token ids (images expanded) and encoder inputs, and whether the prompt
    already opened <think>; what Lfm2Model.chat_inputs runs, without loading the model.

    As transformers' processor.apply_chat_template(messages, add_generation_prompt=True,
    tokenize=True): the template renders `<image>` per image part, the processor expands them.
    """
    template_messages, images = split_image_parts(messages)
    text, reasoning_started = template.render(template_messages, tools, template_kwargs)
    return processor(text + generation_prefix, images, max_tokens=max_tokens), reasoning_started
