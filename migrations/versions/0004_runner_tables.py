"""The agent runner's tables: runs, their queue of (case, trial) items, and telemetry.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE SCHEMA IF NOT EXISTS runner")
    op.execute(
        """
        CREATE TABLE runner.runs (
            run_id text PRIMARY KEY,
            agent text NOT NULL,
            model text,
            config jsonb NOT NULL,
            corpus_hash text NOT NULL,
            package_version text NOT NULL,
            out_dir text,
            total_items integer NOT NULL,
            error text,
            created_at timestamptz NOT NULL DEFAULT now(),
            finished_at timestamptz
        )
        """
    )
    # One row per (case, trial); workers claim rows with FOR UPDATE SKIP LOCKED. A row
    # is reclaimable when its worker's liveness connection (worker_pid) is gone or its
    # lease ran out, so a killed runner's episodes are picked up again.
    op.execute(
        """
        CREATE TABLE runner.run_items (
            run_id text NOT NULL REFERENCES runner.runs ON DELETE CASCADE,
            seq integer NOT NULL,
            case_id text NOT NULL,
            trial integer NOT NULL,
            status text NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'running', 'done')),
            worker text,
            worker_pid integer,
            claimed_at timestamptz,
            lease_until timestamptz,
            attempts integer NOT NULL DEFAULT 0,
            score double precision,
            passed boolean,
            outcome text,
            cost_usd double precision,
            finished_at timestamptz,
            PRIMARY KEY (run_id, case_id, trial)
        )
        """
    )
    op.execute("CREATE INDEX run_items_queue ON runner.run_items (run_id, status, seq)")
    op.execute(
        """
        CREATE TABLE runner.sessions (
            session_id text PRIMARY KEY,
            run_id text NOT NULL REFERENCES runner.runs ON DELETE CASCADE,
            case_id text NOT NULL,
            trial integer NOT NULL,
            score double precision NOT NULL,
            passed boolean NOT NULL,
            outcome text NOT NULL,
            record jsonb NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            UNIQUE (run_id, case_id, trial)
        )
        """
    )
    op.execute(
        """
        CREATE TABLE runner.steps (
            session_id text NOT NULL REFERENCES runner.sessions ON DELETE CASCADE,
            step_id integer NOT NULL,
            tool text NOT NULL,
            ok boolean NOT NULL,
            record jsonb NOT NULL,
            PRIMARY KEY (session_id, step_id)
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP SCHEMA runner CASCADE")
