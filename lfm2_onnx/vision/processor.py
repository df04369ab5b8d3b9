"""Prompt expansion for LFM2-VL, equal to transformers' Lfm2VlProcessor (5.x).

Each `<image>` in the prompt text becomes the image's placeholder tokens:
    <|image_start|> [<|img_row_R_col_C|> <image>*tile_tokens]*tiles [<|img_thumbnail|> <image>*n] <|image_end|>
for a split image (the thumbnail part when use_thumbnail), or <|image_start|> <image>*n <|image_end|>
for a single one; without use_image_special_tokens only the <image> runs remain. The vision encoder
writes one feature per <image> token, in this order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .image_processor import ImageProcessorSettings, Lfm2VlImageProcessor, ProcessedImages
from .images import ImageInput

IMAGE_TOKEN = "<image>"
IMAGE_START_TOKEN = "<|image_start|>"
IMAGE_END_TOKEN = "<|image_end|>"
IMAGE_THUMBNAIL_TOKEN = "<|img_thumbnail|>"


@dataclass
class VlInputs:
    """One prompt's token ids and its images' encoder inputs (None without images)."""

    input_ids: list[int]
    images: ProcessedImages | None
    image_token_id: int

    @property
    def num_image_tokens(self) -> int:
        return sum(1 for t in self.input_ids if t == self.image_token_id)


class Lfm2VlProcessor:
    """Text with `<image>` markers + images -> token ids and vision encoder inputs."""

    def __init__(self, image_processor: Lfm2VlImageProcessor, codec):
        self.image_processor = image_processor
        self.settings: ImageProcessorSettings = image_processor.settings
        self.codec = codec
        self.image_token_id = codec.token_id(IMAGE_TOKEN)
        needed = [IMAGE_TOKEN] + ([IMAGE_START_TOKEN, IMAGE_END_TOKEN] if self.settings.use_image_special_tokens
                                  else [])
        missing = [t for t in needed if codec.token_id(t) is None]
        if missing:
            raise UserError(f"the tokenizer has no {', '.join(missing)} token, so it can't take images; "
                            "use the LFM2-VL checkpoint's own tokenizer.json")

    @classmethod
    def from_folder(cls, folder: str | Path, codec=None) -> "Lfm2VlProcessor":
        if codec is None:
            from ..text import TextCodec

            codec = TextCodec(Path(folder))
        return cls(Lfm2VlImageProcessor.from_folder(folder), codec)

    def tokens_per_tile(self) -> int:
        s = self.settings
        n = math.ceil((s.tile_size // s.encoder_patch_size) / s.downsample_factor)
        return n * n

    def tokens_for_size(self, size: tuple[int, int]) -> int:
        s = self.settings
        height, width = size
        return (math.ceil((height // s.encoder_patch_size) / s.downsample_factor)
                * math.ceil((width // s.encoder_patch_size) / s.downsample_factor))

    def placeholder(self, rows: int, cols: int, size: tuple[int, int]) -> str:
        """The expanded text for one image laid out as rows x cols tiles (thumbnail / single: `size`)."""
        special = self.settings.use_image_special_tokens
        parts = [IMAGE_START_TOKEN] if special else []
        single = IMAGE_TOKEN * self.tokens_for_size(size)
        if rows > 1 or cols > 1:
            tile = IMAGE_TOKEN * self.tokens_per_tile()
            for r in range(rows):
                for c in range(cols):
                    if special:
                        parts.append(f"<|img_row_{r + 1}_col_{c + 1}|>")
                    parts.append(tile)
            if self.settings.use_thumbnail:
                if special:
                    parts.append(IMAGE_THUMBNAIL_TOKEN)
                parts.append(single)
        else:
            parts.append(single)
        if special:
            parts.append(IMAGE_END_TOKEN)
        return "".join(parts)

    def expand(self, text: str, images: ProcessedImages | None) -> str:
        """`text` with its i-th `<image>` replaced by image i's placeholder."""
        pieces = text.split(IMAGE_TOKEN)
        count = 0 if images is None else len(images.rows)
        if len(pieces) - 1 != count:
            raise UserError(f"the prompt has {len(pieces) - 1} {IMAGE_TOKEN} marker(s) but {count} image(s) "
                            f"were given; put one {IMAGE_TOKEN} (or one image content part) per image")
        if count == 0:
            return text
        out = [pieces[0]]
        for i, piece in enumerate(pieces[1:]):
            out.append(self.placeholder(images.rows[i], images.cols[i], images.sizes[i]))
            out.append(piece)
        return "".join(out)

    def __call__(self, text: str, images: list[ImageInput] | None = None, *, add_special_tokens: bool = False,
                 max_tokens: int | None = None) -> VlInputs:
        """Token ids of `text` with its images expanded, and the images' encoder inputs.

        add_special_tokens=False as transformers' processor does (a rendered chat prompt already
        holds its BOS token). With max_tokens, a prompt longer than that is a UserError naming how
        many tokens its images take.
        """
        processed = self.image_processor(list(images)) if images else None
        ids = self.codec.encode(self.expand(text, processed), add_special_tokens=add_special_tokens)
        inputs = VlInputs(ids, processed, self.image_token_id)
        if max_tokens is not None and len(ids) > max_tokens:
            n_images = 0 if processed is None else len(processed.rows)
            raise UserError(f"the prompt is {len(ids)} tokens, {inputs.num_image_tokens} of them for {n_images} "
                            f"image(s), but at most {max_tokens} fit the context; pass fewer or smaller images, "
                            "lower max_image_tokens / max_tiles in processor_config.json, or raise max_length")
        return inputs
