"""Vector search behind a small protocol; FAISS is the embedded implementation.

The FAISS file is a cache of the vectors in SQLite: written to a temp file, fsynced and renamed
into place, and trusted only when its SHA-256 and the database generation it was built at match
what the database records. Anything else (missing, truncated, bit-flipped, stale) is rebuilt.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import importlib
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

# faiss's bundled SWIG stubs do not describe its numpy-friendly wrappers; treat the module as untyped.
faiss: Any = importlib.import_module("faiss")


class VectorIndex(Protocol):
    """What the indexer and the query engine need from a vector index (FAISS here; pgvector later)."""

    kind: str

    def __len__(self) -> int: ...

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None: ...

    def remove(self, ids: np.ndarray) -> None: ...

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class IndexParams:
    kind: str = "flat"  # "flat" | "hnsw"
    hnsw_m: int = 32
    hnsw_ef_construction: int = 200
    hnsw_ef_search: int = 256
    use_gpu: bool = False


class FaissIndex:
    """Inner-product search over L2-normalised vectors (= cosine), keyed by image id."""

    def __init__(self, dim: int, params: IndexParams, index: Any = None):
        self.dim = dim
        self.params = params
        self.kind = params.kind
        self.index = index if index is not None else _new_index(dim, params)
        self._gpu: Any = None

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def supports_remove(self) -> bool:
        return self.kind == "flat"

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            self.index.add_with_ids(_f32(vectors), np.ascontiguousarray(ids, dtype=np.int64))
            self._gpu = None

    def remove(self, ids: np.ndarray) -> None:
        if not len(ids):
            return
        if not self.supports_remove:
            raise NotImplementedError("this index type cannot remove vectors; rebuild it")
        self.index.remove_ids(np.ascontiguousarray(ids, dtype=np.int64))
        self._gpu = None

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores[q, k], ids[q, k]) best first; ids are -1 where fewer than k vectors qualify."""
        queries = _f32(np.atleast_2d(queries))
        k = max(1, min(k, len(self)))
        if allowed is not None:
            return self.index.search(queries, k, params=self._selector_params(allowed))
        return self._searcher().search(queries, k)

    def _selector_params(self, allowed: np.ndarray) -> Any:
        selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64))
        if self.kind == "hnsw":
            return faiss.SearchParametersHNSW(sel=selector, efSearch=self.params.hnsw_ef_search)
        return faiss.SearchParameters(sel=selector)

    def _searcher(self) -> Any:
        if not (self.params.use_gpu and self.kind == "flat" and gpu_count() > 0):
            return self.index
        if self._gpu is None:
            self._gpu = faiss.index_cpu_to_all_gpus(self.index)
        return self._gpu

    def to_bytes(self) -> bytes:
        return faiss.serialize_index(self.index).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes, params: IndexParams) -> FaissIndex:
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        _set_ef_search(index, params)
        return cls(index.d, replace(params, kind=_kind_of(index)), index)


def build(dim: int, ids: np.ndarray, vectors: np.ndarray, params: IndexParams) -> FaissIndex:
    index = FaissIndex(dim, params)
    index.add(ids, vectors)
    return index


def gpu_count() -> int:
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get else 0


def write_atomic(path: Path, data: bytes) -> str:
    """Write data to path via a temp file + fsync + rename; return its SHA-256.

    faiss.write_index can return normally on a full disk, so the bytes are written here with os.write
    (short writes continued), the file's size checked and the file fsynced: every failure surfaces as
    an OSError, and the previous file stays in place. The folder is fsynced after the rename, so that
    the rename is durable. The caller holds the writer lock, so temp files found beside path are left
    by a save that was killed part-way, and are removed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    for leftover in path.parent.glob(f"{glob.escape(path.name)}.*.tmp"):
        leftover.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return hashlib.sha256(data).hexdigest()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written == 0:  # never for a regular file; guards the loop
            raise OSError(errno.EIO, "write wrote nothing")
        view = view[written:]
    size = os.fstat(fd).st_size
    if size != len(data):
        raise OSError(errno.EIO, f"{size} bytes on disk after writing {len(data)}")


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EBADF):  # a filesystem that cannot sync folders
            raise
    finally:
        os.close(fd)


def read_checked(path: Path, checksum: str, params: IndexParams) -> FaissIndex | None:
    """The index at path if its SHA-256 matches, else None (missing, truncated, corrupt)."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if hashlib.sha256(data).hexdigest() != checksum:
        return None
    try:
        return FaissIndex.from_bytes(data, params)
    except RuntimeError:
        return None


def _new_index(dim: int, params: IndexParams) -> Any:
    if params.kind == "hnsw":
        inner = faiss.IndexHNSWFlat(dim, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = params.hnsw_ef_construction
        inner.hnsw.efSearch = params.hnsw_ef_search
    elif params.kind == "flat":
        inner = faiss.IndexFlatIP(dim)
    else:
        raise ValueError(f"unknown index kind {params.kind!r}")
    return faiss.IndexIDMap2(inner)


def _set_ef_search(index: Any, params: IndexParams) -> None:
    inner = faiss.downcast_index(index.index) if hasattr(index, "index") else index
    if isinstance(inner, faiss.IndexHNSWFlat):
        inner.hnsw.efSearch = params.hnsw_ef_search


def _kind_of(index: Any) -> str:
    inner = faiss.downcast_index(index.index)
    return "hnsw" if isinstance(inner, faiss.IndexHNSW) else "flat"


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)
