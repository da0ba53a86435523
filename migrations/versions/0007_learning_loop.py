"""The learning loop's own records: each task category's track record (the triage rule's
evidence) and two more trajectory event kinds (a synthesis's accepted and refused
candidates, a teacher call that gave no usable answer).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

OLD_KINDS = (
    "'lane_decision', 'guidance', 'retrieval', 'adoption', 'escalation', 'drift_note', 'retirement'"
)
NEW_KINDS = OLD_KINDS + ", 'synthesis', 'teacher_call'"


def upgrade() -> None:
    # Episodes the student played (alone or supervised, never escalated) per task
    # category, updated once per episode with the outcome's bookkeeping.
    op.execute(
        """
        CREATE TABLE runner.learning_task_record (
            task_category text PRIMARY KEY,
            episodes integer NOT NULL DEFAULT 0 CHECK (episodes >= 0),
            passes integer NOT NULL DEFAULT 0 CHECK (passes >= 0 AND passes <= episodes),
            reward_sum double precision NOT NULL DEFAULT 0,
            updated_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("ALTER TABLE runner.trajectory_event DROP CONSTRAINT trajectory_event_kind_check")
    op.execute(
        "ALTER TABLE runner.trajectory_event ADD CONSTRAINT trajectory_event_kind_check"
        f" CHECK (kind IN ({NEW_KINDS}))"
    )


def downgrade() -> None:
    op.execute("DELETE FROM runner.trajectory_event WHERE kind IN ('synthesis', 'teacher_call')")
    op.execute("ALTER TABLE runner.trajectory_event DROP CONSTRAINT trajectory_event_kind_check")
    op.execute(
        "ALTER TABLE runner.trajectory_event ADD CONSTRAINT trajectory_event_kind_check"
        f" CHECK (kind IN ({OLD_KINDS}))"
    )
    op.execute("DROP TABLE runner.learning_task_record")
