"""Playbook memory (the learning loop's lessons) and its trajectory events.

Entries keep every version (a content hash belongs to one entry only), their embeddings
per embedder as `double precision[]` on every server, counters, retirements and the loop's
trajectory events. Where the server offers pgvector (`pg_available_extensions`), the
extension is created and the embedding table gets a generated `vector` column that the
store searches with `<=>`; where it does not (or the role may not create it), the store
searches the arrays. The column has no dimension (the embedder, and so the dimension, is
configuration), hence no ANN index: searches are exact scans on both kinds of server.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

KINDS = (
    "'lane_decision', 'guidance', 'retrieval', 'adoption', 'escalation', 'drift_note', 'retirement'"
)

# Integer counters count episodes or tokens, float ones add rewards.
COUNTERS = """
    retrieved bigint NOT NULL DEFAULT 0,
    injected bigint NOT NULL DEFAULT 0,
    followed bigint NOT NULL DEFAULT 0,
    episodes_with bigint NOT NULL DEFAULT 0,
    reward_sum_with double precision NOT NULL DEFAULT 0,
    reward_sq_sum_with double precision NOT NULL DEFAULT 0,
    tokens_sum_with bigint NOT NULL DEFAULT 0,
    episodes_without bigint NOT NULL DEFAULT 0,
    reward_sum_without double precision NOT NULL DEFAULT 0,
    reward_sq_sum_without double precision NOT NULL DEFAULT 0,
    tokens_sum_without bigint NOT NULL DEFAULT 0
"""


def _create_pgvector_if_available() -> bool:
    """Creates the `vector` extension when the server ships it; True when it is installed.

    A role that may not create it (not superuser, extension not trusted) leaves the
    memory on arrays instead of failing the migration."""
    op.execute(
        """
        DO $$
        BEGIN
            IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'vector') THEN
                BEGIN
                    CREATE EXTENSION IF NOT EXISTS vector;
                EXCEPTION WHEN insufficient_privilege THEN
                    RAISE NOTICE 'pgvector is available but this role may not create it';
                END;
            END IF;
        END $$
        """
    )
    found = op.get_bind().exec_driver_sql("SELECT 1 FROM pg_extension WHERE extname = 'vector'")
    return found.scalar() is not None


def upgrade() -> None:
    op.execute("CREATE SCHEMA IF NOT EXISTS runner")
    # The current version of each entry; its content lives in playbook_entry_version
    # (the foreign key back to it is added below, deferred: both rows come in one
    # transaction).
    op.execute(
        """
        CREATE TABLE runner.playbook_entry (
            entry_id text PRIMARY KEY,
            audience text NOT NULL CHECK (audience IN ('student', 'teacher')),
            version integer NOT NULL CHECK (version >= 1),
            status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'retired')),
            retired_reason text,
            provenance jsonb NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            CHECK ((status = 'retired') = (retired_reason IS NOT NULL))
        )
        """
    )
    op.execute("CREATE INDEX playbook_entry_active ON runner.playbook_entry (audience, status)")
    # Every version ever written. A content hash is unique across entries: one lesson is
    # one entry, which also stops two processes from storing the same candidate twice.
    op.execute(
        """
        CREATE TABLE runner.playbook_entry_version (
            entry_id text NOT NULL REFERENCES runner.playbook_entry ON DELETE CASCADE,
            version integer NOT NULL CHECK (version >= 1),
            content_hash text NOT NULL UNIQUE,
            content jsonb NOT NULL,
            provenance jsonb NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (entry_id, version)
        )
        """
    )
    op.execute(
        """
        ALTER TABLE runner.playbook_entry ADD CONSTRAINT playbook_entry_current
            FOREIGN KEY (entry_id, version) REFERENCES runner.playbook_entry_version
            DEFERRABLE INITIALLY DEFERRED
        """
    )
    # Rows are written once and never updated, so a process may cache them.
    op.execute(
        """
        CREATE TABLE runner.playbook_embedding (
            entry_id text NOT NULL,
            version integer NOT NULL,
            embedder text NOT NULL,
            dim integer NOT NULL CHECK (dim >= 1),
            vec double precision[] NOT NULL CHECK (cardinality(vec) = dim),
            PRIMARY KEY (entry_id, version, embedder),
            FOREIGN KEY (entry_id, version) REFERENCES runner.playbook_entry_version
                ON DELETE CASCADE
        )
        """
    )
    if _create_pgvector_if_available():
        op.execute(
            "ALTER TABLE runner.playbook_embedding"
            " ADD COLUMN embedding vector GENERATED ALWAYS AS (vec::vector) STORED"
        )
    op.execute(
        f"""
        CREATE TABLE runner.playbook_counter (
            entry_id text PRIMARY KEY REFERENCES runner.playbook_entry ON DELETE CASCADE,
            {COUNTERS}
        )
        """
    )
    op.execute(
        """
        CREATE TABLE runner.playbook_retirement (
            entry_id text PRIMARY KEY REFERENCES runner.playbook_entry ON DELETE CASCADE,
            version integer NOT NULL,
            code text NOT NULL CHECK (code IN ('harmful', 'never_fired', 'manual')),
            reason text NOT NULL,
            counters jsonb NOT NULL,
            run_id text,
            retired_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    # One row: a number every change to the searchable set (an entry, a version, an
    # embedding, a retirement) increments in its transaction, so a process may keep the
    # list of searchable entries until the number moves.
    op.execute("CREATE TABLE runner.playbook_memory (generation bigint NOT NULL)")
    op.execute("INSERT INTO runner.playbook_memory (generation) VALUES (0)")
    # One row per applied episode bookkeeping: a resumed run cannot count an episode twice.
    op.execute(
        """
        CREATE TABLE runner.playbook_bookkeeping (
            key text PRIMARY KEY,
            applied_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute(
        f"""
        CREATE TABLE runner.trajectory_event (
            event_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            run_id text,
            session_id text,
            episode_id text,
            kind text NOT NULL CHECK (kind IN ({KINDS})),
            entry_ids text[] NOT NULL DEFAULT '{{}}',
            payload jsonb NOT NULL,
            recorded_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute(
        "CREATE INDEX trajectory_event_session"
        " ON runner.trajectory_event (run_id, session_id, event_id)"
    )
    op.execute(
        "CREATE INDEX trajectory_event_entries ON runner.trajectory_event USING gin (entry_ids)"
    )


def downgrade() -> None:
    # The vector extension stays: other databases' objects may use it.
    op.execute(
        """
        DROP TABLE runner.trajectory_event, runner.playbook_bookkeeping, runner.playbook_memory,
            runner.playbook_retirement, runner.playbook_counter, runner.playbook_embedding,
            runner.playbook_entry_version, runner.playbook_entry CASCADE
        """
    )
