"""LFM2-VL image preprocessing in numpy, equal to transformers' Lfm2VlImageProcessor (5.x).

Per image: smart resize to multiples of encoder_patch_size * downsample_factor within
[min_image_tokens, max_image_tokens]; an image too large for one tile (beyond max_pixels_tolerance)
is instead resized to a grid of tile_size tiles (the grid whose aspect ratio is closest, within
[min_tiles, max_tiles]), split row-major, plus the smart-resized thumbnail when use_thumbnail. Each
tile is rescaled and normalised in float32, cut into encoder_patch_size patches ([patches, P*P*3],
channels last within a patch) and zero-padded to max_num_patches, with a mask and its patch grid.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from ..errors import UserError
from . import resize as resizing
from .images import ImageInput, load_image

PREPROCESSOR_CONFIG = "preprocessor_config.json"
PROCESSOR_CONFIG = "processor_config.json"


@dataclass(frozen=True)
class ImageProcessorSettings:
    """The image processor's settings; defaults are transformers' Lfm2VlImageProcessor's."""

    downsample_factor: int = 2
    do_image_splitting: bool = True
    min_tiles: int = 2
    max_tiles: int = 10
    use_thumbnail: bool = True
    min_image_tokens: int = 64
    max_image_tokens: int = 256
    encoder_patch_size: int = 16
    tile_size: int = 512
    max_pixels_tolerance: float = 2.0
    resample: int = resizing.BILINEAR
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    # the processor's, not the image processor's: wrap each image in <|image_start|> ... <|image_end|>
    # and mark tiles with <|img_row_R_col_C|> / <|img_thumbnail|>
    use_image_special_tokens: bool = True
    source: str = field(default="defaults", compare=False)

    def __post_init__(self):
        if self.resample not in resizing.RESAMPLE_NAMES:
            raise UserError(f"{self.source}: resample {self.resample} is not supported "
                            "(2 bilinear or 3 bicubic, as LFM2-VL uses); edit the setting")
        if self.do_image_splitting and self.min_tiles > self.max_tiles:
            raise UserError(f"{self.source}: min_tiles {self.min_tiles} > max_tiles {self.max_tiles}; fix the config")
        for name in ("downsample_factor", "encoder_patch_size", "tile_size", "min_image_tokens",
                     "max_image_tokens"):
            if getattr(self, name) <= 0:
                raise UserError(f"{self.source}: {name} must be positive (got {getattr(self, name)})")

    @property
    def max_num_patches(self) -> int:
        """Rows of every pixel_values entry (the padding target)."""
        thumbnail = self.max_image_tokens * self.downsample_factor ** 2
        tile = (self.tile_size // self.encoder_patch_size) ** 2 if self.do_image_splitting else 0
        return max(thumbnail, tile)

    @classmethod
    def from_dict(cls, values: dict, source: str) -> "ImageProcessorSettings":
        known = {f.name for f in fields(cls)} - {"source"}
        kwargs = {k: v for k, v in values.items() if k in known and v is not None}
        for key in ("image_mean", "image_std"):
            if key in kwargs:
                value = kwargs[key]
                kwargs[key] = tuple(float(v) for v in (value if isinstance(value, (list, tuple)) else [value] * 3))
        return cls(**kwargs, source=source)

    @classmethod
    def from_folder(cls, folder: str | Path) -> "ImageProcessorSettings":
        """From processor_config.json as transformers 5 writes it (image settings nested under
        "image_processor"), or the legacy pair: preprocessor_config.json (mean, std, rescale,
        resample) plus processor_config.json's top-level tiling settings (LiquidAI's LFM2-VL repos)."""
        folder = Path(folder)
        processor = _read_json(folder / PROCESSOR_CONFIG)
        preprocessor = _read_json(folder / PREPROCESSOR_CONFIG)
        if processor is None and preprocessor is None:
            raise UserError(f"{folder} has neither {PROCESSOR_CONFIG} nor {PREPROCESSOR_CONFIG}, so its images "
                            "can't be preprocessed; copy them from the original LFM2-VL checkpoint")
        processor = processor or {}
        nested = processor.get("image_processor")
        if isinstance(nested, dict):
            values = {**nested, **{k: v for k, v in processor.items() if k == "use_image_special_tokens"}}
            return cls.from_dict(values, f"{folder / PROCESSOR_CONFIG}")
        return cls.from_dict({**(preprocessor or {}), **processor},
                             f"{folder / PREPROCESSOR_CONFIG} + {PROCESSOR_CONFIG}")


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path} cannot be read ({e}); restore it from the original checkpoint") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a JSON object; restore it from the original checkpoint")
    return data


@dataclass
class ProcessedImages:
    """The vision encoder's inputs for a list of images, plus how each image was laid out.

    pixel_values [entries, max_num_patches, 3*P*P] float32, pixel_attention_mask [entries,
    max_num_patches] int32, spatial_shapes [entries, 2] int64 (patch rows, patch columns); the entries
    are each image's tiles row-major, then its thumbnail, image after image.
    """

    pixel_values: np.ndarray
    pixel_attention_mask: np.ndarray
    spatial_shapes: np.ndarray
    rows: list[int]  # tile grid per image (1 x 1 when not split)
    cols: list[int]
    sizes: list[tuple[int, int]]  # smart-resized (height, width): the single image or the thumbnail
    entries: list[int]  # pixel_values entries per image


def round_by_factor(number: float, factor: int) -> int:
    return round(number / factor) * factor  # Python's round: halves to even, as transformers


def smart_resize(height: int, width: int, s: ImageProcessorSettings) -> tuple[int, int]:
    """(height, width) in multiples of patch * downsample with the token count within bounds."""
    factor = s.encoder_patch_size * s.downsample_factor
    min_pixels = s.min_image_tokens * s.encoder_patch_size ** 2 * s.downsample_factor ** 2
    max_pixels = s.max_image_tokens * s.encoder_patch_size ** 2 * s.downsample_factor ** 2
    h_bar = max(factor, round_by_factor(height, factor))
    w_bar = max(factor, round_by_factor(width, factor))
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def is_image_too_large(height: int, width: int, s: ImageProcessorSettings) -> bool:
    factor = s.encoder_patch_size * s.downsample_factor
    h_bar = max(s.encoder_patch_size, round_by_factor(height, factor))
    w_bar = max(s.encoder_patch_size, round_by_factor(width, factor))
    limit = s.max_image_tokens * s.encoder_patch_size ** 2 * s.downsample_factor ** 2 * s.max_pixels_tolerance
    return h_bar * w_bar > limit


def _target_ratios(min_tiles: int, max_tiles: int) -> list[tuple[int, int]]:
    ratios = {(w, h) for n in range(min_tiles, max_tiles + 1) for w in range(1, n + 1) for h in range(1, n + 1)
              if min_tiles <= w * h <= max_tiles}
    # transformers sorts a set by tile count; ties keep the set's iteration order, which for
    # tuples of small ints is deterministic (their hashes), so the same order arises here
    return sorted(ratios, key=lambda r: r[0] * r[1])


def grid_layout(height: int, width: int, s: ImageProcessorSettings) -> tuple[int, int]:
    """(columns, rows) of tiles: the closest aspect ratio; on a tie, the larger grid if the image
    covers more than half of it."""
    aspect = width / height
    best_diff, best = float("inf"), (1, 1)
    area = width * height
    for ratio in _target_ratios(s.min_tiles, s.max_tiles):
        diff = abs(aspect - ratio[0] / ratio[1])
        if diff < best_diff:
            best_diff, best = diff, ratio
        elif diff == best_diff and area > 0.5 * s.tile_size * s.tile_size * ratio[0] * ratio[1]:
            best = ratio
    return best


class Lfm2VlImageProcessor:
    """Images -> the vision encoder's inputs, exactly as transformers' Lfm2VlImageProcessor."""

    def __init__(self, settings: ImageProcessorSettings | None = None):
        self.settings = settings or ImageProcessorSettings()

    @classmethod
    def from_folder(cls, folder: str | Path) -> "Lfm2VlImageProcessor":
        return cls(ImageProcessorSettings.from_folder(folder))

    def layout(self, height: int, width: int) -> tuple[bool, int, int, tuple[int, int]]:
        """(split into tiles?, rows, cols, smart-resized size) for an image of this size."""
        s = self.settings
        size = smart_resize(height, width, s)
        if s.do_image_splitting and not s.min_tiles == s.max_tiles == 1 and is_image_too_large(height, width, s):
            cols, rows = grid_layout(height, width, s)
            return True, rows, cols, size
        return False, 1, 1, size

    def tiles(self, image: np.ndarray) -> tuple[list[np.ndarray], int, int, tuple[int, int]]:
        """The resized uint8 pieces of one RGB image (tiles row-major, then the thumbnail)."""
        s = self.settings
        height, width = image.shape[:2]
        split, rows, cols, (new_h, new_w) = self.layout(height, width)
        if not split:
            return [resizing.resize(image, new_h, new_w, s.resample)], rows, cols, (new_h, new_w)
        grid = resizing.resize(image, rows * s.tile_size, cols * s.tile_size, s.resample)
        pieces = [grid[r * s.tile_size:(r + 1) * s.tile_size, c * s.tile_size:(c + 1) * s.tile_size]
                  for r in range(rows) for c in range(cols)]
        if s.use_thumbnail and rows * cols != 1:  # a 1 x 1 grid (min_tiles 1) gets no thumbnail
            pieces.append(resizing.resize(image, new_h, new_w, s.resample))
        return pieces, rows, cols, (new_h, new_w)

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 [..., C] -> float32, with transformers' fused rescale + normalise (the same float32
        operations, so the same bits)."""
        s = self.settings
        x = pixels.astype(np.float32)
        if s.do_rescale and s.do_normalize:
            scale = np.float32(1.0 / s.rescale_factor)
            mean = np.asarray(s.image_mean, dtype=np.float32) * scale
            std = np.asarray(s.image_std, dtype=np.float32) * scale
            return (x - mean) / std
        if s.do_normalize:
            return (x - np.asarray(s.image_mean, dtype=np.float32)) / np.asarray(s.image_std, dtype=np.float32)
        if s.do_rescale:
            return x * np.float32(s.rescale_factor)
        return x

    def patchify(self, pixels: np.ndarray) -> np.ndarray:
        """[H, W, C] -> [H/P * W/P, P*P, C]: patches row-major, each patch's pixels row-major."""
        p = self.settings.encoder_patch_size
        h, w, c = pixels.shape
        return pixels.reshape(h // p, p, w // p, p, c).transpose(0, 2, 1, 3, 4).reshape((h // p) * (w // p), p * p, c)

    def __call__(self, images: list[ImageInput] | ImageInput) -> ProcessedImages:
        if not isinstance(images, (list, tuple)):
            images = [images]
        if not images:
            raise UserError("no images to process")
        s = self.settings
        p, max_patches = s.encoder_patch_size, s.max_num_patches
        pieces, rows, cols, sizes, entries = [], [], [], [], []
        for source in images:
            tiles, r, c, size = self.tiles(load_image(source))
            pieces += tiles
            rows.append(r), cols.append(c), sizes.append(size), entries.append(len(tiles))
        # patches cut in uint8 (cheap copies), normalised straight into the zero-padded output
        values = np.zeros((len(pieces), max_patches, p * p * 3), dtype=np.float32)
        masks = np.zeros((len(pieces), max_patches), dtype=np.int32)
        shapes = np.zeros((len(pieces), 2), dtype=np.int64)
        for e, piece in enumerate(pieces):
            patches = self.patchify(piece)
            n = len(patches)
            values[e, :n] = self.normalize(patches).reshape(n, -1)
            masks[e, :n] = 1
            shapes[e] = (piece.shape[0] // p, piece.shape[1] // p)
        return ProcessedImages(values, masks, shapes, rows, cols, sizes, entries)
