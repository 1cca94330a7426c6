"""Decode one file into the RGB picture a person would see, or say exactly why not.

EXIF orientation is applied; 16-bit and float images are scaled (not clipped) to 8 bits; palette
and alpha images are composited on white; CMYK is converted; animations take their first frame.
Beyond what Pillow reads itself (AVIF among it), HEIC/HEIF decode through pi-heif (libheif), JPEG XL
through pylibjxl (libjxl) and camera RAW files through LibRaw (imgsearch.raw). Large JPEGs
are decoded at a reduced DCT scale that still leaves at least twice the model's input size, which is
several times faster and keeps the embedding within the parity bound. Other very large images are
box-reduced by a power of two straight after decoding, in their own mode, to no less than
REDUCED_SIDE times the model's input size, so a 30 KB PNG of 170 million pixels costs its native
pixels in memory and no more. A side longer than MAX_ASPECT times the other is cropped to its
centre: CLIP only looks at the central square, and resizing a 1x100000 strip's short side up to the
model's input size takes gigabytes. Any error a decoder raises on one file becomes that file's
reason, never the end of a run.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import hashlib
import io
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from imgsearch import raw
from imgsearch.errors import ImageDecodeError
from imgsearch.files import Unreadable, read_regular
from imgsearch.types import PROVENANCE_PREFIX

MAX_ASPECT = 20
REDUCED_SIDE = 8  # a reduced image keeps this many pixels per model input pixel: the model input stays the same
_STRIPE_PIXELS = 1 << 22  # rows converted at a time when reducing a mode that cannot be averaged as it is
_AVERAGED_AS_IS = {"L", "LA", "La", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "I", "F"}
_SIGNATURES = {
    b"\xff\xd8\xff": "JPEG",
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
    b"\xff\x0a": "JPEG XL",
    b"\x00\x00\x00\x0cJXL \r\n\x87\n": "JPEG XL",
}
# ISO-BMFF brands (bytes 8-12, after "ftyp") of the still-image formats
_BRANDS = {b"avif": "AVIF", b"avis": "AVIF", b"heic": "HEIF", b"heix": "HEIF", b"mif1": "HEIF", b"msf1": "HEIF"}
_BRANDS |= {b"heim": "HEIF", b"heis": "HEIF", b"hevc": "HEIF", b"hevx": "HEIF", b"crx ": "CR3"}
# Signatures of RAW formats that are not TIFF files
_RAW_SIGNATURES = (b"FUJIFILMCCD-RAW", b"IIRO", b"IIRS", b"MMOR", b"IIU\x00", b"FOVb", b"\x00MRM")

_heif_registered = False


def register_heif() -> None:
    """Teach Pillow HEIC/HEIF: pi-heif (libheif's decoder only; a dependency), else pillow-heif if installed."""
    global _heif_registered
    if _heif_registered:
        return
    _heif_registered = True
    try:
        from pi_heif import register_heif_opener
    except ImportError:
        try:
            from pillow_heif import register_heif_opener
        except ImportError:
            return
    register_heif_opener()


@dataclass(frozen=True)
class FileBytes:
    """A file as the index reads it: its bytes, their content hash, and its size and mtime at that read."""

    data: bytes
    size: int
    mtime_ns: int
    digest: str
    generated: bool  # a PNG written by `imgsearch generate`


BIG_FILE = 64 << 20  # a file larger than this must start like an image before it is read in full


def size_limit(max_pixels: int) -> int:
    """The most bytes a legal image of max_pixels pixels takes: 8 a pixel (uncompressed 16-bit RGBA), plus 64 MB of
    headers, previews and metadata. A larger file is refused before it is read (a 2 GB file named .jpg)."""
    return max_pixels * 8 + BIG_FILE


def read_file(path: str, max_bytes: int | None = None) -> FileBytes:
    """Read and hash a file as `index`, `import`, the Ray readers, image queries, `label`, thumbnails and the server
    do: one function, so that they agree, and so that none waits on a FIFO or reads a device or a huge file.

    Raises FileNotFoundError when the file (or a folder on its path) is gone, and ImageDecodeError with the reason
    when it cannot be read, is not a regular file (a FIFO, a symlink to /dev/zero), is larger than max_bytes, or is
    large and does not start like an image.
    """
    try:
        data, st = read_regular(path, max_bytes, _head_problem)
    except Unreadable as exc:
        raise ImageDecodeError(str(exc)) from None
    return FileBytes(data, st.st_size, st.st_mtime_ns, digest(data), is_generated(data))


def _head_problem(head: bytes, size: int) -> str | None:
    if size > BIG_FILE and _kind(head) is None and not head.startswith(b"BM"):
        return f"not an image ({size >> 20} MB that do not start like one)"
    return None


def digest(data: bytes) -> str:
    """The content hash the index keeps for a file's bytes (renames, duplicates, changes)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def read_indexed(path: Path, content_hash: str, max_pixels: int) -> bytes:
    """The bytes of an indexed file, if they are still what was indexed (else ImageDecodeError).

    What is served or shown from the index is only ever the content the index saw: a file replaced
    since, by an edit, by a FIFO or by a symlink to something else, is refused until it is indexed again.
    """
    try:
        found = read_file(str(path), size_limit(max_pixels))
    except FileNotFoundError:
        raise ImageDecodeError(f"{path.name} is gone since it was indexed (run `imgsearch index`)") from None
    except ImageDecodeError as exc:
        raise ImageDecodeError(f"cannot read {path.name} ({exc})") from None
    if found.digest != content_hash:
        raise ImageDecodeError(f"{path.name} changed since it was indexed (run `imgsearch index`)")
    return found.data


def decode(data: bytes, max_pixels: int, draft_side: int = 0, *, raw_file: bool = False) -> Image.Image:
    """An RGB image from encoded bytes. Raises ImageDecodeError with a short reason.

    With `draft_side` (the model's input size), a large image comes back reduced, its shorter side no
    less than twice that (JPEG, a RAW's preview) or REDUCED_SIDE times that (other formats). With
    `raw_file` (the file's name is a camera RAW's: raw.is_raw), the bytes go to LibRaw first.
    """
    return decode_sized(data, max_pixels, draft_side, raw_file=raw_file)[0]


def decode_sized(
    data: bytes, max_pixels: int, draft_side: int = 0, *, raw_file: bool = False
) -> tuple[Image.Image, tuple[int, int]]:
    """decode, and the picture's own (width, height) upright: what the file holds, not the reduced size."""
    if not data:
        raise ImageDecodeError("empty file")
    register_heif()
    try:
        image, size = _decode(data, max_pixels, draft_side, raw_file)
        return _to_rgb(_reduce(_crop_aspect(image), draft_side)), size
    except ImageDecodeError:
        raise
    except Exception as exc:  # a decoder's surprise on one file must not stop a run over thousands
        raise ImageDecodeError(f"cannot decode image ({type(exc).__name__}: {_short(exc)})") from None


def _decode(data: bytes, max_pixels: int, draft_side: int, raw_file: bool) -> tuple[Image.Image, tuple[int, int]]:
    """The picture upright, in its own mode, and its own size upright."""
    if raw_file:
        kind = _kind(data)
        try:
            found = raw.decode(data, max_pixels, draft_side, _picture)
        except raw.UnreadableHeader:
            if kind is None:  # LibRaw read past the end of a few bytes of text
                raise ImageDecodeError("not an image (unrecognised format)") from None
            raise
        if found is not None:
            return found
        if kind is None:
            raise ImageDecodeError("not an image (unrecognised format)")
        if kind in ("TIFF", "CR3", "RAW"):
            raise ImageDecodeError(f"camera RAW that LibRaw {raw.version()} cannot read (unknown camera or format)")
        # else an ordinary image under a RAW's name (a JPEG saved as .dng): decoded as what it is
    if _kind(data) == "JPEG XL":
        return _decode_jxl(data, max_pixels)
    return _decode_pillow(data, max_pixels, draft_side)


def _picture(data: bytes, max_pixels: int, draft_side: int) -> Image.Image:
    return _decode_pillow(data, max_pixels, draft_side)[0]


def _decode_pillow(data: bytes, max_pixels: int, draft_side: int) -> tuple[Image.Image, tuple[int, int]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            opened = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise ImageDecodeError(_unidentified(data)) from None
        except Image.DecompressionBombError:
            raise ImageDecodeError(f"decompression bomb (over {max_pixels} pixels)") from None
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise ImageDecodeError(f"corrupt or truncated image (unreadable header: {_short(exc)})") from None
        width, height = opened.size  # before a draft decode shrinks it
        image, turned = _load(opened, max_pixels, draft_side)
        return image, (height, width) if turned else (width, height)


def _decode_jxl(data: bytes, max_pixels: int) -> tuple[Image.Image, tuple[int, int]]:
    """JPEG XL through libjxl, which turns the picture by the codestream's orientation. That orientation is the
    one that counts: an Exif box in a JPEG XL file is not to be applied again (the JPEG XL specification)."""
    try:
        import pylibjxl
    except ImportError:  # a base dependency; missing only in an install made without dependencies
        raise ImageDecodeError("JPEG XL files need pylibjxl (pip install pylibjxl)") from None
    try:
        info = pylibjxl.probe(data)
    except Exception as exc:
        raise ImageDecodeError(f"corrupt or truncated image (unreadable header: {_short(exc)})") from None
    width, height = int(info["width"]), int(info["height"])
    if width * height > max_pixels:
        raise ImageDecodeError(f"decompression bomb ({width}x{height} pixels, limit index.max_pixels={max_pixels})")
    if width == 0 or height == 0:
        raise ImageDecodeError("image has no pixels")
    try:
        pixels = pylibjxl.decode(data)
    except Exception as exc:
        raise ImageDecodeError(f"corrupt or truncated image ({_short(exc)})") from None
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[..., 0]
    return Image.fromarray(np.ascontiguousarray(pixels)), (width, height)


def header_size(data: bytes, raw_file: bool = False) -> tuple[int, int]:
    """(width, height) upright, from the file's header, or (0, 0) if it cannot be read. No pixels are decoded
    (except a PNG's, to find its EXIF block)."""
    register_heif()
    if raw_file:
        found = raw.size(data)
        if found != (0, 0) or _kind(data) in (None, "TIFF", "CR3", "RAW"):
            return found
    try:
        if _kind(data) == "JPEG XL":
            import pylibjxl

            info = pylibjxl.probe(data)
            return int(info["width"]), int(info["height"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                return upright_size(image)
    except Exception:  # any decoder's complaint about one file is that file's reason, not the caller's end
        return 0, 0


def upright_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) as the picture is shown, from an opened image: EXIF orientations 5 to 8 stand it on its
    side. A broken EXIF block counts as none, as when decoding. (Reading a PNG's EXIF loads its pixels.)"""
    width, height = image.size
    return (height, width) if _sideways(image) else (width, height)


def _sideways(image: Image.Image) -> bool:
    try:
        return image.getexif().get(0x0112) in (5, 6, 7, 8)
    except Exception:
        return False


def _unidentified(data: bytes) -> str:
    """Pillow knows no format for these bytes: say whether they start like an image that is cut short."""
    kind = _kind(data)
    if kind is None:
        return "not an image (unrecognised format)"
    return f"corrupt or truncated image ({kind} signature, but the header cannot be read)"


def _kind(data: bytes) -> str | None:
    """What the first bytes say the file is ("JPEG", "HEIF", "TIFF", "RAW" ...), or None."""
    kind = next((name for magic, name in _SIGNATURES.items() if data.startswith(magic)), None)
    if kind is None and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        kind = "WebP"
    if kind is None and data[4:8] == b"ftyp":
        kind = _BRANDS.get(data[8:12])
    if kind is None and data.startswith(_RAW_SIGNATURES):
        kind = "RAW"
    return kind


def _load(image: Image.Image, max_pixels: int, draft_side: int) -> tuple[Image.Image, bool]:
    """The loaded image, upright, and whether standing it upright turned it a quarter."""
    width, height = image.size
    if width * height > max_pixels:
        raise ImageDecodeError(f"decompression bomb ({width}x{height} pixels, limit index.max_pixels={max_pixels})")
    if width == 0 or height == 0:
        raise ImageDecodeError("image has no pixels")
    if draft_side and image.format == "JPEG" and min(width, height) > 2 * draft_side:
        image.draft("RGB", (2 * draft_side, 2 * draft_side))
    try:
        image.load()
    except Image.DecompressionBombError:
        raise ImageDecodeError(f"decompression bomb (over {max_pixels} pixels)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageDecodeError(f"corrupt or truncated image ({_short(exc)})") from None
    stored = image.size
    image = _upright(image)
    return image, image.size != stored


def _upright(image: Image.Image) -> Image.Image:
    # A broken EXIF block must not cost the picture: keep it as stored. In place: no copy when no turn is needed.
    with contextlib.suppress(Exception):
        ImageOps.exif_transpose(image, in_place=True)
    return image


def _crop_aspect(image: Image.Image) -> Image.Image:
    """The central part of a strip, at most MAX_ASPECT times as long as it is wide."""
    w, h = image.size
    if w > MAX_ASPECT * h:
        left = (w - MAX_ASPECT * h) // 2
        return image.crop((left, 0, left + MAX_ASPECT * h, h))
    if h > MAX_ASPECT * w:
        top = (h - MAX_ASPECT * w) // 2
        return image.crop((0, top, w, top + MAX_ASPECT * w))
    return image


def _reduce(image: Image.Image, draft_side: int) -> Image.Image:
    """Box-reduce by a power of two that keeps the shorter side at least REDUCED_SIDE x draft_side.

    Only whole boxes, centred, are kept (at most factor - 1 pixels of the edges go): a partial box
    at an edge would change the geometry the model's resize and crop see.
    """
    times = min(image.size) // (REDUCED_SIDE * draft_side) if draft_side else 0
    if times < 2:
        return image
    factor = 1 << (times.bit_length() - 1)
    w, h = image.size
    left, top = w % factor // 2, h % factor // 2
    box = (left, top, left + w // factor * factor, top + h // factor * factor)
    if image.mode in _AVERAGED_AS_IS:
        return image.reduce(factor, box)
    return _reduce_in_stripes(image, factor, box)  # palette indices, bits, 16-bit: convert a few rows at a time


def _reduce_in_stripes(image: Image.Image, factor: int, box: tuple[int, int, int, int]) -> Image.Image:
    if image.mode in ("P", "PA"):
        mode = "RGBA" if image.mode == "PA" or "transparency" in image.info else "RGB"
    else:
        mode = {"1": "L"}.get(image.mode, "I" if image.mode.startswith("I;16") else "RGB")
    left, top, right, bottom = box
    out = Image.new(mode, ((right - left) // factor, (bottom - top) // factor))
    step = factor * max(1, _STRIPE_PIXELS // ((right - left) * factor))
    for y in range(top, bottom, step):
        stripe = image.crop((left, y, right, min(bottom, y + step))).convert(mode)
        out.paste(stripe.reduce(factor), (0, (y - top) // factor))
    return out.convert("I;16") if image.mode.startswith("I;16") else out


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
    pixels = np.asarray(image, dtype=np.float32)
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


def is_generated(data: bytes) -> bool:
    """A PNG written by `imgsearch generate`: it carries a text chunk keyed "imgsearch:generator"."""
    return data.startswith(b"\x89PNG\r\n\x1a\n") and (PROVENANCE_PREFIX + "generator\x00").encode() in data


def reader_pool(workers: int) -> cf.ThreadPoolExecutor:
    """The threads that read, hash and decode files ahead of the model (the pipeline's, a Ray actor's)."""
    return cf.ThreadPoolExecutor(workers, "imgsearch-read", initializer=_lower_priority)


def _lower_priority() -> None:
    """Decode threads yield the CPU to the model's threads and fill the gaps between its operations.

    The model is the bottleneck; preempting its thread team to decode ahead only slows it down: every operation
    waits for its last thread. At nice 10 a decode thread still took ~10% of a core from OpenVINO's threads (ViT-B-32
    bf16, 2 cores: index 23.4 images/s); at 19 the pipeline reaches what the cores allow (24.9-26.7 images/s, the
    bound from the model's and the reader's CPU-ms being 26-27). ONNX Runtime's image tower is unaffected (15.0).
    """
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
