"""Decode one file into the RGB picture a person would see, or say exactly why not.

EXIF orientation is applied; 16-bit and float images are scaled (not clipped) to 8 bits; palette
and alpha images are composited on white; CMYK is converted; animations take their first frame;
HEIC/HEIF decode when pillow-heif is installed. Large JPEGs are decoded at a reduced DCT scale that
still leaves at least twice the model's input size, which is several times faster and keeps the
embedding within the parity bound.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from imgsearch.errors import ImageDecodeError

_heif_registered = False


def register_heif() -> None:
    """Teach Pillow HEIC/HEIF if pillow-heif is installed (optional dependency)."""
    global _heif_registered
    if _heif_registered:
        return
    _heif_registered = True
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return
    register_heif_opener()


def decode(data: bytes, max_pixels: int, draft_side: int = 0) -> Image.Image:
    """An RGB image from encoded bytes. Raises ImageDecodeError with a short reason."""
    if not data:
        raise ImageDecodeError("empty file")
    register_heif()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise ImageDecodeError("not an image (unrecognised format)") from None
        except Image.DecompressionBombError:
            raise ImageDecodeError(f"decompression bomb (over {max_pixels} pixels)") from None
        except (OSError, ValueError, SyntaxError) as exc:
            raise ImageDecodeError(f"unreadable image header ({exc})") from None
        return _to_rgb(_load(image, max_pixels, draft_side))


def _load(image: Image.Image, max_pixels: int, draft_side: int) -> Image.Image:
    width, height = image.size
    if width * height > max_pixels:
        raise ImageDecodeError(f"decompression bomb ({width}x{height} pixels, limit index.max_pixels={max_pixels})")
    if width == 0 or height == 0:
        raise ImageDecodeError("image has no pixels")
    if draft_side and image.format == "JPEG" and min(width, height) > 2 * draft_side:
        image.draft("RGB", (2 * draft_side, 2 * draft_side))
    try:
        image.load()
        return _upright(image)
    except Image.DecompressionBombError:
        raise ImageDecodeError(f"decompression bomb (over {max_pixels} pixels)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageDecodeError(f"corrupt or truncated image ({_short(exc)})") from None


def _upright(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block must not cost the picture; keep it as stored
        return image


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I") or mode == "F":
        return _scale_to_8bit(image).convert("RGB")
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode in ("PA", "La"):
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _scale_to_8bit(image: Image.Image) -> Image.Image:
    """Map 16/32-bit integer and float pixels onto 0..255 by their declared or actual range."""
    pixels = np.asarray(image, dtype=np.float64)
    peak = float(pixels.max()) if pixels.size else 0.0
    if image.mode.startswith("I;16"):
        top = 65535.0
    elif image.mode == "F":
        top = 1.0 if peak <= 1.0 and float(pixels.min()) >= 0.0 else (peak or 1.0)
    else:  # 32-bit integer: usually 16-bit data widened by the decoder
        top = 255.0 if peak <= 255 else 65535.0 if peak <= 65535 else peak
    scaled = np.clip(pixels / top * 255.0, 0, 255).round().astype(np.uint8)
    return Image.fromarray(scaled, mode="L")


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:120]
