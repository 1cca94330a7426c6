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


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_remove_and_add_keep_ids(kind: str) -> None:
    data = clustered(4000, 16)
    index = vectors.build(16, np.arange(4000, dtype=np.int64) + 100, data, IndexParams(kind))
    index.remove(np.array([105, 107]))
    _, found = index.search(data[5], 3)
    assert 105 not in found[0] and len(index) == 3998
    index.add(np.array([9000]), data[5:6])
    _, found = index.search(data[5], 1)
    assert found[0, 0] == 9000


def recall_at_10(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)]))


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
@pytest.mark.parametrize("every", [7, 97])
def test_a_filter_restricts_results_and_still_finds_the_best(kind: str, every: int) -> None:
    """Only allowed ids come back, and they are the best allowed ones (exactly for flat; ANN kinds find
    them too, including with a filter that leaves 1% of the images, where a plain ANN walk finds few)."""
    data = clustered(4000, 16)
    ids = np.arange(4000, dtype=np.int64)
    allowed = np.arange(0, 4000, every, dtype=np.int64)
    index = vectors.build(16, ids, data, sync.choose_params(SearchSettings(index_type=kind), len(data)))
    queries = clustered(40, 16, seed=3)
    _, found = index.search(queries, 10, allowed=allowed)
    assert set(found.ravel()) <= set(allowed)
    truth = brute_force(data[allowed], allowed, queries, 10)
    if kind == "flat":
        np.testing.assert_array_equal(found, truth)
    else:
        assert recall_at_10(found, truth) >= 0.95


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_ann_recall_at_10_against_exact_search(kind: str) -> None:
    """With the shipped defaults (search.hnsw_*, search.ivf_*), the ANN index finds >= 95% of the exact top 10."""
    data = clustered(20000, 64)
    ids = np.arange(20000, dtype=np.int64)
    queries = clustered(200, 64, seed=7)
    params = sync.choose_params(SearchSettings(index_type=kind), len(data))
    assert params.kind == kind
    index = vectors.build(64, ids, data, params)
    _, found = index.search(queries, 10)
    assert recall_at_10(found, brute_force(data, ids, queries, 10)) >= 0.95


def test_ivf_lists_follow_the_collection_size() -> None:
    assert vectors.ivf_lists(1_000_000) == 4096
    assert vectors.ivf_lists(100_000) == 1024
    assert vectors.ivf_lists(1000) == 25  # at least 40 training points per list
    assert vectors.ivf_lists(10) == 1


def test_auto_index_type_follows_the_collection_size() -> None:
    settings = SearchSettings(ann_threshold=1000, ivf_threshold=5000)
    assert sync.choose_params(settings, 999).kind == "flat"
    assert sync.choose_params(settings, 1000).kind == "hnsw"
    assert sync.choose_params(settings, 4999).kind == "hnsw"
    assert sync.choose_params(settings, 5000).kind == "ivf"
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


def _current_answer(store: Store, loaded: sync.Loaded, queries: np.ndarray, k: int) -> np.ndarray:
    """What a query shows: the loaded index's ids, those no longer in the database left out, the first k."""
    known = set(store.all_vectors()[0].tolist())
    _, found = loaded.search(queries, k)
    return np.array([[i for i in row if i in known][:k] for row in found])


def test_an_index_file_behind_the_database_answers_for_the_database(
    cached: tuple[Store, Path, np.ndarray],
) -> None:
    """Images added, deleted and changed since the file was written: the file is used, not rebuilt (an
    ANN build can take minutes), and the answers are exactly those of an index of the database now."""
    store, path, data = cached
    fresh = clustered(20, 16, seed=5)
    with store.write() as conn:
        for i, vec in enumerate(fresh[:10]):
            store.insert_image(conn, NewImage(f"/p/new{i}.jpg", 1, 1, f"n{i}", 1, 1, vec))
        store.delete_images(conn, [1, 2, 3])
        for i, vec in enumerate(fresh[10:]):  # new content under a known path: a new id
            old_id = 10 + i
            assert store.replace_image(conn, old_id, NewImage(f"/p/{old_id - 1}.jpg", 2, 2, f"c{i}", 1, 1, vec)) > 300
        store.bump_generation(conn)
    loaded = sync.load(store, path, SearchSettings())
    assert not loaded.rebuilt and not loaded.exact
    assert (len(loaded.extra_ids), loaded.dropped, len(loaded)) == (20, 13, store.count())
    ids, current = store.all_vectors()
    queries = np.concatenate([fresh, data[:20], clustered(20, 16, seed=6)])
    truth = brute_force(current, ids, queries, 10)
    np.testing.assert_array_equal(_current_answer(store, loaded, queries, 10), truth)
    np.testing.assert_array_equal(_current_answer(store, sync.rebuild(store, SearchSettings()), queries, 10), truth)
    # A filter naming images on both sides (in the file, added since) gets the best allowed of both.
    allowed = ids[::5]
    _, found = loaded.search(queries, 10, allowed)  # only allowed ids: none that are gone, so the first 10
    np.testing.assert_array_equal(found[:, :10], brute_force(current[::5], allowed, queries, 10))


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_a_filtered_query_on_an_ann_file_behind_the_database(tmp_path: Path, kind: str) -> None:
    """The allowed ids include images the file does not hold yet (and a selective filter, which HNSW scores
    exactly from its stored vectors): they come from beside it, and nothing fails on ids it lacks."""
    store, _ = _store_with(tmp_path, 4000)
    path = tmp_path / "vectors.faiss"
    settings = SearchSettings(index_type=kind)
    sync.save(store, path, sync.rebuild(store, settings).index, store.generation())
    fresh = clustered(30, 16, seed=9)
    with store.write() as conn:
        for i, vec in enumerate(fresh):
            store.insert_image(conn, NewImage(f"/p/new{i}.jpg", 1, 1, f"n{i}", 1, 1, vec))
        store.bump_generation(conn)
    loaded = sync.load(store, path, settings)
    assert not loaded.rebuilt and len(loaded.extra_ids) == 30
    ids, current = store.all_vectors()
    allowed = np.concatenate([ids[:100], loaded.extra_ids])
    _, found = loaded.search(fresh, 10, allowed)
    truth = brute_force(current[np.isin(ids, allowed)], allowed, fresh, 10)
    assert set(found.ravel()) <= set(allowed) and recall_at_10(found, truth) >= 0.95
    assert list(found[:, 0]) == list(loaded.extra_ids)


def test_an_index_file_too_far_behind_is_rebuilt(
    cached: tuple[Store, Path, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, path, _ = cached
    monkeypatch.setattr(sync, "MAX_ADDED", 5)
    with store.write() as conn:
        for i, vec in enumerate(clustered(6, 16, seed=5)):
            store.insert_image(conn, NewImage(f"/p/new{i}.jpg", 1, 1, f"n{i}", 1, 1, vec))
        store.bump_generation(conn)
    loaded = sync.load(store, path, SearchSettings())
    assert loaded.rebuilt and loaded.exact and len(loaded.index) == 306


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_queries_map_the_file_and_survive_its_replacement(tmp_path: Path, kind: str) -> None:
    """A query maps the index read-only (every kind); a writer replacing the file (rename) does not disturb it."""
    store, data = _store_with(tmp_path, 2000)
    path = tmp_path / "vectors.faiss"
    settings = SearchSettings(index_type=kind)
    sync.save(store, path, sync.rebuild(store, settings).index, store.generation())
    loaded = sync.load(store, path, settings)
    assert not loaded.rebuilt and loaded.exact and loaded.index.kind == kind
    before = loaded.search(data[:5], 3)
    maps = Path("/proc/self/maps")
    if maps.exists():
        assert str(path) in maps.read_text()
    sync.save(store, path, sync.rebuild(store, SearchSettings(index_type="hnsw")).index, store.generation())
    after = loaded.search(data[:5], 3)
    np.testing.assert_array_equal(before[1], after[1])


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


def test_a_process_does_not_read_the_same_file_twice(
    cached: tuple[Store, Path, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """After each commit of a running writer, a server reloads: while the file is the one it mapped (same
    checksum), only the rows added since are read, not the file (a 150 ms checksum pass at 1M images)."""
    store, path, data = cached
    first = sync.load(store, path, SearchSettings())
    with store.write() as conn:
        store.insert_image(conn, NewImage("/p/new.jpg", 1, 1, "new", 1, 1, data[7]))
        store.bump_generation(conn)

    def no_read(*args: object, **kwargs: object) -> None:
        raise AssertionError("the file was read again")

    with monkeypatch.context() as m:
        m.setattr(vectors, "read_checked", no_read)
        again = sync.load(store, path, SearchSettings(), previous=first)
    assert again.index is first.index and len(again.extra_ids) == 1 and again.generation == first.generation + 1
    sync.save(store, path, sync.rebuild(store, SearchSettings()).index, store.generation())
    fresh = sync.load(store, path, SearchSettings(), previous=again)  # a new file: read, and current
    assert fresh.index is not first.index and fresh.exact and len(fresh) == 301


def test_a_selective_filter_on_hnsw_sees_vectors_added_after_an_earlier_filtered_query() -> None:
    """The ids an HNSW index holds are read once for filtered queries, and read again after add."""
    data = clustered(2000, 16, seed=3)
    index = vectors.build(16, np.arange(1, 2001, dtype=np.int64), data, vectors.IndexParams("hnsw"))
    allowed = np.array([5, 50, 500, 5000], dtype=np.int64)  # 5000 is not held yet
    _, found = index.search(data[49], 3, allowed)
    assert found[0][0] == 50 and 5000 not in found[0]
    index.add(np.array([5000], dtype=np.int64), data[49:50])
    _, found = index.search(data[49], 2, allowed)
    assert set(found[0]) == {50, 5000}
