"""Golden cases loaded from the corpus, so that an episode can be built from a case id.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE crm_meta.golden_case (
            case_id     text PRIMARY KEY,
            corpus_hash text NOT NULL,
            body        jsonb NOT NULL,
            loaded_at   timestamptz NOT NULL
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE crm_meta.golden_case")
