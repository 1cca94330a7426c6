"""Query filters on photo metadata as a person types them: `--after 2019-06 --before 2019-08` is summer 2019.

A date may be partial: 2023, 2023-06 or 2023-06-14, and names a period (a year, a month, a day). Both bounds
include the period they name: --after 2023-06 starts on 1 June 2023, --before 2023-08 ends with 31 August 2023.
They compare with the local wall-clock time a photo was taken (imgsearch.types.PhotoMeta.taken), so a photo
taken at 00:30 on 1 June in Tokyo is a June photo, whatever the time was in UTC.
"""

from __future__ import annotations

import re
from datetime import date

from imgsearch.errors import UsageError
from imgsearch.types import PhotoFilter

SORTS = ("relevance", "date", "-date")
_DATE = re.compile(r"(\d{4})(?:-(\d{1,2})(?:-(\d{1,2}))?)?")


def photo_filter(
    after: str | None = None, before: str | None = None, camera: str | None = None, place: str | None = None
) -> PhotoFilter:
    """The filter for these flags (None or blank: not given), or a one-line UsageError naming the bad one."""
    start = period(after, "after")[0] if _given(after) else None
    end = period(before, "before")[1] if _given(before) else None
    if start is not None and end is not None and start >= end:
        raise UsageError(f"query: --after {after} is later than --before {before}: nothing can match")
    return PhotoFilter(start, end, _substring(camera), _substring(place))


def sort_order(sort: str | None) -> str | None:
    """ "date" or "-date", or None for relevance (the default); UsageError for anything else."""
    if sort is None or sort == "relevance":
        return None
    if sort not in SORTS:
        raise UsageError(f"query: --sort takes {', '.join(SORTS)}, not {sort[:40]!r}")
    return sort


def period(text: str | None, flag: str) -> tuple[str, str]:
    """[start, end) of the year, month or day a date names, as 'YYYY-MM-DDTHH:MM:SS' local times."""
    match = _DATE.fullmatch((text or "").strip())
    try:
        if match is None:
            raise ValueError(text)
        year, month, day = (int(g) if g else None for g in match.groups())
        first = date(year or 1, month or 1, day or 1)
        last = _next(first, "day" if day else "month" if month else "year")
    except (ValueError, OverflowError):
        shown = (text or "")[:40]
        raise UsageError(f"query: --{flag} takes a date like 2023, 2023-06 or 2023-06-14, not {shown!r}") from None
    return f"{first.isoformat()}T00:00:00", f"{last.isoformat()}T00:00:00"


def _next(first: date, unit: str) -> date:
    if unit == "day":
        return date.fromordinal(first.toordinal() + 1)
    if unit == "month":
        return date(first.year + first.month // 12, first.month % 12 + 1, 1)
    return date(first.year + 1, 1, 1)


def _given(text: str | None) -> bool:
    return text is not None and bool(text.strip())


def _substring(text: str | None) -> str | None:
    return " ".join(text.split()) if _given(text) and text is not None else None
