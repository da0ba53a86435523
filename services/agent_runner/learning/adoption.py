"""Adoption, the "followed" half of the learning loop's bookkeeping (design/learning.md):
whether an episode's trajectory shows the action an injected playbook entry prescribes,
and the per-entry counter increments once the episode's reward is known.

An entry is *followed* when some step of its audience calls one of the entry's tools
(`Action.tools`, plus the tools its argument rules name) and that call satisfies every
checkable argument rule for that tool (`ArgumentRule.pattern` not None: the argument is
present and `re.fullmatch`es the pattern; strings as they are, other values as canonical
JSON). Rules without a pattern are words for the prompt and are not checked. An entry
that names no tool prescribes nothing a trace can show, so it is never followed.
Whether the call succeeded is the reward's business, not adoption's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from crmbench_contracts.canonical import canonical_json
from crmbench_contracts.playbooks import AdoptionEvent, ArgumentRule, CounterField, PlaybookEntry
from crmbench_contracts.traces import StepTrace


def argument_text(value: Any) -> str:
    """The text a rule's pattern is matched against: a string as it is, any other JSON
    value as its canonical JSON (`60`, `true`, `{"a":1}`)."""
    return value if isinstance(value, str) else canonical_json(value)


def rule_holds(rule: ArgumentRule, arguments: Mapping[str, Any]) -> bool:
    """Whether a call's `arguments` satisfy a checkable rule: the argument is given and
    its text (`argument_text`) fully matches `rule.pattern`. Raises ValueError for a rule
    without a pattern (it cannot be checked)."""
    if rule.pattern is None:
        raise ValueError(f"the rule on {rule.tool}.{rule.argument} has no pattern to check")
    if rule.argument not in arguments:
        return False
    return re.fullmatch(rule.pattern, argument_text(arguments[rule.argument])) is not None


def prescribed_tools(entry: PlaybookEntry) -> list[str]:
    """The tools whose calls can show the entry followed: its action's tools, then any
    other tool its argument rules name, without repeats."""
    return list(
        dict.fromkeys([*entry.action.tools, *(rule.tool for rule in entry.action.argument_rules)])
    )


def adoption(entry: PlaybookEntry, steps: Sequence[StepTrace]) -> AdoptionEvent | None:
    """The first step (by step id) that follows the entry, as an `adoption` event with
    its evidence ("called modify_opportunity; stage='Proposal' matches ..."); None when no
    step does. Only steps whose actor is the entry's audience count."""
    tools = set(prescribed_tools(entry))
    for step in sorted(steps, key=lambda s: s.step_id):
        if step.actor != entry.audience or step.tool not in tools:
            continue
        rules = [
            rule
            for rule in entry.action.argument_rules
            if rule.tool == step.tool and rule.pattern is not None
        ]
        if all(rule_holds(rule, step.arguments) for rule in rules):
            evidence = [f"called {step.tool}"]
            evidence += [
                f"{rule.argument}={argument_text(step.arguments[rule.argument])!r} "
                f"matches {rule.pattern!r}"
                for rule in rules
            ]
            return AdoptionEvent(
                entry_id=entry.entry_id, step=step.step_id, evidence="; ".join(evidence)
            )
    return None


def adoptions(injected: Sequence[PlaybookEntry], steps: Sequence[StepTrace]) -> list[AdoptionEvent]:
    """One event per injected entry the steps follow, in the order the entries were
    injected."""
    found = (adoption(entry, steps) for entry in injected)
    return [event for event in found if event is not None]


def outcome_increments(
    injected: Sequence[PlaybookEntry],
    adopted: Sequence[str],
    *,
    reward: float,
    tokens: int,
    without: Sequence[PlaybookEntry] = (),
) -> dict[str, dict[CounterField, float]]:
    """Counter increments per entry id once the episode's reward is known.

    Each injected entry: `episodes_with` +1, `reward_sum_with` + reward,
    `reward_sq_sum_with` + reward², `tokens_sum_with` + the episode's tokens (input plus
    output, student and teacher), and `followed` +1 for the ids in `adopted`. Each entry
    in `without` (withheld at random by exploration although retrieval chose it) gets the
    same sums on its `*_without` counters: the comparison the harmful-entry test uses.
    Entries in both lists count as injected."""
    followed = set(adopted)
    bumps: dict[str, dict[CounterField, float]] = {}
    for entry in without:
        bumps[entry.entry_id] = {
            "episodes_without": 1,
            "reward_sum_without": float(reward),
            "reward_sq_sum_without": float(reward) ** 2,
            "tokens_sum_without": tokens,
        }
    for entry in injected:
        counters: dict[CounterField, float] = {
            "episodes_with": 1,
            "reward_sum_with": float(reward),
            "reward_sq_sum_with": float(reward) ** 2,
            "tokens_sum_with": tokens,
        }
        if entry.entry_id in followed:
            counters["followed"] = 1
        bumps[entry.entry_id] = counters
    return bumps
