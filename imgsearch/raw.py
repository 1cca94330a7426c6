"""Camera RAW files through LibRaw (rawpy): the camera's own preview when it is big enough, else a half-size demosaic.

A RAW holds a sensor mosaic that must be demosaiced (about a second for 24 MP at half size on a small CPU) and,
in nearly every camera's files, a JPEG preview the camera rendered from it, often at full size. The model needs
only twice its input (as for JPEG draft decoding), so the preview is used whenever it is that large and has the
sensor's shape (some cameras letterbox a 4:3 sensor into a 16:9 preview); otherwise the mosaic is demosaiced at
half size (LibRaw's half_size: one pixel per 2x2 Bayer cell, no interpolation), never at full size. The camera's
orientation is honoured either way. The size LibRaw reads from the header is checked against index.max_pixels
before any pixel data is unpacked.

The files are told apart by their names (SUFFIXES): most RAW formats are TIFF files whose first image is a small
thumbnail, which Pillow would happily index in place of the photo. `metadata` reads when, with what and where a
RAW was shot from the file itself, as Pillow's EXIF reader does for a JPEG.
"""

from __future__ import annotations

import contextlib
import io
import struct
from collections.abc import Callable, Iterator
from typing import Any

from PIL import Image

from imgsearch.errors import ImageDecodeError

# LibRaw reads these; most are TIFF-based (DNG, CR2, NEF, ARW, PEF, ...), CR3 is ISO-BMFF, RAF and X3F their own.
SUFFIXES = frozenset(
    {".dng", ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".raf", ".orf", ".rw2", ".rwl"}
    | {".pef", ".srw", ".x3f", ".3fr", ".fff", ".iiq", ".erf", ".kdc", ".dcr", ".mrw", ".mos", ".mef", ".gpr"}
)
PREVIEW_ASPECT_TOLERANCE = 0.02  # a preview whose shape differs more from the sensor's is letterboxed or cropped
_SIDEWAYS_FLIPS = (5, 6)  # LibRaw's flip: 3 = 180 degrees, 5 = 90 counter-clockwise, 6 = 90 clockwise
_TURNS = {3: Image.Transpose.ROTATE_180, 5: Image.Transpose.ROTATE_90, 6: Image.Transpose.ROTATE_270}

# (bytes, max_pixels, draft_side) -> the picture upright: how images.py decodes a JPEG (draft, EXIF turn, bombs)
DecodeJpeg = Callable[[bytes, int, int], Image.Image]


class UnreadableHeader(ImageDecodeError):
    """LibRaw could not read the file's header: a RAW cut short, or no RAW at all (the caller can tell by the
    first bytes)."""


def is_raw(path: object) -> bool:
    """Whether a file name is a camera RAW's (decoded through LibRaw, not Pillow)."""
    name = str(path)
    dot = name.rfind(".")
    return dot >= 0 and "/" not in name[dot:] and name[dot:].lower() in SUFFIXES


def decode(
    data: bytes, max_pixels: int, draft_side: int, decode_jpeg: DecodeJpeg
) -> tuple[Image.Image, tuple[int, int]] | None:
    """The picture of a RAW file, upright, and its own (width, height) upright; None if LibRaw does not know
    the file at all (the caller tries it as an ordinary image: a JPEG named .dng). Raises ImageDecodeError
    (UnreadableHeader when LibRaw gave up on the header).

    `decode_jpeg(bytes, max_pixels, draft_side)` decodes the preview as any JPEG is decoded (draft, EXIF turn).
    """
    rawpy = _rawpy()
    with _opened(rawpy, data) as raw:
        if raw is None:
            return None
        sizes = raw.sizes
        width, height = sizes.width, sizes.height
        if width * height > max_pixels:
            raise ImageDecodeError(f"decompression bomb ({width}x{height} pixels, limit index.max_pixels={max_pixels})")
        if width == 0 or height == 0:
            raise ImageDecodeError("image has no pixels")
        upright = (height, width) if sizes.flip in _SIDEWAYS_FLIPS else (width, height)
        preview = _preview(rawpy, raw, (width, height), draft_side, max_pixels, decode_jpeg)
        if preview is not None:
            return preview, upright
        return _demosaic(rawpy, raw), upright


def size(data: bytes) -> tuple[int, int]:
    """(width, height) upright from the RAW's header, or (0, 0). No pixel data is read."""
    try:
        rawpy = _rawpy()
        with _opened(rawpy, data) as raw:
            if raw is None:
                return 0, 0
            s = raw.sizes
            return (s.height, s.width) if s.flip in _SIDEWAYS_FLIPS else (s.width, s.height)
    except ImageDecodeError:
        return 0, 0


def version() -> str:
    """LibRaw's version, as rawpy was built with it ('' without rawpy)."""
    try:
        return ".".join(map(str, _rawpy().libraw_version))
    except ImageDecodeError:
        return ""


def _rawpy() -> Any:
    try:
        import rawpy
    except ImportError:  # a base dependency; missing only in an install made without dependencies
        raise ImageDecodeError("camera RAW files need rawpy (pip install rawpy)") from None
    return rawpy


@contextlib.contextmanager
def _opened(rawpy: Any, data: bytes) -> Iterator[Any]:
    """LibRaw opened on the bytes (headers parsed, no pixels read); None when it knows no such RAW format."""
    raw = rawpy.RawPy()
    try:
        try:
            raw.open_buffer(io.BytesIO(data))
        except rawpy.LibRawFileUnsupportedError:
            yield None
            return
        except rawpy.LibRawError as exc:
            raise UnreadableHeader(_reason(rawpy, exc)) from None
        yield raw
    finally:
        raw.close()


def _preview(
    rawpy: Any, raw: Any, sensor: tuple[int, int], draft_side: int, max_pixels: int, decode_jpeg: DecodeJpeg
) -> Image.Image | None:
    """The camera's embedded preview, upright, if it is large enough for the model and the sensor's shape."""
    try:
        thumb = raw.extract_thumb()
    except rawpy.LibRawError:  # no preview, or one LibRaw cannot unpack: demosaic instead
        return None
    if thumb.format == rawpy.ThumbFormat.JPEG:
        try:
            with Image.open(io.BytesIO(thumb.data)) as probe:
                stored = probe.size
                has_turn = probe.getexif().get(0x0112, 1) != 1
        except Exception:  # a broken preview costs nothing but the fast path
            return None
        if not _usable(stored, sensor, draft_side):
            return None
        try:
            picture = decode_jpeg(thumb.data, max_pixels, draft_side)
        except ImageDecodeError:
            return None
        # LibRaw gives a preview without EXIF of its own the RAW's orientation (dcraw's jpeg_thumb); if it
        # carries none at all, turn it by LibRaw's flip as the demosaic path does.
        return picture if has_turn else _turn(picture, raw.sizes.flip)
    pixels = thumb.data  # an RGB bitmap preview (a few older cameras)
    if not _usable((pixels.shape[1], pixels.shape[0]), sensor, draft_side):
        return None
    return _turn(Image.fromarray(pixels).convert("RGB"), raw.sizes.flip)


def _usable(preview: tuple[int, int], sensor: tuple[int, int], draft_side: int) -> bool:
    """Large enough: twice the model's input on its short side (without a model: at least half the sensor, as
    big as the half-size demosaic); and the sensor's shape, in either orientation."""
    short, long = sorted(preview)
    sensor_short, sensor_long = sorted(sensor)
    needed = 2 * draft_side if draft_side else sensor_short // 2
    if short < needed or short == 0:
        return False
    return abs(long / short - sensor_long / sensor_short) <= PREVIEW_ASPECT_TOLERANCE * sensor_long / sensor_short


def _demosaic(rawpy: Any, raw: Any) -> Image.Image:
    """Half-size demosaic with the camera's white balance, in sRGB, turned upright by LibRaw."""
    try:
        pixels = raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8)
    except rawpy.LibRawError as exc:
        raise ImageDecodeError(_reason(rawpy, exc)) from None
    except MemoryError:
        raise ImageDecodeError("RAW too large to decode in the memory available") from None
    return Image.fromarray(pixels)


def _turn(picture: Image.Image, flip: int) -> Image.Image:
    turn = _TURNS.get(flip)
    return picture.transpose(turn) if turn is not None else picture


def _reason(rawpy: Any, exc: Exception) -> str:
    detail = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
    detail = detail.splitlines()[0][:100] if detail else type(exc).__name__
    if isinstance(exc, rawpy.LibRawIOError | rawpy.LibRawDataError):
        return f"corrupt or truncated RAW (LibRaw: {detail})"
    if isinstance(exc, rawpy.LibRawTooBigError | rawpy.LibRawUnsufficientMemoryError):
        return f"RAW too large to decode (LibRaw: {detail})"
    return f"cannot decode RAW (LibRaw: {detail})"


def exif_ifds(data: bytes) -> tuple[Ifd, Ifd, Ifd]:
    """(IFD0, the Exif IFD, the GPS IFD) a RAW file records, so that the date, camera, lens and place of a RAW
    are read as a JPEG's EXIF is (imgsearch.photometa). TIFF-based RAWs (DNG, CR2, NEF, ARW, PEF ...; ORF and
    RW2 differ only in their first bytes) keep EXIF's own IFDs; a CR3 keeps them in its CMT1, CMT2 and CMT4
    boxes; a RAF embeds a JPEG that carries them. Anything unreadable counts as absent: never an error."""
    try:
        return _exif_ifds(data)
    except Exception:  # a damaged header costs the metadata, not the file
        return {}, {}, {}


_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825
_TIFF_VARIANTS = {b"IIRO": b"II*\0", b"IIRS": b"II*\0", b"IIU\0": b"II*\0", b"MMOR": b"MM\0*"}  # ORF, RW2
Ifd = dict[int, Any]


def _exif_ifds(data: bytes) -> tuple[Ifd, Ifd, Ifd]:
    """(IFD0, the Exif IFD, the GPS IFD) of a RAW file."""
    if data[:4] in (b"II*\0", b"MM\0*") or data[:4] in _TIFF_VARIANTS:
        exif = Image.Exif()
        exif.load(_TIFF_VARIANTS.get(data[:4], data[:4]) + data[4:] if data[:4] in _TIFF_VARIANTS else data)
        return dict(exif), exif.get_ifd(_EXIF_IFD), exif.get_ifd(_GPS_IFD)
    if data[4:12] == b"ftypcrx ":
        return _box_ifd(data, b"CMT1"), _box_ifd(data, b"CMT2"), _box_ifd(data, b"CMT4")
    if data.startswith(b"FUJIFILMCCD-RAW"):
        start, length = struct.unpack(">II", data[84:92])
        with Image.open(io.BytesIO(data[start : start + length])) as jpeg:
            exif = jpeg.getexif()
            return dict(exif), exif.get_ifd(_EXIF_IFD), exif.get_ifd(_GPS_IFD)
    return {}, {}, {}


def _box_ifd(data: bytes, kind: bytes) -> Ifd:
    """IFD0 of the TIFF stream a CR3 keeps in a CMT box (within the first megabyte, in its moov box)."""
    at = data.find(kind, 0, 1 << 20)
    if at < 4:
        return {}
    size = struct.unpack(">I", data[at - 4 : at])[0]
    exif = Image.Exif()
    exif.load(data[at + 4 : at - 4 + size])
    return dict(exif)
