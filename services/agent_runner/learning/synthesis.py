"""The synthesis gates (design/learning.md, step 4): which of the teacher's candidate
playbook entries may enter the memory.

A candidate is refused when
- `no_action`: its text is shorter than `MIN_ACTION_WORDS` words, or, below the universal
  level, its action names no tool and no argument rule (nothing a trace could show
  followed; a universal entry, "check every write before you reply", applies to any
  tool, and its adoption is reported as not observable);
- `no_cue`: its cue text is shorter than `MIN_CUE_WORDS` words, or (below the universal
  level) one of its patterns matches any text at all (`MATCH_ANYTHING_PROBES`): a cue
  that fires on every task says nothing about when the entry applies;
- `restates_case`: it repeats a value of the episode it was distilled from (level 1 of
  the customer's taxonomy: an id, a name, an amount, a date, an e-mail from the user's
  turns or the tool calls' arguments), so it teaches one case's answer, not a lesson.
  Values the tool schemas enumerate (stage names, statuses) and the tools' own names and
  fields are vocabulary, not case values, and pass.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from crmbench_contracts.playbooks import GateRefusal, PlaybookContent
from crmbench_contracts.traces import StepTrace
from crmbench_llm.types import ToolSpec

MIN_ACTION_WORDS = 3
MIN_CUE_WORDS = 3
MIN_VALUE_CHARS = 3
"""Shorter string values ("US", "a") are too common to mark a restatement."""
MATCH_ANYTHING_PROBES = ("", "zq", "Task category: none")
"""Texts no real cue should match; a pattern that matches all three matches anything."""

_NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")
_QUOTED = re.compile("['\"\u2018\u201c]([^'\"\u2019\u201d]{3,})['\"\u2019\u201d]")
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_PROPER = re.compile(r"\b[A-Z][\w&'-]*(?:\s+[A-Z][\w&'-]*)+")
"""Two or more capitalised words in a row: a client, company or person's name."""


@dataclass(frozen=True)
class GateResult:
    accepted: list[PlaybookContent]
    refused: list[GateRefusal]


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, bool):
        return
    elif isinstance(value, int | float):
        yield str(value)
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


def vocabulary(tools: Sequence[ToolSpec]) -> set[str]:
    """Lower-cased words of the tools' interface: names, argument names and enumerated
    values (recursively through the JSON schemas)."""
    words: set[str] = set()

    def walk(schema: Any) -> None:
        if isinstance(schema, Mapping):
            for key, value in schema.items():
                if key == "enum" and isinstance(value, list):
                    words.update(str(item).strip().lower() for item in value)
                elif key == "properties" and isinstance(value, Mapping):
                    words.update(str(name).lower() for name in value)
                walk(value)
        elif isinstance(schema, list):
            for item in schema:
                walk(item)

    for tool in tools:
        words.add(tool.name.lower())
        walk(tool.parameters)
    return words


def case_values(
    user_turns: Sequence[str], steps: Sequence[StepTrace], tools: Sequence[ToolSpec]
) -> set[str]:
    """The values a candidate may not repeat (lower case): every string and number in the
    steps' arguments, and the numbers, quoted strings, e-mails and capitalised names of
    the user's turns; minus the tools' vocabulary and values shorter than
    `MIN_VALUE_CHARS` (numbers of one or two digits included)."""
    found: set[str] = set()
    for step in steps:
        found.update(_strings(step.arguments))
    for turn in user_turns:
        found.update(_NUMBER.findall(turn))
        found.update(_QUOTED.findall(turn))
        found.update(_EMAIL.findall(turn))
        found.update(_PROPER.findall(turn))
    known = vocabulary(tools)
    values = set()
    for value in found:
        text = value.strip().lower()
        if len(text) >= MIN_VALUE_CHARS and text not in known:
            values.add(text)
            if _NUMBER.fullmatch(text):
                values.add(text.replace(",", ""))
    return values


def _texts(candidate: PlaybookContent) -> list[str]:
    action = candidate.action
    return [
        candidate.cue.text,
        *candidate.cue.patterns,
        action.text,
        *(rule.rule for rule in action.argument_rules),
        *(rule.pattern or "" for rule in action.argument_rules),
        candidate.expected_effect,
    ]


def _repeated(value: str, texts: Sequence[str]) -> bool:
    if _NUMBER.fullmatch(value):
        # A number as a whole token, not a digit inside another ("100" in "1000").
        pattern = re.compile(rf"(?<![\d.,]){re.escape(value)}(?![\d]|[.,]\d)")
        return any(pattern.search(text.replace(",", "")) for text in texts)
    return any(value in text.lower() for text in texts)


def gate(candidate: PlaybookContent, values: set[str]) -> GateRefusal | None:
    """Why the candidate is refused, or None when it passes every gate (module docstring).
    `values` is `case_values(...)` of the episode it came from."""
    dumped = candidate.model_dump(mode="json")
    action = candidate.action
    if not action.tools and not action.argument_rules and candidate.level != "universal":
        return GateRefusal(
            gate="no_action",
            reason="the action names no tool and no argument rule: no trace can follow it "
            "(only a universal entry may apply to any tool)",
            candidate=dumped,
        )
    if len(action.text.split()) < MIN_ACTION_WORDS:
        return GateRefusal(
            gate="no_action",
            reason=f"the action text has fewer than {MIN_ACTION_WORDS} words",
            candidate=dumped,
        )
    if len(candidate.cue.text.split()) < MIN_CUE_WORDS:
        return GateRefusal(
            gate="no_cue",
            reason=f"the cue text has fewer than {MIN_CUE_WORDS} words",
            candidate=dumped,
        )
    if candidate.level != "universal":
        for pattern in candidate.cue.patterns:
            if all(re.search(pattern, probe, re.IGNORECASE) for probe in MATCH_ANYTHING_PROBES):
                return GateRefusal(
                    gate="no_cue",
                    reason=f"the cue pattern {pattern!r} matches any task; only a "
                    "universal entry may apply everywhere",
                    candidate=dumped,
                )
    texts = _texts(candidate)
    repeated = sorted(value for value in values if _repeated(value, texts))
    if repeated:
        shown = ", ".join(repr(value) for value in repeated[:3])
        return GateRefusal(
            gate="restates_case",
            reason=f"it repeats the episode's own values ({shown}): one case's answer, "
            "not a lesson",
            candidate=dumped,
        )
    return None


def apply_gates(candidates: Sequence[PlaybookContent], values: set[str]) -> GateResult:
    """The candidates that pass every gate (in order) and the refusals of the others."""
    accepted: list[PlaybookContent] = []
    refused: list[GateRefusal] = []
    for candidate in candidates:
        refusal = gate(candidate, values)
        if refusal is None:
            accepted.append(candidate)
        else:
            refused.append(refusal)
    return GateResult(accepted, refused)
