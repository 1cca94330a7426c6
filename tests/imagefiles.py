"""Image files made on the fly, including the kinds Pillow reads but will not write (16-bit RGB PNG and TIFF)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

EXIF_ORIENTATION = 0x0112
# What a viewer does to the stored pixels for each EXIF orientation (2..8).
TURNS: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def encode(image: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def with_orientation(image: Image.Image, orientation: int, **kw: object) -> bytes:
    """A JPEG of the stored pixels, tagged with an EXIF orientation."""
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    return encode(image, "JPEG", exif=exif, **kw)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def raw_png(width: int, height: int, depth: int, color_type: int, rows: list[bytes]) -> bytes:
    """A PNG written by hand (filter 0 on every row), for what Pillow will not write or will not claim."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    body = zlib.compress(b"".join(b"\0" + r for r in rows))
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", body) + png_chunk(b"IEND", b"")


def widen(image: Image.Image) -> np.ndarray:
    """8-bit RGB widened exactly to 16 bits (v * 257: 255 becomes 65535)."""
    return np.asarray(image.convert("RGB"), np.uint16) * 257


def rgb16_png(pixels: np.ndarray) -> bytes:
    h, w, _ = pixels.shape
    return raw_png(w, h, 16, 2, [row.astype(">u2").tobytes() for row in pixels])


def rgb16_tiff(pixels: np.ndarray) -> bytes:
    """An uncompressed little-endian 16-bit RGB TIFF, one strip."""
    h, w, _ = pixels.shape
    data = pixels.astype("<u2").tobytes()
    ifd_at = 16 + len(data)
    tags = [(256, 3, 1, w), (257, 3, 1, h), (258, 3, 3, 8), (259, 3, 1, 1), (262, 3, 1, 2)]
    tags += [(273, 4, 1, 16), (277, 3, 1, 3), (278, 3, 1, h), (279, 4, 1, len(data)), (284, 3, 1, 1)]
    entries = b"".join(
        struct.pack("<HHII", t, k, n, v) if k == 4 or n > 1 else struct.pack("<HHIHH", t, k, n, v, 0)
        for t, k, n, v in tags
    )
    head = b"II*\0" + struct.pack("<I", ifd_at) + struct.pack("<HHH", 16, 16, 16) + b"\0\0"  # BitsPerSample at 8
    return head + data + struct.pack("<H", len(tags)) + entries + b"\0\0\0\0"


def gray16(image: Image.Image, fmt: str) -> bytes:
    """A 16-bit grayscale PNG or TIFF (Pillow mode I;16) of an 8-bit picture, widened exactly."""
    return encode(Image.fromarray(np.asarray(image.convert("L"), np.uint16) * 257), fmt)
