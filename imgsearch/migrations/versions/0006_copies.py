"""Copies: each image's perceptual hash, and the group of copies it belongs to (imgsearch.dupes).

Existing rows get NULLs: `imgsearch index` then decodes each file once for its hash (no image is embedded again;
imgsearch.indexer.backfill) and groups the copies.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

COLUMNS = (("pixel_hash", sa.LargeBinary()), ("copy_group", sa.Integer()), ("copy_rank", sa.Integer()))


def upgrade() -> None:
    for name, kind in COLUMNS:
        op.add_column("images", sa.Column(name, kind, nullable=True))
    op.create_index("ix_images_copy_group", "images", ["copy_group"])


def downgrade() -> None:
    op.drop_index("ix_images_copy_group", table_name="images")
    with op.batch_alter_table("images") as batch:
        for name, _ in reversed(COLUMNS):
            batch.drop_column(name)
