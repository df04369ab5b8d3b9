"""Images in, RGB uint8 arrays out: file paths, PIL images, numpy arrays, bytes and data: URLs.

Never fetches from a network: an http(s) URL is a UserError telling the caller to download it first.
Colour conversion follows transformers' `do_convert_rgb` (transformers' Lfm2Vl processor itself
raises on RGBA and grayscale input unless it is on): PIL images with transparency are composited onto
white, other modes converted by PIL; arrays with one channel are repeated, four-channel arrays are
composited onto white in float32 as torchvision does it. EXIF orientation is applied to decoded files,
as transformers' `load_image` does.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
from pathlib import Path
from typing import Union

import numpy as np

from ..errors import UserError

ImageInput = Union[str, os.PathLike, bytes, bytearray, np.ndarray, "PIL.Image.Image"]  # noqa: F821


def _describe(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        text = str(source)
        return repr(text if len(text) <= 80 else text[:77] + "...")
    return type(source).__name__


def _decode(data: bytes, what: str):
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Image.DecompressionBombError as e:
        raise UserError(f"{what} is too large to decode safely ({e}); downscale it first") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise UserError(f"{what} is not a readable image ({type(e).__name__}: {e}); "
                        "pass a PNG, JPEG, WebP, GIF or BMP file") from None
    return ImageOps.exif_transpose(image)


def _from_data_url(url: str):
    header, sep, payload = url.partition(",")
    if not sep or not header.startswith("data:"):
        raise UserError("a data: URL must look like data:image/png;base64,<data>")
    if not header.endswith(";base64"):
        raise UserError("a data: URL image must be base64-encoded (data:image/png;base64,<data>)")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise UserError("the data: URL's base64 payload is not valid base64") from None
    return _decode(data, "the data: URL")


def _pil_to_rgb(image) -> np.ndarray:
    from PIL import Image

    has_alpha = "A" in image.getbands() or image.info.get("transparency") is not None
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.array(Image.alpha_composite(background, rgba).convert("RGB"))
    return np.array(image.convert("RGB"))


def _array_to_rgb(array: np.ndarray) -> np.ndarray:
    if array.dtype != np.uint8:
        raise UserError(f"an image array must be uint8 (got {array.dtype}); "
                        "convert it, e.g. (x * 255).round().astype(np.uint8)")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise UserError(f"an image array must be H x W or H x W x 1/3/4 channels (got shape {array.shape}); "
                        "pass it channels-last")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise UserError(f"an image array has no pixels (shape {array.shape})")
    if array.shape[2] == 1:
        return np.repeat(array, 3, axis=2)
    if array.shape[2] == 4:
        # torchvision's to_dtype(scale=True) both ways, composite onto white, all in float32
        x = array.astype(np.float32) * np.float32(1.0 / 255)
        rgb, alpha = x[..., :3], x[..., 3:]
        composite = rgb * alpha + (np.float32(1.0) - alpha)
        return (composite * np.float32(255.0 + 1.0 - 1e-3)).astype(np.uint8)
    return np.ascontiguousarray(array)


def load_image(source: ImageInput) -> np.ndarray:
    """An H x W x 3 uint8 RGB array from a path, PIL image, array, encoded bytes or data: URL."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency
        raise UserError("images need Pillow: pip install pillow") from None
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source)
    if isinstance(source, Image.Image):
        return _pil_to_rgb(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _pil_to_rgb(_decode(bytes(source), "the image bytes"))
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        if isinstance(text, str) and text.startswith("data:"):
            return _pil_to_rgb(_from_data_url(text))
        if isinstance(text, str) and text.lower().startswith(("http://", "https://")):
            raise UserError(f"image {_describe(text)} is a web URL, which is never fetched; "
                            "download it and pass the file, its bytes or a data: URL")
        path = Path(text)
        if not path.is_file():
            raise UserError(f"image file {_describe(text)} does not exist; pass an existing file, "
                            "a PIL image, an array, bytes or a data: URL")
        try:
            data = path.read_bytes()
        except OSError as e:
            raise UserError(f"image file {_describe(text)} cannot be read ({e.strerror})") from None
        return _pil_to_rgb(_decode(data, f"image file {_describe(text)}"))
    raise UserError(f"an image must be a path, PIL image, numpy array, bytes or data: URL (got {_describe(source)})")
