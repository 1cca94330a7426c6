"""All SQL lives here. SQLite in WAL mode; writes in BEGIN IMMEDIATE transactions; schema by Alembic.

The database is the source of truth for vectors (float32 blobs) and records which model made them.
A `generation` counter in `meta` goes up with every change to the set of vectors, so the FAISS
cache can tell whether it is current.
"""

from __future__ import annotations

import fcntl
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import ColumnElement, Connection, Engine, create_engine, delete, event, func, insert, select, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DatabaseError, OperationalError

from imgsearch.errors import ModelMismatchError, SchemaTooNewError, StoreError
from imgsearch.store.schema import image_tags, images, meta, roots, skipped
from imgsearch.types import ImageInfo, Skipped

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
# The newest revision in MIGRATIONS (a test keeps the two equal). A database already there opens
# without importing Alembic at all, which is a fifth of a second of every cold query.
HEAD = "0004"


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


def prefix_range(root: str) -> tuple[str, str]:
    """Bounds such that root/<anything> sorts inside [lo, hi): '/' is followed by '0' in byte order."""
    base = root.rstrip("/")
    return base + "/", base + "0"


def under(column: ColumnElement[str], root: str) -> ColumnElement[bool]:
    """The path column is root itself or inside it (an index range scan, not LIKE)."""
    lo, hi = prefix_range(root)
    return ((column >= lo) & (column < hi)) | (column == root)


class Store:
    """The SQLite database of one imgsearch home."""

    def __init__(self, path: Path):
        self.path = path
        self._held = threading.local()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.engine = _engine(path)
        try:
            _migrate(self.engine, path)
        except DatabaseError as exc:
            self.engine.dispose()
            raise StoreError(f"cannot open the database {path}: {exc.orig}") from None

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
        """
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
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    # meta

    def get_meta(self, key: str, conn: Connection | None = None) -> str | None:
        if conn is None:
            with self.read() as c:
                return self.get_meta(key, c)
        return conn.execute(select(meta.c.value).where(meta.c.key == key)).scalar()

    def set_meta(self, conn: Connection, key: str, value: str) -> None:
        stmt = sqlite_insert(meta).values(key=key, value=value)
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
        elif current != model_id or current_dim != dim:
            raise mismatch(current, model_id)

    # images

    def count(self, conn: Connection | None = None) -> int:
        if conn is None:
            with self.read() as c:
                return self.count(c)
        return int(conn.execute(select(func.count()).select_from(images)).scalar_one())

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

    def embedding_of(self, conn: Connection, image_id: int) -> tuple[np.ndarray, int, int]:
        """(vector, width, height) of an indexed image, to copy onto a duplicate file."""
        stmt = select(images.c.vector, images.c.width, images.c.height).where(images.c.id == image_id)
        row = conn.execute(stmt).one()
        return np.frombuffer(row.vector, dtype="<f4").copy(), int(row.width), int(row.height)

    def insert_image(self, conn: Connection, new: NewImage) -> int:
        values = _row_values(new)
        return int(conn.execute(insert(images).values(**values).returning(images.c.id)).scalar_one())

    def replace_image(self, conn: Connection, image_id: int, new: NewImage) -> int:
        """New content under a known path: a new row and id (so that a vector index written before can tell
        the vector it holds is stale); hand tags stay with the path, auto tags described the old content and go.
        """
        conn.execute(delete(images).where(images.c.id == image_id))
        conn.execute(delete(image_tags).where((image_tags.c.path == new.path) & (image_tags.c.source == "auto")))
        return self.insert_image(conn, new)

    def move_image(self, conn: Connection, image_id: int, path: str, size: int, mtime_ns: int) -> None:
        """Same content under a new path (or touched in place): the row, its id and its tags follow."""
        old = conn.execute(select(images.c.path).where(images.c.id == image_id)).scalar_one()
        stmt = update(images).where(images.c.id == image_id).values(path=path, size=size, mtime_ns=mtime_ns)
        conn.execute(stmt)
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

    def image_info(self, image_id: int) -> ImageInfo | None:
        """The row of one image (without tags), or None when no image has that id."""
        cols = (images.c.id, images.c.path, images.c.size, images.c.width, images.c.height, images.c.indexed_at)
        stmt = select(*cols, images.c.generated, images.c.content_hash).where(images.c.id == image_id)
        with self.read() as conn:
            row = conn.execute(stmt).one_or_none()
        return None if row is None else ImageInfo(*row[:6], bool(row.generated), row.content_hash)

    def newest(self, limit: int, offset: int, root: str | None, include_generated: bool) -> list[tuple[int, str]]:
        """(id, path) of indexed images, the most recently indexed first."""
        stmt = select(images.c.id, images.c.path).order_by(images.c.indexed_at.desc(), images.c.id.desc())
        if root is not None:
            stmt = stmt.where(under(images.c.path, root))
        if not include_generated:
            stmt = stmt.where(~images.c.generated)
        with self.read() as conn:
            return [(int(i), p) for i, p in conn.execute(stmt.limit(limit).offset(offset))]

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
        stmt = sqlite_insert(skipped).values(**values)
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

    def add_roots(self, conn: Connection, paths: Iterable[str]) -> None:
        for p in paths:
            stmt = sqlite_insert(roots).values(path=p, added_at=time.time()).on_conflict_do_nothing()
            conn.execute(stmt)

    def roots(self) -> list[str]:
        with self.read() as conn:
            return list(conn.execute(select(roots.c.path).order_by(roots.c.path)).scalars())

    def clear_images(self, conn: Connection) -> None:
        """Forget every vector (for a rebuild with another model); roots are kept."""
        conn.execute(delete(images))
        conn.execute(delete(image_tags).where(image_tags.c.source == "auto"))  # hand tags find their files again
        conn.execute(delete(skipped))
        conn.execute(delete(meta).where(meta.c.key.in_(["model_id", "dim"])))


def mismatch(indexed: str, configured: str) -> ModelMismatchError:
    return ModelMismatchError(
        f"the index was built with model {indexed}, but the settings select {configured}: "
        "set model.name/model.pretrained back, or run `imgsearch index --rebuild` to re-embed everything"
    )


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


def _engine(path: Path) -> Engine:
    # Reader threads look up content hashes concurrently: one pooled connection each.
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 60}, pool_size=8, max_overflow=32)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below issue BEGIN itself (pysqlite's own handling is deferred-only).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql(f"BEGIN {conn.get_execution_options().get('sqlite_begin', 'DEFERRED')}")

    return engine


def _migrate(engine: Engine, path: Path) -> None:
    """Bring the schema to head; refuse a database written by a newer imgsearch."""
    if _revision(engine) == HEAD:
        return
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
            f"the database {path} was written by a newer imgsearch (schema {current}): upgrade imgsearch"
        )
    try:
        with engine.connect().execution_options(sqlite_begin="IMMEDIATE") as conn, conn.begin():
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
    except OperationalError as exc:
        raise StoreError(f"cannot upgrade the database {path}: {exc.orig}") from None
