"""When and with what a photo was taken, from its header: EXIF, then XMP, then its file name, then its mtime.

Only headers are read: Pillow parses a file's markers, chunks or tags up to its pixel data and stops there, so
reading a 12 MP JPEG's metadata costs its first tens of kilobytes, never a decode. The capture time is taken from
the first source that holds a plausible one, most trusted first:

1. EXIF DateTimeOriginal, with OffsetTimeOriginal when present (the camera's clock, and its zone);
2. XMP photoshop:DateCreated, then exif:DateTimeOriginal (what Lightroom, darktable and phones write);
3. a date in the file name (IMG_20230512_140322.jpg, PXL_20230512_140322123.jpg, 2023-05-12 14.03.22.jpg);
4. the file's mtime, in this machine's zone (a copy or an edit changes it: the last resort).

Camera make and model, lens, and GPS latitude and longitude come from EXIF. A value that is broken or absurd (a
year 0000, a latitude of 900, bytes where text belongs, an unreadable EXIF block) is left empty and the reason
kept in PhotoMeta.notes; reading metadata never raises, so it never costs a file its place in the index. The
place name for a GPS position is imgsearch.places' job. A leaf module: Pillow and the standard library only.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import warnings
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from PIL import Image

from imgsearch import files, images, raw
from imgsearch.types import PhotoMeta

# What this module reads; rows read by an older version are read again by the backfill (imgsearch.indexer.backfill).
VERSION = 1

FIRST_YEAR = 1826  # the oldest surviving photograph: an earlier date is a broken clock, not a photo
EXIF_IFD, GPS_IFD = 0x8769, 0x8825
MAKE, MODEL, DATE_TIME_ORIGINAL = 0x010F, 0x0110, 0x9003
OFFSET_TIME_ORIGINAL, LENS_MODEL = 0x9011, 0xA434
GPS_LAT_REF, GPS_LAT, GPS_LON_REF, GPS_LON = 1, 2, 3, 4
XMP_JPEG_PREFIX = b"http://ns.adobe.com/xap/1.0/\x00"
XMP_DATES = ("photoshop:DateCreated", "exif:DateTimeOriginal")
RAW_MAX_BYTES = 1 << 30  # a RAW's header is read whole when it is not in memory: larger is not a photo
MAX_TEXT = 200  # longer "camera names" are junk, not names

_EXIF_DATE = re.compile(r"(\d{4})[:-](\d{2})[:-](\d{2})[ T](\d{2}):(\d{2}):(\d{2})")
_EXIF_OFFSET = re.compile(r"([+-])(\d{2}):(\d{2})")
_ISO = re.compile(
    r"(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:[.,]\d+)?)?)?)?)?(Z|[+-]\d{2}:?\d{2})?"
)
# A date in a file name, not glued to letters or digits before it (a hash like a3f20230512 is no date): 2023-05-12,
# 20230512, 2023_05_12, optionally followed by a time (140322, 14.03.22, 14-03-22) and milliseconds (PXL_...123).
_NAME_DATE = re.compile(
    r"(?<![0-9A-Za-z])((?:19|20)\d\d)([-_.]?)(\d\d)\2(\d\d)"
    r"(?:[ _T.-]?(\d\d)([-_.:h]?)(\d\d)\6(\d\d)\d{0,3})?(?![0-9])"
)


def read(source: bytes | str, name: str, mtime_ns: int | None) -> PhotoMeta:
    """A photo's metadata from its bytes (the indexer has them in memory) or its path (then only the header is
    read from disk). `name` is the file's path or name (for a date in it); `mtime_ns` its mtime (None: unknown).
    Never raises."""
    notes: list[str] = []
    exif, sub, xmp = _raw_headers(source, notes) if raw.is_raw(name) else _headers(source, notes)
    taken = _first_date(
        [
            ("exif", lambda: _exif_date(exif, sub, notes)),
            ("xmp", lambda: _xmp_date(xmp, notes)),
            ("filename", lambda: _name_date(os.path.basename(name))),
            ("mtime", lambda: _mtime_date(mtime_ns, notes)),
        ]
    )
    lat, lon = _gps(sub.get(GPS_IFD), notes)
    return PhotoMeta(
        taken=taken[0],
        offset=taken[1],
        source=taken[2],
        camera=_camera(exif, notes),
        lens=_text(sub.get(EXIF_IFD, {}).get(LENS_MODEL), "lens", notes),
        lat=lat,
        lon=lon,
        notes="; ".join(dict.fromkeys(notes)),
        version=VERSION,
    )


# the headers


Tags = Mapping[int, Any]
Headers = tuple[Tags | None, dict[int, dict[int, Any]], str | None]  # EXIF's IFD0, its Exif and GPS IFDs, XMP


def _headers(source: bytes | str, notes: list[str]) -> Headers:
    """The EXIF block (with its sub-directories: a TIFF's are read from the open file) and the XMP packet of a
    file, from its header; empty if it has none."""
    images.register_heif()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
                exif = _exif(image, notes)
                return exif, _sub_ifds(exif, notes), _xmp(image)
    except Exception as exc:  # not an image, or a header Pillow cannot parse: the name and mtime still count
        notes.append(f"header unreadable ({type(exc).__name__})")
        return None, {}, None
    finally:  # Pillow reads what it can of a damaged EXIF block and warns: the warning is the reason kept
        notes.extend(f"EXIF damaged ({_first(w.message)})" for w in caught if "EXIF" in str(w.message))


def _raw_headers(source: bytes | str, notes: list[str]) -> Headers:
    """A camera RAW's EXIF, which LibRaw's formats keep where Pillow does not look (imgsearch.raw)."""
    if isinstance(source, str):
        try:
            source = files.read_regular(source, RAW_MAX_BYTES)[0]
        except (OSError, files.Unreadable) as exc:
            notes.append(f"header unreadable ({type(exc).__name__})")
            return None, {}, None
    ifd0, exif_ifd, gps_ifd = raw.exif_ifds(source)
    if not (ifd0 or exif_ifd):
        notes.append("RAW header holds no EXIF")
    return ifd0 or None, {EXIF_IFD: {**ifd0, **exif_ifd}, GPS_IFD: gps_ifd}, None  # a DNG may keep Exif tags in IFD0


def _exif(image: Image.Image, notes: list[str]) -> Image.Exif | None:
    raw = image.info.get("exif")
    try:
        if isinstance(raw, bytes) and raw:
            exif = Image.Exif()
            exif.load(raw)
            return exif
        if image.format == "TIFF":  # a TIFF's own tags are its EXIF, parsed with the header
            return image.getexif()
    except Exception as exc:
        notes.append(f"EXIF unreadable ({type(exc).__name__})")
    return None


def _xmp(image: Image.Image) -> str | None:
    """The XMP packet, wherever the format keeps it (JPEG APP1, PNG iTXt, TIFF tag 700, HEIC/WebP info)."""
    packet: Any = image.info.get("xmp") or image.info.get("XML:com.adobe.xmp")
    if not packet:
        for marker, data in getattr(image, "applist", []):
            if marker == "APP1" and data.startswith(XMP_JPEG_PREFIX):
                packet = data[len(XMP_JPEG_PREFIX) :]
                break
    if not packet and image.format == "TIFF":
        packet = getattr(image, "tag_v2", {}).get(700)
    if isinstance(packet, tuple):
        packet = bytes(packet)
    if isinstance(packet, bytes):
        packet = packet.decode("utf-8", "replace")
    return packet if isinstance(packet, str) and packet else None


def _sub_ifds(exif: Image.Exif | None, notes: list[str]) -> dict[int, dict[int, Any]]:
    """The Exif and GPS sub-directories ({} for one that is absent or broken)."""
    out: dict[int, dict[int, Any]] = {}
    if exif is None:
        return out
    for tag, label in ((EXIF_IFD, "Exif"), (GPS_IFD, "GPS")):
        try:
            found = exif.get_ifd(tag) if tag in exif else {}
            out[tag] = dict(found)
        except Exception as exc:
            notes.append(f"EXIF {label} directory unreadable ({type(exc).__name__})")
    return out


# the capture time


Found = tuple[datetime, int | None]  # a date and time, and its offset from UTC in minutes when known
Taken = tuple[str | None, int | None, str | None]  # (local 'YYYY-MM-DDTHH:MM:SS', offset minutes, source)


def _first_date(sources: list[tuple[str, Callable[[], Found | None]]]) -> Taken:
    for name, find in sources:
        found = find()
        if found is not None:
            return found[0].strftime("%Y-%m-%dT%H:%M:%S"), found[1], name
    return None, None, None


def _exif_date(exif: Tags | None, sub: dict[int, dict[int, Any]], notes: list[str]) -> Found | None:
    if exif is None:
        return None
    tags = sub.get(EXIF_IFD, {})
    raw = tags.get(DATE_TIME_ORIGINAL, exif.get(DATE_TIME_ORIGINAL))  # some writers put it in IFD0
    text = _text(raw, "EXIF DateTimeOriginal", notes)
    if text is None:
        return None
    match = _EXIF_DATE.fullmatch(text)
    when = _plausible(*map(int, match.groups())) if match else None
    if when is None:
        notes.append(f"EXIF DateTimeOriginal {text[:40]!r} is not a date")
        return None
    return when, _exif_offset(tags.get(OFFSET_TIME_ORIGINAL), notes)


def _exif_offset(raw: Any, notes: list[str]) -> int | None:
    text = _text(raw, "EXIF OffsetTimeOriginal", notes)
    if text is None:
        return None
    match = _EXIF_OFFSET.fullmatch(text)
    minutes = _offset_minutes(*match.groups()) if match else None
    if minutes is None:
        notes.append(f"EXIF OffsetTimeOriginal {text[:20]!r} is not a UTC offset")
    return minutes


def _xmp_date(xmp: str | None, notes: list[str]) -> Found | None:
    if not xmp:
        return None
    for prop in XMP_DATES:
        value = _xmp_value(xmp, prop)
        if value is None:
            continue
        found = _iso_date(value.strip())
        if found is not None:
            return found
        notes.append(f"XMP {prop} {value[:40]!r} is not a date")
    return None


def _xmp_value(xmp: str, prop: str) -> str | None:
    """A simple XMP property, written as an attribute (prop="...") or an element (<prop>...</prop>)."""
    match = re.search(rf'{prop}\s*=\s*"([^"]*)"', xmp) or re.search(rf"<{prop}>([^<]*)</{prop}>", xmp)
    return match.group(1) if match else None


def _iso_date(text: str) -> Found | None:
    """An ISO 8601 date as XMP writes it: 2023, 2023-05, 2023-05-12, 2023-05-12T14:03[:22[.5]][Z|+09:00]."""
    match = _ISO.fullmatch(text)
    if match is None:
        return None
    year, month, day, hour, minute, second, zone = match.groups()
    when = _plausible(int(year), int(month or 1), int(day or 1), int(hour or 0), int(minute or 0), int(second or 0))
    if when is None:
        return None
    offset = None
    if zone == "Z":
        offset = 0
    elif zone:
        digits = zone[1:].replace(":", "")
        offset = _offset_minutes(zone[0], digits[:2], digits[2:])
        if offset is None:
            return None
    return when, offset


def _name_date(name: str) -> Found | None:
    for match in _NAME_DATE.finditer(name):
        year, _, month, day, hour, _, minute, second = match.groups()
        when = _plausible(int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(second or 0))
        if when is not None:
            return when, None
    return None


def _mtime_date(mtime_ns: int | None, notes: list[str]) -> Found | None:
    if mtime_ns is None:
        return None
    try:
        local = datetime.fromtimestamp(mtime_ns / 1e9).astimezone()
    except (OverflowError, OSError, ValueError):
        notes.append("the file's mtime is not a date")
        return None
    when = _plausible(local.year, local.month, local.day, local.hour, local.minute, local.second)
    if when is None:
        notes.append(f"the file's mtime {local:%Y-%m-%d} is not a plausible capture date")
        return None
    offset = local.utcoffset()
    return when, None if offset is None else int(offset.total_seconds() // 60)


def _plausible(year: int, month: int, day: int, hour: int, minute: int, second: int) -> datetime | None:
    """The date and time, if they exist and could be a photo's: from 1826 to a year from now."""
    try:
        when = datetime(year, month, day, hour, minute, second)
    except ValueError:
        return None
    if when.year < FIRST_YEAR or when > datetime.now() + timedelta(days=366):
        return None
    return when


def _offset_minutes(sign: str, hours: str, minutes: str) -> int | None:
    if not (hours.isdigit() and minutes.isdigit()):
        return None
    total = int(hours) * 60 + int(minutes)
    if int(minutes) >= 60 or total > 14 * 60:
        return None
    return -total if sign == "-" else total


def _first(message: Warning | str) -> str:
    return str(message).strip().splitlines()[0][:80] if str(message).strip() else "no detail"


# camera, lens, position


def _camera(exif: Tags | None, notes: list[str]) -> str | None:
    if exif is None:
        return None
    make = _text(exif.get(MAKE), "EXIF Make", notes)
    model = _text(exif.get(MODEL), "EXIF Model", notes)
    if make and model and not model.casefold().startswith(make.split()[0].casefold()):
        return f"{make} {model}"  # "Apple" "iPhone 12" -> "Apple iPhone 12"; "Canon" "Canon EOS R5" -> as it is
    return model or make


def _text(raw: Any, label: str, notes: list[str]) -> str | None:
    """A tag's value as one line of text, or None (absent, empty, or not text: then the reason is noted).

    EXIF text is ASCII; Pillow hands it over decoded as Latin-1, or as bytes when the tag's type is not ASCII.
    Either way the bytes must be ASCII or UTF-8 (some phones write UTF-8): anything else is bytes, not text.
    """
    if raw is None:
        return None
    if isinstance(raw, str):
        with contextlib.suppress(UnicodeEncodeError):  # text decoded beyond Latin-1 stays as it is
            raw = raw.encode("latin-1")
    if isinstance(raw, bytes):
        try:
            raw = raw.split(b"\x00")[0].decode("utf-8")
        except UnicodeDecodeError:
            notes.append(f"{label} holds bytes, not text")
            return None
    if not isinstance(raw, str):
        notes.append(f"{label} is not text ({type(raw).__name__})")
        return None
    text = raw.split("\x00")[0].strip()
    if not text:
        return None
    if not text.isprintable() or len(text) > MAX_TEXT:
        notes.append(f"{label} is not readable text")
        return None
    return " ".join(text.split())


def _gps(tags: dict[int, Any] | None, notes: list[str]) -> tuple[float | None, float | None]:
    if not tags or GPS_LAT not in tags or GPS_LON not in tags:
        return None, None
    lat = _coordinate(tags.get(GPS_LAT), tags.get(GPS_LAT_REF), "NS", 90.0, "latitude", notes)
    lon = _coordinate(tags.get(GPS_LON), tags.get(GPS_LON_REF), "EW", 180.0, "longitude", notes)
    if lat is None or lon is None:
        return None, None
    if lat == 0.0 and lon == 0.0:
        notes.append("GPS position 0, 0 (a receiver without a fix)")
        return None, None
    return round(lat, 6), round(lon, 6)


def _coordinate(raw: Any, ref: Any, refs: str, limit: float, label: str, notes: list[str]) -> float | None:
    """Degrees from EXIF's (degrees, minutes, seconds) rationals and its N/S or E/W reference."""
    try:
        parts = [float(x) for x in (raw if isinstance(raw, tuple | list) else (raw,))]
    except (TypeError, ValueError, ZeroDivisionError):
        notes.append(f"GPS {label} is not a number")
        return None
    if not 1 <= len(parts) <= 3 or not all(math.isfinite(p) for p in parts):
        notes.append(f"GPS {label} is not a number")
        return None
    value = sum(abs(p) / 60**i for i, p in enumerate(parts))
    side = ref.decode("ascii", "replace") if isinstance(ref, bytes) else ref
    side = side.strip("\x00 ").upper() if isinstance(side, str) else ""
    if side and side not in refs:
        notes.append(f"GPS {label} reference {side[:5]!r} is not {refs[0]} or {refs[1]}")
        return None
    if value > limit:
        notes.append(f"GPS {label} {value:g} is out of range")
        return None
    negative = side == refs[1] or (not side and parts[0] < 0)
    return -value if negative else value
