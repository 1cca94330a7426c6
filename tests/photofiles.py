"""Real photo files for the metadata tests: JPEG, PNG, HEIC, TIFF and WebP with EXIF (dates, offsets, cameras,
lenses, GPS in any hemisphere), XMP packets, broken EXIF, and names with dates. Written with Pillow (pillow-heif
for HEIC), checked against exiv2 in the tests: nothing here is a mock of a reader.
"""

from __future__ import annotations

import io
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin
from PIL.TiffImagePlugin import IFDRational

from tests import tinyclip

EXIF_IFD, GPS_IFD = 0x8769, 0x8825

# Places in every hemisphere, with what GeoNames' nearest place of 1,000 people is called.
LISBON = (38.7223, -9.1393)  # N, W
TOKYO = (35.6895, 139.6917)  # N, E
SYDNEY = (-33.8688, 151.2093)  # S, E
BUENOS_AIRES = (-34.6037, -58.3816)  # S, W


@dataclass(frozen=True)
class Shot:
    """What a test photo's header says."""

    taken: str | None = None  # EXIF DateTimeOriginal, "2019:07:14 16:20:05"
    offset: str | None = None  # EXIF OffsetTimeOriginal, "+09:00"
    make: Any = None
    model: Any = None
    lens: str | None = None
    gps: tuple[float, float] | None = None  # signed degrees
    gps_raw: tuple[Any, Any, Any, Any] | None = None  # (lat ref, lat, lon ref, lon) as written, for broken values
    xmp: dict[str, str] | None = None  # {"photoshop:DateCreated": "2018-03-04T05:06:07+02:00"}


def dms(value: float) -> tuple[IFDRational, IFDRational, IFDRational]:
    """Degrees as EXIF writes them: degrees, minutes, seconds (hundredths) as rationals."""
    value = abs(value)
    degrees = int(value)
    minutes = int((value - degrees) * 60)
    seconds = round(((value - degrees) * 60 - minutes) * 60 * 100)
    return IFDRational(degrees, 1), IFDRational(minutes, 1), IFDRational(seconds, 100)


def tags(shot: Shot) -> tuple[dict[int, Any], dict[int, Any], dict[int, Any]]:
    """(IFD0, Exif IFD, GPS IFD) entries for a shot."""
    ifd0 = {tag: v for tag, v in ((0x010F, shot.make), (0x0110, shot.model)) if v is not None}
    sub = {tag: v for tag, v in ((0x9003, shot.taken), (0x9011, shot.offset), (0xA434, shot.lens)) if v is not None}
    gps: dict[int, Any] = {}
    if shot.gps is not None:
        lat, lon = shot.gps
        gps = {1: "N" if lat >= 0 else "S", 2: dms(lat), 3: "E" if lon >= 0 else "W", 4: dms(lon)}
    if shot.gps_raw is not None:
        gps = dict(zip((1, 2, 3, 4), shot.gps_raw, strict=True))
    return ifd0, sub, gps


def exif(shot: Shot) -> Image.Exif:
    ifd0, sub, gps = tags(shot)
    out = Image.Exif()
    out.update(ifd0)
    if sub:
        out.get_ifd(EXIF_IFD).update(sub)
    if gps:
        out.get_ifd(GPS_IFD).update(gps)
    return out


def xmp_packet(props: dict[str, str]) -> bytes:
    """A well-formed XMP packet (exiv2 reads it) with simple properties as attributes."""
    attributes = " ".join(f'{name}="{value}"' for name, value in props.items())
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:photoshop="http://ns.adobe.com/photoshop/1.0/" '
        f'xmlns:exif="http://ns.adobe.com/exif/1.0/" {attributes}/>'
        '</rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
    ).encode()


def picture(seed: int = 0, color: str = "red", shape: str = "circle") -> Image.Image:
    """A picture the suite's tiny model knows (a coloured shape)."""
    return tinyclip.draw(color, shape, random.Random(seed))


def write(path: Path, shot: Shot, picture_: Image.Image | None = None, mtime: float | None = None) -> Path:
    """A real file of the format its suffix names, carrying the shot's EXIF and XMP."""
    image = picture_ or picture()
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF", ".webp": "WEBP"}
    kind = fmt.get(path.suffix.lower(), "HEIF")
    xmp = xmp_packet(shot.xmp) if shot.xmp else None
    if kind == "TIFF":  # Pillow writes a TIFF's EXIF as its own tags, the sub-directories as nested ones
        ifd0, sub, gps = tags(shot)
        info: dict[int, Any] = {**ifd0, **({EXIF_IFD: sub} if sub else {}), **({GPS_IFD: gps} if gps else {})}
        if xmp:
            info[700] = xmp
        image.save(path, "TIFF", tiffinfo=info)
    elif kind == "PNG":
        text = PngImagePlugin.PngInfo()
        if xmp:
            text.add_itxt("XML:com.adobe.xmp", xmp.decode())
        image.save(path, "PNG", exif=exif(shot).tobytes(), pnginfo=text)  # an Exif object without IFD0 tags is falsy
    elif kind == "HEIF":  # written with pillow-heif: pi-heif, which imgsearch reads HEIC with, only decodes
        import pillow_heif

        extra = {"xmp": xmp} if xmp else {}
        pillow_heif.from_pillow(image).save(path, quality=90, exif=exif(shot).tobytes(), **extra)
    else:
        extra = {"xmp": xmp} if xmp else {}
        image.save(path, kind, exif=exif(shot).tobytes(), quality=90, **extra)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def with_raw_exif(path: Path, raw: bytes, picture_: Image.Image | None = None) -> Path:
    """A JPEG whose APP1 segment holds exactly these bytes as its EXIF block (truncated, garbage...)."""
    buffer = io.BytesIO()
    (picture_ or picture()).save(buffer, "JPEG", exif=raw)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return path
