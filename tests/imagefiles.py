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


# Phone and camera formats, written by their own encoders (pillow-heif writes HEIC, which pi-heif only reads;
# Pillow writes AVIF; pylibjxl writes JPEG XL; pidng writes DNG).


def heic(image: Image.Image, orientation: int = 1, quality: int = 90) -> bytes:
    """A HEIC of the stored pixels. An EXIF orientation becomes HEIF's own transform (irot/imir), as phones write
    it: the pixels stay stored as given, and a reader turns them."""
    import pillow_heif

    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    buf = io.BytesIO()
    pillow_heif.from_pillow(image).save(buf, quality=quality, exif=exif.tobytes())
    return buf.getvalue()


def avif(image: Image.Image, quality: int = 85) -> bytes:
    return encode(image, "AVIF", quality=quality)


def jxl(image: Image.Image, distance: float = 1.0) -> bytes:
    import pylibjxl

    return bytes(pylibjxl.encode(np.ascontiguousarray(np.asarray(image.convert("RGB"))), effort=3, distance=distance))


# XYZ (D65) to linear sRGB: as a DNG's ColorMatrix1, it makes the camera's RGB linear sRGB, so LibRaw's output
# is the picture the mosaic was sampled from.
XYZ_TO_SRGB = [3.2404542, -1.5371385, -0.4985314, -0.9692660, 1.8760108, 0.0415560, 0.0556434, -0.2040259, 1.0572252]
WHITE = 4095  # 12-bit sensor values


def bayer(image: Image.Image) -> np.ndarray:
    """An RGGB Bayer mosaic of a picture, as a 12-bit sensor would record it (sRGB undone to linear light)."""
    srgb = np.asarray(image.convert("RGB"), np.float64) / 255
    lin = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)
    mosaic = np.empty(lin.shape[:2])
    mosaic[0::2, 0::2] = lin[0::2, 0::2, 0]
    mosaic[0::2, 1::2] = lin[0::2, 1::2, 1]
    mosaic[1::2, 0::2] = lin[1::2, 0::2, 1]
    mosaic[1::2, 1::2] = lin[1::2, 1::2, 2]
    return (mosaic * WHITE).round().astype(np.uint16)


def dng(
    image: Image.Image,
    orientation: int = 1,
    preview: Image.Image | None = None,
    make: str = "imgsearch",
    size: tuple[int, int] | None = None,
    shot: tuple[str, str, tuple[float, float]] | None = None,
) -> bytes:
    """A DNG (pidng) of a picture's RGGB mosaic, uncompressed 16-bit, tagged with an orientation; with `preview`,
    a JPEG of it in a sub-IFD as cameras embed theirs. `size` makes the header claim another size than the data;
    `shot` = (DateTimeOriginal, LensModel, (latitude, longitude)) records when, with what lens and where."""
    from pidng.defs import CalibrationIlluminant, CFAPattern, DNGVersion, PhotometricInterpretation
    from pidng.dng import DNG, DNGTags, Tag, Type, dngIFD, dngTag

    mosaic = bayer(image)
    height, width = mosaic.shape
    claimed_width, claimed_height = size or (width, height)
    tags = DNGTags()
    for tag, value in (
        (Tag.ImageWidth, claimed_width),
        (Tag.ImageLength, claimed_height),
        (Tag.TileWidth, claimed_width),
        (Tag.TileLength, claimed_height),
        (Tag.Orientation, orientation),
        (Tag.PhotometricInterpretation, PhotometricInterpretation.Color_Filter_Array),
        (Tag.SamplesPerPixel, 1),
        (Tag.BitsPerSample, 16),
        (Tag.CFARepeatPatternDim, [2, 2]),
        (Tag.CFAPattern, CFAPattern.RGGB),
        (Tag.BlackLevel, 0),
        (Tag.WhiteLevel, WHITE),
        (Tag.ColorMatrix1, [[round(v * 10000), 10000] for v in XYZ_TO_SRGB]),
        (Tag.CalibrationIlluminant1, CalibrationIlluminant.D65),
        (Tag.AsShotNeutral, [[1, 1], [1, 1], [1, 1]]),
        (Tag.Make, make),
        (Tag.Model, "test mosaic"),
        (Tag.UniqueCameraModel, f"{make} test mosaic"),
    ):
        tags.set(tag, value)
    data = mosaic.astype("<u2").tobytes()
    doc = DNG()
    doc.ImageDataStrips.append(data)
    main = dngIFD()
    tiles = dngTag(Tag.TileOffsets, [0])
    main.tags += [tiles, dngTag(Tag.NewSubfileType, [0]), dngTag(Tag.TileByteCounts, [len(data)])]
    main.tags += [dngTag(Tag.Compression, [1]), dngTag(Tag.DNGVersion, DNGVersion.V1_4)]
    main.tags += [dngTag(Tag.DNGBackwardVersion, DNGVersion.V1_2), *tags.list()]
    doc.IFDs.append(main)
    gps = gps_ifd = None
    if shot is not None:
        taken, lens, (lat, lon) = shot
        main.tags += [dngTag(Tag.DateTimeOriginal, taken), dngTag(Tag.EXIFPhotoLensModel, lens)]
        gps_ifd = dngIFD()
        gps_ifd.tags += [dngTag((1, Type.Ascii), "N" if lat >= 0 else "S"), dngTag((2, Type.Rational), dms(lat))]
        gps_ifd.tags += [dngTag((3, Type.Ascii), "E" if lon >= 0 else "W"), dngTag((4, Type.Rational), dms(lon))]
        gps = dngTag((34853, Type.Long), [0])  # GPSInfo, pointed at the IFD below once it is laid out
        main.tags.append(gps)
        doc.IFDs.append(gps_ifd)
    strips = sub = sub_ifd = None
    if preview is not None:
        jpeg = encode(preview.convert("RGB"), "JPEG", quality=92)
        doc.ImageDataStrips.append(jpeg)
        sub_ifd = dngIFD()
        strips = dngTag(Tag.StripOffsets, [0])
        sub_ifd.tags += [strips, dngTag(Tag.NewSubfileType, [1]), dngTag(Tag.ImageWidth, [preview.width])]
        sub_ifd.tags += [dngTag(Tag.ImageLength, [preview.height]), dngTag(Tag.BitsPerSample, [8, 8, 8])]
        sub_ifd.tags += [dngTag(Tag.Compression, [7]), dngTag(Tag.PhotometricInterpretation, [6])]
        sub_ifd.tags += [dngTag(Tag.SamplesPerPixel, [3]), dngTag(Tag.RowsPerStrip, [preview.height])]
        sub_ifd.tags += [dngTag(Tag.StripByteCounts, [len(jpeg)]), dngTag(Tag.PlanarConfiguration, [1])]
        sub = dngTag((330, Type.Long), [0])  # SubIFDs: pidng's own IFD-typed tag cannot be written
        main.tags.append(sub)
        doc.IFDs.append(sub_ifd)
    buf = bytearray(doc.dataLen())  # lays out the strips: their offsets are known from here on
    tiles.setValue([doc.StripOffsets[0]])
    if strips is not None and sub is not None and sub_ifd is not None:
        strips.setValue([doc.StripOffsets[1]])
    doc.setBuffer(buf)
    if sub is not None and sub_ifd is not None:
        sub.setValue([sub_ifd.offset])
    if gps is not None and gps_ifd is not None:
        gps.setValue([gps_ifd.offset])
    doc.write()
    return bytes(buf)


def dms(degrees: float) -> list[list[int]]:
    """Degrees as EXIF's three rationals: degrees, minutes, seconds (to 1/1000 s)."""
    value = abs(degrees)
    whole, minutes = int(value), int(value * 60) % 60
    seconds = round((value * 3600 - whole * 3600 - minutes * 60) * 1000)
    return [[whole, 1], [minutes, 1], [seconds, 1000]]
