"""Photo metadata: capture time (local, its UTC offset and where it came from), camera, lens, GPS and place.

Existing rows get NULLs, photo_version among them: `imgsearch index` then reads their headers once (no image is
embedded again; imgsearch.indexer.backfill). Portable DDL: the capture time compares bytewise in PostgreSQL as
paths do (coltypes.Stamp), which is the one dialect difference, and it is in the column type.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

from imgsearch.store.coltypes import Stamp

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

COLUMNS = (
    ("taken", Stamp),
    ("taken_offset", sa.Integer()),
    ("taken_source", sa.String(8)),
    ("camera", sa.Text()),
    ("lens", sa.Text()),
    ("lat", sa.Float()),
    ("lon", sa.Float()),
    ("place", sa.Text()),
    ("photo_notes", sa.Text()),
    ("photo_version", sa.Integer()),
)
INDEXED = ("taken", "camera", "place", "photo_version")


def upgrade() -> None:
    for name, kind in COLUMNS:
        op.add_column("images", sa.Column(name, kind, nullable=True))
    for name in INDEXED:
        op.create_index(f"ix_images_{name}", "images", [name])


def downgrade() -> None:
    for name in INDEXED:
        op.drop_index(f"ix_images_{name}", table_name="images")
    with op.batch_alter_table("images") as batch:
        for name, _ in reversed(COLUMNS):
            batch.drop_column(name)
