"""The vector cache's life: what a process searches, and when the FAISS file is written. One place decides both.

Queries (`VectorCache`): the file as sync.load gives it (mapped, with what changed since it was written), kept
while the database generation holds. A file that had to be rebuilt is saved unless a writer is busy (it saves
a newer one itself); a long-running process (`serve`) brings a file that fell behind up to date in a thread,
while queries go on with the one it has. The cache also knows the ids queries hide (generated images).

Writers (`writer_base`, `save_after_run`): a run starts from the file (read, not mapped: it changes its copy)
caught up with the images added since, or from what the previous run of a long-running writer kept (`Carry`);
at its end the file is written for what is committed, unless it is that file already, or (for `watch`) it is
large and little has changed since it was written.

SQLite homes only: PostgreSQL searches its own vectors, and there is no file.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from imgsearch.config import SearchSettings
from imgsearch.errors import BusyError, StoreError
from imgsearch.store import sync
from imgsearch.store.lock import SAVING, WriterLock
from imgsearch.store.repository import Store
from imgsearch.store.vectors import FaissIndex

# A long-running writer (`watch`) keeps its index in memory between passes and writes a file this large only
# once SAVE_AFTER_CHANGES images were added or removed, or SAVE_AFTER_SECONDS passed, since it last wrote it
# (and when it stops), instead of rewriting hundreds of MB for every photo that arrives. Meanwhile queries use the
# file as written plus the images added since, which they score exactly (store/sync.py). The bound on changes
# keeps well inside what queries accept before rebuilding (sync.MAX_ADDED, sync.MAX_GONE).
DEFER_BYTES = 64 << 20
SAVE_AFTER_CHANGES = 1_000
SAVE_AFTER_SECONDS = 300.0


class VectorCache:
    """The vector index this process searches, for the store's current generation."""

    def __init__(self, store: Store, search: SearchSettings, path: Path, lock: WriterLock):
        self.store = store
        self.search = search
        self.path = path
        self.lock = lock
        self.rebuild_in_background = False  # serve: a file that fell behind is rebuilt in a thread
        self.rebuilds_started = 0  # background rebuilds begun (a thread each)
        self._loaded: sync.Loaded | None = None
        self._builder: threading.Thread | None = None
        self._hidden: tuple[int, np.ndarray] | None = None

    def loaded(self) -> sync.Loaded:
        """The index for the current generation: reused while it holds, else the file (or a rebuild)."""
        generation = self.store.generation()
        if self._loaded is None or self._loaded.generation != generation:
            loaded = sync.load(self.store, self.path, self.search, self._loaded)
            if loaded.rebuilt:
                self._save_if_idle(loaded)
            self._loaded = loaded
            if not loaded.current and self.rebuild_in_background:
                self._start_rebuild()
        return self._loaded

    def hidden_ids(self) -> np.ndarray:
        """The ids queries leave out unless asked (images made by `generate`), read once per generation."""
        generation = self.store.generation()
        if self._hidden is None or self._hidden[0] != generation:
            self._hidden = (generation, self.store.generated_ids())
        return self._hidden[1]

    def forget(self) -> None:
        """Drop what is loaded: this process has just written (the next query reads what the writer saved)."""
        self._loaded = None

    def save_rebuilt(self) -> None:
        """Write the file for what a writer committed, from the database (after `import`). Holds the lock."""
        self._loaded = None
        if self.store.postgres:
            return
        loaded = sync.rebuild(self.store, self.search)
        sync.save(self.store, self.path, loaded.index, loaded.generation)

    def join_rebuild(self, timeout: float | None = None) -> None:
        """Wait for a background rebuild, if one runs."""
        if self._builder is not None:
            self._builder.join(timeout)

    def file_bytes(self) -> int:
        try:
            return self.path.stat().st_size
        except OSError:
            return 0

    def _start_rebuild(self) -> None:
        """Build the index afresh in a thread, while queries go on with the one that fell behind.

        Nothing starts while a writer runs: it saves a current index itself when it finishes.
        """
        if self._builder is not None and self._builder.is_alive():
            return
        try:
            with self.lock.hold(SAVING):
                pass
        except BusyError:
            return
        self.rebuilds_started += 1
        self._builder = threading.Thread(target=self._rebuild, name="imgsearch-index-build", daemon=True)
        self._builder.start()

    def _rebuild(self) -> None:
        try:
            loaded = sync.rebuild(self.store, self.search)
        except Exception:  # the index in use keeps answering; the next change tries again
            return
        self._save_if_idle(loaded)
        if self._loaded is None or self._loaded.generation <= loaded.generation:
            self._loaded = loaded

    def _save_if_idle(self, loaded: sync.Loaded) -> None:
        """Persist a rebuilt cache unless a writer is busy (it will save a newer one itself).

        A cache that cannot be written (a full disk) is not the query's failure: it searches the rebuilt one.
        """
        try:
            with self.lock.hold(SAVING):
                sync.save(self.store, self.path, loaded.index, loaded.generation)
        except (BusyError, StoreError, OSError):
            pass


# writers


@dataclass
class Carry:
    """What a long-running writer keeps from one run to the next: its index, exact for `generation` (it holds
    the writer lock, so nobody else changes the images), and what the file on disk lacks."""

    index: FaissIndex | None = None
    generation: int = -1
    dropped: int = 0
    unsaved: int = 0  # images added or removed since the file was written
    saved_at: float = field(default_factory=time.monotonic)

    def flush(self, store: Store, path: Path) -> None:
        """Write what is unsaved (the writer is stopping)."""
        if self.unsaved and self.index is not None and not store.postgres:
            sync.save(store, path, self.index, self.generation)
            self.unsaved = 0


@dataclass
class WriterBase:
    """Where a writing run starts: the index it changes (None: built from the database at the end), the images
    it holds that are gone (HNSW), and the file it was read from."""

    index: FaissIndex | None
    dropped: int
    loaded: sync.Loaded | None


class Written(Protocol):
    """What a writing run leaves: its index, and whether it still mirrors the database."""

    index: FaissIndex | None
    index_stale: bool  # too much changed that the index cannot follow: rebuild it from the database
    dropped: int
    generation: int
    changed: int  # vectors added or removed in the run


def writer_base(store: Store, path: Path, search: SearchSettings, carry: Carry | None) -> WriterBase:
    """The index a writing run changes: what the previous run kept (carry) while nothing else changed the
    database, else the file caught up with the images added since it was written."""
    if carry is not None and carry.index is not None and carry.generation == store.generation():
        return WriterBase(carry.index, carry.dropped, None)
    loaded = sync.from_file(store, path, search, mapped=False) if store.count() and not store.postgres else None
    base = sync.merge_extra_into_base(loaded) if loaded else None
    if carry is not None:  # what the file lacks, counted as unsaved
        carry.unsaved = 0 if loaded is None or loaded.current else len(loaded.extra_ids) + loaded.dropped
    return WriterBase(base, loaded.dropped if loaded and base else 0, loaded)


def save_after_run(
    store: Store, path: Path, search: SearchSettings, run: Written, start: WriterBase, carry: Carry | None = None
) -> None:
    """Write the FAISS file for what is committed: the run's index if still exact, else one rebuilt.

    Nothing is written when the file on disk is already that index: the run started from it, verified, and
    committed nothing since (a run with nothing to do rewrites no file). With `carry`, a large file is written
    only when enough has changed since (see DEFER_BYTES), and the index is kept for the next run.
    """
    if store.postgres:
        return
    count = store.count()
    if count == 0:
        path.unlink(missing_ok=True)
        return
    index, dropped = run.index, run.dropped
    wanted = sync.choose_params(search, count).kind
    if index is None or run.index_stale or index.kind != wanted or len(index) - dropped != count:
        rebuilt = sync.rebuild(store, search)
        index, generation, dropped = rebuilt.index, rebuilt.generation, 0
        current = deferred = False
    else:
        generation = run.generation
        loaded = start.loaded
        current = loaded is not None and loaded.current and not loaded.rebuilt and loaded.generation == generation
        if carry is not None:
            carry.unsaved += run.changed
        deferred = carry is not None and _defer(carry, path)
    if carry is not None:
        carry.index, carry.generation, carry.dropped = index, generation, dropped
    if not current and not deferred:
        sync.save(store, path, index, generation)
        if carry is not None:
            carry.unsaved, carry.saved_at = 0, time.monotonic()


def _defer(carry: Carry, path: Path) -> bool:
    """Whether to leave the file as it is for now: nothing unsaved, or a large file and little unsaved."""
    if not carry.unsaved:
        return True  # nothing changed since the file was written
    try:
        large = path.stat().st_size >= DEFER_BYTES
    except OSError:
        return False
    recent = time.monotonic() - carry.saved_at < SAVE_AFTER_SECONDS
    return large and recent and carry.unsaved < SAVE_AFTER_CHANGES
