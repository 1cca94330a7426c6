"""Vector search against brute-force numpy; the FAISS cache file checked, and rebuilt when wrong."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from imgsearch.config import SearchSettings
from imgsearch.store import sync, vectors
from imgsearch.store.repository import NewImage, Store
from imgsearch.store.vectors import IndexParams


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Vectors with the cluster structure of real embeddings, which is what ANN indexes are built for."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(8, n // 200), dim))
    return unit(centres[rng.integers(0, len(centres), n)] + 0.6 * rng.standard_normal((n, dim)))


def brute_force(data: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    scores = queries @ data.T
    return ids[np.argsort(-scores, axis=1, kind="stable")[:, :k]]


def test_flat_search_equals_numpy() -> None:
    data = clustered(2000, 32)
    ids = np.arange(10, 2010, dtype=np.int64) * 3
    index = vectors.build(32, ids, data, IndexParams("flat"))
    queries = clustered(50, 32, seed=1)
    scores, found = index.search(queries, 10)
    np.testing.assert_array_equal(found, brute_force(data, ids, queries, 10))
    np.testing.assert_allclose(scores[:, 0], np.max(queries @ data.T, axis=1), rtol=1e-5)


def test_flat_remove_and_add_keep_ids() -> None:
    data = clustered(100, 16)
    ids = np.arange(100, dtype=np.int64)
    index = vectors.build(16, ids, data, IndexParams("flat"))
    index.remove(np.array([5, 7]))
    _, found = index.search(data[5], 3)
    assert 5 not in found[0] and len(index) == 98
    index.add(np.array([500]), data[5:6])
    _, found = index.search(data[5], 1)
    assert found[0, 0] == 500


def test_selector_restricts_results_exactly() -> None:
    data = clustered(1000, 16)
    ids = np.arange(1000, dtype=np.int64)
    allowed = np.arange(0, 1000, 7, dtype=np.int64)
    for kind in ("flat", "hnsw"):
        index = vectors.build(16, ids, data, IndexParams(kind))
        _, found = index.search(data[3], 5, allowed=allowed)
        assert set(found[0]) <= set(allowed)
        if kind == "flat":
            np.testing.assert_array_equal(found, brute_force(data[allowed], allowed, data[3:4], 5))


def test_hnsw_recall_at_10_against_exact_search() -> None:
    """With the shipped defaults (search.hnsw_*), the ANN index finds >= 95% of the exact top 10."""
    data = clustered(20000, 64)
    ids = np.arange(20000, dtype=np.int64)
    queries = clustered(200, 64, seed=7)
    params = sync.choose_params(SearchSettings(index_type="hnsw"), len(data))
    assert params.kind == "hnsw"
    index = vectors.build(64, ids, data, params)
    _, found = index.search(queries, 10)
    truth = brute_force(data, ids, queries, 10)
    recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)])
    assert recall >= 0.95, recall


def test_auto_index_type_switches_at_threshold() -> None:
    settings = SearchSettings(ann_threshold=1000)
    assert sync.choose_params(settings, 999).kind == "flat"
    assert sync.choose_params(settings, 1000).kind == "hnsw"
    assert sync.choose_params(SearchSettings(index_type="flat", ann_threshold=1), 10**6).kind == "flat"


def _store_with(tmp_path: Path, n: int) -> tuple[Store, np.ndarray]:
    store = Store(tmp_path / "db.sqlite")
    data = clustered(n, 16)
    with store.write() as conn:
        store.claim_model(conn, "m", 16)
        for i, vec in enumerate(data):
            store.insert_image(conn, NewImage(f"/p/{i}.jpg", 1, 1, f"h{i}", 1, 1, vec))
        store.bump_generation(conn)
    return store, data


@pytest.fixture
def cached(tmp_path: Path) -> tuple[Store, Path, np.ndarray]:
    store, data = _store_with(tmp_path, 300)
    path = tmp_path / "vectors.faiss"
    loaded = sync.load(store, path, SearchSettings())
    assert loaded.rebuilt
    assert sync.save(store, path, loaded.index, loaded.generation)
    assert not sync.load(store, path, SearchSettings()).rebuilt
    return store, path, data


def _check_rebuilt_and_correct(store: Store, path: Path, data: np.ndarray) -> None:
    loaded = sync.load(store, path, SearchSettings())
    assert loaded.rebuilt
    _, found = loaded.index.search(data[:20], 1)
    ids, _ = store.all_vectors()
    np.testing.assert_array_equal(found[:, 0], ids[:20])


def test_missing_index_file_is_rebuilt(cached: tuple[Store, Path, np.ndarray]) -> None:
    store, path, data = cached
    path.unlink()
    _check_rebuilt_and_correct(store, path, data)


@pytest.mark.parametrize("damage", ["truncate", "bitflip", "garbage", "empty"])
def test_corrupt_index_file_is_detected_and_rebuilt(cached: tuple[Store, Path, np.ndarray], damage: str) -> None:
    store, path, data = cached
    raw = bytearray(path.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    elif damage == "bitflip":
        raw[len(raw) // 2] ^= 0x10  # inside the vectors: faiss itself would load this silently
    elif damage == "garbage":
        raw = bytearray(b"not a faiss index" * 10)
    else:
        raw = bytearray()
    path.write_bytes(bytes(raw))
    _check_rebuilt_and_correct(store, path, data)


def test_stale_index_file_is_rebuilt_after_a_write(cached: tuple[Store, Path, np.ndarray]) -> None:
    store, path, data = cached
    with store.write() as conn:
        store.insert_image(conn, NewImage("/p/new.jpg", 1, 1, "new", 1, 1, data[0]))
        store.bump_generation(conn)
    loaded = sync.load(store, path, SearchSettings())
    assert loaded.rebuilt and len(loaded.index) == 301


def test_failed_write_leaves_previous_file_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "vectors.faiss"
    vectors.write_atomic(path, b"old contents")

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(vectors.os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space"):
        vectors.write_atomic(path, b"new contents")
    assert path.read_bytes() == b"old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["vectors.faiss"]
