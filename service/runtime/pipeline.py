"""The memory-aware steps of the restore path that every front-end shares (``POST /restore``
and jobs, in service.api.restore): header → estimate → admission → decode → compact → session
→ batcher → HWC → encode → memory returned.

Why this order: admission only protects the process if every request that holds a whole image
goes through it, and it keeps the peak low and known. The header gives the size, so the request
reserves its estimated peak (service.runtime.memory) before a pixel is decoded; the decoded
float32 pixels become the compact condition and are dropped before the session opens; the
session's state is dropped before encoding; after a large request the freed heap is handed back
to the system. The blocking steps here run in worker threads (the callers use
``asyncio.to_thread``), so the event loop, and ``/healthz``, stay responsive.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np
import torch

from service.imaging import DecodedImage, decode_image, to_tensor
from service.imaging.errors import UnsupportedFormat
from service.imaging.formats import (
    DEFAULT_OUTPUT_FORMAT,
    SUPPORTED_OUTPUT_FORMATS,
    normalize_format,
)
from service.restoration import TilingPolicy
from service.runtime.header import ImageHeader, read_header
from service.runtime.memory import MB, MemoryEstimate, estimate_request, release_memory
from service.runtime.task import TaskModel
from service.settings import Settings
from service.tiling.state import row_strips

TRIM_AFTER_BYTES = 64 * MB
"""Requests estimated above this return freed heap pages to the system when they end."""


@dataclass(frozen=True)
class CompactUpload:
    """A decoded upload as the session stores it: (1, 3, H, W) uint8 for 8-bit pixels, else
    float32, plus the decoded image's metadata (mode, alpha, ICC) for encoding, without its
    float pixels."""

    pixels: torch.Tensor
    like: DecodedImage

    @property
    def height(self) -> int:
        return int(self.pixels.shape[-2])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[-1])


def tiling_policy(settings: Settings, tile: int | None) -> TilingPolicy:
    """The request's tiling: a client's tile size (which also tiles one-pass kinds), else the
    server's."""
    size = tile or settings.tile_size
    return TilingPolicy(tile=size, overlap=min(settings.tile_overlap, size - 8),
                        whole_max_pixels=settings.whole_image_max_pixels,
                        force_tiles=tile is not None)


def encoded_format(input_format: str, fmt: str | None) -> str | None:
    """The format the result will be encoded as (the encoder's rule: ``fmt``, else the input's
    when writable, else PNG); None for an unknown ``fmt``, whose error comes later."""
    if fmt is not None:
        try:
            return normalize_format(fmt)
        except UnsupportedFormat:
            return None
    return input_format if input_format in SUPPORTED_OUTPUT_FORMATS else DEFAULT_OUTPUT_FORMAT


def estimate_for(task: TaskModel, settings: Settings, tile: int | None, height: int, width: int,
                 *, eight_bit: bool = True, body_bytes: int = 0,
                 output_format: str | None = None) -> MemoryEstimate:
    """The request's estimate, for either orientation (EXIF may swap width and height); an
    unknown ``output_format`` counts the costliest encoder."""
    policy = tiling_policy(settings, tile)
    best: MemoryEstimate | None = None
    for h, w in {(height, width), (width, height)}:
        est = estimate_request(task.kind, h, w, tile=policy.tile_for(task.kind, h, w),
                               overlap=policy.overlap, eight_bit=eight_bit,
                               body_bytes=body_bytes, output_format=output_format)
        if best is None or est.peak > best.peak:
            best = est
    assert best is not None
    return best


def header_estimate(task: TaskModel, settings: Settings, tile: int | None, body: bytes,
                    fmt: str | None = None) -> tuple[ImageHeader | None, MemoryEstimate | None]:
    """The upload's header and estimate (encoded as ``fmt``, else like the input), or (None,
    None) when the header is unreadable (the decoder then reports why)."""
    header = read_header(body)
    if header is None:
        return None, None
    return header, estimate_for(task, settings, tile, header.height, header.width,
                                eight_bit=header.eight_bit, body_bytes=len(body),
                                output_format=encoded_format(header.format, fmt))


def compact(image: DecodedImage) -> CompactUpload:
    """Blocking: the condition tensor (uint8 for 8-bit pixels: exactly ``k / 255``) and the
    image without its float pixels (a zero-cost placeholder of the same shape)."""
    if image.bit_depth == 8:
        height, width = image.height, image.width
        pixels = torch.empty(1, 3, height, width, dtype=torch.uint8)
        out = pixels[0].numpy()
        for rows in row_strips(3, height, width):
            strip = image.rgb[rows] * np.float32(255)
            np.rint(strip, out=strip)
            out[:, rows] = strip.transpose(2, 0, 1)
    else:
        pixels = to_tensor(image)
    placeholder = np.broadcast_to(np.zeros((1, 1, 3), np.float32), image.rgb.shape)
    return CompactUpload(pixels, dataclasses.replace(image, rgb=placeholder))


def decode_compact(body: bytes, settings: Settings, scale: int) -> CompactUpload:
    """Blocking: decode (limits checked from the header first) and compact; raises
    ``ImageError`` for bad input."""
    image = decode_image(body, max_pixels=settings.max_pixels,
                         max_bytes=settings.max_upload_bytes, output_scale=scale)
    return compact(image)


def to_hwc(restored: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) in [0, 1] -> contiguous float32 (H, W, 3), the encoder's input."""
    return np.ascontiguousarray(restored[0].permute(1, 2, 0).numpy())


@contextlib.asynccontextmanager
async def returning_memory(estimate: MemoryEstimate | None) -> AsyncIterator[None]:
    """After the block, give freed heap back to the system if the request was large."""
    try:
        yield
    finally:
        if estimate is not None and estimate.peak >= TRIM_AFTER_BYTES:
            await asyncio.to_thread(release_memory)
