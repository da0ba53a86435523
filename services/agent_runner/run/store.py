"""The runner's Postgres tables: runs, their queue of (case, trial) items, and telemetry.

Runner processes share a run by claiming items with `FOR UPDATE SKIP LOCKED`. Each
process holds one liveness connection for its whole life and stamps its claims with that
connection's backend pid: when the process dies (even by kill -9) Postgres ends the
backend, and its claims become claimable at once. A lease renewed by a heartbeat covers
a process that is alive but stuck. An item's result is committed with its session and
steps in one transaction, only while the item is still claimed by the committing worker,
so every (case, trial) ends with exactly one result.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from crmbench_contracts.traces import SessionTrace, StepTrace


def asyncpg_dsn(database_url: str) -> str:
    """A DSN asyncpg accepts, from a SQLAlchemy-style URL (postgresql+asyncpg://...)."""
    url = make_url(database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


CLAIMABLE = """
    (q.status = 'pending'
     OR (q.status = 'running'
         AND (q.lease_until < now()
              OR NOT EXISTS (SELECT 1 FROM pg_stat_activity AS a WHERE a.pid = q.worker_pid))))
"""
"""An item (aliased `q`) no live worker holds: pending, or claimed by a worker whose
liveness connection is gone or whose lease ran out. `claim` and `next_open_run` share it."""


class RunNotFound(LookupError):
    def __init__(self, run_id: str) -> None:
        super().__init__(f"no run {run_id!r} in this database")
        self.run_id = run_id


@dataclass(frozen=True)
class RunRow:
    run_id: str
    agent: str
    model: str | None
    config: dict[str, Any]
    corpus_hash: str
    package_version: str
    out_dir: str | None
    total_items: int
    error: str | None
    created_at: Any
    finished_at: Any


def _run_row(row: asyncpg.Record) -> RunRow:
    values = dict(row)
    values["config"] = json.loads(values["config"])
    return RunRow(**values)


@dataclass(frozen=True)
class Claim:
    run_id: str
    case_id: str
    trial: int
    seq: int
    attempts: int


@dataclass(frozen=True)
class Progress:
    total: int
    done: int
    running: int
    passed: int
    harness_errors: int
    cost_usd: float

    @property
    def pending(self) -> int:
        return self.total - self.done - self.running


class RunStore:
    """Queue and telemetry access for one runner process."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        liveness: asyncpg.Connection | None = None,
        dsn: str | None = None,
    ) -> None:
        self.pool = pool
        self._liveness = liveness
        self._dsn = dsn

    @classmethod
    async def connect(cls, database_url: str, *, pool_size: int = 8) -> RunStore:
        dsn = asyncpg_dsn(database_url)
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=pool_size)
        try:
            liveness = await asyncpg.connect(dsn)
        except BaseException:
            await pool.close()
            raise
        return cls(pool, liveness, dsn)

    async def close(self) -> None:
        if self._liveness is not None:
            await self._liveness.close()
        await self.pool.close()

    @property
    def worker_pid(self) -> int | None:
        """The backend pid that proves this process alive while it is connected."""
        return self._liveness.get_server_pid() if self._liveness is not None else None

    # ------------------------------------------------------------------ runs

    async def create_run(
        self,
        run_id: str,
        *,
        agent: str,
        model: str | None,
        config: dict[str, Any],
        corpus_hash: str,
        package_version: str,
        out_dir: str | None,
        items: Sequence[tuple[str, int]],
    ) -> None:
        """Creates the run and queues one item per (case_id, trial), in order."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                """
                INSERT INTO runner.runs (run_id, agent, model, config, corpus_hash,
                                         package_version, out_dir, total_items)
                VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7, $8)
                """,
                run_id,
                agent,
                model,
                json.dumps(config),
                corpus_hash,
                package_version,
                out_dir,
                len(items),
            )
            await conn.copy_records_to_table(
                "run_items",
                schema_name="runner",
                columns=["run_id", "seq", "case_id", "trial"],
                records=[
                    (run_id, seq, case_id, trial)
                    for seq, (case_id, trial) in enumerate(items, start=1)
                ],
            )

    async def get_run(self, run_id: str) -> RunRow:
        row = await self.pool.fetchrow("SELECT * FROM runner.runs WHERE run_id = $1", run_id)
        if row is None:
            raise RunNotFound(run_id)
        return _run_row(row)

    async def list_runs(self, limit: int = 50) -> list[RunRow]:
        rows = await self.pool.fetch(
            "SELECT * FROM runner.runs ORDER BY created_at DESC LIMIT $1", limit
        )
        return [_run_row(row) for row in rows]

    async def mark_finished(self, run_id: str) -> None:
        await self.pool.execute(
            """
            UPDATE runner.runs SET finished_at = now()
            WHERE run_id = $1 AND finished_at IS NULL
              AND NOT EXISTS (SELECT 1 FROM runner.run_items
                              WHERE run_id = $1 AND status <> 'done')
            """,
            run_id,
        )

    async def next_open_run(self) -> RunRow | None:
        """The oldest run with no recorded error and an item some worker could claim now
        (the rule of `claim`: pending, or held by a dead or expired worker)."""
        row = await self.pool.fetchrow(
            """
            SELECT r.* FROM runner.runs AS r
            WHERE r.error IS NULL AND r.finished_at IS NULL
              AND EXISTS (SELECT 1 FROM runner.run_items AS q
                          WHERE q.run_id = r.run_id AND """
            + CLAIMABLE
            + """)
            ORDER BY r.created_at, r.run_id
            LIMIT 1
            """
        )
        return _run_row(row) if row is not None else None

    async def record_error(self, run_id: str, error: str) -> None:
        """Marks the run as one no worker can play (the first reason is kept)."""
        await self.pool.execute(
            "UPDATE runner.runs SET error = $2 WHERE run_id = $1 AND error IS NULL",
            run_id,
            error,
        )

    # ------------------------------------------------------------------ queue

    async def ensure_alive(self) -> None:
        """Reconnects the liveness connection if it dropped (a Postgres restart, an idle
        timeout): claims stamped with a dead pid would look abandoned to other workers."""
        if self._liveness is not None and self._liveness.is_closed():
            self._liveness = await asyncpg.connect(self._dsn)

    async def claim(self, run_id: str, worker: str, lease_seconds: float) -> Claim | None:
        """The next item nobody holds: pending, or claimed by a dead or expired worker."""
        await self.ensure_alive()
        row = await self.pool.fetchrow(
            """
            UPDATE runner.run_items AS item
            SET status = 'running', worker = $2, worker_pid = $3, claimed_at = now(),
                lease_until = now() + make_interval(secs => $4), attempts = attempts + 1
            WHERE (item.run_id, item.case_id, item.trial) = (
                SELECT q.run_id, q.case_id, q.trial FROM runner.run_items AS q
                WHERE q.run_id = $1 AND """
            + CLAIMABLE
            + """
                ORDER BY q.seq
                LIMIT 1
                FOR UPDATE SKIP LOCKED
            )
            RETURNING item.run_id, item.case_id, item.trial, item.seq, item.attempts
            """,
            run_id,
            worker,
            self.worker_pid,
            lease_seconds,
        )
        return Claim(**dict(row)) if row is not None else None

    async def heartbeat(self, run_id: str, worker: str, lease_seconds: float) -> None:
        """Renews the lease of every item this worker holds."""
        await self.pool.execute(
            """
            UPDATE runner.run_items SET lease_until = now() + make_interval(secs => $3)
            WHERE run_id = $1 AND worker = $2 AND status = 'running'
            """,
            run_id,
            worker,
            lease_seconds,
        )

    async def release(self, claim: Claim, worker: str) -> None:
        """Gives an item back unfinished (the runner is stopping)."""
        await self.pool.execute(
            """
            UPDATE runner.run_items SET status = 'pending', worker = NULL, worker_pid = NULL
            WHERE run_id = $1 AND case_id = $2 AND trial = $3
              AND worker = $4 AND status = 'running'
            """,
            claim.run_id,
            claim.case_id,
            claim.trial,
            worker,
        )

    async def complete(
        self, claim: Claim, worker: str, session: SessionTrace, steps: Sequence[StepTrace]
    ) -> bool:
        """Records the item's one result with its telemetry, atomically.

        Returns False (and writes nothing) when the item is no longer this worker's: it
        was judged dead and another worker took it over, and that worker's result counts.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            owned = await conn.fetchval(
                """
                UPDATE runner.run_items
                SET status = 'done', score = $5, passed = $6, outcome = $7, cost_usd = $8,
                    finished_at = now()
                WHERE run_id = $1 AND case_id = $2 AND trial = $3
                  AND worker = $4 AND status = 'running'
                RETURNING true
                """,
                claim.run_id,
                claim.case_id,
                claim.trial,
                worker,
                session.score,
                session.passed,
                session.outcome,
                session.cost_usd,
            )
            if not owned:
                return False
            await conn.execute(
                """
                INSERT INTO runner.sessions (session_id, run_id, case_id, trial, score,
                                             passed, outcome, record)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb)
                """,
                session.session_id,
                session.run_id,
                session.case_id,
                session.trial,
                session.score,
                session.passed,
                session.outcome,
                session.model_dump_json(),
            )
            if steps:
                await conn.executemany(
                    """
                    INSERT INTO runner.steps (session_id, step_id, tool, ok, record)
                    VALUES ($1, $2, $3, $4, $5::jsonb)
                    """,
                    [
                        (step.session_id, step.step_id, step.tool, step.ok, step.model_dump_json())
                        for step in steps
                    ],
                )
        return True

    async def progress(self, run_id: str) -> Progress:
        """The run's item counts and cost so far (all zero for a run without items)."""
        found = await self.progress_of([run_id])
        return found.get(run_id) or Progress(
            total=0, done=0, running=0, passed=0, harness_errors=0, cost_usd=0.0
        )

    async def progress_of(self, run_ids: Sequence[str]) -> dict[str, Progress]:
        """`progress` of several runs in one query (runs without items are left out)."""
        rows = await self.pool.fetch(
            """
            SELECT run_id,
                   count(*) AS total,
                   count(*) FILTER (WHERE status = 'done') AS done,
                   count(*) FILTER (WHERE status = 'running') AS running,
                   count(*) FILTER (WHERE passed) AS passed,
                   count(*) FILTER (WHERE outcome = 'harness_error') AS harness_errors,
                   coalesce(sum(cost_usd), 0) AS cost_usd
            FROM runner.run_items WHERE run_id = ANY($1::text[])
            GROUP BY run_id
            """,
            list(run_ids),
        )
        return {
            row["run_id"]: Progress(
                total=row["total"],
                done=row["done"],
                running=row["running"],
                passed=row["passed"],
                harness_errors=row["harness_errors"],
                cost_usd=float(row["cost_usd"]),
            )
            for row in rows
        }

    # ------------------------------------------------------------------ telemetry

    async def traces(
        self, run_id: str, session_ids: Sequence[str] | None = None
    ) -> list[tuple[SessionTrace, list[StepTrace]]]:
        """The run's sessions (all, or those named) with their steps, in queue order."""
        sessions = await self.pool.fetch(
            """
            SELECT s.session_id, s.record FROM runner.sessions AS s
            JOIN runner.run_items AS i USING (run_id, case_id, trial)
            WHERE s.run_id = $1 AND ($2::text[] IS NULL OR s.session_id = ANY($2::text[]))
            ORDER BY i.seq
            """,
            run_id,
            list(session_ids) if session_ids is not None else None,
        )
        if not sessions:
            return []
        steps = await self.pool.fetch(
            """
            SELECT session_id, record FROM runner.steps
            WHERE session_id = ANY($1::text[]) ORDER BY session_id, step_id
            """,
            [row["session_id"] for row in sessions],
        )
        by_session: dict[str, list[StepTrace]] = {}
        for row in steps:
            by_session.setdefault(row["session_id"], []).append(
                StepTrace.model_validate_json(row["record"])
            )
        return [
            (
                SessionTrace.model_validate_json(row["record"]),
                by_session.get(row["session_id"], []),
            )
            for row in sessions
        ]

    async def sessions(self, run_id: str) -> list[SessionTrace]:
        """The run's sessions without their steps, in queue order (for reports)."""
        rows = await self.pool.fetch(
            """
            SELECT s.record FROM runner.sessions AS s
            JOIN runner.run_items AS i USING (run_id, case_id, trial)
            WHERE s.run_id = $1
            ORDER BY i.seq
            """,
            run_id,
        )
        return [SessionTrace.model_validate_json(row["record"]) for row in rows]

    async def session_ids(self, run_id: str) -> set[str]:
        rows = await self.pool.fetch(
            "SELECT session_id FROM runner.sessions WHERE run_id = $1", run_id
        )
        return {row["session_id"] for row in rows}


async def load_run_traces(
    database_url: str, run_id: str
) -> list[tuple[SessionTrace, list[StepTrace]]]:
    """Every session of a run with its steps, read from Postgres (for `crmbench export`)."""
    store = RunStore(await asyncpg.create_pool(asyncpg_dsn(database_url), min_size=1, max_size=2))
    try:
        await store.get_run(run_id)
        return await store.traces(run_id)
    finally:
        await store.close()
