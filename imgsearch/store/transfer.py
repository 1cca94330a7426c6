"""Copy a whole imgsearch database into another one (`imgsearch migrate`): SQLite to PostgreSQL and back.

Every table is copied as it is, ids included (a FAISS file or a thumbnail never sees an id change meaning),
from one consistent snapshot of the source, into a target that holds no images. The copy is one
transaction in the target: it lands whole or not at all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from sqlalchemy import Connection, Table, delete, func, insert, select

from imgsearch.errors import UsageError
from imgsearch.store.repository import Store
from imgsearch.store.schema import image_tags, images, meta, roots, skipped, text_vectors

BATCH = 2000
# Copied first, all at once (small); images and image_tags after, streamed in batches.
SMALL_TABLES = (meta, roots, skipped, text_vectors)
FILE_KEYS = ("vectors_checksum", "vectors_generation", "vectors_max_id", "index_type")


def copy_store(source: Store, target: Store, on_progress: Callable[[int, int], None] = lambda done, total: None) -> int:
    """Copy everything in source into target, which must hold no images. Returns the number of images."""
    with source.read(snapshot=True) as src:
        total = int(src.execute(select(func.count()).select_from(images)).scalar_one())
        _, dim = source.model(src)
        with target.write() as dst:
            held = target.count(dst)  # inside the write: no other writer can fill it meanwhile
            if held:
                raise UsageError(f"migrate: {target.name} already holds {held} images; migrate into an empty one")
            for table in (meta, roots, skipped, image_tags, text_vectors):
                dst.execute(delete(table))  # defaults a new database made for itself (its generation)
            for table in SMALL_TABLES:
                _copy_all(src, dst, table)
            if dim:
                target.prepare_bulk_load(dst, dim)
            done = 0
            for rows in _batches(src, images, images.c.id):
                dst.execute(insert(images), rows)
                done += len(rows)
                on_progress(done, total)
            for rows in _batches(src, image_tags, image_tags.c.path, image_tags.c.label):
                dst.execute(insert(image_tags), rows)
            if dim:
                target.finish_bulk_load(dst)
            target.bump_generation(dst)  # a vector index file made for an earlier database is not this one's
    return total


def _copy_all(src: Connection, dst: Connection, table: Table) -> None:
    stmt = select(table)
    if table is meta:  # what describes the source's FAISS file says nothing about the target's
        stmt = stmt.where(~meta.c.key.in_(FILE_KEYS))
    rows = [dict(r._mapping) for r in src.execute(stmt)]
    if rows:
        dst.execute(insert(table), rows)


def _batches(src: Connection, table: Table, *order: object) -> Iterator[list[dict[str, object]]]:
    # Streamed (a server-side cursor in PostgreSQL): a million vectors never sit in memory at once.
    result = src.execution_options(stream_results=True, yield_per=BATCH).execute(select(table).order_by(*order))  # type: ignore[arg-type]
    while rows := result.fetchmany(BATCH):
        yield [dict(r._mapping) for r in rows]
