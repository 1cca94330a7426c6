"""The images, their vectors and the home's metadata (store/tags.py has the tags; store/ holds all SQL).
SQLite in WAL mode (writes in BEGIN IMMEDIATE transactions) or PostgreSQL with
pgvector (writes serialised on an advisory lock, so that index/watch processes on several machines can
share one database); schema by Alembic, the same revisions for both.

The database is the source of truth for vectors (float32 blobs; pgvector `vector`s in PostgreSQL) and
records which model made them. A `generation` counter in `meta` goes up with every change to the set
of vectors, so the FAISS cache can tell whether it is current. PostgreSQL searches its vectors itself
(an HNSW index, filters in the same statement): no FAISS file.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import numpy as np
from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Float,
    bindparam,
    case,
    create_engine,
    delete,
    event,
    false,
    func,
    insert,
    select,
    true,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DatabaseError, OperationalError

from imgsearch.errors import ConfigError, ModelMismatchError, SchemaTooNewError, StoreError
from imgsearch.store.coltypes import POSTGRES, Embedding, insert_into, register
from imgsearch.store.schema import image_tags, images, meta, roots, skipped
from imgsearch.types import NO_FILTER, ImageInfo, PhotoCounts, PhotoFilter, PhotoMeta, Skipped

if TYPE_CHECKING:
    from imgsearch.store.copies import CopyStore
    from imgsearch.store.tags import TagStore

# A transaction a caller runs several operations in (the pipeline's writer): opened by Store.read/write.
Transaction = Connection

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
# The newest revision in MIGRATIONS (a test keeps the two equal). A database already there opens
# without importing Alembic at all, which is a fifth of a second of every cold query.
HEAD = "0006"
# pg_advisory_xact_lock key of imgsearch's write transactions in PostgreSQL ("imgs" in ASCII).
WRITE_LOCK = 0x696D6773


@dataclass(frozen=True)
class StoredImage:
    """What the indexer needs to know about an indexed file to decide whether to embed it again."""

    id: int
    path: str
    size: int
    mtime_ns: int
    content_hash: str


@dataclass(frozen=True)
class NewImage:
    """A row to write: a file's identity, its pixel size and its embedding."""

    path: str
    size: int
    mtime_ns: int
    content_hash: str
    width: int
    height: int
    vector: np.ndarray
    generated: bool = False
    photo: PhotoMeta | None = None  # None: not read (the backfill reads it later)
    pixel_hash: bytes | None = None  # imgsearch.dupes' hash of its pixels; None: not computed (the backfill does)


# The capture fields of images, in PhotoMeta's order (photo_version last: PhotoMeta.version).
PHOTO_COLUMNS = (
    images.c.taken,
    images.c.taken_offset,
    images.c.taken_source,
    images.c.camera,
    images.c.lens,
    images.c.lat,
    images.c.lon,
    images.c.place,
    images.c.photo_notes,
    images.c.photo_version,
)


def prefix_range(root: str) -> tuple[str, str]:
    """Bounds such that root/<anything> sorts inside [lo, hi): '/' is followed by '0' in byte order."""
    base = root.rstrip("/")
    return base + "/", base + "0"


def under(column: ColumnElement[str], root: str) -> ColumnElement[bool]:
    """The path column is root itself or inside it (an index range scan, not LIKE)."""
    lo, hi = prefix_range(root)
    return ((column >= lo) & (column < hi)) | (column == root)


class Store:
    """The database of one imgsearch home: a SQLite file, or a PostgreSQL database given by URL (store.url)."""

    def __init__(self, location: Path | str):
        self._held = threading.local()
        self.read_only = False  # a SQLite file in a folder this process cannot write: queries only
        if isinstance(location, str):
            self.path: Path | None = None
            self.engine, self.name = _postgres_engine(location)
        else:
            self.path, self.name = location, str(location)
            location.parent.mkdir(parents=True, exist_ok=True)
            self.read_only = location.is_file() and not os.access(location.parent, os.W_OK)
            self.engine = _engine(location, self.read_only)
        self.postgres = self.engine.dialect.name == POSTGRES
        try:
            _migrate(self.engine, self.name, self.read_only)
        except DatabaseError as exc:
            self.engine.dispose()
            raise StoreError(f"cannot open the database {self.name}: {first_line(exc.orig)}") from None

    @property
    def tags(self) -> TagStore:
        """The images' tags and the cached label embeddings (store/tags.py)."""
        from imgsearch.store.tags import TagStore

        return TagStore(self)

    @property
    def copies(self) -> CopyStore:
        """Pixel hashes and groups of copies (store/copies.py)."""
        from imgsearch.store.copies import CopyStore

        return CopyStore(self)

    def close(self) -> None:
        self.engine.dispose()

    # transactions

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction, taken with BEGIN IMMEDIATE so that writers queue instead of deadlocking.

        Write transactions of every process are also serialised on a lock file, so that only one
        process at a time ever writes or checkpoints: SQLite before 3.51.3 has a WAL-reset race
        between concurrent writers of different processes (`tag add` runs beside `watch`).
        A full disk or a failing commit is a StoreError, not a traceback.

        In PostgreSQL, write transactions of every process on every machine are serialised on an advisory
        lock instead: a writer decides from what it reads inside its transaction (is this path indexed?),
        so two writers can never both insert one file or undo each other's change. Readers never wait.
        """
        if self.postgres:
            try:
                with self.engine.connect() as conn, conn.begin():
                    conn.execute(select(func.pg_advisory_xact_lock(WRITE_LOCK)))
                    yield conn
            except OperationalError as exc:
                raise StoreError(f"cannot write the database {self.name}: {first_line(exc.orig)}") from None
            return
        if self.read_only:
            raise StoreError(f"{Path(self.name).parent} is read-only: queries work, but nothing can be written there")
        with self._write_lock():
            try:
                with self.engine.connect().execution_options(sqlite_begin="IMMEDIATE") as conn, conn.begin():
                    yield conn
            except OperationalError as exc:
                raise StoreError(f"cannot write the database {self.path}: {exc.orig}") from None

    @contextmanager
    def _write_lock(self) -> Iterator[None]:
        if getattr(self._held, "value", False):  # a write nested in this thread's own write: already ours
            yield
            return
        assert self.path is not None
        with open(self.path.with_name(self.path.name + ".write-lock"), "a") as f:
            deadline = time.monotonic() + 60
            while True:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        busy = f"the database {self.path} stayed locked for 60 s by another process"
                        raise StoreError(busy) from None
                    time.sleep(0.01)
            self._held.value = True
            try:
                yield
            finally:
                self._held.value = False
                fcntl.flock(f, fcntl.LOCK_UN)

    @contextmanager
    def read(self, snapshot: bool = False) -> Iterator[Connection]:
        """A read transaction. SQLite's (WAL) always sees one moment; PostgreSQL's only with snapshot=True
        (REPEATABLE READ), which a long read that must be consistent asks for."""
        conn = self.engine.connect()
        if snapshot and self.postgres:
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn, conn.begin():
            yield conn

    # meta

    def get_meta(self, key: str, conn: Connection | None = None) -> str | None:
        if conn is None:
            with self.read() as c:
                return self.get_meta(key, c)
        return conn.execute(select(meta.c.value).where(meta.c.key == key)).scalar()

    def set_meta(self, conn: Connection, key: str, value: str) -> None:
        stmt = insert_into(conn, meta).values(key=key, value=value)
        conn.execute(stmt.on_conflict_do_update(index_elements=[meta.c.key], set_={"value": value}))

    def generation(self, conn: Connection | None = None) -> int:
        return int(self.get_meta("generation", conn) or 0)

    def bump_generation(self, conn: Connection) -> int:
        new = self.generation(conn) + 1
        self.set_meta(conn, "generation", str(new))
        self.set_meta(conn, "updated_at", repr(time.time()))
        return new

    def model(self, conn: Connection | None = None) -> tuple[str | None, int | None]:
        model_id, dim = self.get_meta("model_id", conn), self.get_meta("dim", conn)
        return model_id, int(dim) if dim else None

    def claim_model(self, conn: Connection, model_id: str, dim: int) -> None:
        """Record the model on first write; refuse a different one afterwards."""
        current, current_dim = self.model(conn)
        if current is None or self.count(conn) == 0:
            self.set_meta(conn, "model_id", model_id)
            self.set_meta(conn, "dim", str(dim))
            if self.postgres:
                _fit_vector_column(conn, dim)
        elif current != model_id or current_dim != dim:
            raise mismatch(current, model_id)

    def sizes(self) -> tuple[int, int]:
        """Bytes of the whole database and of its vector index (what `status` shows): SQLite's file with its
        write-ahead log (no vector index: the FAISS file is a cache outside the database), or PostgreSQL's."""
        if self.path is not None:
            return sum(_file_size(p) for p in (self.path, self.path.with_name(self.path.name + "-wal"))), 0
        with self.read() as conn:
            total = conn.execute(select(func.pg_database_size(func.current_database()))).scalar_one()
            index = conn.exec_driver_sql("SELECT pg_relation_size(to_regclass('ix_images_vector'))").scalar()
        return int(total), int(index or 0)

    # images

    def count(self, conn: Connection | None = None) -> int:
        if conn is None:
            with self.read() as c:
                return self.count(c)
        return int(conn.execute(select(func.count()).select_from(images)).scalar_one())

    def sqlite_version(self) -> str:
        """The SQLite library the database runs on ("" for PostgreSQL): below 3.51.3 it has the WAL-reset bug."""
        if self.postgres:
            return ""
        with self.read() as conn:
            return str(conn.exec_driver_sql("SELECT sqlite_version()").scalar_one())

    def known_under(self, root: str) -> tuple[dict[str, StoredImage], dict[str, tuple[int, int]]]:
        """What the index knows of the files under root, read together: the images by path, and the files that
        failed before by path, with the (size, mtime_ns) they failed at."""
        with self.read() as conn:
            return self.images_under(conn, root), self.skipped_under(conn, root)

    def images_under(self, conn: Connection, root: str) -> dict[str, StoredImage]:
        cols = (images.c.id, images.c.path, images.c.size, images.c.mtime_ns, images.c.content_hash)
        stmt = select(*cols).where(under(images.c.path, root))
        return {r.path: StoredImage(*r) for r in conn.execute(stmt)}

    def find_by_hash(self, content_hash: str) -> list[StoredImage]:
        """Every image with this content (thread-safe: each thread gets its own pooled connection)."""
        cols = (images.c.id, images.c.path, images.c.size, images.c.mtime_ns, images.c.content_hash)
        with self.read() as conn:
            rows = conn.execute(select(*cols).where(images.c.content_hash == content_hash).order_by(images.c.id))
            return [StoredImage(*row) for row in rows]

    def vector_of(self, image_id: int) -> np.ndarray:
        """The stored vector of an indexed image ("more like this", the no-match test)."""
        with self.read() as conn:
            return self.embedding_of(conn, image_id)[0]

    def embedding_of(self, conn: Connection, image_id: int) -> tuple[np.ndarray, int, int, bytes | None]:
        """(vector, width, height, pixel hash) of an indexed image, to copy onto a file of the same content."""
        c = images.c
        row = conn.execute(select(c.vector, c.width, c.height, c.pixel_hash).where(c.id == image_id)).one()
        vector = np.frombuffer(row.vector, dtype="<f4").copy()
        return vector, int(row.width), int(row.height), None if row.pixel_hash is None else bytes(row.pixel_hash)

    def insert_image(self, conn: Connection, new: NewImage) -> int:
        """A new row for a file. Should the path be indexed already (another writer of a shared PostgreSQL
        database got there first), that row is replaced instead: one row per file, whoever wrote it."""
        existing = conn.execute(select(images.c.id).where(images.c.path == new.path)).scalar_one_or_none()
        if existing is not None:
            return self.replace_image(conn, existing, new)
        values = _row_values(new)
        return int(conn.execute(insert(images).values(**values).returning(images.c.id)).scalar_one())

    def replace_image(self, conn: Connection, image_id: int, new: NewImage) -> int:
        """New content under a known path: a new row and id (so that a vector index written before can tell
        the vector it holds is stale); hand tags stay with the path, auto tags described the old content and go.
        """
        conn.execute(delete(images).where(images.c.id == image_id))
        conn.execute(delete(image_tags).where((image_tags.c.path == new.path) & (image_tags.c.source == "auto")))
        return self.insert_image(conn, new)

    def move_image(
        self, conn: Connection, image_id: int, path: str, size: int, mtime_ns: int, photo: PhotoMeta | None = None
    ) -> None:
        """Same content under a new path (or touched in place): the row, its id and its tags follow, and its photo
        fields are read again (a date in the name, the mtime) when `photo` is given.

        A row another writer removed meanwhile is left gone; a row another writer made at the new
        path gives way (both hold the same content).
        """
        old = conn.execute(select(images.c.path).where(images.c.id == image_id)).scalar_one_or_none()
        if old is None:
            return
        if old != path:
            conn.execute(delete(images).where((images.c.path == path) & (images.c.id != image_id)))
        values = {"path": path, "size": size, "mtime_ns": mtime_ns, **(photo_values(photo) if photo else {})}
        conn.execute(update(images).where(images.c.id == image_id).values(**values))
        if old != path:
            conn.execute(delete(image_tags).where(image_tags.c.path == path))
            conn.execute(update(image_tags).where(image_tags.c.path == old).values(path=path))

    def delete_images(self, conn: Connection, ids: Sequence[int]) -> None:
        for chunk in chunks(list(ids), 500):
            paths = select(images.c.path).where(images.c.id.in_(chunk)).scalar_subquery()
            conn.execute(delete(image_tags).where(image_tags.c.path.in_(paths)))
            conn.execute(delete(images).where(images.c.id.in_(chunk)))

    def all_vectors(self, conn: Connection | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64[n], vectors float32[n, dim]) of every indexed image."""
        if conn is None:
            with self.read() as c:
                return self.all_vectors(c)
        return self.vectors_after(conn, 0)

    def vectors_after(self, conn: Connection, after_id: int, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of the images whose id is above after_id, in id order (the first `limit`)."""
        stmt = select(images.c.id, images.c.vector).where(images.c.id > after_id).order_by(images.c.id).limit(limit)
        rows = conn.execute(stmt).all()
        _, dim = self.model(conn)
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        if not rows:
            return ids, np.zeros((0, dim or 0), dtype=np.float32)
        vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), -1)
        return ids, vectors.astype(np.float32, copy=False)

    def max_id(self, conn: Connection) -> int:
        return int(conn.execute(select(func.max(images.c.id))).scalar() or 0)

    def nearest(
        self,
        vector: np.ndarray,
        k: int,
        *,
        root: str | None = None,
        tags: Sequence[str] = (),
        include_generated: bool = False,
        ef_search: int = 100,
        photo: PhotoFilter = NO_FILTER,
    ) -> list[tuple[int, str, float]]:
        """(id, path, cosine similarity) of the k nearest images, best first, in one statement with its filters
        (PostgreSQL: pgvector's HNSW index, scanned iteratively until k rows pass the filters)."""
        return [
            (i, p, s) for i, p, s, _ in self.nearest_photos(vector, k, root, tags, include_generated, ef_search, photo)
        ]

    def nearest_photos(
        self,
        vector: np.ndarray,
        k: int,
        root: str | None = None,
        tags: Sequence[str] = (),
        include_generated: bool = False,
        ef_search: int = 100,
        photo: PhotoFilter = NO_FILTER,
    ) -> list[tuple[int, str, float, PhotoMeta]]:
        """nearest, with each image's photo fields."""
        query = bindparam("q", np.ascontiguousarray(vector, dtype="<f4").tobytes(), type_=Embedding())
        distance = images.c.vector.op("<=>", return_type=Float())(query)
        stmt = select(images.c.id, images.c.path, distance, *PHOTO_COLUMNS).order_by(distance).limit(k)
        with self.read() as conn:
            stmt = stmt.where(filtered(conn, root, tags, photo, include_generated))
            conn.execute(select(func.set_config("hnsw.ef_search", str(min(max(ef_search, k), 1000)), True)))
            # Relaxed order finds more rows under a filter; the few swaps it allows are sorted out below.
            conn.execute(select(func.set_config("hnsw.iterative_scan", "relaxed_order", True)))
            rows = conn.execute(stmt).all()
        found = [(int(r[0]), r[1], 1.0 - float(r[2]), photo_of(r[3:])) for r in rows]
        return sorted(found, key=lambda r: -r[2])

    def prepare_bulk_load(self, conn: Connection, dim: int) -> None:
        """Before many rows go in at once (migrate): PostgreSQL builds its HNSW index after them, not per row."""
        if self.postgres:
            _fit_vector_column(conn, dim)
            conn.exec_driver_sql("DROP INDEX IF EXISTS ix_images_vector")

    def finish_bulk_load(self, conn: Connection) -> None:
        """After rows went in with their ids: the index again, and new ids continue after the largest."""
        if self.postgres:
            conn.exec_driver_sql("SET LOCAL maintenance_work_mem = '512MB'")  # the graph built in memory
            _create_vector_index(conn)
            conn.exec_driver_sql("SELECT setval(pg_get_serial_sequence('images', 'id'), max(id)) FROM images")

    def image_info(self, image_id: int) -> ImageInfo | None:
        """The row of one image (without tags), or None when no image has that id."""
        cols = (images.c.id, images.c.path, images.c.size, images.c.width, images.c.height, images.c.indexed_at)
        stmt = select(*cols, images.c.generated, images.c.content_hash, *PHOTO_COLUMNS).where(images.c.id == image_id)
        with self.read() as conn:
            row = conn.execute(stmt).one_or_none()
        if row is None:
            return None
        return ImageInfo(*row[:6], bool(row.generated), row.content_hash, photo=photo_of(row[8:]))

    def newest(self, limit: int, offset: int, root: str | None, include_generated: bool) -> list[tuple[int, str]]:
        """(id, path) of indexed images, the most recently indexed first."""
        return [(i, p) for i, p, _ in self.listing(limit, offset, root, include_generated=include_generated)]

    def listing(
        self,
        limit: int,
        offset: int,
        root: str | None = None,
        tags: Sequence[str] = (),
        photo: PhotoFilter = NO_FILTER,
        sort: str | None = None,
        include_generated: bool = False,
    ) -> list[tuple[int, str, PhotoMeta]]:
        """(id, path, photo fields) of the images that pass the filters: by capture time with sort "date" (oldest
        first) or "-date" (newest first), undated ones last; else the most recently indexed first."""
        stmt = select(images.c.id, images.c.path, *PHOTO_COLUMNS).order_by(*_order(sort))
        with self.read() as conn:
            stmt = stmt.where(filtered(conn, root, tags, photo, include_generated))
            rows = conn.execute(stmt.limit(limit).offset(offset)).all()
        return [(int(r[0]), r[1], photo_of(r[2:])) for r in rows]

    def allowed_ids(self, root: str | None, tags: Sequence[str], photo: PhotoFilter) -> np.ndarray | None:
        """Ids of the images that pass the filters (what a filtered vector search may return); None: no filter."""
        if root is None and not tags and not photo:
            return None
        with self.read() as conn:
            condition = filtered(conn, root, tags, photo, include_generated=True)
            if self.postgres:
                return np.fromiter(conn.execute(select(images.c.id).where(condition)).scalars(), dtype=np.int64)
            # One string of ids that numpy parses, not a Python row each: 50k ids in 9 ms instead of 55.
            text = conn.execute(select(func.group_concat(images.c.id)).where(condition)).scalar()
        return np.fromstring(text, dtype=np.int64, sep=",") if text else np.zeros(0, dtype=np.int64)

    def photos_of(self, ids: Iterable[int]) -> dict[int, tuple[str, PhotoMeta]]:
        """{id: (path, photo fields)} of those ids that are indexed."""
        out: dict[int, tuple[str, PhotoMeta]] = {}
        with self.read() as conn:
            for chunk in chunks(list(ids), 500):
                stmt = select(images.c.id, images.c.path, *PHOTO_COLUMNS).where(images.c.id.in_(chunk))
                out.update({int(r[0]): (r[1], photo_of(r[2:])) for r in conn.execute(stmt)})
        return out

    def values(self, field: str) -> list[tuple[str, int]]:
        """A photo field's values ("camera" or "place") with how many images have each, most common first."""
        column = images.c[field]
        stmt = select(column, func.count()).where(column.is_not(None)).group_by(column)
        with self.read() as conn:
            rows = [(str(v), int(n)) for v, n in conn.execute(stmt)]
        return sorted(rows, key=lambda r: (-r[1], r[0].casefold()))

    # photo fields read after the fact (imgsearch.indexer.backfill)

    def unread_photos(self, after_id: int, limit: int, version: int) -> list[StoredImage]:
        """Up to `limit` images, by id after after_id, whose header was not read (or by an older reader)."""
        cols = (images.c.id, images.c.path, images.c.size, images.c.mtime_ns, images.c.content_hash)
        old = images.c.photo_version.is_(None) | (images.c.photo_version < version)
        stmt = select(*cols).where(old & (images.c.id > after_id)).order_by(images.c.id).limit(limit)
        with self.read() as conn:
            return [StoredImage(*r) for r in conn.execute(stmt)]

    def count_unread_photos(self, version: int) -> int:
        old = images.c.photo_version.is_(None) | (images.c.photo_version < version)
        with self.read() as conn:
            return int(conn.execute(select(func.count()).select_from(images).where(old)).scalar_one())

    def unnamed_places(self, after_id: int, limit: int) -> list[tuple[int, float, float]]:
        """Up to `limit` images, by id after after_id, with a GPS position and no place name."""
        where = images.c.place.is_(None) & images.c.lat.is_not(None) & (images.c.id > after_id)
        stmt = select(images.c.id, images.c.lat, images.c.lon).where(where).order_by(images.c.id).limit(limit)
        with self.read() as conn:
            return [(int(i), float(a), float(b)) for i, a, b in conn.execute(stmt)]

    def set_photos(self, found: Sequence[tuple[StoredImage, PhotoMeta]]) -> None:
        """Write photo fields read from headers, to rows still holding what was read (a row changed or removed
        meanwhile is left to the indexer)."""
        if not found:
            return
        same = (images.c.id == bindparam("b_id")) & (images.c.content_hash == bindparam("b_hash"))
        stmt = update(images).where(same).values({c.name: bindparam(f"b_{c.name}") for c in PHOTO_COLUMNS})
        rows = [
            {"b_id": row.id, "b_hash": row.content_hash, **{f"b_{k}": v for k, v in photo_values(meta).items()}}
            for row, meta in found
        ]
        with self.write() as conn:
            conn.execute(stmt, rows)

    def set_places(self, named: Sequence[tuple[int, str]]) -> None:
        if named:
            stmt = update(images).where(images.c.id == bindparam("b_id")).values(place=bindparam("b_place"))
            with self.write() as conn:
                conn.execute(stmt, [{"b_id": i, "b_place": place} for i, place in named])

    def photo_counts(self) -> PhotoCounts:
        """How many images have each photo field (what `status` shows)."""
        c = images.c
        counted = [func.count(col) for col in (c.camera, c.lens, c.lat, c.place)]
        unread = func.sum(case((c.photo_version.is_(None), 1), else_=0))
        unnamed = func.sum(case((c.lat.is_not(None) & c.place.is_(None), 1), else_=0))
        with self.read() as conn:
            camera, lens, gps, place, left, nameless = tuple(conn.execute(select(*counted, unread, unnamed)).one())
            by_source = conn.execute(
                select(c.taken_source, func.count()).where(c.taken_source.is_not(None)).group_by(c.taken_source)
            )
            taken = {str(source): int(n) for source, n in by_source}
        return PhotoCounts(taken, int(camera), int(lens), int(gps), int(place), int(left or 0), int(nameless or 0))

    def id_of(self, path: str) -> int | None:
        with self.read() as conn:
            found = conn.execute(select(images.c.id).where(images.c.path == path)).scalar_one_or_none()
        return None if found is None else int(found)

    def content_hashes(self) -> set[str]:
        with self.read() as conn:
            return set(conn.execute(select(images.c.content_hash).distinct()).scalars())

    def ids_under(self, root: str) -> np.ndarray:
        stmt = select(images.c.id).where(under(images.c.path, root))
        with self.read() as conn:
            return np.fromiter(conn.execute(stmt).scalars(), dtype=np.int64)

    def generated_ids(self) -> np.ndarray:
        """Ids of the images `imgsearch generate` made."""
        with self.read() as conn:
            return np.fromiter(conn.execute(select(images.c.id).where(images.c.generated)).scalars(), dtype=np.int64)

    def paths_of(self, ids: Iterable[int]) -> dict[int, str]:
        out: dict[int, str] = {}
        with self.read() as conn:
            for chunk in chunks(list(ids), 500):
                out.update(conn.execute(select(images.c.id, images.c.path).where(images.c.id.in_(chunk))).all())
        return out

    # skipped files

    def skipped_under(self, conn: Connection, root: str) -> dict[str, tuple[int, int]]:
        rows = conn.execute(
            select(skipped.c.path, skipped.c.size, skipped.c.mtime_ns).where(under(skipped.c.path, root))
        )
        return {r.path: (r.size, r.mtime_ns) for r in rows}

    def record_skipped(self, conn: Connection, path: str, size: int, mtime_ns: int, reason: str) -> None:
        values = {"path": path, "size": size, "mtime_ns": mtime_ns, "reason": reason, "seen_at": time.time()}
        stmt = insert_into(conn, skipped).values(**values)
        conn.execute(stmt.on_conflict_do_update(index_elements=[skipped.c.path], set_=values))

    def forget_skipped(self, conn: Connection, paths: Iterable[str]) -> None:
        for chunk in chunks(list(paths), 500):
            conn.execute(delete(skipped).where(skipped.c.path.in_(chunk)))

    def skipped_files(self) -> list[Skipped]:
        with self.read() as conn:
            rows = conn.execute(select(skipped.c.path, skipped.c.reason).order_by(skipped.c.path)).all()
        return [Skipped(path=r.path, reason=r.reason) for r in rows]

    def skipped_count(self) -> int:
        with self.read() as conn:
            return int(conn.execute(select(func.count()).select_from(skipped)).scalar_one())

    # roots

    def add_roots(self, paths: Iterable[str], clear: bool = False) -> None:
        """Record folders as indexed (`index` with no folder re-scans them); with clear, first forget every
        image (a rebuild with another model: roots and hand tags are kept)."""
        with self.write() as conn:
            if clear:
                self._clear_images(conn)
                self.bump_generation(conn)
            for p in paths:
                stmt = insert_into(conn, roots).values(path=p, added_at=time.time()).on_conflict_do_nothing()
                conn.execute(stmt)

    def roots(self) -> list[str]:
        with self.read() as conn:
            return list(conn.execute(select(roots.c.path).order_by(roots.c.path)).scalars())

    def _clear_images(self, conn: Connection) -> None:
        conn.execute(delete(images))
        conn.execute(delete(image_tags).where(image_tags.c.source == "auto"))  # hand tags find their files again
        conn.execute(delete(skipped))
        conn.execute(delete(meta).where(meta.c.key.in_(["model_id", "dim"])))


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def mismatch(indexed: str, configured: str) -> ModelMismatchError:
    return ModelMismatchError(
        f"the index was built with model {indexed}, but the settings select {configured}: "
        "set model.name/model.pretrained back, or run `imgsearch index --rebuild` to re-embed everything"
    )


def photo_values(photo: PhotoMeta | None) -> dict[str, Any]:
    """The photo columns' values for a PhotoMeta (None: not read)."""
    if photo is None:
        return {c.name: None for c in PHOTO_COLUMNS}
    fields = (photo.taken, photo.offset, photo.source, photo.camera, photo.lens, photo.lat, photo.lon, photo.place)
    values = dict(zip((c.name for c in PHOTO_COLUMNS), fields, strict=False))
    return values | {"photo_notes": photo.notes or None, "photo_version": photo.version or None}


def photo_of(row: Sequence[Any]) -> PhotoMeta:
    """A PhotoMeta from the PHOTO_COLUMNS of a row."""
    taken, offset, source, camera, lens, lat, lon, place, notes, version = row
    return PhotoMeta(taken, offset, source, camera, lens, lat, lon, place, notes or "", version or 0)


def filtered(
    conn: Connection, root: str | None, tags: Sequence[str], photo: PhotoFilter, include_generated: bool
) -> ColumnElement[bool]:
    """Every filter of a query as one condition on `images` (the folder, tags, generated images, photo fields)."""
    condition: ColumnElement[bool] = true()
    if root is not None:
        condition = condition & under(images.c.path, root)
    if tags:
        from imgsearch.store.tags import with_all

        condition = condition & with_all(tags)
    if not include_generated:
        # Not `~generated`: SQLite, without statistics, would take ix_images_generated for it (generated = 0 is
        # nearly every row) over the capture-time or path range that narrows the search (a month listed: 200 ms
        # instead of 5 at 100k). That index serves the lookup of the few generated images (hidden_ids).
        condition = condition & ~func.coalesce(images.c.generated, false())
    if photo.after is not None:
        condition = condition & (images.c.taken >= photo.after)
    if photo.before is not None:
        condition = condition & (images.c.taken < photo.before)
    for column, needle in ((images.c.camera, photo.camera), (images.c.place, photo.place)):
        if needle is not None:
            condition = condition & column.in_(_containing(conn, column, needle))
    return condition


def _containing(conn: Connection, column: ColumnElement[str], needle: str) -> list[str]:
    """The column's values that contain needle, case-insensitively, compared in Python: Unicode case folding in
    both databases alike ("zürich" finds "Zürich"; SQLite's LIKE folds ASCII only). A column has few distinct
    values (cameras, places), read from its index."""
    folded = needle.casefold()
    values = conn.execute(select(column).where(column.is_not(None)).distinct()).scalars()
    return [v for v in values if folded in v.casefold()]


def _order(sort: str | None) -> list[Any]:
    """Undated images last either way. Newest first is the index on taken read backwards (SQLite: no sort)."""
    if sort == "date":
        return [images.c.taken.asc().nulls_last(), images.c.id]
    if sort == "-date":
        return [images.c.taken.desc().nulls_last(), images.c.id.desc()]
    return [images.c.indexed_at.desc(), images.c.id.desc()]


def _row_values(new: NewImage) -> dict[str, Any]:
    return {
        "path": new.path,
        "size": new.size,
        "mtime_ns": new.mtime_ns,
        "content_hash": new.content_hash,
        "width": new.width,
        "height": new.height,
        "vector": np.ascontiguousarray(new.vector, dtype="<f4").tobytes(),
        "indexed_at": time.time(),
        "generated": new.generated,
        "pixel_hash": new.pixel_hash,
        **photo_values(new.photo),
    }


def chunks(items: list[Any], n: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def _revision(engine: Engine) -> str | None:
    """The schema revision a database records, or None (a new database, or not one of ours)."""
    try:
        with engine.connect() as conn:
            return conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    except DatabaseError:
        return None


def first_line(error: object) -> str:
    """An error's first line, for a one-line message (a driver's message may run over several)."""
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _postgres_engine(url: str) -> tuple[Engine, str]:
    """An engine for a postgresql:// URL (driver psycopg 3), and the URL to name in messages (no password)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"store.url must be empty or a postgresql://user@host/database URL, not {url!r}") from None
    if parsed.get_backend_name() not in ("postgresql", "postgres"):
        raise ConfigError(f"store.url must be empty or a postgresql://user@host/database URL, not {url!r}")
    name = parsed.render_as_string(hide_password=True)
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise ConfigError(f"store.url {name}: PostgreSQL needs psycopg: pip install 'imgsearch[postgres]'") from None
    parsed = parsed.set(drivername="postgresql+psycopg")
    register()
    # A server that does not answer fails in seconds, not after the kernel's minutes-long TCP timeout.
    engine = create_engine(parsed, connect_args={"connect_timeout": 10}, pool_size=8, max_overflow=32)
    return engine, name


def _fit_vector_column(conn: Connection, dim: int) -> None:
    """Give the (empty) vector column the model's dimension and an HNSW index for cosine distance.

    pgvector indexes only columns of a fixed dimension, which is known once the first model writes.
    """
    current = conn.exec_driver_sql(
        "SELECT atttypmod FROM pg_attribute WHERE attrelid = 'images'::regclass AND attname = 'vector'"
    ).scalar()
    if current == dim:
        return
    conn.exec_driver_sql("DROP INDEX IF EXISTS ix_images_vector")
    conn.exec_driver_sql(f"ALTER TABLE images ALTER COLUMN vector TYPE vector({int(dim)})")
    _create_vector_index(conn)


def _create_vector_index(conn: Connection) -> None:
    conn.exec_driver_sql("CREATE INDEX ix_images_vector ON images USING hnsw (vector vector_cosine_ops)")


def _engine(path: Path, read_only: bool = False) -> Engine:
    """The SQLite engine. read_only (a folder this process cannot write: read-only media, another user's home):
    opened as immutable (no lock or -shm file to create) when no write-ahead log holds pages, else mode=ro."""
    url = f"sqlite:///{path}"
    if read_only:
        wal = path.with_name(path.name + "-wal")
        mode = "ro" if wal.exists() and wal.stat().st_size else "ro&immutable=1"
        url = f"sqlite:///file:{quote(str(path))}?mode={mode}&uri=true"
    # Reader threads look up content hashes concurrently: one pooled connection each.
    engine = create_engine(url, connect_args={"timeout": 60}, pool_size=8, max_overflow=32)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below issue BEGIN itself (pysqlite's own handling is deferred-only).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        if not read_only:
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql(f"BEGIN {conn.get_execution_options().get('sqlite_begin', 'DEFERRED')}")

    return engine


def _migrate(engine: Engine, name: str, read_only: bool = False) -> None:
    """Bring the schema to head; refuse a database written by a newer imgsearch."""
    if _revision(engine) == HEAD:
        return
    if read_only:
        raise StoreError(f"the database {name} needs an upgrade, which its read-only folder cannot take")
    from alembic import command
    from alembic.config import Config
    from alembic.migration import MigrationContext
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    script = ScriptDirectory.from_config(config)
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    if current == script.get_current_head():
        return
    if current is not None and current not in {s.revision for s in script.walk_revisions()}:
        raise SchemaTooNewError(
            f"the database {name} was written by a newer imgsearch (schema {current}): upgrade imgsearch"
        )
    try:
        with engine.connect().execution_options(sqlite_begin="IMMEDIATE") as conn, conn.begin():
            if engine.dialect.name == POSTGRES:  # processes starting at once on a new database upgrade it once
                conn.execute(select(func.pg_advisory_xact_lock(WRITE_LOCK)))
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
    except OperationalError as exc:
        raise StoreError(f"cannot upgrade the database {name}: {first_line(exc.orig)}") from None
