"""The database schema. Changed only together with a new Alembic revision in imgsearch/migrations."""

from __future__ import annotations

from sqlalchemy import Column, Float, Integer, LargeBinary, MetaData, String, Table, Text

metadata = MetaData()

images = Table(
    "images",
    metadata,
    # AUTOINCREMENT: ids are never reused, so a stale FAISS file can never point at the wrong image.
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("path", Text, nullable=False, unique=True),
    Column("size", Integer, nullable=False),
    Column("mtime_ns", Integer, nullable=False),
    Column("content_hash", String(32), nullable=False, index=True),
    Column("width", Integer, nullable=False),
    Column("height", Integer, nullable=False),
    Column("vector", LargeBinary, nullable=False),
    Column("indexed_at", Float, nullable=False),
    sqlite_autoincrement=True,
)

skipped = Table(
    "skipped",
    metadata,
    Column("path", Text, primary_key=True),
    Column("size", Integer, nullable=False),
    Column("mtime_ns", Integer, nullable=False),
    Column("reason", Text, nullable=False),
    Column("seen_at", Float, nullable=False),
)

roots = Table(
    "roots",
    metadata,
    Column("path", Text, primary_key=True),
    Column("added_at", Float, nullable=False),
)

meta = Table(
    "meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)
