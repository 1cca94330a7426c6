"""Use cases: index, query, status. Builds the parts from Settings; everything the CLI does is here.

>>> from imgsearch import Library
>>> lib = Library.open()                      # IMGSEARCH_HOME, config.yaml, environment
>>> report = lib.index(["~/Pictures"])
>>> for hit in lib.query("old teacher at blackboard", k=5):
...     print(hit.score, hit.path)
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from imgsearch.config import Settings, load_settings
from imgsearch.errors import BusyError, IndexEmptyError, UsageError
from imgsearch.types import Hit, IndexReport, Progress, QueryTerm, Skipped, Status

if TYPE_CHECKING:
    from imgsearch.embed import Embedder
    from imgsearch.indexer.pipeline import OnProgress
    from imgsearch.store import sync
    from imgsearch.store.repository import Store
    from imgsearch.store.vectors import FaissIndex


def _ignore(_: Progress) -> None:
    pass


class Library:
    """One imgsearch home: its database, vector index and model. Heavy parts load on first use."""

    def __init__(self, settings: Settings, embedder: Embedder | None = None):
        self.settings = settings
        self._embedder = embedder
        self._store: Store | None = None
        self._index: tuple[int, FaissIndex] | None = None

    @classmethod
    def open(
        cls,
        home: str | Path | None = None,
        config: str | Path | None = None,
        overrides: Mapping[str, str] | None = None,
    ) -> Library:
        """A Library with settings from flags, environment, config file and defaults (in that order)."""
        return cls(load_settings(home, config, overrides))

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def store(self) -> Store:
        if self._store is None:
            from imgsearch.store.repository import Store

            self._store = Store(self.settings.database_path)
        return self._store

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            from imgsearch.embed import load_embedder

            self._embedder = load_embedder(self.settings)
        return self._embedder

    # indexing

    def index(
        self,
        paths: Sequence[str | Path] = (),
        *,
        rebuild: bool = False,
        on_progress: OnProgress = _ignore,
        stop: threading.Event | None = None,
    ) -> IndexReport:
        """Bring the index in line with the image files under paths (default: every folder indexed before).

        Setting `stop` (from another thread or a signal handler) ends the run after the batch in flight.
        """
        with self._writer_lock():
            roots = self._begin(paths, rebuild)
            return self._run(roots, on_progress, stop)

    def watch(
        self,
        paths: Sequence[str | Path] = (),
        *,
        stop: threading.Event | None = None,
        on_pass: Callable[[IndexReport], None] = lambda report: None,
        on_progress: OnProgress = _ignore,
        on_notice: Callable[[str], None] = lambda message: None,
    ) -> None:
        """Reconcile the index with paths, then follow filesystem changes until `stop` is set or Ctrl-C.

        Holds the writer lock throughout; queries keep working. Each settled set of changes goes
        through the same pipeline as `index`, and its report is passed to `on_pass`.
        """
        from imgsearch.errors import InterruptedRun
        from imgsearch.indexer.watch import Watcher

        stop = stop or threading.Event()
        with self._writer_lock():
            roots = self._begin(paths)
            ix = self.settings.index
            watcher = Watcher(roots, ix.extensions, ix.exclude, self.settings.watch.settle_seconds)
            watcher.start()  # before reconciling, so nothing that changes meanwhile is missed
            try:
                on_pass(self._run(roots, on_progress, stop))
                while not stop.is_set():
                    changed = watcher.next_pass(stop)
                    if changed is None:
                        on_notice("filesystem events were lost (queue overflow or watcher error): rescanning all")
                    targets = roots if changed is None else sorted(changed)
                    if targets and not stop.is_set():
                        on_pass(self._run(targets, on_progress, stop))
            except (KeyboardInterrupt, InterruptedRun):
                pass  # the pipeline finished or rolled back its batch and saved the index
            finally:
                watcher.stop()

    def _begin(self, paths: Sequence[str | Path], rebuild: bool = False) -> list[str]:
        """What every writing run does first, under the writer lock: resolve and record the roots, check the model."""
        roots = self._roots(paths)
        self._check_model(allow_empty=True, rebuilding=rebuild)
        if rebuild:
            _ = self.embedder  # the new model must load before the old vectors are dropped
        with self.store.write() as conn:
            if rebuild:
                self.store.clear_images(conn)
                self.store.bump_generation(conn)
            self.store.add_roots(conn, roots)
        return roots

    def _run(self, roots: Sequence[str], on_progress: OnProgress, stop: threading.Event | None) -> IndexReport:
        from imgsearch.indexer import pipeline

        try:
            return pipeline.run(
                self.store,
                lambda: self.embedder,
                roots,
                self.settings.index,
                self.settings.search,
                self.settings.vector_index_path,
                on_progress,
                stop,
            )
        finally:
            self._index = None

    def _roots(self, paths: Sequence[str | Path]) -> list[str]:
        if not paths:
            known = self.store.roots()
            if not known:
                raise UsageError("index: no folder given and none indexed before (imgsearch index FOLDER)")
            # A folder that is gone (an unmounted drive, say) is left alone: scanning it would drop its images.
            present = [r for r in known if os.path.exists(r)]
            if not present:
                raise UsageError(f"index: none of the indexed folders exists now ({', '.join(known)})")
            return present
        roots = []
        for p in paths:
            path = Path(p).expanduser()
            if not path.exists():
                raise UsageError(f"index: no such file or folder: {p}")
            roots.append(str(path.resolve()))
        return roots

    @contextmanager
    def _writer_lock(self) -> Iterator[None]:
        """One writer per home; queries never wait for it (SQLite WAL)."""
        self.settings.home.mkdir(parents=True, exist_ok=True)
        path = self.settings.home / "writer.lock"
        with open(path, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "another process"
                raise BusyError(f"{self.settings.home} is being indexed by {holder}; wait for it to finish") from None
            f.truncate(0)
            f.write(f"pid {os.getpid()}")
            f.flush()
            try:
                yield
            finally:
                f.truncate(0)

    def _check_model(self, allow_empty: bool = False, rebuilding: bool = False) -> None:
        from imgsearch.embed import configured_model_id
        from imgsearch.store.repository import mismatch

        indexed, _ = self.store.model()
        count = self.store.count()
        if count == 0 and not allow_empty:
            raise IndexEmptyError(f"the index at {self.settings.home} is empty: run `imgsearch index FOLDER` first")
        if count and indexed and not rebuilding:
            configured = configured_model_id(self.settings)
            if configured != indexed:
                raise mismatch(indexed, configured)

    # searching

    def query(
        self,
        text: str = "",
        *,
        images: Sequence[str | Path] = (),
        k: int | None = None,
        path_prefix: str | Path | None = None,
    ) -> list[Hit]:
        """Images best matching a query: text and/or image terms (see imgsearch.search.query)."""
        terms = self.parse_query(text, images)
        self._check_model()
        return self.search_vector(self.query_vector(terms), k=k, path_prefix=path_prefix)

    def parse_query(self, text: str = "", images: Sequence[str | Path] = ()) -> list[QueryTerm]:
        from imgsearch.search import query as q

        terms = q.parse(text) if text.strip() else []
        for image in images:
            path = Path(image).expanduser()
            if not path.is_file():
                raise UsageError(f"query: no such image file: {image}")
            terms.append(QueryTerm("image", str(path.resolve()), 1.0))
        if not terms:
            raise UsageError("query: nothing to search for (give text, --image, or both)")
        return terms

    def query_vector(self, terms: Sequence[QueryTerm]) -> np.ndarray:
        from imgsearch.search import query as q

        return q.vector(terms, self.embedder, self.settings.index.max_pixels)

    def search_vector(
        self, vector: np.ndarray, *, k: int | None = None, path_prefix: str | Path | None = None
    ) -> list[Hit]:
        """Nearest indexed images to a unit vector, best first."""
        k = k or self.settings.search.top_k
        index = self._vector_index()
        allowed = None
        if path_prefix is not None:
            allowed = self.store.ids_under(str(Path(path_prefix).expanduser().resolve()))
            if not len(allowed):
                return []
        scores, ids = index.search(vector[None, :], k, allowed)
        found = [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]
        paths = self.store.paths_of(i for i, _ in found)
        return [Hit(i, paths[i], s) for i, s in found if i in paths]

    def _vector_index(self) -> FaissIndex:
        from imgsearch.store import sync

        generation = self.store.generation()
        if self._index is None or self._index[0] != generation:
            loaded = sync.load(self.store, self.settings.vector_index_path, self.settings.search)
            if loaded.rebuilt:
                self._save_if_idle(loaded)
            self._index = (loaded.generation, loaded.index)
        return self._index[1]

    def _save_if_idle(self, loaded: sync.Loaded) -> None:
        """Persist a rebuilt cache unless a writer is busy (it will save a newer one itself)."""
        from imgsearch.store import sync

        try:
            with self._writer_lock():
                sync.save(self.store, self.settings.vector_index_path, loaded.index, loaded.generation)
        except (BusyError, OSError):
            pass

    # reporting

    def status(self) -> Status:
        from imgsearch.store.sync import choose_params

        store = self.store
        model_id, dim = store.model()
        index_path = self.settings.vector_index_path
        updated = store.get_meta("updated_at")
        count = store.count()
        return Status(
            home=str(self.settings.home),
            images=count,
            skipped=store.skipped_count(),
            model_id=model_id,
            dim=dim,
            index_type=store.get_meta("index_type") or choose_params(self.settings.search, count).kind,
            database_bytes=_size(self.settings.database_path),
            index_bytes=_size(index_path),
            updated_at=float(updated) if updated else None,
            roots=tuple(store.roots()),
        )

    def skipped(self) -> list[Skipped]:
        return self.store.skipped_files()


def _size(path: Path) -> int:
    total = 0
    for p in (path, path.with_name(path.name + "-wal")):
        with suppress(OSError):
            total += p.stat().st_size
    return total
