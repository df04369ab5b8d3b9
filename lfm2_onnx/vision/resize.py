"""Antialiased resizing of uint8 images, bit-exact to torch's uint8 kernel (what transformers uses).

transformers' Lfm2VlImageProcessor resizes uint8 tensors with torchvision, which on x86 (AVX2/AVX-512)
and aarch64 CPUs runs torch's native uint8 antialiased kernel (Pillow-SIMD's algorithm): separable,
horizontal pass first, each pass rounded back to uint8; filter weights computed in float64,
normalised per output pixel, then scaled to int16 with a precision chosen from the largest weight;
each output is `clip((sum(w * x) + 2**(p-1)) >> p, 0, 255)`. Pillow's own resize differs (22-bit
int32 weights), by one level here and there, so it is not used. This module replays torch's integer
arithmetic in numpy and gives the same bytes.
"""

from __future__ import annotations

import math
import os
from functools import lru_cache

import numpy as np

# PIL resampling codes, as the configs spell them (`"resample": 2`).
BILINEAR, BICUBIC = 2, 3
RESAMPLE_NAMES = {BILINEAR: "bilinear", BICUBIC: "bicubic"}


def _bilinear(x: float) -> float:
    x = abs(x)
    return 1.0 - x if x < 1.0 else 0.0


def _bicubic(x: float) -> float:
    # Keys' cubic convolution with a = -0.5, torch's antialiased bicubic filter (and Pillow's).
    a = -0.5
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    if x < 2.0:
        return ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    return 0.0


_FILTERS = {BILINEAR: (_bilinear, 2), BICUBIC: (_bicubic, 4)}


@lru_cache(maxsize=64)
def _int16_weights(in_size: int, out_size: int, resample: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(first input index [out], int16 weights [out, taps] zero-padded, precision bits) for one axis."""
    filter_fn, interp_size = _FILTERS[resample]
    scale = in_size / out_size
    support = interp_size * 0.5 * scale if scale >= 1.0 else interp_size * 0.5
    taps = int(math.ceil(support)) * 2 + 1
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    starts = np.zeros(out_size, dtype=np.int64)
    weights = np.zeros((out_size, taps), dtype=np.float64)
    for i in range(out_size):
        center = scale * (i + 0.5)
        xmin = max(int(center - support + 0.5), 0)  # int(): C++'s truncating cast
        xsize = min(max(min(int(center + support + 0.5), in_size) - xmin, 0), taps)
        w = [filter_fn((j + xmin - center + 0.5) * invscale) for j in range(xsize)]
        total = sum(w)
        if total != 0.0:
            w = [v / total for v in w]
        starts[i] = xmin
        weights[i, :xsize] = w
    w_max = float(weights.max()) if weights.size else 0.0
    precision = 0
    while precision < 22 and int(0.5 + w_max * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    scaled = weights * (1 << precision)
    # C++ (int)(v +- 0.5): round half away from zero
    int_weights = np.where(scaled < 0, np.trunc(scaled - 0.5), np.trunc(scaled + 0.5)).astype(np.int32)
    return starts, int_weights, precision


_CHUNK_BYTES = 1 << 20  # int32 accumulator bytes per block of output rows: stays in cache across the taps
MAX_THREADS = 8  # blocks of output rows run on up to this many threads (never more than the CPUs)


def _threads() -> int:
    return max(1, min(os.cpu_count() or 1, MAX_THREADS))


@lru_cache(maxsize=None)
def _pool(threads: int):
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(threads, thread_name_prefix="lfm2-resize")


def _resample_rows(image: np.ndarray, out_size: int, resample: int) -> np.ndarray:
    """One separable pass over axis 0 of a uint8 array [rows, ...], rounded back to uint8.

    Blocks of output rows, each tap by tap: gather each output's k-th input row (contiguous), multiply-add
    in int32. numpy releases the GIL in these loops, so large images spread the blocks over threads."""
    in_size = image.shape[0]
    starts, weights, precision = _int16_weights(in_size, out_size, resample)
    out = np.empty((out_size,) + image.shape[1:], dtype=np.uint8)
    row_bytes = 4 * int(np.prod(image.shape[1:], dtype=np.int64))
    block = max(1, _CHUNK_BYTES // max(row_bytes, 1))
    taps = [k for k in range(weights.shape[1]) if weights[:, k].any()]
    shape = (-1,) + (1,) * (image.ndim - 1)

    def run(lo: int, hi: int) -> None:
        acc = np.full((hi - lo,) + image.shape[1:], 1 << (precision - 1), dtype=np.int32)
        product = np.empty_like(acc)
        for k in taps:
            index = np.minimum(starts[lo:hi] + k, in_size - 1)  # padded taps carry weight 0
            np.multiply(image[index], weights[lo:hi, k].reshape(shape), out=product, dtype=np.int32)
            acc += product
        np.right_shift(acc, precision, out=acc)  # arithmetic shift: floor, as the C kernel's
        np.clip(acc, 0, 255, out=acc)
        out[lo:hi] = acc

    blocks = [(lo, min(lo + block, out_size)) for lo in range(0, out_size, block)]
    if len(blocks) > 1 and _threads() > 1:
        for future in [_pool(_threads()).submit(run, lo, hi) for lo, hi in blocks]:
            future.result()
    else:
        for lo, hi in blocks:
            run(lo, hi)
    return out


def resize(image: np.ndarray, height: int, width: int, resample: int = BILINEAR) -> np.ndarray:
    """An HWC uint8 image resized to height x width (antialiased when shrinking), as torch computes it."""
    if resample not in _FILTERS:
        raise ValueError(f"resample {resample} is not supported (bilinear 2 or bicubic 3)")
    out = image
    if width != image.shape[1]:  # horizontal first, as torch: on the transposed image, so rows are gathered
        columns = np.ascontiguousarray(image.transpose(1, 0, 2))
        out = np.ascontiguousarray(_resample_rows(columns, width, resample).transpose(1, 0, 2))
    if height != image.shape[0]:
        out = _resample_rows(out, height, resample)
    return out
