"""Initial schema: images with their vectors, skipped files, indexed roots, meta.

The column types that differ between SQLite and PostgreSQL come from imgsearch.store.coltypes;
on SQLite they are exactly the types this revision was first written with.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

from imgsearch.store.coltypes import POSTGRES, BigInt, Embedding, PathText

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == POSTGRES:
        # pgvector for the vectors, citext for case-insensitive tag labels (revision 0002).
        op.execute("CREATE EXTENSION IF NOT EXISTS vector")
        op.execute("CREATE EXTENSION IF NOT EXISTS citext")
    op.create_table(
        "images",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("path", PathText, nullable=False, unique=True),
        sa.Column("size", BigInt, nullable=False),
        sa.Column("mtime_ns", BigInt, nullable=False),
        sa.Column("content_hash", sa.String(32), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("vector", Embedding(), nullable=False),
        sa.Column("indexed_at", sa.Float(), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_images_content_hash", "images", ["content_hash"])
    op.create_table(
        "skipped",
        sa.Column("path", PathText, primary_key=True),
        sa.Column("size", BigInt, nullable=False),
        sa.Column("mtime_ns", BigInt, nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("seen_at", sa.Float(), nullable=False),
    )
    op.create_table(
        "roots",
        sa.Column("path", PathText, primary_key=True),
        sa.Column("added_at", sa.Float(), nullable=False),
    )
    op.create_table(
        "meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    for table in ("meta", "roots", "skipped"):
        op.drop_table(table)
    op.drop_index("ix_images_content_hash", "images")
    op.drop_table("images")
