"""Tests for service.imaging: strict decoding, faithful re-encoding, limits and errors.

Every image is generated in memory with Pillow/numpy (or written by hand where Pillow cannot
produce the case, e.g. a PNG header declaring 30000x30000 pixels).
"""

from __future__ import annotations

import io
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms, ImageFile

from service.imaging import (
    SUPPORTED_INPUT_FORMATS,
    SUPPORTED_OUTPUT_FORMATS,
    DecodedImage,
    ImageError,
    ImageTooLarge,
    InvalidImage,
    UnsupportedFormat,
    UnsupportedImage,
    decode_image,
    encode_image,
    format_for_path,
    from_tensor,
    media_type_for,
    normalize_format,
    output_format_for,
    read_image,
    suffix_for,
    to_tensor,
    write_image,
)
from service.imaging.decode import _pillow_errors

RNG_SEED = 1234


def _noise(shape: tuple[int, ...], dtype: type = np.uint8, seed: int = RNG_SEED) -> np.ndarray:
    info = np.iinfo(dtype)
    return np.random.default_rng(seed).integers(
        info.min, info.max, shape, dtype=dtype, endpoint=True
    )


def _save(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _open(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload))
    )


def _handmade_png(width: int, height: int, depth: int, colour_type: int, idat: bytes) -> bytes:
    """A PNG written byte by byte, for headers Pillow would never write."""
    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(idat))
        + _png_chunk(b"IEND", b"")
    )


def _assert_error(
    excinfo: pytest.ExceptionInfo[ImageError],
    cls: type[ImageError],
    status: int,
    *words: str,
) -> None:
    err = excinfo.value
    assert type(err) is cls
    assert err.status == status
    assert isinstance(err.detail, str) and err.detail.strip()
    assert str(err) == err.detail
    assert err.to_dict() == {"error": err.error, "detail": err.detail}
    for word in words:
        assert word.lower() in err.detail.lower(), (word, err.detail)


# --------------------------------------------------------------------------- round trips


def test_rgb_png_round_trip_is_exact() -> None:
    pixels = _noise((17, 23, 3))
    decoded = decode_image(_save(Image.fromarray(pixels), "PNG"))
    assert (decoded.format, decoded.mode, decoded.bit_depth) == ("PNG", "RGB", 8)
    assert (decoded.width, decoded.height) == (23, 17)
    assert not decoded.grayscale and decoded.alpha is None
    assert decoded.rgb.dtype == np.float32 and decoded.rgb.shape == (17, 23, 3)
    np.testing.assert_array_equal(np.rint(decoded.rgb * 255).astype(np.uint8), pixels)
    data, media_type = encode_image(decoded.rgb, decoded)
    assert media_type == "image/png"
    out = _open(data)
    assert (out.format, out.mode) == ("PNG", "RGB")
    np.testing.assert_array_equal(np.asarray(out), pixels)


def test_rgba_alpha_is_passed_through_bit_exact() -> None:
    pixels = _noise((16, 20, 4))
    pixels[0, 0, 3], pixels[0, 1, 3] = 0, 255
    decoded = decode_image(_save(Image.fromarray(pixels), "PNG"))
    assert decoded.alpha is not None and decoded.alpha.dtype == np.uint8
    np.testing.assert_array_equal(decoded.alpha, pixels[..., 3])
    # the network changed the colours: alpha must still come back untouched
    data, _ = encode_image(1.0 - decoded.rgb, decoded)
    out = np.asarray(_open(data))
    assert out.shape == (16, 20, 4)
    np.testing.assert_array_equal(out[..., 3], pixels[..., 3])
    np.testing.assert_array_equal(out[..., :3], 255 - pixels[..., :3])


def test_grayscale_l_stays_l() -> None:
    pixels = _noise((12, 9))
    decoded = decode_image(_save(Image.fromarray(pixels), "PNG"))
    assert decoded.grayscale and decoded.mode == "L" and decoded.bit_depth == 8
    np.testing.assert_array_equal(decoded.rgb[..., 0], decoded.rgb[..., 2])
    out = _open(encode_image(decoded.rgb, decoded)[0])
    assert out.mode == "L"
    np.testing.assert_array_equal(np.asarray(out), pixels)


def test_grayscale_output_uses_bt601_luma() -> None:
    decoded = decode_image(_save(Image.new("L", (4, 3), 0), "PNG"))
    red = np.zeros((3, 4, 3), np.float32)
    red[..., 0] = 1.0
    out = _open(encode_image(red, decoded)[0])
    assert out.mode == "L"
    assert np.all(np.asarray(out) == round(0.299 * 255))


def test_la_keeps_gray_and_alpha() -> None:
    pixels = _noise((10, 11, 2))
    decoded = decode_image(_save(Image.fromarray(pixels), "PNG"))
    assert decoded.grayscale and decoded.mode == "LA"
    np.testing.assert_array_equal(decoded.alpha, pixels[..., 1])
    out = _open(encode_image(decoded.rgb, decoded)[0])
    assert out.mode == "LA"
    np.testing.assert_array_equal(np.asarray(out), pixels)


def test_palette_with_transparency_becomes_rgba() -> None:
    indices = (np.arange(8 * 6).reshape(6, 8) % 4).astype(np.uint8)
    image = Image.fromarray(indices, mode="L").convert("P")
    palette = [255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30]
    image.putpalette(palette + [0] * (768 - len(palette)))
    decoded = decode_image(_save(image, "PNG", transparency=2))
    assert decoded.mode == "P" and not decoded.grayscale
    assert decoded.alpha is not None
    np.testing.assert_array_equal(decoded.alpha, np.where(indices == 2, 0, 255))
    expected = np.array(palette, np.uint8).reshape(4, 3)[indices]
    np.testing.assert_array_equal(np.rint(decoded.rgb * 255).astype(np.uint8), expected)
    out = _open(encode_image(decoded.rgb, decoded)[0])
    assert out.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(out)[..., 3], decoded.alpha)


def test_palette_without_transparency_becomes_rgb() -> None:
    image = Image.fromarray(_noise((5, 7, 3))).quantize(colors=8)
    decoded = decode_image(_save(image, "PNG"))
    assert decoded.mode == "P" and decoded.alpha is None and not decoded.grayscale
    np.testing.assert_array_equal(
        np.rint(decoded.rgb * 255).astype(np.uint8), np.asarray(image.convert("RGB"))
    )


def test_one_bit_decodes_as_gray_and_writes_l() -> None:
    bits = _noise((9, 13)) > 127
    decoded = decode_image(_save(Image.fromarray(bits), "PNG"))
    assert decoded.mode == "1" and decoded.grayscale and decoded.bit_depth == 8
    np.testing.assert_array_equal(decoded.rgb[..., 1], bits.astype(np.float32))
    out = _open(encode_image(decoded.rgb, decoded)[0])
    assert out.mode == "L"
    np.testing.assert_array_equal(np.asarray(out), np.where(bits, 255, 0))


@pytest.mark.parametrize("icc_profile", [None, b"not an icc profile at all" * 8])
def test_cmyk_jpeg_decodes_to_rgb(icc_profile: bytes | None) -> None:
    image = Image.new("CMYK", (16, 8), (0, 255, 255, 0))  # pure red in naive CMYK
    options: dict[str, object] = {"quality": 95}
    if icc_profile is not None:
        options["icc_profile"] = icc_profile
    decoded = decode_image(_save(image, "JPEG", **options))
    assert (decoded.format, decoded.mode, decoded.grayscale) == ("JPEG", "CMYK", False)
    assert decoded.icc_profile is None  # a CMYK profile must not tag RGB output
    np.testing.assert_allclose(decoded.rgb.mean(axis=(0, 1)), [1.0, 0.0, 0.0], atol=0.03)
    assert _open(encode_image(decoded.rgb, decoded)[0]).mode == "RGB"


def test_16bit_grayscale_png_stays_16bit() -> None:
    values = _noise((14, 15), np.uint16)
    values[0, :3] = [0, 1, 65535]
    decoded = decode_image(_save(Image.fromarray(values), "PNG"))
    assert decoded.grayscale and decoded.bit_depth == 16 and decoded.mode.startswith("I;16")
    np.testing.assert_array_equal(np.rint(decoded.rgb[..., 0] * 65535).astype(np.uint16), values)
    out = _open(encode_image(decoded.rgb, decoded)[0])
    assert out.mode == "I;16"
    diff = np.abs(np.asarray(out).astype(np.int64) - values.astype(np.int64))
    assert diff.max() <= 1


@pytest.mark.parametrize(("mode", "key"), [("L", 5), ("RGB", (5, 5, 5))])
def test_8bit_colour_key_becomes_alpha(mode: str, key: int | tuple[int, ...]) -> None:
    image = Image.new(mode, (4, 3), 200 if mode == "L" else (200, 200, 200))
    image.putpixel((1, 2), key)
    decoded = decode_image(_save(image, "PNG", transparency=key))
    expected = np.full((3, 4), 255, np.uint8)
    expected[2, 1] = 0
    np.testing.assert_array_equal(decoded.alpha, expected)
    assert decoded.grayscale == (mode == "L")
    assert _open(encode_image(decoded.rgb, decoded)[0]).mode == mode + "A"


def test_16bit_grayscale_colour_key_becomes_alpha() -> None:
    values = np.full((3, 4), 4000, np.uint16)
    values[1, 2] = 7
    decoded = decode_image(_save(Image.fromarray(values), "PNG", transparency=7))
    assert decoded.bit_depth == 16
    np.testing.assert_array_equal(decoded.alpha, np.where(values == 7, 0, 255))


def test_16bit_gray_alpha_png_is_reported_as_gray() -> None:
    gray_alpha = _noise((4, 5, 2), np.uint16)
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in gray_alpha)
    decoded = decode_image(_handmade_png(5, 4, 16, 4, rows))
    # Pillow delivers this as 8-bit RGBA; it is still a gray image with alpha
    assert decoded.grayscale and decoded.bit_depth == 8
    np.testing.assert_array_equal(decoded.alpha, gray_alpha[..., 1] >> 8)
    assert _open(encode_image(decoded.rgb, decoded)[0]).mode == "LA"


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA"])
def test_tiff_8bit_round_trip(mode: str) -> None:
    shape = {"RGB": (9, 10, 3), "L": (9, 10), "RGBA": (9, 10, 4)}[mode]
    pixels = _noise(shape)
    decoded = decode_image(_save(Image.fromarray(pixels), "TIFF"))
    assert decoded.format == "TIFF" and decoded.bit_depth == 8
    data, media_type = encode_image(decoded.rgb, decoded)
    assert media_type == "image/tiff"
    out = _open(data)
    assert (out.format, out.mode) == ("TIFF", mode)
    np.testing.assert_array_equal(np.asarray(out), pixels)


def test_tiff_16bit_round_trip() -> None:
    values = _noise((8, 12), np.uint16)
    decoded = decode_image(_save(Image.fromarray(values), "TIFF"))
    assert decoded.bit_depth == 16 and decoded.grayscale
    out = _open(encode_image(decoded.rgb, decoded, "tif")[0])
    assert (out.format, out.mode) == ("TIFF", "I;16")
    np.testing.assert_array_equal(np.asarray(out), values)


def test_float_tiff_is_clipped_to_unit_range() -> None:
    values = np.array([[-0.5, 0.25], [0.75, 1.5]], np.float32)
    decoded = decode_image(_save(Image.fromarray(values), "TIFF"))
    assert decoded.mode == "F" and decoded.grayscale and decoded.bit_depth == 16
    np.testing.assert_allclose(decoded.rgb[..., 0], [[0.0, 0.25], [0.75, 1.0]])


def test_int32_tiff_is_read_on_16bit_scale() -> None:
    values = np.array([[-5, 0], [32768, 70000]], np.int32)
    decoded = decode_image(_save(Image.fromarray(values), "TIFF"))
    assert decoded.mode == "I" and decoded.bit_depth == 16
    np.testing.assert_allclose(decoded.rgb[..., 0], [[0.0, 0.0], [32768 / 65535, 1.0]])


@pytest.mark.parametrize("channels", [3, 4])
def test_webp_lossless_round_trip(channels: int) -> None:
    pixels = _noise((15, 16, channels))
    decoded = decode_image(_save(Image.fromarray(pixels), "WEBP", lossless=True, exact=True))
    assert decoded.format == "WEBP"
    np.testing.assert_array_equal(np.rint(decoded.rgb * 255).astype(np.uint8), pixels[..., :3])
    data, media_type = encode_image(decoded.rgb, decoded, lossless=True)
    assert media_type == "image/webp"
    out = _open(data)
    assert out.format == "WEBP"
    np.testing.assert_array_equal(np.asarray(out), pixels)


def test_webp_lossy_keeps_alpha_exact_and_gray_as_rgb() -> None:
    pixels = _noise((12, 12, 2))
    decoded = decode_image(_save(Image.fromarray(pixels), "PNG"))
    out = _open(encode_image(decoded.rgb, decoded, "WebP", quality=80)[0])
    assert out.mode == "RGBA"  # WebP has no grayscale mode
    np.testing.assert_array_equal(np.asarray(out)[..., 3], pixels[..., 1])


def test_jpeg_default_quality_is_close() -> None:
    yy, xx = np.mgrid[0:48, 0:64]
    smooth = np.stack([xx * 4, yy * 5, (xx + yy) * 2], axis=2).astype(np.uint8)
    decoded = decode_image(_save(Image.fromarray(smooth), "PNG"))
    data, media_type = encode_image(decoded.rgb, decoded, "jpg")
    assert media_type == "image/jpeg"
    out = _open(data)
    assert (out.format, out.mode, out.size) == ("JPEG", "RGB", (64, 48))
    error = np.abs(np.asarray(out).astype(np.float32) - smooth.astype(np.float32))
    assert error.mean() < 2.0


def test_jpeg_output_drops_alpha() -> None:
    decoded = decode_image(_save(Image.fromarray(_noise((6, 6, 4))), "PNG"))
    assert _open(encode_image(decoded.rgb, decoded, "JPEG")[0]).mode == "RGB"


def test_jpeg_grayscale_stays_grayscale() -> None:
    decoded = decode_image(_save(Image.fromarray(_noise((6, 6))), "JPEG"))
    assert decoded.grayscale and decoded.format == "JPEG"
    assert _open(encode_image(decoded.rgb, decoded)[0]).mode == "L"


def test_exif_orientation_is_applied() -> None:
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[...] = (0, 0, 255)
    stored[:10, :10] = (255, 0, 0)  # red block top-left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
    data = _save(Image.fromarray(stored), "JPEG", quality=95, exif=exif.tobytes())
    decoded = decode_image(data)
    assert decoded.rgb.shape == (40, 20, 3)
    # rotating clockwise moves the top-left block to the top-right
    np.testing.assert_allclose(decoded.rgb[1:9, 11:19].mean(axis=(0, 1)), [1, 0, 0], atol=0.05)
    np.testing.assert_allclose(decoded.rgb[1:9, 1:9].mean(axis=(0, 1)), [0, 0, 1], atol=0.05)
    out = _open(encode_image(decoded.rgb, decoded)[0])
    assert out.size == (20, 40)
    assert out.getexif().get(0x0112) is None  # viewers must not rotate a second time


def test_bmp_input_is_answered_as_png() -> None:
    pixels = _noise((5, 6, 3))
    decoded = decode_image(_save(Image.fromarray(pixels), "BMP"))
    assert decoded.format == "BMP"
    assert output_format_for(decoded) == "PNG"
    data, media_type = encode_image(decoded.rgb, decoded)
    assert media_type == "image/png"
    np.testing.assert_array_equal(np.asarray(_open(data)), pixels)


def test_mpo_camera_jpeg_decodes_first_frame_as_jpeg() -> None:
    first, second = Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))
    data = _save(first, "MPO", save_all=True, append_images=[second])
    assert Image.open(io.BytesIO(data)).format == "MPO"
    decoded = decode_image(data)
    assert decoded.format == "JPEG"
    np.testing.assert_allclose(decoded.rgb.mean(axis=(0, 1)), [1, 0, 0], atol=0.03)


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_animation_decodes_first_frame(fmt: str) -> None:
    frames = [Image.new("RGB", (6, 6), (0, 255, 0)), Image.new("RGB", (6, 6), (255, 0, 255))]
    options = {"lossless": True} if fmt == "WEBP" else {}
    data = _save(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, **options)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 2
    decoded = decode_image(data)
    np.testing.assert_allclose(decoded.rgb.mean(axis=(0, 1)), [0, 1, 0], atol=0.01)


def test_icc_profile_is_passed_through_when_it_matches() -> None:
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    decoded = decode_image(_save(Image.fromarray(_noise((4, 4, 3))), "PNG", icc_profile=srgb))
    assert decoded.icc_profile == srgb
    for fmt in SUPPORTED_OUTPUT_FORMATS:
        assert _open(encode_image(decoded.rgb, decoded, fmt)[0]).info.get("icc_profile") == srgb
    # an RGB profile on a grayscale image is dropped instead of mis-tagging the output
    gray = decode_image(_save(Image.fromarray(_noise((4, 4))), "PNG", icc_profile=srgb))
    assert gray.icc_profile is None


def test_gray_icc_profile_is_kept_for_gray_output_only() -> None:
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    gray_profile = srgb[:16] + b"GRAY" + srgb[20:]  # only the colour-space field is checked
    data = _save(Image.fromarray(_noise((4, 4))), "PNG", icc_profile=gray_profile)
    decoded = decode_image(data)
    assert decoded.icc_profile == gray_profile
    png = _open(encode_image(decoded.rgb, decoded, "png")[0])
    assert png.info.get("icc_profile") == gray_profile
    webp = _open(encode_image(decoded.rgb, decoded, "webp")[0])  # written as RGB
    assert webp.mode == "RGB" and webp.info.get("icc_profile") is None


def test_quantisation_rounds_instead_of_truncating() -> None:
    decoded = decode_image(_save(Image.new("RGB", (2, 2)), "PNG"))
    rgb = np.full((2, 2, 3), 100.6 / 255, np.float32)
    assert np.all(np.asarray(_open(encode_image(rgb, decoded)[0])) == 101)
    values16 = decode_image(_save(Image.fromarray(np.zeros((2, 2), np.uint16)), "PNG"))
    gray = np.full((2, 2, 3), 1000.6 / 65535, np.float32)
    assert np.all(np.asarray(_open(encode_image(gray, values16)[0])) == 1001)


def test_out_of_range_values_are_clipped() -> None:
    decoded = decode_image(_save(Image.new("RGB", (2, 1)), "PNG"))
    rgb = np.array([[[-0.5, 0.5, 2.0], [1.0, 0.0, 1.5]]], np.float32)
    np.testing.assert_array_equal(
        np.asarray(_open(encode_image(rgb, decoded)[0])), [[[0, 128, 255], [255, 0, 255]]]
    )


def test_decoded_arrays_are_read_only() -> None:
    decoded = decode_image(_save(Image.fromarray(_noise((3, 3, 4))), "PNG"))
    with pytest.raises(ValueError):
        decoded.rgb[0, 0, 0] = 0.5
    assert decoded.alpha is not None
    with pytest.raises(ValueError):
        decoded.alpha[0, 0] = 1


# --------------------------------------------------------------------------- errors


def test_empty_bytes_is_invalid() -> None:
    with pytest.raises(InvalidImage) as excinfo:
        decode_image(b"")
    _assert_error(excinfo, InvalidImage, 400, "empty")


def test_random_garbage_is_invalid() -> None:
    with pytest.raises(InvalidImage) as excinfo:
        decode_image(_noise((4096,)).tobytes())
    _assert_error(excinfo, InvalidImage, 400, "not a recognisable image")


def test_garbage_after_png_signature_is_invalid() -> None:
    with pytest.raises(InvalidImage) as excinfo:
        decode_image(b"\x89PNG\r\n\x1a\n" + _noise((256,)).tobytes())
    _assert_error(excinfo, InvalidImage, 400, "PNG")


def test_text_file_is_invalid() -> None:
    text = b"Hello, this is a plain text file, definitely not an image.\n" * 3
    with pytest.raises(InvalidImage) as excinfo:
        decode_image(text)
    _assert_error(excinfo, InvalidImage, 400, "not a recognisable image")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file_is_invalid(fmt: str) -> None:
    complete = _save(Image.fromarray(_noise((64, 64, 3))), fmt)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    with pytest.raises(InvalidImage) as excinfo:
        decode_image(complete[: len(complete) // 2])
    _assert_error(excinfo, InvalidImage, 400, fmt, "truncated")


@pytest.mark.parametrize(("fmt", "options"), [("GIF", {}), ("ICO", {"sizes": [(16, 16)]})])
def test_other_image_formats_are_unsupported(fmt: str, options: dict[str, object]) -> None:
    data = _save(Image.new("RGB", (16, 16), (9, 9, 9)), fmt, **options)
    with pytest.raises(UnsupportedImage) as excinfo:
        decode_image(data)
    _assert_error(excinfo, UnsupportedImage, 415, fmt, "not supported")


def test_unsupported_format_is_named_from_its_signature_alone() -> None:
    # a Photoshop signature followed by nothing valid: named, never parsed
    with pytest.raises(UnsupportedImage) as excinfo:
        decode_image(b"8BPS\x00\x01" + bytes(64))
    _assert_error(excinfo, UnsupportedImage, 415, "PSD")


def test_decompression_bomb_header_is_rejected_before_decoding() -> None:
    bomb = _handmade_png(30_000, 30_000, 8, 0, bytes(30_001 * 4))
    assert len(bomb) < 1000
    with pytest.raises(ImageTooLarge) as excinfo:
        decode_image(bomb)  # default limit: Pillow's MAX_IMAGE_PIXELS
    _assert_error(excinfo, ImageTooLarge, 413, "30000x30000", "pixels")


def test_max_pixels_is_enforced_per_call() -> None:
    data = _save(Image.new("RGB", (20, 10)), "PNG")
    assert decode_image(data, max_pixels=200).width == 20  # exactly at the limit
    with pytest.raises(ImageTooLarge) as excinfo:
        decode_image(data, max_pixels=199)
    _assert_error(excinfo, ImageTooLarge, 413, "20x10", "199")


def test_default_pixel_limit_follows_pillow_without_changing_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = _save(Image.new("L", (20, 20)), "PNG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)
    with pytest.raises(ImageTooLarge):
        decode_image(data)
    # an explicit, larger per-call limit wins, and Pillow's global check does not interfere
    assert decode_image(data, max_pixels=1000).height == 20
    assert Image.MAX_IMAGE_PIXELS == 300


@pytest.mark.parametrize("exc", [Image.DecompressionBombError, Image.DecompressionBombWarning])
def test_pillow_bomb_errors_become_image_too_large(exc: type[Exception]) -> None:
    with pytest.raises(ImageTooLarge) as excinfo, _pillow_errors("the PNG image"):
        raise exc("Image size (1000 pixels) exceeds limit")
    _assert_error(excinfo, ImageTooLarge, 413, "decompression bomb")


def test_pixel_limits_are_thread_safe() -> None:
    data = _save(Image.fromarray(_noise((30, 40, 3))), "PNG")
    before = Image.MAX_IMAGE_PIXELS

    def attempt(limit: int) -> bool:
        try:
            decode_image(data, max_pixels=limit)
        except ImageTooLarge:
            return False
        return True

    limits = [1199, 1200] * 64
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(attempt, limits))
    assert results == [limit >= 1200 for limit in limits]
    assert before == Image.MAX_IMAGE_PIXELS


def test_max_bytes_is_enforced_before_decoding() -> None:
    data = _save(Image.new("RGB", (8, 8)), "PNG")
    assert decode_image(data, max_bytes=len(data)).width == 8
    with pytest.raises(ImageTooLarge) as excinfo:
        decode_image(data, max_bytes=len(data) - 1)
    _assert_error(excinfo, ImageTooLarge, 413, "bytes", f"{len(data) - 1}")


def test_load_truncated_images_setting_is_warned_about(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.warns(RuntimeWarning, match="LOAD_TRUNCATED_IMAGES"):
        decode_image(_save(Image.new("RGB", (2, 2)), "PNG"))


@pytest.mark.parametrize("fmt", ["gif", "bmp", "exr", ""])
def test_unknown_output_format_is_rejected(fmt: str) -> None:
    decoded = decode_image(_save(Image.new("RGB", (2, 2)), "PNG"))
    with pytest.raises(UnsupportedFormat) as excinfo:
        encode_image(decoded.rgb, decoded, fmt)
    _assert_error(excinfo, UnsupportedFormat, 422, "not supported")
    assert isinstance(excinfo.value, ValueError)


def test_lossless_jpeg_is_rejected() -> None:
    decoded = decode_image(_save(Image.new("RGB", (2, 2)), "PNG"))
    with pytest.raises(UnsupportedFormat) as excinfo:
        encode_image(decoded.rgb, decoded, "jpeg", lossless=True)
    _assert_error(excinfo, UnsupportedFormat, 422, "JPEG")


def test_image_too_wide_for_webp_is_rejected() -> None:
    decoded = decode_image(_save(Image.new("L", (16_384, 1)), "PNG"))
    with pytest.raises(UnsupportedFormat) as excinfo:
        encode_image(decoded.rgb, decoded, "webp")
    _assert_error(excinfo, UnsupportedFormat, 422, "WEBP", "16383")


def test_encode_rejects_wrong_shape_and_non_finite_values() -> None:
    decoded = decode_image(_save(Image.new("RGB", (4, 3)), "PNG"))
    with pytest.raises(ValueError, match="shape"):
        encode_image(np.zeros((4, 3, 3), np.float32), decoded)
    bad = np.zeros((3, 4, 3), np.float32)
    bad[1, 1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        encode_image(bad, decoded)
    with pytest.raises(ValueError, match="quality"):
        encode_image(decoded.rgb, decoded, "jpeg", quality=0)


# --------------------------------------------------------------------------- helpers


def test_tensor_round_trip() -> None:
    pixels = _noise((5, 7, 3))
    decoded = decode_image(_save(Image.fromarray(pixels), "PNG"))
    tensor = to_tensor(decoded)
    assert tensor.shape == (1, 3, 5, 7) and tensor.dtype == torch.float32
    assert torch.equal(tensor[0, 1], torch.from_numpy(decoded.rgb[..., 1].copy()))
    tensor[0, 0, 0, 0] = 7.0  # a copy: must not touch the decoded image
    assert decoded.rgb[0, 0, 0] <= 1.0
    back = from_tensor(tensor)
    assert back.shape == (5, 7, 3) and back.dtype == np.float32
    assert back[0, 0, 0] == 1.0  # clipped
    np.testing.assert_array_equal(back[1:], decoded.rgb[1:])
    np.testing.assert_array_equal(from_tensor(tensor[0].double() - 10), np.zeros((5, 7, 3)))
    with pytest.raises(ValueError):
        from_tensor(torch.zeros(2, 3, 5, 7))


def test_read_and_write_image_files(tmp_path: Path) -> None:
    folder = tmp_path
    source = folder / "in.bmp"
    pixels = _noise((6, 8, 3))
    source.write_bytes(_save(Image.fromarray(pixels), "BMP"))
    decoded = read_image(source, max_pixels=48)
    for name, fmt in [("a.png", "PNG"), ("b.JPEG", "JPEG"), ("c.webp", "WEBP"), ("d.tif", "TIFF")]:
        written = write_image(folder / name, decoded.rgb, decoded)
        assert _open(written.read_bytes()).format == fmt
    np.testing.assert_array_equal(np.asarray(_open((folder / "a.png").read_bytes())), pixels)
    write_image(folder / "forced.out", decoded.rgb, decoded, "png")
    assert _open((folder / "forced.out").read_bytes()).format == "PNG"
    with pytest.raises(UnsupportedFormat):
        write_image(folder / "e.gif", decoded.rgb, decoded)
    assert not (folder / "e.gif").exists()
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []
    with pytest.raises(ImageTooLarge) as excinfo:
        read_image(source, max_bytes=10)  # checked on the file size, before reading
    _assert_error(excinfo, ImageTooLarge, 413, "in.bmp", "bytes")
    with pytest.raises(ImageTooLarge):
        read_image(source, max_pixels=47)


def test_format_tables() -> None:
    assert SUPPORTED_INPUT_FORMATS == ("PNG", "JPEG", "WEBP", "TIFF", "BMP")
    assert SUPPORTED_OUTPUT_FORMATS == ("PNG", "JPEG", "WEBP", "TIFF")
    aliases = ("png", "JPG", "jpeg", "WebP", "tif", ".TIFF")
    expected = ["PNG", "JPEG", "JPEG", "WEBP", "TIFF", "TIFF"]
    assert [normalize_format(alias) for alias in aliases] == expected
    assert media_type_for("jpg") == "image/jpeg"
    assert media_type_for("TIFF") == "image/tiff"
    assert media_type_for("bmp") == "image/bmp"
    assert suffix_for("jpeg") == ".jpg"
    assert format_for_path("x/y.Tiff") == "TIFF"
    with pytest.raises(UnsupportedFormat):
        media_type_for("gif")
    with pytest.raises(UnsupportedFormat):
        format_for_path("no_suffix")


def test_decoded_image_validates_its_fields() -> None:
    rgb = np.zeros((2, 3, 3), np.float32)
    image = DecodedImage(rgb, None, False, 8, "PNG", "RGB")
    assert (image.width, image.height, image.has_alpha) == (3, 2, False)
    with pytest.raises(ValueError):
        DecodedImage(rgb.astype(np.float64), None, False, 8, "PNG", "RGB")
    with pytest.raises(ValueError):
        DecodedImage(rgb, np.zeros((3, 2), np.uint8), False, 8, "PNG", "RGBA")
    with pytest.raises(ValueError):
        DecodedImage(rgb, None, False, 12, "PNG", "RGB")
