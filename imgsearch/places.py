"""Place names for GPS positions, offline: "city, region, country" of the nearest of GeoNames' places of 1,000
people or more, through reverse_geocoder (the `places` extra: it brings SciPy, 150 MB installed, which the light
install cannot hold). No network call is ever made.

The geocoder is loaded on first use only, that is when a photo has GPS (1-2 s and about 150 MB of memory, once per
process); without the extra, `name` gives None and the positions wait in the database to be named once it is
installed (imgsearch.indexer.backfill). A leaf module: the standard library, and reverse_geocoder when asked.
"""

from __future__ import annotations

import importlib.util
import io
import threading
from collections.abc import Sequence
from importlib import resources
from typing import Any

EXTRA = "pip install 'imgsearch[places]'"
_lock = threading.Lock()
_geocoder: Any = None
_countries: dict[str, str] | None = None


def available() -> bool:
    """Whether place names can be had here (reverse_geocoder is installed); imports nothing."""
    return importlib.util.find_spec("reverse_geocoder") is not None


def names(points: Sequence[tuple[float, float]]) -> list[str | None]:
    """The place name of each (latitude, longitude), or None for each when the `places` extra is missing."""
    if not points:
        return []
    geocoder = _load()
    if geocoder is None:
        return [None] * len(points)
    return [_label(found) for found in geocoder.query([(float(a), float(b)) for a, b in points])]


def name(lat: float, lon: float) -> str | None:
    return names([(lat, lon)])[0]


def _load() -> Any:
    """The geocoder, loaded once; its CSV read as UTF-8 here (reverse_geocoder would read it in the locale's
    encoding) and searched in one process (its default mode starts a process pool)."""
    global _geocoder
    with _lock:
        if _geocoder is None and available():
            import reverse_geocoder

            text = (resources.files("reverse_geocoder") / "rg_cities1000.csv").read_text(encoding="utf-8")
            _geocoder = reverse_geocoder.RGeocoder(mode=1, verbose=False, stream=io.StringIO(text))
        return _geocoder


def _label(found: dict[str, str]) -> str | None:
    """ "Lisbon, Portugal", "Sydney, New South Wales, Australia": each part once, empty parts left out."""
    parts = [found.get("name", ""), found.get("admin1", ""), country(found.get("cc", ""))]
    kept: list[str] = []
    for part in (p.strip() for p in parts):
        if part and part.casefold() not in {k.casefold() for k in kept}:
            kept.append(part)
    return ", ".join(kept) or None


def country(code: str) -> str:
    """A country's English name from its ISO 3166 code (the code itself when unknown)."""
    global _countries
    if _countries is None:
        table = (resources.files("imgsearch") / "countries.tsv").read_text(encoding="utf-8")
        rows = (line.split("\t", 1) for line in table.splitlines() if line and not line.startswith("#"))
        _countries = {cc: label for cc, label in rows}
    return _countries.get(code.upper(), code)
