"""Vector search behind a small protocol; FAISS is the embedded implementation.

Three kinds of index, chosen by collection size (see store.sync.choose_params):

* flat: exact inner-product search; 4 bytes per dimension per image.
* hnsw: an HNSW graph over the full vectors; approximate, fast at any size, about 2.3 KB per
  512-d image; it cannot remove vectors (removed images are dropped from results until a rebuild).
* ivf: an inverted file of 8-bit scalar-quantised vectors (IVF-SQ8), k-means trained on a sample;
  approximate, a quarter of the memory of the others, supports removal.

The FAISS file is a cache of the vectors in SQLite: written to a temp file, fsynced and renamed
into place, and trusted only when its CRC-32 matches what the database records. Queries map it into
memory (the vectors are read by the page cache as the search touches them, never copied or decoded
row by row); the indexer, which changes its copy, reads it in full.
"""

from __future__ import annotations

import errno
import glob
import importlib
import math
import mmap
import os
import tempfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

# faiss's bundled SWIG stubs do not describe its numpy-friendly wrappers; treat the module as untyped.
faiss: Any = importlib.import_module("faiss")


KINDS = ("flat", "hnsw", "ivf")


@dataclass(frozen=True)
class IndexParams:
    kind: str = "flat"  # one of KINDS
    hnsw_m: int = 32
    hnsw_ef_construction: int = 200
    hnsw_ef_search: int = 256
    ivf_nprobe: int = 64
    use_gpu: bool = False


def _members(sorted_ids: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """A mask of the candidates found in sorted_ids (binary search: no pass over all ids)."""
    at = np.minimum(np.searchsorted(sorted_ids, candidates), max(0, len(sorted_ids) - 1))
    return sorted_ids[at] == candidates if len(sorted_ids) else np.zeros(len(candidates), dtype=bool)


class FaissIndex:
    """Inner-product search over L2-normalised vectors (= cosine), keyed by image id."""

    def __init__(self, dim: int, params: IndexParams, index: Any = None):
        self.dim = dim
        self.params = params
        self.kind = params.kind
        self.index = index if index is not None else _new_index(dim, params)
        self._gpu: Any = None
        self._ids: np.ndarray | None = None  # HNSW: the ids it holds, sorted (for filtered searches)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def supports_remove(self) -> bool:
        return self.kind != "hnsw"

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            self.index.add_with_ids(_f32(vectors), np.ascontiguousarray(ids, dtype=np.int64))
            self._gpu = self._ids = None

    def remove(self, ids: np.ndarray) -> None:
        if not len(ids):
            return
        if not self.supports_remove:
            raise NotImplementedError("this index type cannot remove vectors; rebuild it")
        self.index.remove_ids(np.ascontiguousarray(ids, dtype=np.int64))
        self._gpu = self._ids = None

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores[q, k], ids[q, k]) best first; ids are -1 where fewer than k vectors qualify."""
        queries = _f32(np.atleast_2d(queries))
        k = max(1, min(k, len(self)))
        if allowed is None:
            return self._searcher().search(queries, k)
        allowed = np.ascontiguousarray(allowed, dtype=np.int64)
        if self.kind == "hnsw" and 4 * len(allowed) < len(self):
            # A graph walk that may only stop at a few allowed nodes loses most of them: score those exactly.
            held = allowed[_members(self._held_ids(), allowed)]
            return exact_search(queries, k, held, self.index.reconstruct_batch(held))
        return self.index.search(queries, k, params=self._selector_params(allowed))

    def _held_ids(self) -> np.ndarray:
        """The ids in the index, sorted; read once (8 MB at 1M), not on every filtered query."""
        if self._ids is None:
            self._ids = np.sort(faiss.vector_to_array(self.index.id_map))
        return self._ids

    def _selector_params(self, allowed: np.ndarray) -> Any:
        selector = faiss.IDSelectorBatch(allowed)
        if self.kind == "hnsw":
            return faiss.SearchParametersHNSW(sel=selector, efSearch=self.params.hnsw_ef_search)
        if self.kind == "ivf":
            # Probe more lists the fewer images qualify, so that as many candidates are scored as without a
            # filter; a filter of a few images scans every list (checking ids only, scoring the allowed ones).
            nlist = int(self.index.nlist)
            scaled = math.ceil(self.params.ivf_nprobe * len(self) / max(1, len(allowed)))
            return faiss.SearchParametersIVF(sel=selector, nprobe=min(nlist, scaled))
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
    def wrap(cls, index: Any, params: IndexParams) -> FaissIndex:
        """An index read by FAISS, with the query-time settings of params."""
        kind = _kind_of(index)
        inner = faiss.downcast_index(index.index) if kind != "ivf" else faiss.downcast_index(index)
        if kind == "hnsw":
            inner.hnsw.efSearch = params.hnsw_ef_search
        elif kind == "ivf":
            inner.nprobe = params.ivf_nprobe
        return cls(index.d, replace(params, kind=kind), index)

    @classmethod
    def from_bytes(cls, data: bytes, params: IndexParams) -> FaissIndex:
        return cls.wrap(faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8)), params)


def build(dim: int, ids: np.ndarray, vectors: np.ndarray, params: IndexParams) -> FaissIndex:
    index = FaissIndex(dim, params, _new_index(dim, params, len(ids)))
    if params.kind == "ivf":
        index.index.train(_training_sample(_f32(vectors), int(index.index.nlist)))
    index.add(ids, vectors)
    return index


def ivf_lists(count: int) -> int:
    """Inverted lists for an IVF index of count vectors: about 4 sqrt(n) (FAISS's guideline), a power of
    two, and at most count / 40 so that k-means has enough points per centroid."""
    target = 4 * math.sqrt(max(count, 1))
    lists = 2 ** round(math.log2(target))
    return max(1, min(lists, count // 40, 65536))


def _training_sample(vectors: np.ndarray, nlist: int) -> np.ndarray:
    """At most 64 points per centroid (more costs time and changes little), drawn at random, seeded."""
    cap = 64 * nlist
    if len(vectors) <= cap:
        return vectors
    rows = np.random.default_rng(0).choice(len(vectors), cap, replace=False)
    return vectors[np.sort(rows)]


def exact_search(queries: np.ndarray, k: int, ids: np.ndarray, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force (scores[q, k], ids[q, k]) over a few vectors, best first, -1 padded like FAISS."""
    scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    found = np.full((len(queries), k), -1, dtype=np.int64)
    if len(ids):
        sims = _f32(queries) @ _f32(vectors).T
        n = min(k, len(ids))
        top = np.argpartition(-sims, n - 1, axis=1)[:, :n]
        top_scores = np.take_along_axis(sims, top, axis=1)
        rank = np.argsort(-top_scores, axis=1, kind="stable")
        scores[:, :n] = np.take_along_axis(top_scores, rank, axis=1)
        found[:, :n] = ids[np.take_along_axis(top, rank, axis=1)]
    return scores, found


def gpu_count() -> int:
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get else 0


def checksum(data: bytes | mmap.mmap) -> str:
    """What the database records of an index file: a CRC-32 (3.5 GB/s here; SHA-256 was 1.5), which
    catches truncation, bit flips and garbage, the damage a cache file meets."""
    return f"crc32:{zlib.crc32(data):08x}"


def write_atomic(path: Path, data: bytes) -> str:
    """Write data to path via a temp file + fsync + rename; return its checksum.

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
    return checksum(data)


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


# How FAISS maps a file: the vectors of a flat or HNSW index (under an IndexIDMap2, fourcc "IxM2"), or the
# inverted lists of an IVF one; it refuses to do both at once.
MAPPED_CODES = faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY
MAPPED_LISTS = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY


def read_checked(path: Path, expected: str, params: IndexParams, *, mapped: bool = False) -> FaissIndex | None:
    """The index at path if its checksum matches, else None (missing, truncated, corrupt).

    mapped: map the file into memory read-only (for queries: nothing is copied, and a 1M-image index opens
    in milliseconds); the index must then not be changed. The file is checksummed through a mapping of the
    very file FAISS then opens: if a writer renamed a new file into place meanwhile, it is read again.
    """
    for _ in range(3):
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size == 0:
                    return None
                with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
                    if checksum(view) != expected:
                        return None
                    flags = (MAPPED_CODES if view[:4] == b"IxM2" else MAPPED_LISTS) if mapped else 0
                index = faiss.read_index(str(path), flags)
                if os.stat(path).st_ino != os.fstat(f.fileno()).st_ino:
                    continue  # replaced after the check: check the new one
            return FaissIndex.wrap(index, params)
        except (OSError, RuntimeError, ValueError):
            return None
    return None


def _new_index(dim: int, params: IndexParams, count: int = 0) -> Any:
    if params.kind == "hnsw":
        inner = faiss.IndexHNSWFlat(dim, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = params.hnsw_ef_construction
        inner.hnsw.efSearch = params.hnsw_ef_search
    elif params.kind == "flat":
        inner = faiss.IndexFlatIP(dim)
    elif params.kind == "ivf":
        # IVF keeps the ids itself (and renumbering under an IDMap would break its removals).
        index = faiss.index_factory(dim, f"IVF{ivf_lists(count)},SQ8", faiss.METRIC_INNER_PRODUCT)
        index.cp.niter = 10
        index.nprobe = params.ivf_nprobe
        return index
    else:
        raise ValueError(f"unknown index kind {params.kind!r}")
    return faiss.IndexIDMap2(inner)


def _kind_of(index: Any) -> str:
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexIVF):
        return "ivf"
    inner = faiss.downcast_index(index.index)
    return "hnsw" if isinstance(inner, faiss.IndexHNSW) else "flat"


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)
