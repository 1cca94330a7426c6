"""Photo fields and pixel hashes for images indexed without them: no model call, ever.

Photo fields need headers only, no decode.

Rows written before revision 0005, by `import` or by a Ray cluster have no photo fields (photo_version NULL), and
rows read by an older imgsearch.photometa have an older version. `index` reads their headers after each run, in
id order, a batch a transaction, on a few threads (about a millisecond a JPEG, from its first tens of kilobytes).
A file that is gone or changed since it was indexed is left for `index` to handle; nothing is ever embedded here.
Positions with no place name (the `places` extra was missing when they were read) are named once it is there.

Pixel hashes (imgsearch.dupes) need the picture: rows from before revision 0006, `import` and Ray are decoded once
on the index's decode threads, as `index` decodes (reduced for a 224-pixel model input), and hashed; a file that
cannot be decoded gets an empty hash, so it is not tried again until its content changes.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import os
import stat
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

from imgsearch import dupes, images, photometa, places
from imgsearch.errors import ImageDecodeError
from imgsearch.raw import is_raw
from imgsearch.store.repository import Store, StoredImage
from imgsearch.types import PhotoMeta, Progress

BATCH = 512
HASH_BATCH = 64
HASH_DRAFT = 224  # the decode a model of 224-pixel input gets at index time
WORKERS = 4  # header reads wait on the disk more than on the CPU

OnProgress = Callable[[Progress], None]
T = TypeVar("T")


@dataclasses.dataclass
class Filled:
    """What a backfill did: headers read, and positions named."""

    read: int = 0
    named: int = 0


def run(store: Store, on_progress: OnProgress, stop: threading.Event | None = None) -> Filled:
    """Read the headers of every image whose photo fields are missing or stale, then name the positions that have
    no place; progress as the phase "photos". Stops between batches when `stop` is set."""
    filled = Filled()
    total = store.count_unread_photos(photometa.VERSION)
    if total:
        filled.read = _read_all(store, total, on_progress, stop)
    if places.available() and not (stop is not None and stop.is_set()):
        filled.named = _name_all(store)
    return filled


def _read_all(store: Store, total: int, on_progress: OnProgress, stop: threading.Event | None) -> int:
    with cf.ThreadPoolExecutor(WORKERS, "imgsearch-photos") as pool:
        return _batches(
            "photos",
            total,
            lambda after: store.unread_photos(after, BATCH, photometa.VERSION),
            lambda rows: [f for f in pool.map(_header, rows) if f is not None],
            lambda found: store.set_photos(named(found)),
            on_progress,
            stop,
        )


def _batches(
    phase: str,
    total: int,
    fetch: Callable[[int], Sequence[StoredImage]],
    work: Callable[[Sequence[StoredImage]], list[T]],
    write: Callable[[list[T]], None],
    on_progress: OnProgress,
    stop: threading.Event | None,
) -> int:
    """Fill rows a batch at a time, in id order: fetch(after_id) the next rows, work them out, write what came of
    them (one transaction), report progress as `phase`; stop between batches when `stop` is set. Returns how many
    rows got a value."""
    done = written = after = 0
    on_progress(Progress(phase, 0, total))
    while rows := fetch(after):
        found = work(rows)
        write(found)
        after, done, written = rows[-1].id, done + len(rows), written + len(found)
        on_progress(Progress(phase, min(done, total), total))
        if stop is not None and stop.is_set():
            break
    return written


def _header(row: StoredImage) -> tuple[StoredImage, PhotoMeta] | None:
    """The row's photo fields from its file's header; None when the file is gone or not what was indexed."""
    try:
        st = os.stat(row.path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode) or (st.st_size, st.st_mtime_ns) != (row.size, row.mtime_ns):
        return None  # index handles what changed (a FIFO in its place is never opened)
    return row, photometa.read(row.path, row.path, row.mtime_ns)


def named(found: Sequence[tuple[StoredImage, PhotoMeta]]) -> list[tuple[StoredImage, PhotoMeta]]:
    """The same, with a place name for each that has a position (one geocoder call for the batch)."""
    located = [i for i, (_, meta) in enumerate(found) if meta.lat is not None and meta.lon is not None]
    labels = places.names([(found[i][1].lat or 0.0, found[i][1].lon or 0.0) for i in located])
    out = list(found)
    for i, label in zip(located, labels, strict=True):
        out[i] = (found[i][0], dataclasses.replace(found[i][1], place=label))
    return out


def _name_all(store: Store) -> int:
    count = after = 0
    while rows := store.unnamed_places(after, BATCH):
        labels = places.names([(lat, lon) for _, lat, lon in rows])
        store.set_places([(i, label) for (i, _, _), label in zip(rows, labels, strict=True) if label])
        after, count = rows[-1][0], count + len(rows)
    return count


def hashes(store: Store, max_pixels: int, workers: int, on_progress: OnProgress, stop: threading.Event | None) -> int:
    """Hash the pixels of every image that has no hash yet, a batch a transaction; progress as the phase "hashes".
    Returns how many were written. Stops between batches when `stop` is set."""
    copies = store.copies
    total = copies.count_unhashed(dupes.HASH_BYTES)
    if not total:
        return 0
    with images.reader_pool(workers) as pool:
        return _batches(
            "hashes",
            total,
            lambda after: copies.unhashed(after, HASH_BATCH, dupes.HASH_BYTES),
            lambda rows: [f for f in pool.map(lambda row: _pixel_hash(row, max_pixels), rows) if f is not None],
            copies.set_hashes,
            on_progress,
            stop,
        )


def _pixel_hash(row: StoredImage, max_pixels: int) -> tuple[StoredImage, bytes] | None:
    """The row's pixel hash (empty: its file cannot be decoded); None when the file is gone or not what was
    indexed (`index` handles those)."""
    try:
        found = images.read_file(row.path, images.size_limit(max_pixels))
    except (FileNotFoundError, ImageDecodeError):
        return None
    if found.digest != row.content_hash:
        return None
    try:
        picture = images.decode(found.data, max_pixels, HASH_DRAFT, raw_file=is_raw(row.path))
    except ImageDecodeError:
        return row, b""
    return row, dupes.picture_hash(picture)
