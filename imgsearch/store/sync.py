"""Keeps the FAISS file in step with SQLite, without making queries wait for an index build.

The file is written for one database generation and records the largest image id it holds. Image
ids are never reused and changed content gets a new id, so a file written before later changes is
still right about everything it holds: images added since are exactly those with a larger id
(searched exactly, beside it), and images gone since are dropped from its results. Queries use such
a file while the writer (`index`, `watch`) or `serve` builds the next one; a file too far behind,
damaged or missing is rebuilt from the database.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imgsearch.config import SearchSettings
from imgsearch.errors import StoreError
from imgsearch.store import vectors
from imgsearch.store.repository import Store
from imgsearch.store.vectors import FaissIndex, IndexParams

# A file further behind the database than this is rebuilt at once: images added since are scored exactly
# (50k: ~10 ms, read from SQLite in ~0.3 s), and the base is asked for one more result per image gone.
MAX_ADDED = 50_000
MAX_GONE = 2_000
# An index that cannot remove vectors (HNSW) keeps up to this many images that are gone, instead of being
# rebuilt (minutes from 100k images) for each deletion: its searches ask for that many more results and leave
# out the ids the database no longer has. Past it, the writer rebuilds the index.
MAX_KEPT_GONE = 200


def choose_params(search: SearchSettings, count: int) -> IndexParams:
    """Exact search up to ann_threshold images, then HNSW, then IVF-SQ8 from ivf_threshold (with `auto`)."""
    kind = search.index_type
    if kind == "auto":
        kind = "flat" if count < search.ann_threshold else "hnsw" if count < search.ivf_threshold else "ivf"
    gpu = search.faiss_gpu == "on" or (search.faiss_gpu == "auto" and vectors.gpu_count() > 0)
    return IndexParams(
        kind=kind,
        hnsw_m=search.hnsw_m,
        hnsw_ef_construction=search.hnsw_ef_construction,
        hnsw_ef_search=search.hnsw_ef_search,
        ivf_nprobe=search.ivf_nprobe,
        use_gpu=gpu,
    )


def _empty(dim: int = 0) -> np.ndarray:
    return np.zeros((0, dim), dtype=np.float32)


@dataclass
class Loaded:
    """The vector index for one database generation: a base index, plus what changed since it was written."""

    index: FaissIndex
    generation: int
    rebuilt: bool  # built from the database just now (not read from the file)
    extra_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    extra: np.ndarray = field(default_factory=_empty)
    dropped: int = 0  # images in the base that are gone from the database; the caller drops unknown ids
    kind_wanted: str = ""  # the kind the collection's size calls for, when the base is of another
    checksum: str = ""  # of the file the base was read from ("" when built here)

    @property
    def exact(self) -> bool:
        """The base alone holds exactly the database's images, as the configured kind of index."""
        return not len(self.extra_ids) and not self.dropped and not self.kind_wanted

    @property
    def current(self) -> bool:
        """As a writer leaves it: exact, or holding a few images that are gone because it cannot remove them."""
        return not len(self.extra_ids) and not self.kind_wanted and self.keeps_dropped

    @property
    def keeps_dropped(self) -> bool:
        """The images gone since may stay in the base: none, or up to MAX_KEPT_GONE in one that cannot remove."""
        return not self.dropped or (not self.index.supports_remove and self.dropped <= MAX_KEPT_GONE)

    def __len__(self) -> int:
        return len(self.index) + len(self.extra_ids) - self.dropped

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores[q, k'], ids[q, k']) best first, k' >= k: asks the base for `dropped` more, since up to that
        many of its ids may be gone (the caller looks ids up and leaves out those it cannot find)."""
        want = k + self.dropped
        scores, ids = self.index.search(queries, want, allowed) if len(self.index) else _none(queries, want)
        if not len(self.extra_ids):
            return scores, ids
        keep = np.ones(len(self.extra_ids), dtype=bool) if allowed is None else np.isin(self.extra_ids, allowed)
        more_scores, more_ids = vectors.exact_search(queries, want, self.extra_ids[keep], self.extra[keep])
        scores, ids = np.concatenate([scores, more_scores], axis=1), np.concatenate([ids, more_ids], axis=1)
        scores = np.where(ids >= 0, scores, -np.inf)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :want]
        return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)


def _none(queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    n = len(np.atleast_2d(queries))
    return np.full((n, k), -np.inf, dtype=np.float32), np.full((n, k), -1, dtype=np.int64)


def load(store: Store, path: Path, search: SearchSettings, previous: Loaded | None = None) -> Loaded:
    """The index for the current generation: the file, memory-mapped, with what changed since it was written,
    when it is intact and not too far behind; else one rebuilt from the database. previous: what this process
    loaded before; while the file is still the one it was read from, it is not read (checksummed) again."""
    return from_file(store, path, search, mapped=True, previous=previous) or rebuild(store, search)


def from_file(
    store: Store, path: Path, search: SearchSettings, *, mapped: bool, previous: Loaded | None = None
) -> Loaded | None:
    """The file's index with what changed since it was written; None if it is missing, damaged, of another
    model or too far behind. mapped: map it read-only (queries) rather than read it (a writer's copy)."""
    with store.read() as conn:
        generation = store.generation(conn)
        count = store.count(conn)
        _, dim = store.model(conn)
        params = choose_params(search, count)
        checksum = store.get_meta("vectors_checksum", conn) or ""
        if previous is not None and previous.checksum and previous.checksum == checksum:
            index: FaissIndex | None = previous.index  # the same file, mapped already
        else:
            index = vectors.read_checked(path, checksum, params, mapped=mapped)
        written_at = store.get_meta("vectors_generation", conn)
        max_id = store.get_meta("vectors_max_id", conn)
        if index is not None and written_at is not None and max_id is not None and index.dim == (dim or index.dim):
            if written_at == str(generation) and len(index) == count:
                extra_ids, extra = np.zeros(0, dtype=np.int64), _empty(index.dim)
            else:
                extra_ids, extra = store.vectors_after(conn, int(max_id), limit=MAX_ADDED + 1)
            dropped = len(index) - (count - len(extra_ids))
            if 0 <= dropped <= MAX_GONE and len(extra_ids) <= MAX_ADDED:
                wanted = params.kind if index.kind != params.kind else ""
                return Loaded(index, generation, False, extra_ids, extra, dropped, wanted, checksum)
    return None


def merge_extra_into_base(loaded: Loaded) -> FaissIndex | None:
    """The base with the images added since it was written added into it (in place: `loaded` is the writer's own
    copy, read from the file unmapped), for a writer to go on changing; None when it must be rebuilt: of the wrong
    kind, or holding images that are gone and that it could remove (their ids are not known without a scan) or
    too many that it cannot (HNSW keeps up to MAX_KEPT_GONE; see Loaded.dropped)."""
    if loaded.kind_wanted or not loaded.keeps_dropped:
        return None
    loaded.index.add(loaded.extra_ids, loaded.extra)
    return loaded.index


def rebuild(store: Store, search: SearchSettings) -> Loaded:
    """The index built afresh from every vector in the database."""
    with store.read() as conn:
        generation = store.generation(conn)
        ids, vecs = store.all_vectors(conn)
        _, dim = store.model(conn)
    params = choose_params(search, len(ids))
    return Loaded(vectors.build(dim or vecs.shape[1], ids, vecs, params), generation, rebuilt=True)


def save(store: Store, path: Path, index: FaissIndex, generation: int) -> bool:
    """Write the index file and record its checksum, unless the database has moved on from generation.

    The caller holds the writer lock, so the generation does not change while it writes. A failed write (a
    full disk, say) leaves the previous file in place (still used, with what changed since, or rebuilt when
    too far behind) and raises StoreError.
    """
    with store.read() as conn:
        if store.generation(conn) != generation:
            return False  # never replace a newer file with an older one
    try:
        checksum = vectors.write_atomic(path, index.to_bytes())
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise StoreError(
            f"cannot save the vector index {path}: {reason} (what was indexed is kept in the database; "
            "the index is rebuilt from it when it is next needed)"
        ) from exc
    with store.write() as conn:
        if store.generation(conn) != generation:
            return False
        store.set_meta(conn, "vectors_generation", str(generation))
        store.set_meta(conn, "vectors_checksum", checksum)
        store.set_meta(conn, "vectors_max_id", str(store.max_id(conn)))
        store.set_meta(conn, "index_type", index.kind)
    return True
