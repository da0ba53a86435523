"""The simulated LLM's policy: a seeded, stateless stand-in for a mediocre tool-calling model.

It knows each case's intent (the golden case's reference actions and reply) and, per
episode, draws whether to make the case's typical mistake at the configured rate: on a
failure case it walks into the trap (the naive actions), on a success case it leaves out
the last write. When the API refuses a trap call it either recovers (redoes the task the
reference way) or claims success anyway, like a mediocre model. Guidance in the system
prompt that addresses the mistake lowers its rate.

The policy keeps no state between calls: each call replays its plan against the tool
calls and results already in the conversation and returns the next step, so the same
conversation always gets the same answer. Every random decision is a uniform number hashed
from (seed, case id, trial, purpose); the guided and unguided decisions share the number,
so adding guidance can only remove a mistake and paired comparisons isolate its effect.

Which tools write comes from the CRM API's OpenAPI document (each tool operation's
`x-tool-kind`), by default the committed docs/openapi.json, never from the API's code.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from agent_runner.protocol import parse_tool_result
from agent_runner.simulated.config import SimulatedLLMConfig
from crmbench_contracts.cases import Action, Case
from crmbench_contracts.paths import REPO_ROOT
from crmbench_contracts.tools import InvalidToolKinds, write_tools
from crmbench_corpus.replay import ReplayError, resolve
from crmbench_llm.types import Message

Phase = Literal["reference", "trap", "partial", "recovery", "restart"]
"""Which plan produced a turn: the reference; the trap's naive actions; the reference
short of its last write (the success-path mistake); the reference redone after a refused
trap call; or the reference redone because earlier calls came from a plan it dropped
(guidance that appeared mid-episode)."""

WireMessage = Mapping[str, Any]
"""A chat message in OpenAI's wire shape, as the HTTP endpoint receives it."""


class SimulatedLLMError(ValueError):
    """A request the simulated LLM cannot answer; `code` is machine-readable."""

    code = "simulated_llm_error"


class UnknownCase(SimulatedLLMError):
    """The case id is not among the cases the policy was given."""

    code = "unknown_case"


class MalformedConversation(SimulatedLLMError):
    """A message is not shaped like a chat message."""

    code = "malformed_conversation"


def default_openapi_path() -> Path:
    """The CRM API's committed OpenAPI document (docs/openapi.json at the repository root)."""
    return REPO_ROOT / "docs" / "openapi.json"


def load_write_tools(path: str | Path | None = None) -> frozenset[str]:
    """Names of the tools that change state, from the `x-tool-kind` of the OpenAPI
    document at `path` (default: `default_openapi_path()`).

    Raises OSError when the file cannot be read, ValueError when it is not JSON, and
    InvalidToolKinds when its tool kinds are malformed or it declares no write tool
    (then it is not the CRM API's document).
    """
    source = Path(path) if path is not None else default_openapi_path()
    try:
        document = json.loads(source.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValueError(f"{source} is not valid JSON: {exc}") from exc
    if not isinstance(document, Mapping):
        raise InvalidToolKinds(f"{source} is not an OpenAPI document (a JSON object)")
    writes = write_tools(document)
    if not writes:
        raise InvalidToolKinds(f"{source} declares no write tool: not the CRM API's document")
    return writes


def uniform_draw(seed: int, case_id: str, trial: int, purpose: str) -> float:
    """A number in [0, 1) fixed by its inputs (SHA-256, so stable across processes,
    unlike Python's salted `hash`)."""
    key = "\x1f".join((str(seed), case_id, str(trial), purpose)).encode("utf-8")
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2.0**64


@dataclass(frozen=True)
class Decision:
    """Whether this episode makes its case's mistake, and why."""

    draw: float
    """The episode's uniform number for the mistake decision."""
    guided: bool
    """Whether the system prompt held guidance addressing the mistake."""
    error_rate: float
    """The rate in force: the guided rate when `guided`, else the unguided one."""

    @property
    def mistake(self) -> bool:
        return self.draw < self.error_rate


@dataclass(frozen=True)
class PlannedCall:
    """A tool call the policy makes."""

    id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class SimulatedTurn:
    """The next assistant turn: one tool call, or (when `tool_call` is None) a reply."""

    content: str
    tool_call: PlannedCall | None
    decision: Decision
    phase: Phase


@dataclass(frozen=True)
class ObservedCall:
    """A tool call already in the conversation, with the result the runner sent back."""

    tool: str
    arguments: Any
    ok: bool
    body: Any
    """The response body on success, the error object (code, field, message) on refusal."""


@dataclass(frozen=True)
class Conversation:
    """What the policy reads from a conversation: system text and the calls so far."""

    system_text: str
    calls: list[ObservedCall]


# Outcomes of replaying a plan against the calls already made.
@dataclass(frozen=True)
class _Next:
    tool: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class _Done:
    pass


@dataclass(frozen=True)
class _Refused:
    at: int
    error: Any


@dataclass(frozen=True)
class _Diverged:
    at: int


@dataclass(frozen=True)
class _Unresolvable:
    reason: str


_Outcome = _Next | _Done | _Refused | _Diverged | _Unresolvable


def _text(content: Any) -> str:
    """Text of a message's content: a string, or OpenAI's list of content parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, Mapping))
    raise MalformedConversation(f"message content is a {type(content).__name__}")


def _arguments(raw: Any) -> Any:
    if isinstance(raw, str):
        try:
            return json.loads(raw) if raw.strip() else {}
        except ValueError:
            return raw
    return raw


def read_conversation(messages: Sequence[WireMessage | Message]) -> Conversation:
    """System text and the tool calls made so far, each paired with its result by id."""
    system_parts: list[str] = []
    calls: list[tuple[str, str, Any]] = []
    results: dict[str, str] = {}
    for message in messages:
        if isinstance(message, Message):
            if message.role == "system":
                system_parts.append(message.content)
            elif message.role == "tool" and message.tool_call_id is not None:
                results[message.tool_call_id] = message.content
            for call in message.tool_calls:
                raw = call.raw_arguments if call.raw_arguments is not None else call.arguments
                calls.append((call.id, call.name, _arguments(raw)))
            continue
        if not isinstance(message, Mapping):
            raise MalformedConversation(f"a message is a {type(message).__name__}, not an object")
        role = message.get("role")
        if role in ("system", "developer"):
            system_parts.append(_text(message.get("content")))
        elif role == "tool":
            results[str(message.get("tool_call_id"))] = _text(message.get("content"))
        elif role == "assistant":
            tool_calls = message.get("tool_calls") or []
            if not isinstance(tool_calls, list):
                raise MalformedConversation("assistant tool_calls is not a list")
            for call in tool_calls:
                function = call.get("function") if isinstance(call, Mapping) else None
                if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
                    raise MalformedConversation("a tool call has no function name")
                calls.append(
                    (str(call.get("id")), function["name"], _arguments(function.get("arguments")))
                )
        elif role != "user":
            raise MalformedConversation(f"unknown message role {role!r}")
    observed = []
    for call_id, name, arguments in calls:
        content = results.get(call_id)
        if content is None:
            # A call the runner never answered counts as failed: nothing can build on it.
            ok, body = False, {"code": "NO_RESULT", "message": "the call got no result"}
        else:
            ok, body = parse_tool_result(content)
        observed.append(ObservedCall(name, arguments, ok, body))
    return Conversation("\n\n".join(part for part in system_parts if part), observed)


def _error_code(error: Any) -> str:
    if isinstance(error, Mapping) and isinstance(error.get("code"), str):
        return str(error["code"])
    return "UNKNOWN_ERROR"


def _walk(
    actions: Sequence[Action],
    calls: Sequence[ObservedCall],
    start: int,
    *,
    expected_refusals_ok: bool,
) -> _Outcome:
    """Replays `actions` against `calls[start:]`: the next call to make, or how it ended.

    With `expected_refusals_ok`, a refusal an action expects (its `expect_error`) is part
    of the plan; otherwise any refusal ends the walk. A call that differs from the plan
    (tool or arguments), or a call beyond its end, is a divergence.
    """
    results: list[Any] = []
    position = start
    for action in actions:
        try:
            arguments = resolve(action.args, results)
        except ReplayError as error:
            return _Unresolvable(str(error))
        if position >= len(calls):
            return _Next(action.tool, arguments)
        call = calls[position]
        if call.tool != action.tool or call.arguments != arguments:
            return _Diverged(position)
        if not call.ok:
            expected = expected_refusals_ok and action.expect_error is not None
            if not (expected and _error_code(call.body) == action.expect_error):
                return _Refused(position, call.body)
        results.append(call.body if call.ok else None)
        position += 1
    if position < len(calls):
        return _Diverged(position)
    return _Done()


def _without_last_write(actions: Sequence[Action], writes: frozenset[str]) -> list[Action] | None:
    """The actions before the last write, a tool in `writes` (what follows it only reads);
    None if none writes."""
    for index in range(len(actions) - 1, -1, -1):
        if actions[index].tool in writes:
            return list(actions[:index])
    return None


class SimulatedPolicy:
    """Decides the next assistant turn of a case's episode from the conversation so far.

    `write_tools` names the tools that change state (see `write_tools` of
    crmbench_contracts.tools, which builds it from an OpenAPI document); None loads it from
    the committed document (`load_write_tools`).
    """

    def __init__(
        self,
        config: SimulatedLLMConfig,
        cases: Mapping[str, Case],
        write_tools: frozenset[str] | None = None,
    ) -> None:
        self.config = config
        self.cases = cases
        self.write_tools = write_tools if write_tools is not None else load_write_tools()

    def case(self, case_id: str) -> Case:
        case = self.cases.get(case_id)
        if case is None:
            raise UnknownCase(f"no case {case_id!r} among the {len(self.cases)} loaded")
        return case

    def draw(self, case_id: str, trial: int, purpose: str) -> float:
        return uniform_draw(self.config.seed, case_id, trial, purpose)

    def decide(self, case: Case, trial: int, system_text: str) -> Decision:
        """The mistake decision of one episode given the guidance it was shown."""
        rule = self.config.rule_for(case)
        guided = rule.addressed_by(system_text)
        return Decision(
            draw=self.draw(case.case_id, trial, "mistake"),
            guided=guided,
            error_rate=rule.rate(guided=guided),
        )

    def next_turn(
        self,
        case_id: str,
        trial: int,
        system_prompt: str,
        conversation: Sequence[WireMessage | Message],
    ) -> SimulatedTurn:
        """The next turn for `conversation` (system messages in it count as system
        prompt too). Raises UnknownCase or MalformedConversation."""
        case = self.case(case_id)
        read = read_conversation(conversation)
        system_text = "\n\n".join(part for part in (system_prompt, read.system_text) if part)
        decision = self.decide(case, trial, system_text)
        turn = _TurnBuilder(self.config, case, decision, read.calls)
        expected = case.expected

        if not decision.mistake:
            return turn.follow("reference", expected.reference_actions, expected.reference_reply)
        if case.failure is None:
            partial = _without_last_write(expected.reference_actions, self.write_tools)
            if partial is None:
                # A read-only task botched: it looks things up and misses the facts.
                return turn.follow(
                    "partial", expected.reference_actions, self.config.unhelpful_reply
                )
            return turn.follow("partial", partial, expected.reference_reply)

        trap = case.failure.trap
        outcome = _walk(trap.naive_actions, read.calls, 0, expected_refusals_ok=False)
        if isinstance(outcome, _Refused):
            recovery_rate = self.config.category_rule(case.failure.category).recovery_rate
            if self.draw(case_id, trial, "recovery") < recovery_rate:
                return turn.redo("recovery", outcome.at + 1)
            return turn.reply("trap", trap.naive_reply)
        return turn.settle("trap", outcome, trap.naive_reply)


class _TurnBuilder:
    """Turns a plan's outcome into the assistant turn, for one call of one episode."""

    def __init__(
        self,
        config: SimulatedLLMConfig,
        case: Case,
        decision: Decision,
        calls: list[ObservedCall],
    ) -> None:
        self.config = config
        self.case = case
        self.decision = decision
        self.calls = calls

    def reply(self, phase: Phase, content: str) -> SimulatedTurn:
        return SimulatedTurn(content, None, self.decision, phase)

    def apologise(self, phase: Phase, code: str) -> SimulatedTurn:
        return self.reply(phase, self.config.apology.format(code=code))

    def follow(self, phase: Phase, actions: Sequence[Action], final: str) -> SimulatedTurn:
        """Carries out `actions` from the start of the conversation, then replies `final`."""
        outcome = _walk(actions, self.calls, 0, expected_refusals_ok=True)
        if isinstance(outcome, _Refused):
            # A mediocre model that hits a refusal it did not expect gives up.
            return self.apologise(phase, _error_code(outcome.error))
        return self.settle(phase, outcome, final)

    def redo(self, phase: Phase, start: int) -> SimulatedTurn:
        """Carries out the reference afresh from call `start` on (earlier results are not
        reused: reads are harmless to repeat), then gives the reference reply."""
        expected = self.case.expected
        outcome = _walk(expected.reference_actions, self.calls, start, expected_refusals_ok=True)
        if isinstance(outcome, _Refused):
            return self.apologise(phase, _error_code(outcome.error))
        if isinstance(outcome, _Diverged):
            return self.apologise(phase, "UNEXPECTED_CALL")
        return self.settle(phase, outcome, expected.reference_reply)

    def settle(self, phase: Phase, outcome: _Outcome, final: str) -> SimulatedTurn:
        if isinstance(outcome, _Next):
            call_id = f"call_sim_{len(self.calls) + 1}"
            call = PlannedCall(call_id, outcome.tool, outcome.arguments)
            return SimulatedTurn("", call, self.decision, phase)
        if isinstance(outcome, _Done):
            return self.reply(phase, final)
        if isinstance(outcome, _Unresolvable):
            return self.apologise(phase, "UNRESOLVABLE_REFERENCE")
        if isinstance(outcome, _Diverged):
            # Its earlier calls came from a plan it no longer follows (guidance arrived
            # mid-episode): it starts over the reference way after the first odd call.
            return self.redo("restart", outcome.at + 1)
        return self.apologise(phase, _error_code(outcome.error))


def expected_pass_probability(
    case: Case, config: SimulatedLLMConfig, *, guided: bool = False
) -> float:
    """The configured ("true") probability that an episode of `case` passes.

    It passes when it makes no mistake, or, on a failure case, when a trap call is
    refused (some naive action expects an error) and it then recovers. `guided` says
    whether guidance addressing the case's mistake is in the system prompt.
    """
    if case.failure is None:
        return 1.0 - config.success.rate(guided=guided)
    rule = config.category_rule(case.failure.category)
    error_rate = rule.rate(guided=guided)
    refused = any(action.expect_error is not None for action in case.failure.trap.naive_actions)
    recovery = rule.recovery_rate if refused else 0.0
    return (1.0 - error_rate) + error_rate * recovery
