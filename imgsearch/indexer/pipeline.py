"""reader (threads: read, hash, decode, preprocess) -> embed (batched) -> writer (one transaction a batch).

Incremental and idempotent: a file whose (size, mtime) is unchanged is not read at all; a file whose
content hash is already indexed is not embedded (a rename keeps its row and id, a copy gets the
vector copied); only new content goes through the model. Each batch is committed on its own, so an
interrupted run loses at most the batch in flight and the next run resumes.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from imgsearch import dupes, images
from imgsearch.config import IndexSettings, SearchSettings
from imgsearch.embed import Embedder
from imgsearch.errors import ImageDecodeError, InterruptedRun
from imgsearch.indexer import photos
from imgsearch.indexer.scan import FileEntry, Scanner
from imgsearch.raw import is_raw
from imgsearch.store import cache, sync
from imgsearch.store.repository import NewImage, Store, StoredImage, Transaction
from imgsearch.store.vectors import FaissIndex
from imgsearch.types import IndexReport, PhotoMeta, Progress, Skipped, printable

OnProgress = Callable[[Progress], None]
Todo = tuple[FileEntry, StoredImage | None]


class ReadStage(Protocol):
    def run(self, items: Iterable[Todo]) -> Iterator[list[Read]]: ...


# (lazy embedder, settings, lookup by content hash) -> the reader stage: Reader, or Ray's (indexer/distributed.py)
MakeReader = Callable[["LazyEmbedder", IndexSettings, Callable[[str], list[StoredImage]]], ReadStage]


@dataclass
class Plan:
    """The difference between the disk and the index under the roots."""

    todo: list[tuple[FileEntry, StoredImage | None]] = field(default_factory=list)
    unchanged: int = 0
    known_bad: list[Skipped] = field(default_factory=list)
    missing: dict[str, StoredImage] = field(default_factory=dict)
    stale_skips: list[str] = field(default_factory=list)
    scan_skips: list[Skipped] = field(default_factory=list)


@dataclass
class Read:
    """One file after the reader stage. Exactly one of pixels / vector / duplicates / touched / error / gone applies.

    New content comes as pixels (the writer embeds them) or, from a reader that embeds too (Ray actors), as a
    vector and the id of the model that made it.
    """

    entry: FileEntry
    old: StoredImage | None
    content_hash: str = ""
    pixels: np.ndarray | None = None
    width: int = 0
    height: int = 0
    duplicates: list[StoredImage] = field(default_factory=list)
    touched: bool = False
    error: str | None = None
    gone: bool = False
    generated: bool = False  # a PNG with imgsearch's provenance chunks
    vector: np.ndarray | None = None
    model_id: str = ""
    photo: PhotoMeta | None = None  # what its header says; None: not read here (the backfill reads it)
    pixel_hash: bytes | None = None  # its perceptual hash (imgsearch.dupes); None: not computed here (backfill)

    @property
    def fresh(self) -> bool:
        """New content: to be embedded, or embedded already."""
        return self.pixels is not None or self.vector is not None


def plan(
    store: Store,
    roots: Sequence[str],
    settings: IndexSettings,
    on_progress: OnProgress,
    own_folders: Sequence[str] = (),
) -> Plan:
    """Walk the roots and sort every file into unchanged / to do / known bad; what is indexed but gone is missing.
    own_folders (imgsearch's home, thumbnails, model cache) are never walked, even inside a root."""
    result = Plan()
    scanner = Scanner(
        settings.extensions,
        settings.exclude,
        settings.follow_symlinks,
        on_skip=lambda path, reason: result.scan_skips.append(Skipped(path, reason)),
        own_folders=own_folders,
    )
    seen: set[str] = set()
    for root in roots:
        indexed, bad = store.known_under(root)  # nobody else changes images meanwhile: the caller holds the lock
        for entry in scanner.scan(root):
            if entry.path in seen:
                continue
            seen.add(entry.path)
            _sort(result, entry, indexed.get(entry.path), bad.get(entry.path))
            if len(seen) % 500 == 0:
                on_progress(Progress("scan", len(seen)))
        result.missing.update({p: row for p, row in indexed.items() if p not in seen})
        refused = {printable(s.path) for s in result.scan_skips}
        result.stale_skips.extend(p for p in bad if p not in seen and p not in refused)
    on_progress(Progress("scan", len(seen), len(seen)))
    return result


def _sort(result: Plan, entry: FileEntry, row: StoredImage | None, bad: tuple[int, int] | None) -> None:
    if row is not None and (row.size, row.mtime_ns) == (entry.size, entry.mtime_ns):
        result.unchanged += 1
    elif bad is not None and bad == (entry.size, entry.mtime_ns):
        result.known_bad.append(Skipped(entry.path, "unchanged since it failed before"))
    else:
        result.todo.append((entry, row))


class LazyEmbedder:
    """Loads the model on first use only, so a run with nothing new to embed never pays for it."""

    def __init__(self, load: Callable[[], Embedder]):
        self._load = load
        self._lock = threading.Lock()
        self._value: Embedder | None = None
        self._error: Exception | None = None

    def get(self) -> Embedder:
        with self._lock:
            if self._error is not None:  # every reader thread asks; the load is tried once
                raise self._error
            if self._value is None:
                try:
                    self._value = self._load()
                except Exception as exc:
                    self._error = exc
                    raise
            return self._value


class Reader:
    """Reads, hashes, decodes and preprocesses files on a thread pool, a bounded number ahead."""

    def __init__(self, embedder: LazyEmbedder, settings: IndexSettings, lookup: Callable[[str], list[StoredImage]]):
        self.embedder = embedder
        self.settings = settings
        self.lookup = lookup
        self.workers = settings.workers or os.cpu_count() or 2

    def read(self, item: tuple[FileEntry, StoredImage | None]) -> Read:
        entry, old = item
        try:
            found = images.read_file(entry.path, images.size_limit(self.settings.max_pixels))
        except FileNotFoundError:
            return Read(entry, old, gone=True)
        except ImageDecodeError as exc:
            return Read(entry, old, error=str(exc))
        entry = FileEntry(entry.path, found.size, found.mtime_ns)
        photo = photos.describe(found.data, entry.path, found.mtime_ns)  # its header, parsed from the bytes read
        if old is not None and old.content_hash == found.digest:
            return Read(entry, old, found.digest, touched=True, photo=photo)
        duplicates = self.lookup(found.digest)
        if duplicates:
            return Read(entry, old, found.digest, duplicates=duplicates, generated=found.generated, photo=photo)
        return self._decode(entry, old, found, photo)

    def _decode(self, entry: FileEntry, old: StoredImage | None, found: images.FileBytes, photo: PhotoMeta) -> Read:
        try:
            embedder = self.embedder.get()
            draft = embedder.input_size if self.settings.jpeg_draft else 0
            raw_file = is_raw(entry.path)
            image, (width, height) = images.decode_sized(found.data, self.settings.max_pixels, draft, raw_file=raw_file)
            pixels = embedder.prepare(image)
        except ImageDecodeError as exc:
            return Read(entry, old, found.digest, error=str(exc))
        pixel_hash = dupes.picture_hash(image)  # from the pixels decoded for the model: no second decode
        return Read(
            entry,
            old,
            found.digest,
            pixels=pixels,
            width=width,
            height=height,
            generated=found.generated,
            photo=photo,
            pixel_hash=pixel_hash,
        )

    def run(self, items: Iterable[tuple[FileEntry, StoredImage | None]]) -> Iterator[list[Read]]:
        """Everything finished since the last call (waiting for at least one), with at most
        `prefetch` batches in flight, so the decode threads keep working while the model runs."""
        limit = max(self.workers, self.settings.prefetch * self.settings.batch_size)
        todo = iter(items)
        with images.reader_pool(self.workers) as pool:
            pending: set[cf.Future[Read]] = set()
            try:
                for item in itertools.islice(todo, limit):
                    pending.add(pool.submit(self.read, item))
                while pending:
                    done, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                    for item in itertools.islice(todo, len(done)):
                        pending.add(pool.submit(self.read, item))
                    yield [f.result() for f in done]
            finally:
                for f in pending:
                    f.cancel()


class Writer:
    """Applies what the reader found to SQLite (one transaction a batch) and to the in-memory FAISS index."""

    def __init__(
        self,
        store: Store,
        index: FaissIndex | None,
        embedder: LazyEmbedder,
        plan: Plan,
        report: IndexReport,
        dropped: int = 0,
    ):
        self.store = store
        self.index = index
        self.dropped = dropped  # images gone from the database that the index still holds (HNSW cannot remove)
        self.changed = 0  # vectors added or removed
        self.embedder = embedder
        self.plan = plan
        self.report = report
        self.batch: list[Read] = []
        self.followers: dict[str, list[Read]] = {}
        self.deferred: list[Read] = []
        self.generation = store.generation()
        self.index_stale = index is None
        self.embedded_hashes: set[str] = set()
        self.moved_rows: set[int] = set()  # rows given a new path in this run: a second copy of them is a copy

    def accept(self, r: Read) -> None:
        if r.fresh and r.content_hash in self.embedded_hashes:
            # Its twin was embedded and committed after this file's reader looked: copy, don't embed again.
            r.duplicates, r.pixels, r.vector = self.store.find_by_hash(r.content_hash), None, None
        if not r.fresh:
            self.deferred.append(r)
        elif r.content_hash in self.followers:
            self.followers[r.content_hash].append(r)
        else:
            self.followers[r.content_hash] = []
            self.batch.append(r)

    def due(self, batch_size: int) -> bool:
        """A full batch to embed, or many changes that need no model. Partial batches wait for the end of the
        run (or a stop): a model call on one or two images costs more per image (on a 2-core CPU, 75 ms an image
        at batch 1 under decode load against 54 at 32), and waiting idles nothing, since the decode threads
        have the cores meanwhile; a GPU wants full batches all the more."""
        return len(self.batch) >= batch_size or len(self.deferred) >= 4 * batch_size

    def flush(self, batch_size: int) -> None:
        """Embed and write up to batch_size pending images, with every pending non-embedding change."""
        if not (self.batch or self.deferred):
            return
        batch, self.batch = self.batch[:batch_size], self.batch[batch_size:]
        vectors = self._embed(batch)
        removed: list[int] = []
        added: list[tuple[int, np.ndarray]] = []
        with self.store.write() as conn:
            for model_id in sorted({r.model_id for r in batch}):
                self.store.claim_model(conn, model_id, vectors.shape[1])
            for i, r in enumerate(batch):
                self.report.embedded += 1
                added.append((self._upsert(conn, r, _new_image(r, vectors[i]), removed), vectors[i]))
                for copy in self.followers.pop(r.content_hash, []):
                    self.report.copied += 1
                    new = _new_image(copy, vectors[i], r.width, r.height)
                    added.append((self._upsert(conn, copy, new, removed), vectors[i]))
                self.embedded_hashes.add(r.content_hash)
            for r in self.deferred:
                self._write_deferred(conn, r, removed, added)
            self.deferred = []
            self.generation = self.store.bump_generation(conn)
        self._apply(removed, added)

    def _embed(self, batch: list[Read]) -> np.ndarray:
        """The batch's vectors: embedded here from pixels, or as the reader brought them."""
        here = [r for r in batch if r.vector is None]
        if here:
            embedder = self.embedder.get()
            vectors = embedder.embed_prepared(np.stack([r.pixels for r in here if r.pixels is not None]))
            for r, vector in zip(here, vectors, strict=True):
                r.vector, r.model_id = vector, embedder.model_id
        return np.stack([r.vector for r in batch if r.vector is not None]) if batch else np.zeros(0)

    def finish(self, batch_size: int) -> None:
        """Flush the rest and remove what is gone from disk."""
        while self.batch or self.deferred:
            self.flush(batch_size)
        gone = list(self.plan.missing.values())
        if not (gone or self.plan.stale_skips or self.plan.scan_skips):
            return
        with self.store.write() as conn:
            self.store.delete_images(conn, [row.id for row in gone])
            self.store.forget_skipped(conn, self.plan.stale_skips)
            for refused in self.plan.scan_skips:  # FIFOs, broken links, loops: listed by `status --errors` too
                st = _lstat(refused.path)
                self.store.record_skipped(conn, printable(refused.path), st[0], st[1], refused.reason)
            if gone:
                self.generation = self.store.bump_generation(conn)
        self.report.removed += len(gone)
        self._apply([row.id for row in gone], [])

    def _upsert(self, conn: Transaction, r: Read, new: NewImage, removed: list[int]) -> int:
        """Write a file's row: in place (same id) if the path was indexed before, else a new row."""
        self.store.forget_skipped(conn, [r.entry.path])
        if r.old is None:
            return self.store.insert_image(conn, new)
        removed.append(r.old.id)
        return self.store.replace_image(conn, r.old.id, new)

    def _write_deferred(
        self, conn: Transaction, r: Read, removed: list[int], added: list[tuple[int, np.ndarray]]
    ) -> None:
        e = r.entry
        if r.gone or r.error is not None:
            if r.error is not None:
                self.report.skipped.append(Skipped(e.path, r.error))
                self.store.record_skipped(conn, e.path, e.size, e.mtime_ns, r.error)
            if r.old is not None:  # it was indexed, and is now gone or unreadable: drop it at the end
                self.plan.missing[e.path] = r.old
        elif r.touched and r.old is not None:
            self.report.touched += 1
            self.store.move_image(conn, r.old.id, e.path, e.size, e.mtime_ns, r.photo)
        elif r.duplicates:
            self._write_duplicate(conn, r, removed, added)

    def _write_duplicate(
        self, conn: Transaction, r: Read, removed: list[int], added: list[tuple[int, np.ndarray]]
    ) -> None:
        e = r.entry
        moved = [d for d in r.duplicates if self.plan.missing.get(d.path) == d]
        if not moved:
            # Its twin's file may be gone from disk in a change this pass does not cover: `watch` can see a move's
            # destination apart from its source (watchdog reports a move it could not pair as a deletion and a
            # creation, and a pass during a burst takes complete files only). That is a move too.
            moved = [d for d in r.duplicates if d.id not in self.moved_rows and not os.path.lexists(d.path)]
        if moved:  # renamed: keep the row, its id and its vector
            dup = moved[0]
            self.plan.missing.pop(dup.path, None)
            self.moved_rows.add(dup.id)
            self.store.forget_skipped(conn, [e.path])
            if r.old is not None:
                self.store.delete_images(conn, [r.old.id])
                removed.append(r.old.id)
            self.store.move_image(conn, dup.id, e.path, e.size, e.mtime_ns, r.photo)
            self.report.renamed += 1
            return
        vector, width, height, pixel_hash = self.store.embedding_of(conn, r.duplicates[0].id)
        self.report.copied += 1
        new = NewImage(
            e.path, e.size, e.mtime_ns, r.content_hash, width, height, vector, r.generated, r.photo, pixel_hash
        )
        added.append((self._upsert(conn, r, new, removed), vector))

    def _apply(self, removed: list[int], added: list[tuple[int, np.ndarray]]) -> None:
        self.changed += len(removed) + len(added)
        if self.index is None or self.index_stale:
            return
        if removed and not self.index.supports_remove:
            self.dropped += len(removed)
            if self.dropped > sync.MAX_KEPT_GONE:
                self.index_stale = True  # rebuilt from SQLite at the end
                return
            removed = []  # kept in the graph; searches leave out ids the database no longer has
        self.index.remove(np.array(removed, dtype=np.int64))
        if added:
            ids = np.array([a[0] for a in added], dtype=np.int64)
            self.index.add(ids, np.stack([a[1] for a in added]))


def _lstat(path: str) -> tuple[int, int]:
    try:
        st = os.lstat(path)
    except OSError:
        return 0, 0
    return st.st_size, st.st_mtime_ns


def _new_image(r: Read, vector: np.ndarray, width: int = 0, height: int = 0) -> NewImage:
    e = r.entry
    w, h = r.width or width, r.height or height
    return NewImage(e.path, e.size, e.mtime_ns, r.content_hash, w, h, vector, r.generated, r.photo, r.pixel_hash)


def run(
    store: Store,
    embedder: Callable[[], Embedder],
    roots: Sequence[str],
    settings: IndexSettings,
    search: SearchSettings,
    index_path: Path,
    on_progress: OnProgress = lambda p: None,
    stop: threading.Event | None = None,
    make_reader: MakeReader | None = None,
    carry: cache.Carry | None = None,
    own_folders: Sequence[str] = (),
) -> IndexReport:
    """Bring the index in line with the files under roots. The caller holds the writer lock.

    Setting `stop` ends the run once what is read so far is embedded and committed, and saves the index.
    `make_reader` replaces the reader stage (default: Reader, threads in this process). `carry`: the index
    kept from the caller's previous run (see Carry); the caller flushes it when it stops.
    """
    started = time.monotonic()
    report = IndexReport()
    work = plan(store, roots, settings, on_progress, own_folders)
    report.unchanged = work.unchanged
    report.known_bad = len(work.known_bad)
    report.skipped.extend(Skipped(printable(s.path), s.reason) for s in work.scan_skips)
    start = cache.writer_base(store, index_path, search, carry)
    lazy = LazyEmbedder(embedder)
    writer = Writer(store, start.index, lazy, work, report, start.dropped)
    reader = (make_reader or Reader)(lazy, settings, store.find_by_hash)
    total = len(work.todo)
    done = 0
    try:
        for ready in reader.run(work.todo):
            for r in ready:
                writer.accept(r)
            while writer.due(settings.batch_size):  # all of them before reading on: what waits stays under a batch
                writer.flush(settings.batch_size)
            done += len(ready)
            on_progress(Progress("embed", done, total))
            if stop is not None and stop.is_set():
                writer.flush(settings.batch_size)  # what is decoded already is embedded and kept
                raise KeyboardInterrupt  # between batches, never inside a transaction
        writer.finish(settings.batch_size)
    except KeyboardInterrupt:
        _save(store, index_path, search, writer, start, carry, on_progress)
        raise InterruptedRun(
            f"interrupted: {report.embedded} images embedded and saved; run `imgsearch index` again to finish"
        ) from None
    _save(store, index_path, search, writer, start, carry, on_progress)
    report.seconds = time.monotonic() - started
    return report


def _save(
    store: Store,
    path: Path,
    search: SearchSettings,
    writer: Writer,
    start: cache.WriterBase,
    carry: cache.Carry | None,
    on_progress: OnProgress,
) -> None:
    if not store.postgres:
        on_progress(Progress("save", 0, 1))
        cache.save_after_run(store, path, search, writer, start, carry)
        on_progress(Progress("save", 1, 1))
