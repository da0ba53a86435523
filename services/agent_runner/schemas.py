"""Request and response bodies of the agent runner service (POST /runs, GET /runs...)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent_runner.reports.statistics import RunReport
from agent_runner.run.config import AgentName
from agent_runner.run.store import Progress, RunRow
from crmbench_contracts.cases import Split

RUN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
"""Run ids this service accepts in a path (it generates `run-<date>-<time>-<hex>`)."""

RunStatusName = Literal["queued", "running", "done", "failed"]


class RunRequest(BaseModel):
    """A run to queue: every field is optional and overrides the service's run config
    (config/run.yaml by default). Bounds are the run config's (trials 1..100,
    concurrency 1..256, limit >= 1)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"agent": "oracle", "split": "eval", "limit": 5}]},
    )

    agent: AgentName | None = None
    model: str | None = Field(default=None, min_length=1)
    """Overrides the model of the agent's provider (student, teacher)."""
    split: Split | None = None
    cases: list[str] | None = Field(default=None, min_length=1)
    """Run exactly these case ids (in this order) instead of a split."""
    limit: int | None = None
    """At most this many cases (the first ones of the split, in corpus order)."""
    trials: int | None = None
    concurrency: int | None = None
    """Episodes in flight at once in each runner replica working on the run."""
    seed: int | None = None

    def overrides(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


class RunCreated(BaseModel):
    run_id: str
    total_items: int
    """Episodes queued: cases times trials."""
    status_url: str


class RunProgress(BaseModel):
    total: int
    done: int
    running: int
    pending: int
    passed: int
    harness_errors: int
    pass_rate: float | None
    """Passed over scored episodes (done minus harness errors); null before any."""
    cost_usd: float

    @classmethod
    def of(cls, progress: Progress) -> RunProgress:
        scored = progress.done - progress.harness_errors
        return cls(
            total=progress.total,
            done=progress.done,
            running=progress.running,
            pending=progress.pending,
            passed=progress.passed,
            harness_errors=progress.harness_errors,
            pass_rate=progress.passed / scored if scored else None,
            cost_usd=round(progress.cost_usd, 6),
        )


def run_status(run: RunRow, progress: Progress) -> RunStatusName:
    """done once every item has its result (whoever played it); failed when no worker
    can play it (runs.error); running once an item was claimed; queued before."""
    if run.finished_at is not None or (progress.total and progress.done >= progress.total):
        return "done"
    if run.error:
        return "failed"
    if progress.done or progress.running:
        return "running"
    return "queued"


class RunSummary(BaseModel):
    run_id: str
    agent: str
    model: str | None
    status: RunStatusName
    error: str | None
    """Why no worker can play the run (status failed)."""
    created_at: datetime
    finished_at: datetime | None
    progress: RunProgress

    @classmethod
    def of(cls, run: RunRow, progress: Progress) -> RunSummary:
        return cls(
            run_id=run.run_id,
            agent=run.agent,
            model=run.model,
            status=run_status(run, progress),
            error=run.error,
            created_at=run.created_at,
            finished_at=run.finished_at,
            progress=RunProgress.of(progress),
        )


class RunDetail(RunSummary):
    config: dict[str, Any]
    """The effective run config, as stored with the run."""
    corpus_hash: str
    package_version: str
    out_dir: str | None
    """Where the run's JSONL traces are written (run.json, sessions.jsonl)."""
    results: RunReport | None = None
    """The run report (as `crmbench results --json`): when the run is done, or on request
    with ?report=true."""


class RunList(BaseModel):
    runs: list[RunSummary]


class Health(BaseModel):
    status: Literal["ok"]
    version: str
    cases: int
    """Cases of the default corpus."""
    worker: bool
    """Whether this replica plays queued episodes."""
    worker_name: str
    current_run: str | None
    """The run this replica's worker is playing now."""
