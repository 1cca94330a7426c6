"""Tags: auto and hand tags per image, the auto-tagger's state per image, cached label text embeddings.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

from imgsearch.store.coltypes import Label, PathText

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("images", sa.Column("tags_key", sa.String(32), nullable=True))
    op.create_table(
        "image_tags",
        sa.Column("path", PathText, nullable=False),
        sa.Column("label", Label, nullable=False),
        sa.Column("source", sa.String(8), nullable=False),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("probability", sa.Float(), nullable=True),
        sa.Column("tagged_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("path", "label"),
    )
    op.create_index("ix_image_tags_label", "image_tags", ["label"])
    op.create_table(
        "text_vectors",
        sa.Column("model_id", sa.Text(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("model_id", "text"),
    )


def downgrade() -> None:
    op.drop_table("text_vectors")
    op.drop_index("ix_image_tags_label", "image_tags")
    op.drop_table("image_tags")
    with op.batch_alter_table("images") as batch:
        batch.drop_column("tags_key")
