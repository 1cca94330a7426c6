"""A photo's metadata as the index records it: its header (imgsearch.photometa) and, when it has GPS, the place
name (imgsearch.places, whose geocoder loads on the first photo with a position)."""

from __future__ import annotations

import dataclasses

from imgsearch import photometa, places
from imgsearch.types import PhotoMeta


def describe(source: bytes | str, name: str, mtime_ns: int | None) -> PhotoMeta:
    """What the index keeps of a file's capture: from its bytes, or its path (then only the header is read)."""
    found = photometa.read(source, name, mtime_ns)
    if found.lat is None or found.lon is None:
        return found
    return dataclasses.replace(found, place=places.name(found.lat, found.lon))
