"""An index on images.generated, so that finding the few generated images does not read every row's vector.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_images_generated", "images", ["generated"])


def downgrade() -> None:
    op.drop_index("ix_images_generated", table_name="images")
