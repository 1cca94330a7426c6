"""Keeps the FAISS file in step with SQLite: load it when it is provably current, else rebuild it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from imgsearch.config import SearchSettings
from imgsearch.errors import StoreError
from imgsearch.store import vectors
from imgsearch.store.repository import Store
from imgsearch.store.vectors import FaissIndex, IndexParams


def choose_params(search: SearchSettings, count: int) -> IndexParams:
    """Exact search unless configured otherwise or, with `auto`, past the ANN threshold."""
    kind = search.index_type
    if kind == "auto":
        kind = "hnsw" if count >= search.ann_threshold else "flat"
    gpu = search.faiss_gpu == "on" or (search.faiss_gpu == "auto" and vectors.gpu_count() > 0)
    return IndexParams(
        kind=kind,
        hnsw_m=search.hnsw_m,
        hnsw_ef_construction=search.hnsw_ef_construction,
        hnsw_ef_search=search.hnsw_ef_search,
        use_gpu=gpu,
    )


@dataclass
class Loaded:
    index: FaissIndex
    generation: int
    rebuilt: bool


def load(store: Store, path: Path, search: SearchSettings) -> Loaded:
    """The current vector index: from the file when its checksum and generation match, else rebuilt."""
    with store.read() as conn:
        generation = store.generation(conn)
        count = store.count(conn)
        params = choose_params(search, count)
        if store.get_meta("vectors_generation", conn) == str(generation):
            index = vectors.read_checked(path, store.get_meta("vectors_sha256", conn) or "", params)
            if index is not None and len(index) == count and index.kind == params.kind:
                return Loaded(index, generation, rebuilt=False)
        ids, vecs = store.all_vectors(conn)
        _, dim = store.model(conn)
    return Loaded(vectors.build(dim or vecs.shape[1], ids, vecs, params), generation, rebuilt=True)


def save(store: Store, path: Path, index: FaissIndex, generation: int) -> bool:
    """Write the index file and record its checksum, unless the database moved on meanwhile.

    The caller holds the writer lock. A failed write (a full disk, say) leaves the previous file in
    place (sync.load still reads it, and rebuilds from SQLite if it is stale) and raises StoreError.
    """
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
        store.set_meta(conn, "vectors_sha256", checksum)
        store.set_meta(conn, "index_type", index.kind)
    return True
