"""Thumbnails, made once per image content and size and kept as JPEG files.

The cache is keyed by content hash, so a renamed or duplicated file reuses its thumbnail and an
edited one gets a new one; `prune` drops the files of content no longer indexed.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from contextlib import suppress
from pathlib import Path

from PIL import Image

from imgsearch import images
from imgsearch.raw import is_raw

QUALITY = 85


def cached(cache: Path, content_hash: str, side: int) -> Path:
    """Where the thumbnail of this content at this size is kept."""
    return cache / content_hash[:2] / f"{content_hash}-{side}.jpg"


def thumbnail(source: Path, content_hash: str, cache: Path, side: int, max_pixels: int) -> Path:
    """The cached thumbnail file of an image (longest side at most `side`), made on first request.

    Raises ImageDecodeError when the file cannot be read or decoded, or is not what was indexed.
    """
    target, elsewhere = cached(cache, content_hash, side), cached(_fallback_cache(), content_hash, side)
    for made in (target, elsewhere):
        if made.is_file():
            return made
    data = images.read_indexed(source, content_hash, max_pixels)
    picture = images.decode(data, max_pixels, draft_side=side, raw_file=is_raw(source))
    picture.thumbnail((side, side), Image.Resampling.LANCZOS, reducing_gap=3.0)
    try:
        _save_atomic(picture, target)
    except OSError:  # a read-only home: its thumbnails go to a private temp folder instead
        _fallback_cache().mkdir(mode=0o700, exist_ok=True)
        _save_atomic(picture, elsewhere)
        return elsewhere
    return target


def _fallback_cache() -> Path:
    return Path(tempfile.gettempdir()) / f"imgsearch-thumbnails-{os.getuid()}"


def _save_atomic(picture: Image.Image, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".jpg")
    try:
        with os.fdopen(fd, "wb") as out:
            picture.save(out, "JPEG", quality=QUALITY, optimize=True, progressive=True)
        os.replace(tmp, target)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise


def prune(cache: Path, keep: Iterable[str]) -> int:
    """Delete cached thumbnails (and stray temp files) of content not in `keep`. Returns how many went."""
    wanted = set(keep)
    removed = 0
    for path in cache.glob("??/*.jpg") if cache.is_dir() else ():
        if path.name.startswith(".tmp-") or path.name.rsplit("-", 1)[0] not in wanted:
            with suppress(OSError):
                path.unlink()
                removed += 1
    return removed
