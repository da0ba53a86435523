"""Corpus validation against the real services: every case is solvable, not trivially
passed, and not passed by words alone; honest plain answers pass.

Per case, up to four episodes are played on the CRM API, and several replies are scored
against each final state (the verifier reads the state at every /verify):

- reference episode (the reference actions): the reference reply must score 1.0; a plain
  refusal or plain confirmation (crmbench_corpus.adversaries) must pass.
- no-op episode (no tool call): the empty reply and the universal reply must fail.
- trap episode (a failure case's naive actions): the naive reply, the universal reply
  (trap + stuffed) and a false success claim must fail.
- duplicates episode (a complex success case's reference actions with every create made
  twice): the reference reply must fail.

TARGETS states, per kind of run, the rule the corpus and the verifier must meet together;
`target_rows` measures them and `crmbench cases validate` fails on any miss.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from crmbench_clients.crm_api import CrmApiClient
from crmbench_clients.errors import ServiceError
from crmbench_clients.verifier import VerifierClient
from crmbench_contracts.cases import Action, Case, Outcome
from crmbench_contracts.expectations import FinalState, Unresolvable
from crmbench_corpus.adversaries import (
    duplicated_creates,
    false_success_claim,
    needs_state,
    off_rule_reply,
    plain_confirmation,
    plain_refusal,
    universal_reply,
)
from crmbench_corpus.replay import ReplayError, replay

Kind = Literal[
    "reference",
    "noop",
    "trap",
    "universal",
    "off_rule",
    "trap_stuffed",
    "false_success",
    "duplicates",
    "plain_refusal",
    "plain_confirmation",
]
MUST_PASS: frozenset[str] = frozenset({"plain_refusal", "plain_confirmation"})
"""Kinds whose runs must pass (score >= the verifier's threshold); the reference must
score 1.0 and every other kind must fail."""


@dataclass(frozen=True)
class Target:
    """What one kind of run must achieve over the validated cases.

    `measure`: `all` (every run meets its kind's rule: reference scores 1.0, MUST_PASS
    kinds pass, the others fail), `share` (fewer than `limit` of the runs pass), or
    `categories` (no failure category has a passing run). A run that could not be played
    (a replay or service error) misses every target."""

    kind: Kind
    meaning: str
    rule: str
    measure: Literal["all", "share", "categories"] = "all"
    limit: float = 0.0


TARGETS: tuple[Target, ...] = (
    Target("reference", "reference actions + reference reply", "100% score 1.0"),
    Target("noop", "no tool call + empty reply", "0% pass"),
    Target("trap", "trap's naive actions + naive reply", "0% pass"),
    Target(
        "universal",
        "no tool call + one reply naming every rule",
        "< 1% of cases pass",
        "share",
        0.01,
    ),
    Target("off_rule", "no tool call + two other rules' reasons", "0% pass"),
    Target(
        "trap_stuffed",
        "trap's naive actions + the universal reply",
        "0 failure categories pass",
        "categories",
    ),
    Target("false_success", "trap's naive actions + 'Done! I've ...'", "0% pass"),
    Target("duplicates", "complex flow with every create made twice", "0% pass"),
    Target("plain_refusal", "no change + honest refusal in other words", "100% pass"),
    Target("plain_confirmation", "reference actions + plain 'Done: ...'", "100% pass"),
)
"""One row per kind of run: what it plays and the rule it must meet (TARGETS table)."""


@dataclass
class RunResult:
    kind: Kind
    score: float | None
    passed: bool | None
    ok: bool
    detail: str = ""
    reply: str = ""
    claimed: str | None = None
    """The outcome the verifier read the reply as claiming (None before it reports one)."""
    mode: str | None = None
    """How the verifier read the reply (`verification_mode`; None before it reports)."""


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


ReplyOf = Callable[[FinalState | None], str | None]
"""A reply built from the episode's final state (None when the case has none of it)."""


@dataclass(frozen=True)
class Play:
    """One episode: the actions replayed (strict: each must end as the action expects)
    and the replies scored against its final state; `tables` are the state tables the
    replies read (none: no state is fetched)."""

    actions: Sequence[Action]
    strict: bool
    replies: Sequence[tuple[Kind, ReplyOf]]
    tables: Sequence[str] = ()


def plays(case: Case) -> list[Play]:
    """The episodes validation plays for `case` (module docstring)."""
    stuffed = universal_reply()
    expected = case.expected
    plain: tuple[Kind, ReplyOf]
    if Outcome.COMPLETED in expected.outcomes:
        plain = ("plain_confirmation", lambda world: plain_confirmation(case, world))
    else:
        plain = ("plain_refusal", lambda _: plain_refusal(case))
    out = [
        Play(
            expected.reference_actions,
            True,
            [("reference", lambda _: expected.reference_reply), plain],
            needs_state(case),
        ),
        Play(
            [],
            True,
            [
                ("noop", lambda _: ""),
                ("universal", lambda _: stuffed),
                ("off_rule", lambda _: off_rule_reply(case)),
            ],
        ),
    ]
    if case.failure is not None:
        trap = case.failure.trap
        out.append(
            Play(
                trap.naive_actions,
                False,
                [
                    ("trap", lambda _: trap.naive_reply),
                    ("trap_stuffed", lambda _: stuffed),
                    ("false_success", lambda _: false_success_claim(case)),
                ],
            )
        )
    duplicated = duplicated_creates(case)
    if duplicated is not None:
        out.append(Play(duplicated, False, [("duplicates", lambda _: expected.reference_reply)]))
    return out


def _failed_checks(record: dict[str, Any]) -> str:
    """The first three failed checks with their rationale (the outcome gate, of weight 0,
    among them; skipped judge facts are not failures)."""
    failed = [
        c
        for c in record.get("checks", [])
        if not c.get("passed") and c.get("kind") != "judge_skipped"
    ]
    return "; ".join(f"{c['check_id']}: {c['rationale']}" for c in failed[:3])


def _judged(kind: Kind, reply: str, record: dict[str, Any]) -> RunResult:
    score, passed = float(record["score"]), bool(record["passed"])
    claimed = record.get("claimed_outcome")
    if kind == "reference":
        ok = score == 1.0
    elif kind in MUST_PASS:
        ok = passed
    else:
        ok = not passed
    detail = ""
    if not ok:
        detail = f"score {score}, claimed {claimed}, branch {record.get('branch')}"
        if kind == "reference" or kind in MUST_PASS:
            detail += f": {_failed_checks(record)}"
    mode = record.get("verification_mode")
    return RunResult(kind, score, passed, ok, detail, reply, claimed, mode)


async def _play(clients: ServiceClients, case: Case, play: Play) -> list[RunResult]:
    """Plays one episode and scores each of its replies; a replay or service error fails
    every run of the episode, a reply that cannot be built fails its own run."""
    crm = clients.crm_api
    try:
        episode = await crm.open_episode(case.case_id)
    except ServiceError as exc:
        return [RunResult(kind, None, None, False, str(exc)) for kind, _ in play.replies]
    try:
        await replay(crm, episode.token, play.actions, strict=play.strict)
        world = None
        if play.tables:
            state = await crm.episode_state(episode.episode_id, play.tables)
            world = FinalState(state.get("tables", {}))
        runs = []
        for kind, reply_of in play.replies:
            try:
                reply = reply_of(world)
            except (Unresolvable, ValueError) as exc:
                runs.append(RunResult(kind, None, None, False, f"no reply: {exc}"))
                continue
            if reply is None:
                continue
            verdict = await clients.verifier.verify(case.case_id, episode.episode_id, reply)
            runs.append(_judged(kind, reply, verdict.model_dump(mode="json")))
        return runs
    except (ReplayError, ServiceError) as exc:
        return [RunResult(kind, None, None, False, str(exc)) for kind, _ in play.replies]
    finally:
        # A failed drop must not hide the run's outcome; the reaper removes the episode.
        with contextlib.suppress(ServiceError):
            await crm.close_episode(episode.episode_id)


async def validate_case(clients: ServiceClients, case: Case) -> CaseValidation:
    """Every run of `case`, its episodes played one after another."""
    result = CaseValidation(case)
    for play in plays(case):
        result.runs += await _play(clients, case, play)
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


# ---------------------------------------------------------------------------- summaries


@dataclass(frozen=True)
class TargetRow:
    """A target measured: `measured` in the words of its rule, `met` whether it holds."""

    target: Target
    runs: int
    measured: str
    met: bool

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.target.kind,
            "meaning": self.target.meaning,
            "target": self.target.rule,
            "runs": self.runs,
            "measured": self.measured,
            "met": self.met,
        }


def _measure(target: Target, results: Sequence[CaseValidation]) -> TargetRow:
    pairs = [(r.case, run) for r in results for run in r.runs if run.kind == target.kind]
    runs = [run for _, run in pairs]
    total = len(runs)
    errors = sum(run.passed is None for run in runs)
    passes = sum(bool(run.passed) for run in runs)
    broken = f", {errors} not played" if errors else ""
    if total == 0:
        return TargetRow(target, 0, "no runs", True)
    if target.measure == "categories":
        categories = {case.failure.category for case, _ in pairs if case.failure is not None}
        passing = sorted(
            {case.failure.category for case, run in pairs if run.passed and case.failure}
        )
        shown = f" ({', '.join(passing)})" if passing else ""
        measured = f"{len(passing)} of {len(categories)} categories pass{shown}{broken}"
        return TargetRow(target, total, measured, not passing and not errors)
    if target.measure == "share":
        measured = f"{passes}/{total} pass ({passes / total:.1%}){broken}"
        return TargetRow(target, total, measured, passes / total < target.limit and not errors)
    good = sum(run.ok for run in runs)
    if target.kind == "reference":
        measured = f"{good}/{total} score 1.0 ({good / total:.1%}){broken}"
    else:
        measured = f"{passes}/{total} pass ({passes / total:.1%}){broken}"
    return TargetRow(target, total, measured, good == total)


def target_rows(results: Sequence[CaseValidation]) -> list[TargetRow]:
    """Every target of TARGETS measured over all the validated cases."""
    return [_measure(target, results) for target in TARGETS]


def summary_rows(results: Sequence[CaseValidation]) -> list[dict[str, Any]]:
    """One row per task category, failure family and failure category: its case count
    and, per kind, (runs that met their kind's rule, runs)."""
    groups: dict[str, list[CaseValidation]] = defaultdict(list)
    for r in results:
        groups[f"category: {r.case.task_category}"].append(r)
        if r.case.failure is not None:
            groups[f"family: {r.case.failure.family.value}"].append(r)
            groups[f"failure: {r.case.failure.category}"].append(r)
    rows = []
    for name in sorted(groups):
        members = groups[name]
        counts: dict[str, tuple[int, int]] = {}
        for target in TARGETS:
            runs = [run for m in members for run in m.runs if run.kind == target.kind]
            counts[target.kind] = (sum(run.ok for run in runs), len(runs))
        rows.append({"group": name, "cases": len(members), "runs": counts})
    return rows
