"""Pool entries can be recycled episodes waiting to be reset to the world.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE crm_meta.episode_pool ADD COLUMN ready boolean NOT NULL DEFAULT true")


def downgrade() -> None:
    op.execute("DELETE FROM crm_meta.episode_pool WHERE NOT ready")
    op.execute("ALTER TABLE crm_meta.episode_pool DROP COLUMN ready")
