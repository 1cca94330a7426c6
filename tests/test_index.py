"""Incremental indexing with the tiny trained model: no-op, change, delete, rename, copy, bad files,
model mismatch, an interrupted run resuming, and the FAISS cache agreeing with SQLite afterwards."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from imgsearch import Library, load_settings
from imgsearch.errors import BusyError, InterruptedRun, ModelMismatchError, UsageError, WeightsError
from imgsearch.store import sync
from imgsearch.store.repository import NewImage
from imgsearch.types import Progress
from tests import tinyclip
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.both_stores


def faiss_ids(lib: Library) -> set[int]:
    """The ids the vector search can find: all of the FAISS file's, or (PostgreSQL) pgvector's."""
    if lib.store.postgres:
        dim = lib.store.model()[1]
        return {i for i, _, _ in lib.store.nearest(np.ones(dim or 1, np.float32), 10**6, include_generated=True)}
    loaded = sync.load(lib.store, lib.settings.vector_index_path, lib.settings.search)
    assert not loaded.rebuilt, "the index run should leave a current FAISS file behind"
    _, ids = loaded.index.search(np.ones(loaded.index.dim, np.float32), len(loaded.index))
    return set(ids[0].tolist())


def sqlite_ids(lib: Library) -> set[int]:
    return set(lib.store.all_vectors()[0].tolist())


def test_first_run_indexes_everything_and_second_run_embeds_nothing(lib: Library, shapes) -> None:  # type: ignore[no-untyped-def]
    folder, labels = shapes
    first = lib.index([folder])
    assert first.embedded == len(labels) and not first.skipped
    assert lib.store.count() == len(labels)
    assert faiss_ids(lib) == sqlite_ids(lib)
    second = lib.index([folder])
    assert (second.embedded, second.unchanged, second.removed) == (0, len(labels), 0)


def test_changed_deleted_renamed_and_copied_files(lib: Library, shapes) -> None:  # type: ignore[no-untyped-def]
    folder, labels = shapes
    lib.index([folder])
    ids_before = {p: i for i, p in lib.store.paths_of(sqlite_ids(lib)).items()}
    paths = sorted(labels)
    changed, deleted, renamed = Path(paths[0]), Path(paths[1]), Path(paths[2])
    tinyclip.draw("blue", "square", __import__("random").Random(99)).save(changed)
    os.utime(changed, ns=(1, 1))
    deleted.unlink()
    new_name = renamed.with_name("renamed.png")
    renamed.rename(new_name)
    (folder / "copies").mkdir()
    shutil.copy(paths[3], folder / "copies" / "copy.png")

    report = lib.index([folder])
    assert (report.embedded, report.removed, report.renamed, report.copied) == (1, 1, 1, 1)
    now = {p: i for i, p in lib.store.paths_of(sqlite_ids(lib)).items()}
    assert now[str(new_name)] == ids_before[str(renamed)], "a rename keeps the row and its id"
    # Changed content gets a new id, never used before, so an index file written earlier can tell it is stale.
    assert now[str(changed)] > max(ids_before.values())
    assert str(deleted) not in now
    assert faiss_ids(lib) == sqlite_ids(lib)
    ids, vecs = lib.store.all_vectors()
    by_id = dict(zip(ids.tolist(), vecs, strict=True))
    np.testing.assert_array_equal(by_id[now[str(folder / "copies" / "copy.png")]], by_id[now[paths[3]]])


def test_a_move_seen_without_its_source_keeps_its_row(lib: Library, shapes) -> None:  # type: ignore[no-untyped-def]
    """`watch` may index a move's destination in a pass that does not hold its source (an unpaired move is a
    deletion and a creation to watchdog; a pass mid-burst takes complete files only): a file whose twin is gone
    from disk is that twin moved, not a copy. A second copy of the same content is a copy."""
    folder, labels = shapes
    lib.index([folder])
    source = Path(sorted(labels)[0])
    before = lib.image_id_of(source)
    (folder / "moved").mkdir()
    moved, copy = folder / "moved" / "a.png", folder / "moved" / "b.png"
    shutil.copy(source, copy)
    source.rename(moved)
    report = lib.index([str(copy), str(moved)])  # the destinations only, as watch's pass may hold them
    assert (report.embedded, report.renamed, report.copied) == (0, 1, 1)
    assert before in {lib.image_id_of(moved), lib.image_id_of(copy)} and lib.image_id_of(source) is None
    again = lib.index([folder])  # the pass with the source's deletion: nothing left to remove
    assert (again.removed, again.embedded) == (0, 0) and lib.store.count() == len(labels) + 1
    assert faiss_ids(lib) == sqlite_ids(lib)


def test_touched_file_is_not_re_embedded(lib: Library, shapes) -> None:  # type: ignore[no-untyped-def]
    folder, labels = shapes
    lib.index([folder])
    os.utime(sorted(labels)[0], ns=(5, 5))
    report = lib.index([folder])
    assert (report.embedded, report.touched) == (0, 1)


def test_bad_files_are_recorded_and_do_not_stop_the_run(lib: Library, shapes) -> None:  # type: ignore[no-untyped-def]
    folder, labels = shapes
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("hello")
    good = sorted(labels)[0]
    (folder / "truncated.png").write_bytes(Path(good).read_bytes()[:60])
    os.mkfifo(folder / "fifo.jpg")
    report = lib.index([folder])
    assert report.embedded == len(labels)
    reasons = {Path(s.path).name: s.reason for s in report.skipped}
    assert set(reasons) == {"empty.jpg", "text.jpg", "truncated.png", "fifo.jpg"}
    assert reasons["text.jpg"].startswith("not an image")
    assert {Path(s.path).name for s in lib.skipped()} == {"empty.jpg", "text.jpg", "truncated.png", "fifo.jpg"}
    again = lib.index([folder])
    assert again.embedded == 0 and again.known_bad == 3
    (folder / "text.jpg").unlink()
    lib.index([folder])
    assert "text.jpg" not in {Path(s.path).name for s in lib.skipped()}


def test_interrupted_run_keeps_committed_batches_and_resumes(home: Path, tiny, tiny_embedder, shapes) -> None:  # type: ignore[no-untyped-def]
    folder, labels = shapes
    # At most one batch in flight: the reader cannot hand over every file at once, so a stop after 9 files
    # always comes with some of the 24 left (under load, the decode threads could otherwise outrun the loop).
    overrides = {**tiny_overrides(tiny), "index.prefetch": "1"}
    lib = Library(load_settings(home, overrides=overrides), embedder=tiny_embedder)

    def stop_part_way(event: Progress) -> None:
        if event.phase == "embed" and event.done >= 9:
            raise KeyboardInterrupt

    with pytest.raises(InterruptedRun, match="run `imgsearch index` again"):
        lib.index([folder], on_progress=stop_part_way)
    committed = lib.store.count()
    assert 1 <= committed < len(labels)
    resumed = lib.index([folder])
    assert resumed.embedded == len(labels) - committed and resumed.unchanged == committed
    assert lib.store.count() == len(labels)
    assert faiss_ids(lib) == sqlite_ids(lib)
    lib.close()


def test_index_built_with_another_model_is_refused(lib: Library, shapes, home: Path, vitb32_checkpoint: Path) -> None:  # type: ignore[no-untyped-def]
    folder, _ = shapes
    lib.index([folder])
    other = Library(load_settings(home, overrides={"model.pretrained": str(vitb32_checkpoint)}))
    with pytest.raises(ModelMismatchError, match="--rebuild"):
        other.index([folder])
    with pytest.raises(ModelMismatchError):
        other.query("a red circle")
    assert lib.store.count() > 0


def test_rebuild_re_embeds_everything(lib: Library, shapes) -> None:  # type: ignore[no-untyped-def]
    folder, labels = shapes
    lib.index([folder])
    report = lib.index([folder], rebuild=True)
    assert report.embedded == len(labels)


def test_missing_folder_is_a_usage_error_and_loses_nothing(lib: Library, shapes, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder, labels = shapes
    lib.index([folder])
    with pytest.raises(UsageError, match="no such file or folder"):
        lib.index([tmp_path / "nope"])
    assert lib.store.count() == len(labels)


def test_index_without_paths_rescans_known_folders(lib: Library, shapes) -> None:  # type: ignore[no-untyped-def]
    folder, labels = shapes
    with pytest.raises(UsageError, match="no folder given"):
        lib.index()
    lib.index([folder])
    Path(sorted(labels)[0]).unlink()
    assert lib.index().removed == 1


def test_second_writer_is_refused(lib: Library, shapes, home: Path, tiny) -> None:  # type: ignore[no-untyped-def]
    folder, _ = shapes
    other = Library(load_settings(home, overrides=tiny_overrides(tiny)), embedder=lib.embedder)
    with lib.lock.hold(), pytest.raises(BusyError, match="being indexed by pid"):
        other.index([folder])


@pytest.mark.faiss_file
def test_deleted_faiss_file_is_rebuilt_for_queries(lib: Library, shapes) -> None:  # type: ignore[no-untyped-def]
    folder, _ = shapes
    lib.index([folder])
    lib.settings.vector_index_path.unlink()
    fresh = Library(lib.settings, embedder=lib.embedder)
    assert fresh.query("a red circle", k=3)
    assert lib.settings.vector_index_path.exists(), "the rebuilt cache is saved when no writer is busy"


def test_copies_within_one_run_are_embedded_once(lib: Library, shapes) -> None:  # type: ignore[no-untyped-def]
    folder, labels = shapes
    source = sorted(labels)[0]
    for i in range(12):  # more copies than a batch, so some arrive after their twin was committed
        shutil.copy(source, folder / f"copy-{i:02d}.png")
    report = lib.index([folder])
    assert report.embedded == len(labels)
    assert report.copied == 12
    ids, vecs = lib.store.all_vectors()
    paths = lib.store.paths_of(ids.tolist())
    by_path = {paths[i]: v for i, v in zip(ids.tolist(), vecs, strict=True)}
    for i in range(12):
        np.testing.assert_array_equal(by_path[str(folder / f"copy-{i:02d}.png")], by_path[source])
    assert faiss_ids(lib) == sqlite_ids(lib)


def test_the_model_is_given_full_batches(lib: Library, shapes, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """Decoded images wait for a whole batch (a model call on one or two costs more an image); the last may be short."""
    folder, labels = shapes
    embedder = lib.embedder
    sizes: list[int] = []
    embed = embedder.embed_prepared
    monkeypatch.setattr(embedder, "embed_prepared", lambda batch: sizes.append(len(batch)) or embed(batch))
    lib.index([folder])
    batch = lib.settings.index.batch_size
    assert sum(sizes) == len(labels) > 2 * batch
    assert sizes[:-1] == [batch] * (len(sizes) - 1) and 0 < sizes[-1] <= batch


def test_decoding_ahead_of_the_model_does_not_pile_up(lib: Library, shapes, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """When decoding outruns the model (many cores, or a slow model), the reader hands over several batches at once:
    all full ones are embedded before it is asked for more, so decoded pixels waiting in memory stay under a batch."""
    from imgsearch.indexer import pipeline

    folder, labels = shapes
    batch = lib.settings.index.batch_size
    embedded: list[int] = []
    embed = lib.embedder.embed_prepared
    monkeypatch.setattr(lib.embedder, "embed_prepared", lambda x: embedded.append(len(x)) or embed(x))
    waiting: list[int] = []  # read but not embedded, each time the reader is asked for more

    class Bursts(pipeline.Reader):
        def run(self, items):  # type: ignore[no-untyped-def]
            done = [self.read(item) for item in items]
            for start in range(0, len(done), 2 * batch):
                yield done[start : start + 2 * batch]
                waiting.append(min(len(done), start + 2 * batch) - sum(embedded))

    monkeypatch.setattr(pipeline, "Reader", Bursts)
    lib.index([folder])
    assert sum(embedded) == len(labels) > 2 * batch
    assert max(waiting) < batch, waiting


def test_rescan_skips_folders_that_are_gone_and_keeps_their_images(lib: Library, tmp_path: Path) -> None:
    from tests.conftest import draw_shapes

    drive = draw_shapes(tmp_path / "drive", per_class=1)
    local = draw_shapes(tmp_path / "local", per_class=1, seed=5)
    lib.index([tmp_path / "drive", tmp_path / "local"])
    (tmp_path / "drive").rename(tmp_path / "unmounted")
    assert lib.index().removed == 0
    assert lib.store.count() == len(drive) + len(local)
    (tmp_path / "local").rename(tmp_path / "also-gone")
    with pytest.raises(UsageError, match="none of the indexed folders exists"):
        lib.index()
    assert lib.store.count() == len(drive) + len(local)


def test_rebuild_with_unloadable_weights_keeps_the_index(lib: Library, shapes, home: Path, tiny) -> None:  # type: ignore[no-untyped-def]
    folder, labels = shapes
    lib.index([folder])
    broken = dict(tiny_overrides(tiny), **{"model.pretrained": str(home / "missing.safetensors")})
    with pytest.raises(WeightsError, match="no checkpoint file"):
        Library(load_settings(home, overrides=broken)).index([folder], rebuild=True)
    assert lib.store.count() == len(labels)


def test_weights_failing_mid_run_is_one_error_and_keeps_what_was_indexed(
    lib: Library, shapes, home: Path, tiny
) -> None:  # type: ignore[no-untyped-def]
    folder, labels = shapes
    lib.index([folder])
    for i in range(6):  # several reader threads each need the model
        tinyclip.draw("red", "circle", __import__("random").Random(i)).save(folder / f"new-{i}.png")
    calls = []

    class WeightsGone(Library):
        @property
        def embedder(self):  # type: ignore[no-untyped-def]
            calls.append(1)
            raise WeightsError("model.pretrained: no checkpoint file at /gone")

    other = WeightsGone(load_settings(home, overrides=tiny_overrides(tiny)))
    with pytest.raises(WeightsError):
        other.index([folder])
    assert calls == [1]
    assert lib.store.count() == len(labels)


def test_stop_event_ends_the_run_after_the_batch_in_flight(lib: Library, shapes) -> None:  # type: ignore[no-untyped-def]
    import threading

    folder, labels = shapes
    stop = threading.Event()
    with pytest.raises(InterruptedRun):
        lib.index([folder], stop=stop, on_progress=lambda event: stop.set() if event.phase == "embed" else None)
    committed = lib.store.count()
    assert 1 <= committed < len(labels)
    assert faiss_ids(lib) == sqlite_ids(lib), "the index is saved on the way out"
    assert lib.index([folder]).embedded == len(labels) - committed


@pytest.mark.faiss_file
def test_a_writer_waits_for_a_query_saving_the_cache_instead_of_failing(lib: Library, shapes) -> None:  # type: ignore[no-untyped-def]
    """A query that rebuilt the vector cache holds the writer lock while it saves; `index` then waits, briefly."""
    import threading
    import time

    from imgsearch.store.lock import SAVING

    folder, _ = shapes
    lib.index([folder])
    saving, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lib.lock.hold(SAVING):
            saving.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    saving.wait(10)
    threading.Timer(0.5, release.set).start()
    started = time.monotonic()
    report = lib.index([folder])  # waits for the save, then runs
    holder.join()
    assert report.unchanged > 0 and time.monotonic() - started >= 0.4
    # A save never waits for a writer: it is skipped.
    with lib.lock.hold(), pytest.raises(BusyError, match="being indexed by pid"), lib.lock.hold(SAVING):
        pass


@pytest.mark.faiss_file
def test_serve_answers_from_an_index_that_fell_behind_while_it_rebuilds_it(lib: Library, shapes) -> None:  # type: ignore[no-untyped-def]
    """A writer killed before its save leaves the file behind the database. A long-running process answers at
    once from the file plus the images added since (searched exactly), and rebuilds the file in a thread."""
    folder, _ = shapes
    lib.index([folder])
    extra = folder.parent / "extra"
    extra.mkdir()
    picture = tinyclip.draw("red", "circle", __import__("random").Random(7))
    picture.save(extra / "late-red-circle.png")
    vector = lib.embedder.embed_images([picture])[0]

    with lib.store.write() as conn:  # what a killed writer commits: the row, without saving the index file
        lib.store.insert_image(conn, NewImage(str(extra / "late-red-circle.png"), 1, 1, "late", 64, 64, vector))
        lib.store.bump_generation(conn)
    lib.cache.rebuild_in_background = True
    hits = lib.query(images=[extra / "late-red-circle.png"], k=3)
    assert hits[0].path == str(extra / "late-red-circle.png") and hits[0].score > 0.999
    assert lib.cache.rebuilds_started == 1
    lib.cache.join_rebuild(60)
    after = sync.load(lib.store, lib.settings.vector_index_path, lib.settings.search)
    assert after.exact and not after.rebuilt, "the thread saved a current file"
    assert [h.path for h in lib.query(images=[extra / "late-red-circle.png"], k=3)] == [h.path for h in hits]


@pytest.mark.faiss_file
def test_deletions_from_an_hnsw_index_are_kept_out_of_results_without_a_rebuild(
    home: Path, tiny, tiny_embedder, shapes, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """HNSW cannot remove vectors. Rebuilding it for each deletion costs minutes from 100k images, so up to
    MAX_KEPT_GONE gone images stay in the graph and searches leave them out; past that the writer rebuilds."""
    folder, labels = shapes
    overrides = {**tiny_overrides(tiny), "search.index_type": "hnsw"}
    lib = Library(load_settings(home, overrides=overrides), embedder=tiny_embedder)
    lib.cache.rebuild_in_background = True
    monkeypatch.setattr(sync, "MAX_KEPT_GONE", 4)
    rebuilds: list[int] = []
    rebuild = sync.rebuild
    monkeypatch.setattr(sync, "rebuild", lambda *a, **k: rebuilds.append(1) or rebuild(*a, **k))
    lib.index([folder])
    assert rebuilds == [1]  # the first run builds it
    red = sorted(p for p in labels if "/red-" in p)
    for path in red[:3]:
        os.remove(path)
    assert lib.index([folder]).removed == 3
    loaded = sync.load(lib.store, lib.settings.vector_index_path, lib.settings.search)
    assert rebuilds == [1] and not loaded.rebuilt and loaded.index.kind == "hnsw"
    assert (len(loaded.index), loaded.dropped, loaded.current) == (len(labels), 3, True)
    hits = lib.query("a red circle", k=len(labels))
    assert len(hits) == len(labels) - 3 and not {h.path for h in hits} & set(red[:3])
    assert lib.cache.rebuilds_started == 0, "a current file is not rebuilt in the background"
    assert lib.index([folder]).embedded == 0 and rebuilds == [1]

    os.remove(red[3])
    os.remove(red[4])  # 5 gone: more than the index keeps
    lib.index([folder])
    loaded = sync.load(lib.store, lib.settings.vector_index_path, lib.settings.search)
    assert rebuilds == [1, 1] and (len(loaded.index), loaded.dropped) == (len(labels) - 5, 0)
    lib.close()
