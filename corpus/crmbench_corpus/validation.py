"""Corpus validation against the real services: every case is solvable and not trivially passed.

For each case: its reference actions must score 1.0, doing nothing must fail, and for a
failure scenario the naive trap actions (with the naive reply) must fail.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from crmbench_clients.crm_api import CrmApiClient
from crmbench_clients.errors import ServiceError
from crmbench_clients.verifier import VerifierClient
from crmbench_contracts.cases import Action, Case
from crmbench_corpus.replay import ReplayError, replay


@dataclass
class RunResult:
    kind: str  # reference | noop | trap
    score: float | None
    passed: bool | None
    ok: bool
    detail: str = ""


@dataclass
class CaseValidation:
    case: Case
    runs: list[RunResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(run.ok for run in self.runs)


@dataclass(frozen=True)
class ServiceClients:
    """The services a validation plays cases on: the CRM API (with its admin key) and the
    verifier."""

    crm_api: CrmApiClient
    verifier: VerifierClient


async def _run(
    clients: ServiceClients,
    case: Case,
    kind: str,
    actions: Sequence[Action],
    reply: str,
    strict: bool,
) -> dict[str, Any]:
    episode = await clients.crm_api.open_episode(case.case_id)
    try:
        await replay(clients.crm_api, episode.token, actions, strict=strict)
        verdict = await clients.verifier.verify(case.case_id, episode.episode_id, reply)
        return verdict.model_dump(mode="json")
    finally:
        # A failed drop must not hide the run's outcome; the reaper removes the episode.
        with contextlib.suppress(ServiceError):
            await clients.crm_api.close_episode(episode.episode_id)


def _failed_checks(record: dict[str, Any]) -> str:
    failed = [c for c in record.get("checks", []) if not c.get("passed") and c.get("weight", 0) > 0]
    return "; ".join(f"{c['check_id']}: {c['rationale']}" for c in failed[:3])


async def validate_case(clients: ServiceClients, case: Case) -> CaseValidation:
    result = CaseValidation(case)
    plans: list[tuple[str, Sequence[Action], str, bool]] = [
        ("reference", case.expected.reference_actions, case.expected.reference_reply, True),
        ("noop", [], "", True),
    ]
    if case.failure is not None:
        trap = case.failure.trap
        plans.append(("trap", trap.naive_actions, trap.naive_reply, False))
    for kind, actions, reply, strict in plans:
        try:
            record = await _run(clients, case, kind, actions, reply, strict)
        except (ReplayError, ServiceError) as exc:
            result.runs.append(RunResult(kind, None, None, False, str(exc)))
            continue
        score, passed = float(record["score"]), bool(record["passed"])
        ok = score == 1.0 if kind == "reference" else not passed
        detail = "" if ok else (_failed_checks(record) if kind == "reference" else f"score {score}")
        result.runs.append(RunResult(kind, score, passed, ok, detail))
    return result


async def validate_cases(
    clients: ServiceClients,
    cases: Sequence[Case],
    *,
    concurrency: int = 8,
    progress: Callable[[CaseValidation], None] | None = None,
) -> list[CaseValidation]:
    semaphore = asyncio.Semaphore(concurrency)

    async def one(case: Case) -> CaseValidation:
        async with semaphore:
            outcome = await validate_case(clients, case)
        if progress is not None:
            progress(outcome)
        return outcome

    return list(await asyncio.gather(*(one(c) for c in cases)))


def summary_rows(results: Sequence[CaseValidation]) -> list[dict[str, Any]]:
    """One row per task category and per failure family: runs and how many met the rule."""
    groups: dict[str, list[CaseValidation]] = defaultdict(list)
    for r in results:
        groups[f"category: {r.case.task_category}"].append(r)
        if r.case.failure is not None:
            groups[f"family: {r.case.failure.family.value}"].append(r)
            groups[f"failure: {r.case.failure.category}"].append(r)
    rows = []
    for name in sorted(groups):
        members = groups[name]

        def share(kind: str, members: list[CaseValidation] = members) -> tuple[int, int]:
            runs = [run for m in members for run in m.runs if run.kind == kind]
            return sum(run.ok for run in runs), len(runs)

        ref_ok, ref_n = share("reference")
        noop_ok, noop_n = share("noop")
        trap_ok, trap_n = share("trap")
        rows.append(
            {
                "group": name,
                "cases": len(members),
                "reference_pass": (ref_ok, ref_n),
                "noop_fail": (noop_ok, noop_n),
                "trap_fail": (trap_ok, trap_n),
            }
        )
    return rows
