"""Decoding: every awkward kind of file becomes the picture a person sees, or a recorded reason."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from imgsearch.errors import ImageDecodeError
from imgsearch.indexer.images import decode

LIMIT = 178_956_970


def encode(image: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def gradient(w: int = 64, h: int = 48) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.uint8)
    rgb = np.stack([np.tile(x, (h, 1)), np.tile(x[::-1], (h, 1)), np.full((h, w), 90, np.uint8)], axis=-1)
    return Image.fromarray(rgb)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims huge dimensions: the signature and IHDR of a decompression bomb."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"this is a text file, not a JPEG\n", "not an image"),
        (encode(gradient(256, 256), "JPEG", quality=95)[:1500], "corrupt or truncated"),
        (encode(gradient(), "PNG")[:100], "corrupt or truncated"),
        (png_header_only(200_000, 200_000), "decompression bomb"),
    ],
    ids=["empty", "text", "truncated-jpeg", "truncated-png", "bomb"],
)
def test_bad_files_raise_with_reason(data: bytes, reason: str) -> None:
    with pytest.raises(ImageDecodeError, match=reason):
        decode(data, LIMIT)


def test_png_with_bad_crc_is_refused() -> None:
    data = bytearray(encode(gradient(), "PNG"))
    idat = data.index(b"IDAT")
    data[idat + 10] ^= 0xFF
    with pytest.raises(ImageDecodeError):
        decode(bytes(data), LIMIT)


def test_exif_rotation_is_applied() -> None:
    image = gradient(64, 32)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    decoded = decode(encode(image, "JPEG", exif=exif, quality=95), LIMIT)
    assert decoded.size == (32, 64)
    upright = image.transpose(Image.Transpose.ROTATE_270)
    diff = np.abs(np.asarray(decoded, np.int16) - np.asarray(upright, np.int16)).mean()
    assert diff < 3


def test_16bit_png_is_scaled_not_clipped() -> None:
    values = np.linspace(0, 65535, 64 * 16, dtype=np.uint16).reshape(16, 64)
    decoded = np.asarray(decode(encode(Image.fromarray(values), "PNG"), LIMIT))
    assert decoded.shape == (16, 64, 3)
    assert decoded[..., 0].min() == 0 and decoded[..., 0].max() == 255
    assert 100 < decoded[8, 32, 0] < 155  # mid-grey stays mid-grey


def test_16bit_tiff_is_scaled() -> None:
    values = np.full((8, 8), 32768, dtype=np.uint16)
    decoded = np.asarray(decode(encode(Image.fromarray(values), "TIFF"), LIMIT))
    assert 120 <= decoded[0, 0, 0] <= 135


def test_palette_with_transparency_composites_on_white() -> None:
    image = Image.new("P", (8, 8), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.paste(1, (0, 0, 4, 8))
    decoded = np.asarray(decode(encode(image, "PNG", transparency=0), LIMIT))
    assert tuple(decoded[0, 0]) == (255, 0, 0)
    assert tuple(decoded[0, 7]) == (255, 255, 255)


def test_rgba_composites_on_white_and_cmyk_converts() -> None:
    rgba = Image.new("RGBA", (4, 4), (0, 0, 255, 0))
    assert tuple(np.asarray(decode(encode(rgba, "PNG"), LIMIT))[0, 0]) == (255, 255, 255)
    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))
    r, g, b = np.asarray(decode(encode(cmyk, "JPEG"), LIMIT))[0, 0]
    assert r > 200 and g < 60 and b < 60


def test_animated_gif_takes_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    r, g, _ = np.asarray(decode(buf.getvalue(), LIMIT))[0, 0]
    assert r > 200 and g < 50


def test_large_jpeg_draft_decodes_at_least_twice_the_model_size() -> None:
    big = gradient(2000, 1500).resize((2000, 1500))
    decoded = decode(encode(big, "JPEG"), LIMIT, draft_side=224)
    assert min(decoded.size) >= 448 and decoded.size[0] < 2000
    assert decode(encode(big, "JPEG"), LIMIT).size == (2000, 1500)


def test_grayscale_and_bilevel_become_rgb() -> None:
    assert decode(encode(Image.new("L", (4, 4), 7), "PNG"), LIMIT).mode == "RGB"
    assert decode(encode(Image.new("1", (4, 4), 1), "PNG"), LIMIT).mode == "RGB"
