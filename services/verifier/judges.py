"""LLM judges: the interface, a scripted test double, and the judge/arbiter protocol.

Judges give a semantic view of the reply (and the process) that structured checks cannot:
each returns a score in [0, 1], an uncertainty in [0, 1] and a rationale. `run_judges`
asks every judge concurrently and calls the arbiter only when they disagree (the spread
of their scores exceeds `max_spread`) or one of them is unsure (uncertainty above
`max_uncertainty`); the arbiter's score then decides.

Extension point: an LLM-backed judge is any object with a `name` and an async
`judge(request) -> JudgeScore`. It renders `judge_prompt(request)` (or its own prompt
from the request's fields), calls its provider and parses score, uncertainty and
rationale. Providers (OpenAI, Anthropic) belong to the LLM layer (crmbench_llm)
and are plugged in here; this module imports no SDK.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from statistics import fmean
from typing import Any, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from crmbench_contracts.cases import Case, Outcome
from crmbench_contracts.rewards import JudgeScore

_Vote = TypeVar("_Vote", Outcome, bool)


class JudgeRequest(BaseModel):
    """What a judge sees: the case, the agent's final reply, the transcript, the changes."""

    model_config = ConfigDict(frozen=True)

    case: Case
    final_reply: str
    transcript: list[dict[str, Any]] = Field(default_factory=list)
    state_summary: dict[str, Any] = Field(
        default_factory=dict,
        description="A compact view of what the episode changed (see scoring.change_summary).",
    )


class JudgeOutcome(BaseModel):
    """Every judge's score, plus the arbiter's when the judges disagreed."""

    judges: list[JudgeScore] = Field(default_factory=list)
    arbiter: JudgeScore | None = None
    disagreed: bool = Field(
        default=False, description="The judges' spread or uncertainty crossed its threshold."
    )

    @property
    def value(self) -> float | None:
        """The judges' verdict: the arbiter's score when called, else the judges' mean."""
        if self.arbiter is not None:
            return self.arbiter.score
        if self.judges:
            return fmean(judge.score for judge in self.judges)
        return None

    @property
    def outcome(self) -> Outcome | None:
        """The claimed outcome the judges read: the arbiter's when it gave one, else the
        judges' strict majority; None when no verdict says or they tie (the offline
        classifier then decides)."""
        if self.arbiter is not None and self.arbiter.outcome is not None:
            return self.arbiter.outcome
        return _majority([judge.outcome for judge in self.judges])

    def fact(self, fact_id: str) -> bool | None:
        """Whether the reply conveys fact `fact_id` (rewards.fact_id): the arbiter's
        verdict when it gave one, else the judges' strict majority; None when none says."""
        if self.arbiter is not None and fact_id in self.arbiter.facts:
            return self.arbiter.facts[fact_id]
        return _majority([judge.facts.get(fact_id) for judge in self.judges])


def _majority(votes: Sequence[_Vote | None]) -> _Vote | None:
    """The value more than half of the votes that were cast agree on, else None."""
    cast = [vote for vote in votes if vote is not None]
    if not cast:
        return None
    value, count = Counter(cast).most_common(1)[0]
    return value if count * 2 > len(cast) else None


@runtime_checkable
class Judge(Protocol):
    """Scores one episode's reply (and process) against its case."""

    name: str

    async def judge(self, request: JudgeRequest) -> JudgeScore: ...


class JudgeFailed(RuntimeError):
    """A judge (or the arbiter) could not give a score."""

    def __init__(self, judge: str, cause: BaseException) -> None:
        super().__init__(f"judge {judge!r} failed: {type(cause).__name__}: {cause}")
        self.judge = judge


class ScriptedJudge:
    """A deterministic judge for tests: canned scores, optionally per case; no network.

    `by_case` maps a case id to (score, uncertainty); other cases get the defaults.
    Every request is kept in `requests`, so a test can tell whether the judge was asked.
    """

    def __init__(
        self,
        name: str,
        score: float = 1.0,
        uncertainty: float = 0.0,
        *,
        by_case: Mapping[str, tuple[float, float]] | None = None,
        rationale: str = "scripted verdict",
    ) -> None:
        self.name = name
        self.score = score
        self.uncertainty = uncertainty
        self.by_case = dict(by_case or {})
        self.rationale = rationale
        self.requests: list[JudgeRequest] = []

    async def judge(self, request: JudgeRequest) -> JudgeScore:
        self.requests.append(request)
        score, uncertainty = self.by_case.get(request.case.case_id, (self.score, self.uncertainty))
        return JudgeScore(
            judge=self.name, score=score, uncertainty=uncertainty, rationale=self.rationale
        )


async def _ask(judge: Judge, request: JudgeRequest) -> JudgeScore:
    try:
        return await judge.judge(request)
    except JudgeFailed:
        raise
    except Exception as exc:
        raise JudgeFailed(judge.name, exc) from exc


async def run_judges(
    judges: Sequence[Judge],
    arbiter: Judge | None,
    request: JudgeRequest,
    *,
    max_spread: float,
    max_uncertainty: float,
) -> JudgeOutcome:
    """Every judge concurrently; the arbiter only when they disagree or one is unsure.

    Without an arbiter a disagreement is recorded (`disagreed`) and the mean decides.
    A judge that fails raises JudgeFailed: a missing verdict is never silently dropped.
    """
    if not judges:
        return JudgeOutcome()
    scores = list(await asyncio.gather(*(_ask(judge, request) for judge in judges)))
    values = [score.score for score in scores]
    disagreed = (max(values) - min(values)) > max_spread or any(
        score.uncertainty > max_uncertainty for score in scores
    )
    verdict = await _ask(arbiter, request) if disagreed and arbiter is not None else None
    return JudgeOutcome(judges=scores, arbiter=verdict, disagreed=disagreed)


def judge_prompt(request: JudgeRequest) -> str:
    """A provider-neutral prompt for LLM judges: the task, what to check, the reply."""
    case = request.case
    facts = [fact.fact for fact in case.expected.communicate]
    lines = [
        "You grade a CRM assistant's work. Answer with JSON: "
        '{"score": 0..1, "uncertainty": 0..1, "rationale": "one sentence"}.',
        f"Acting user: {case.actor.name} ({case.actor.role}); today is {case.today}.",
        "The user's messages:",
        *(f"- {turn.content}" for turn in case.turns),
        "Facts the final reply must convey:",
        *(f"- {fact}" for fact in facts),
    ]
    if case.failure is not None:
        lines.append(f"Expected behaviour: {case.failure.trap.right_behaviour}.")
    lines += [
        "What the episode changed:",
        json.dumps(request.state_summary, sort_keys=True, ensure_ascii=False),
        "The assistant's final reply:",
        request.final_reply,
    ]
    return "\n".join(lines)
