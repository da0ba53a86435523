"""Replaying a case's actions over HTTP: {{step_N.path}} references resolve to earlier results.

`{{step_2.items.0.client_id}}` is the `client_id` of the first item of the second call's
result. A whole-string reference keeps the value's type; one inside a longer string is
substituted as text. A path that names a field of a search page's items falls back to
the first item, as the customer's earlier benchmark did (`{{turn_1.client_id}}` after a
search).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from crmbench_clients.crm_api import CrmApiClient
from crmbench_contracts.cases import Action

_REFERENCE = re.compile(r"\{\{\s*step_(\d+)\.([A-Za-z0-9_.]+)\s*\}\}")


class ReplayError(RuntimeError):
    """A reference that cannot be resolved (a step that failed, or a missing field)."""


def _lookup(result: Any, path: str) -> Any:
    current = result
    for part in path.split("."):
        if isinstance(current, list):
            if not part.isdigit() or int(part) >= len(current):
                raise ReplayError(f"no element {part!r} in a list of {len(current)}")
            current = current[int(part)]
        elif isinstance(current, dict):
            if part in current:
                current = current[part]
            elif isinstance(current.get("items"), list) and current["items"]:
                current = current["items"][0].get(part)
                if current is None:
                    raise ReplayError(f"no field {part!r} in the first search result")
            else:
                raise ReplayError(f"no field {part!r} in {sorted(current)[:8]}")
        else:
            raise ReplayError(f"cannot read {part!r} from {type(current).__name__}")
    return current


def resolve(value: Any, results: Sequence[Any]) -> Any:
    """`value` with every {{step_N.path}} replaced by the N-th (1-based) result's field."""
    if isinstance(value, dict):
        return {k: resolve(v, results) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, results) for v in value]
    if not isinstance(value, str) or "{{" not in value:
        return value

    def value_of(match: re.Match[str]) -> Any:
        step = int(match.group(1))
        if not 1 <= step <= len(results):
            raise ReplayError(f"step_{step} does not exist yet (have {len(results)})")
        result = results[step - 1]
        if result is None:
            raise ReplayError(f"step_{step} failed, so {match.group(0)} has no value")
        return _lookup(result, match.group(2))

    whole = _REFERENCE.fullmatch(value.strip())
    if whole:
        return value_of(whole)
    return _REFERENCE.sub(lambda m: str(value_of(m)), value)


@dataclass
class StepOutcome:
    tool: str
    args: dict[str, Any]
    status: int
    body: Any

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def error_code(self) -> str | None:
        if self.ok or not isinstance(self.body, dict):
            return None
        error = self.body.get("error")
        return error.get("code") if isinstance(error, dict) else None


async def replay(
    crm: CrmApiClient, token: str, actions: Sequence[Action], *, strict: bool = True
) -> list[StepOutcome]:
    """Runs actions in order against a CRM API episode (tool call ids `step-N`).

    With strict, a step whose outcome differs from what the action expects (success, or
    the refusal code in `expect_error`) raises ReplayError naming the step. A refusal is
    an outcome; a CRM API failure (5xx, no answer) raises ServiceError.
    """
    outcomes: list[StepOutcome] = []
    results: list[Any] = []
    for number, action in enumerate(actions, start=1):
        try:
            args = resolve(action.args, results)
        except ReplayError as exc:
            if strict:
                raise ReplayError(f"step {number} ({action.tool}): {exc}") from None
            outcomes.append(StepOutcome(action.tool, action.args, 0, str(exc)))
            results.append(None)
            continue
        answer = await crm.call_tool(token, action.tool, args, tool_call_id=f"step-{number}")
        body = answer.body
        outcome = StepOutcome(action.tool, args, answer.status, body)
        outcomes.append(outcome)
        results.append(body if outcome.ok else None)
        if strict:
            expected = action.expect_error
            if expected is None and not outcome.ok:
                raise ReplayError(f"step {number} ({action.tool}) was refused: {body}")
            if expected is not None and outcome.error_code != expected:
                raise ReplayError(
                    f"step {number} ({action.tool}) should be refused with {expected}, "
                    f"got {outcome.status}: {body}"
                )
    return outcomes
