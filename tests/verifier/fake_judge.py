"""A fake LLM judge: an OpenAI-compatible chat-completions server (fake_llm_servers'
strict OpenAI fake) that reads the judge prompt (verifier.judges.judge_prompt) with the
offline reader and answers with a JSON verdict, as an LLM judge would, after an optional
fixed delay. It lets tests and the benchmark run the judge path end to end over HTTP.

The verdict, from the prompt alone:
- outcome: crmbench_contracts.replies.classify_outcome of the reply;
- facts: mentions and reason facts, rebuilt from the prompt's fact lines (phrases, rule,
  subject, affirmed), read by crmbench_contracts.expectations.read_fact; mentions_value
  and judge facts get no verdict (the final state is not in the prompt), so the scoring
  falls back to its own reading of them;
- score: the best branch's share of the facts it decided (1.0 when it decided none);
  uncertainty as configured (0).
`contrary` reports another outcome than the one read (`contrary_to`), `score` replaces
the score: two fakes made to read different outcomes, or to score far apart, make the
verifier call its arbiter.

A request that holds no judge prompt is answered 418, naming what is missing.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from crmbench_clients.serving import serving_in_thread
from crmbench_contracts.cases import CommunicationFact, Outcome
from crmbench_contracts.expectations import FinalState, read_fact
from crmbench_contracts.replies import classify_outcome
from tests.agent_runner.fake_llm_servers import (
    FakeApi,
    Responder,
    ScriptedAnswer,
    openai_app,
    openai_reply,
)
from verifier.judges import FINAL_REPLY_CLOSE, FINAL_REPLY_OPEN

_FACT = re.compile(r"^- (?P<id>\S+/\d+): (?P<fact>.*)$")
_RULE = re.compile(r"^  rule: (?P<rule>\S+) ")
_SUBJECT = re.compile(r"^  must also name one of: (?P<list>\[.*\])$")
_WORDING = re.compile(r"^  wording that shows it \(examples, not required\): (?P<list>\[.*\])$")
_TRANSCRIPT = "\nThe conversation (JSON lines):\n"
_NO_WORLD = FinalState(tables={})


@dataclass
class JudgeBehaviour:
    """How a fake judge answers besides reading the prompt."""

    delay_seconds: float = 0.0
    contrary: bool = False
    """Report `contrary_to(the outcome read)` instead of the outcome read."""
    score: float | None = None
    """The score to report instead of the one computed."""
    uncertainty: float = 0.0


def contrary_to(outcome: Outcome) -> Outcome:
    """The outcome a contrary fake reports when it reads `outcome`: the next one."""
    outcomes = list(Outcome)
    return outcomes[(outcomes.index(outcome) + 1) % len(outcomes)]


class NotAJudgePrompt(ValueError):
    """The request holds no prompt judge_prompt could have written."""


def user_text(body: dict[str, Any]) -> str:
    """The text of the last user message of a chat-completions request body."""
    users = [m for m in body.get("messages", []) if m.get("role") == "user"]
    if not users:
        raise NotAJudgePrompt("no user message")
    content = users[-1].get("content")
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)


def read_judge_prompt(prompt: str) -> tuple[str, dict[str, CommunicationFact | None]]:
    """The reply and the facts (id -> the fact rebuilt, None for one the offline reader
    cannot decide from the prompt) of a judge prompt; NotAJudgePrompt otherwise."""
    head = prompt.split(_TRANSCRIPT, 1)[0]
    opening = f"\n{FINAL_REPLY_OPEN}\n"
    closing = f"\n{FINAL_REPLY_CLOSE}"
    if opening not in head or not head.endswith(closing):
        raise NotAJudgePrompt(f"no reply between {FINAL_REPLY_OPEN} and {FINAL_REPLY_CLOSE}")
    before, reply = head[: -len(closing)].split(opening, 1)
    details: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    for line in before.splitlines():
        started = _FACT.match(line)
        if started:
            current = details[started["id"]] = {"fact": started["fact"], "kind": "judge"}
            continue
        if current is None or not line.startswith("  "):
            current = None
            continue
        if rule := _RULE.match(line):
            current.update(kind="reason", rule=rule["rule"])
        elif subject := _SUBJECT.match(line):
            current["subject_any"] = json.loads(subject["list"])
        elif wording := _WORDING.match(line):
            current["any_of"] = json.loads(wording["list"])
            if current["kind"] == "judge":
                current["kind"] = "mentions"
        elif line.startswith("  affirmed:"):
            current["affirmed"] = True
        elif line.startswith("  the value:"):
            current["kind"] = "mentions_value"
    facts = {
        key: CommunicationFact.model_validate(fields)
        if fields["kind"] in ("mentions", "reason")
        else None
        for key, fields in details.items()
    }
    return reply, facts


def verdict_for(prompt: str, behaviour: JudgeBehaviour) -> dict[str, Any]:
    """The verdict the fake judge gives on `prompt` (module docstring)."""
    reply, facts = read_judge_prompt(prompt)
    decided = {
        key: read_fact(fact, reply, _NO_WORLD).found is not None
        for key, fact in facts.items()
        if fact is not None
    }
    by_branch: dict[str, list[bool]] = defaultdict(list)
    for key, conveyed in decided.items():
        by_branch[key.rsplit("/", 1)[0]].append(conveyed)
    computed = max((sum(v) / len(v) for v in by_branch.values()), default=1.0)
    outcome = classify_outcome(reply).outcome
    if behaviour.contrary:
        outcome = contrary_to(outcome)
    score = computed if behaviour.score is None else behaviour.score
    return {
        "outcome": outcome.value,
        "facts": decided,
        "score": round(score, 6),
        "uncertainty": behaviour.uncertainty,
        "rationale": f"offline reading: {len(decided)} facts decided, claims {outcome.value}",
    }


def judge_responder(behaviour: JudgeBehaviour) -> Responder:
    """A FakeApi responder answering every judge prompt with `verdict_for`."""

    def respond(body: dict[str, Any]) -> ScriptedAnswer:
        try:
            prompt = user_text(body)
            verdict = verdict_for(prompt, behaviour)
        except NotAJudgePrompt as error:
            return ScriptedAnswer(
                418, {"error": {"message": f"fake judge: {error}", "type": "fake_judge"}}
            )
        text = json.dumps(verdict)
        answer = openai_reply(
            text,
            prompt_tokens=len(prompt) // 4,
            completion_tokens=len(text) // 4,
            model=str(body["model"]),
        )
        answer.delay_seconds = behaviour.delay_seconds
        return answer

    return respond


@contextmanager
def fake_judge_server(behaviour: JudgeBehaviour | None = None) -> Iterator[tuple[FakeApi, str]]:
    """A fake judge served in a thread: (its FakeApi, the OpenAI base URL to configure)."""
    api = FakeApi()
    api.responder = judge_responder(behaviour or JudgeBehaviour())
    with serving_in_thread(openai_app(api), "fake LLM judge") as url:
        yield api, f"{url}/v1"
