"""Searching the index: by vector, images like an indexed one, listings (newest, by capture date), and by tag.

On SQLite the vectors are searched in the FAISS cache (store/cache.py), with the generated images left out
unless asked and every filter (folder, tags, capture date, camera, place) turned into the set of allowed ids,
which the index searches as it does any selective filter (few ids are scored exactly, IVF probes more lists);
on PostgreSQL one statement does it all (pgvector's index, the filters in its WHERE, its iterative scan).
Folder filters (`root`) are absolute paths, compared as text. Every hit carries its photo's capture fields.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from imgsearch.store.tags import HAND
from imgsearch.types import NO_FILTER, Hit, PhotoFilter

if TYPE_CHECKING:
    from imgsearch.store.cache import VectorCache
    from imgsearch.store.repository import Store


class SearchEngine:
    def __init__(self, store: Store, cache: VectorCache, top_k: int, ef_search: int):
        self.store = store
        self.cache = cache
        self.top_k = top_k
        self.ef_search = ef_search  # PostgreSQL's HNSW candidates per query

    def by_vector(
        self,
        vector: np.ndarray,
        k: int | None = None,
        root: str | None = None,
        tags: Sequence[str] = (),
        include_generated: bool = False,
        photo: PhotoFilter = NO_FILTER,
        sort: str | None = None,
    ) -> list[Hit]:
        """The k nearest indexed images to a unit vector that pass the filters, best first (sort "date" or
        "-date": those k in order of capture)."""
        k = k or self.top_k
        if self.store.postgres:
            rows = self.store.nearest_photos(vector, k, root, tags, include_generated, self.ef_search, photo)
            return by_date([Hit.of(i, path, score, meta) for i, path, score, meta in rows], sort)
        index = self.cache.loaded()
        hidden = np.zeros(0, dtype=np.int64) if include_generated else self.cache.hidden_ids()
        allowed = self.store.allowed_ids(root, tags, photo)
        if allowed is not None and not len(allowed):
            return []
        # Generated images are few: ask for that many more and drop them, rather than pass a huge selector.
        scores, ids = index.search(vector[None, :], k + len(hidden), allowed)
        skip = set(hidden.tolist())
        found = [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0 and i not in skip]
        known = self.store.photos_of(i for i, _ in found)  # an index that fell behind may hold deleted ids
        return by_date([Hit.of(i, known[i][0], s, known[i][1]) for i, s in found if i in known][:k], sort)

    def similar(
        self,
        image_id: int,
        k: int | None = None,
        root: str | None = None,
        tags: Sequence[str] = (),
        photo: PhotoFilter = NO_FILTER,
    ) -> list[Hit]:
        """Images most like an indexed one, best first, leaving the image itself out."""
        k = k or self.top_k
        hits = self.by_vector(self.store.vector_of(image_id), k + 1, root, tags, photo=photo)
        return [h for h in hits if h.id != image_id][:k]

    def newest(self, k: int | None = None, offset: int = 0, root: str | None = None) -> list[Hit]:
        """The library itself, most recently indexed first (score 0): what to show before any query."""
        return self.listing(k, offset, root)

    def listing(
        self,
        k: int | None = None,
        offset: int = 0,
        root: str | None = None,
        tags: Sequence[str] = (),
        photo: PhotoFilter = NO_FILTER,
        sort: str | None = None,
    ) -> list[Hit]:
        """The images that pass the filters (score 0): by capture time with sort, else the newest indexed first."""
        rows = self.store.listing(k or self.top_k, offset, root, tags, photo, sort)
        return [Hit.of(i, path, 0.0, meta) for i, path, meta in rows]

    def tagged(
        self, tags: Sequence[str], k: int | None = None, root: str | None = None, photo: PhotoFilter = NO_FILTER
    ) -> list[Hit]:
        """Images carrying every one of tags, ranked by the first: hand tags (score 1.0), then by probability."""
        allowed = self.store.allowed_ids(root, tags, photo)
        rows = self.store.tags.ranked(tags[0], allowed if allowed is not None else np.zeros(0, np.int64))
        rows = rows[: k or self.top_k]
        photos = self.store.photos_of(i for i, *_ in rows)
        return [
            Hit.of(i, path, 1.0 if source == HAND else p or 0.0, photos[i][1])
            for i, path, source, p in rows
            if i in photos
        ]


def by_date(hits: list[Hit], sort: str | None) -> list[Hit]:
    """Hits in capture order for sort "date" (oldest first) or "-date" (newest first), undated last; else as
    they are (best first). Capture times compare as local wall-clock times, as filters do."""
    if sort not in ("date", "-date"):
        return hits
    dated = sorted((h for h in hits if h.taken), key=lambda h: (h.taken or "")[:19], reverse=sort == "-date")
    return dated + [h for h in hits if not h.taken]
