"""Searching the index: by vector, images like an indexed one, the newest, and images by tag.

On SQLite the vectors are searched in the FAISS cache (store/cache.py), with the generated images left out
unless asked and tag or folder filters turned into the set of allowed ids; on PostgreSQL one statement does it
all (pgvector's index, the filters in its WHERE). Folder filters (`root`) are absolute paths, compared as text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from imgsearch.store.tags import HAND
from imgsearch.types import Hit

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
    ) -> list[Hit]:
        """Nearest indexed images to a unit vector, best first (among those under root, with all tags)."""
        k = k or self.top_k
        if self.store.postgres:
            rows = self.store.nearest(
                vector, k, root=root, tags=tags, include_generated=include_generated, ef_search=self.ef_search
            )
            return [Hit(i, path, score) for i, path, score in rows]
        index = self.cache.loaded()
        hidden = np.zeros(0, dtype=np.int64) if include_generated else self.cache.hidden_ids()
        allowed = None
        if tags:
            allowed = self.store.tags.ids_with_all(tags, root)
        elif root is not None:
            allowed = self.store.ids_under(root)
        if allowed is not None and not len(allowed):
            return []
        # Generated images are few: ask for that many more and drop them, rather than pass a huge selector.
        scores, ids = index.search(vector[None, :], k + len(hidden), allowed)
        skip = set(hidden.tolist())
        found = [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0 and i not in skip]
        paths = self.store.paths_of(i for i, _ in found)  # an index that fell behind may hold deleted ids
        return [Hit(i, paths[i], s) for i, s in found if i in paths][:k]

    def similar(
        self, image_id: int, k: int | None = None, root: str | None = None, tags: Sequence[str] = ()
    ) -> list[Hit]:
        """Images most like an indexed one, best first, leaving the image itself out."""
        k = k or self.top_k
        hits = self.by_vector(self.store.vector_of(image_id), k + 1, root, tags)
        return [h for h in hits if h.id != image_id][:k]

    def newest(self, k: int | None = None, offset: int = 0, root: str | None = None) -> list[Hit]:
        """The library itself, most recently indexed first (score 0): what to show before any query."""
        rows = self.store.newest(k or self.top_k, offset, root, include_generated=False)
        return [Hit(i, path, 0.0) for i, path in rows]

    def tagged(self, tags: Sequence[str], k: int | None = None, root: str | None = None) -> list[Hit]:
        """Images carrying every one of tags, ranked by the first: hand tags (score 1.0), then by probability."""
        ids = self.store.tags.ids_with_all(tags, root)
        rows = self.store.tags.ranked(tags[0], ids)
        return [Hit(i, path, 1.0 if source == HAND else p or 0.0) for i, path, source, p in rows[: k or self.top_k]]
