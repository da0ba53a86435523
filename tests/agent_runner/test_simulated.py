"""The simulated LLM, driven through the real OpenAI provider over HTTP: its plans, its
mistakes at configured rates, its reactions to refusals, guidance, determinism, and the
configured pass probabilities that metric tests compare against."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from agent_runner.protocol import CASE_HEADER, TRIAL_HEADER, tool_result_content
from agent_runner.simulated import (
    MistakeRule,
    SimulatedLLMConfig,
    SimulatedPolicy,
    default_config_path,
    default_openapi_path,
    expected_pass_probability,
    load_write_tools,
    running_simulated_llm,
)
from crm_api.tools import TOOLS, ToolKind
from crmbench.local_services import running_verifier
from crmbench_contracts.cases import FAILURE_CATEGORIES, Action, Case
from crmbench_contracts.tools import InvalidToolKinds, tool_kinds, write_tools
from crmbench_corpus.replay import resolve
from crmbench_corpus.store import default_corpus_dir, load_cases
from crmbench_llm import (
    Completion,
    LLMError,
    LLMProvider,
    Message,
    PriceTable,
    ProviderConfig,
    ToolCall,
    ToolSpec,
    make_provider,
)
from tests.conftest import ADMIN_KEY, REPO_ROOT, RunningServer

MODEL = "crmbench-simulated"
WRITE_TOOLS = load_write_tools()

ToolBackend = Callable[[str, dict[str, Any]], Awaitable[tuple[int, Any]]]


# --- configs and cases built by hand --------------------------------------------------


def sim_config(
    *,
    success: float = 0.0,
    success_guided: float | None = None,
    trap: float = 0.0,
    trap_guided: float | None = None,
    recovery: float = 0.0,
    patterns: Sequence[str] = (),
    seed: int = 7,
) -> SimulatedLLMConfig:
    """One error rate for success cases, one for every failure category."""
    rule = {
        "error_rate": trap,
        "guided_error_rate": trap if trap_guided is None else trap_guided,
        "recovery_rate": recovery,
        "guidance_patterns": list(patterns),
    }
    return SimulatedLLMConfig.model_validate(
        {
            "seed": seed,
            "model": MODEL,
            "success": {
                "error_rate": success,
                "guided_error_rate": success if success_guided is None else success_guided,
                "guidance_patterns": list(patterns),
            },
            "default": rule,
        }
    )


def make_case(
    case_id: str,
    reference: list[dict[str, Any]],
    reply: str,
    failure: dict[str, Any] | None = None,
) -> Case:
    return Case.model_validate(
        {
            "case_id": case_id,
            "task_category": "TEST",
            "workflow": "Test",
            "difficulty": "simple",
            "split": "eval",
            "today": "2025-11-12",
            "actor": {"name": "Casey Morgan", "role": "sales_rep"},
            "turns": [{"content": "Do the thing."}],
            "expected": {
                "state": [],
                "allowed_changes": [],
                "communicate": [],
                "reference_actions": reference,
                "reference_reply": reply,
            },
            "failure": failure,
        }
    )


SEARCH_DEAL = {"tool": "opportunity_search", "args": {"criteria": {"name": "Meridian License"}}}
DEAL_ID = "{{step_1.items.0.opportunity_id}}"

WRITE_CASE = make_case(
    "T-WRITE",
    [
        {"tool": "client_search", "args": {"criteria": {"name": "Acme"}}},
        {
            "tool": "modify_client",
            "args": {"client_id": "{{step_1.items.0.client_id}}", "status": "Inactive"},
        },
    ],
    "Acme is now Inactive.",
)
READ_CASE = make_case(
    "T-READ",
    [{"tool": "client_search", "args": {"criteria": {"name": "Acme"}}}],
    "Acme is owned by Riley Chen.",
)
TRAP_CASE = make_case(
    "T-TRAP",
    [
        SEARCH_DEAL,
        {"tool": "modify_opportunity", "args": {"opportunity_id": DEAL_ID, "stage": "Negotiation"}},
    ],
    "Meridian License is now in Negotiation.",
    failure={
        "category": "ENUM_CASE_MISMATCH",
        "family": "schema",
        "severity": "MEDIUM",
        "trap": {
            "description": "passes 'negotiation' through verbatim",
            "right_behaviour": "recover",
            "naive_actions": [
                SEARCH_DEAL,
                {
                    "tool": "modify_opportunity",
                    "args": {"opportunity_id": DEAL_ID, "stage": "negotiation"},
                    "expect_error": "ENUM_CASE_MISMATCH",
                },
            ],
            "naive_reply": "Done! All set.",
        },
    },
)
CASES = {case.case_id: case for case in (WRITE_CASE, READ_CASE, TRAP_CASE)}


async def fake_crm(tool: str, args: dict[str, Any]) -> tuple[int, Any]:
    """A stand-in CRM API: searches find one record, a lower-case stage is refused."""
    if tool.endswith("_search"):
        return 200, {"items": [{"client_id": "c-1", "opportunity_id": "o-1"}], "total": 1}
    if args.get("stage") == "negotiation":
        error = {
            "code": "ENUM_CASE_MISMATCH",
            "field": "stage",
            "message": "Use 'Negotiation'.",
            "allowed": ["Negotiation"],
        }
        return 422, {"error": error}
    return 200, {**args, "updated": True}


# --- driving episodes over HTTP through the real OpenAI provider -----------------------


def provider_for(base_url: str) -> LLMProvider:
    config = ProviderConfig(
        provider="openai",
        model=MODEL,
        base_url=base_url,
        api_key_env=None,
        max_retries=0,
        timeout_seconds=10,
    )
    return make_provider(config, PriceTable({}))


@contextlib.contextmanager
def simulated(
    config: SimulatedLLMConfig, cases: Mapping[str, Case] = CASES
) -> Iterator[LLMProvider]:
    with running_simulated_llm(config, cases) as base_url:
        yield provider_for(base_url)


@dataclass
class Transcript:
    calls: list[tuple[str, dict[str, Any], int]] = field(default_factory=list)
    """(tool, arguments, HTTP status) of every tool call, in order."""
    reply: str = ""
    completions: list[Completion] = field(default_factory=list)

    @property
    def tools(self) -> list[str]:
        return [tool for tool, _, _ in self.calls]


def tool_specs(case: Case) -> list[ToolSpec]:
    actions = list(case.expected.reference_actions)
    if case.failure is not None:
        actions += case.failure.trap.naive_actions
    names = sorted({action.tool for action in actions})
    return [ToolSpec(name=name, description=f"The {name} tool.") for name in names]


async def drive(
    provider: LLMProvider,
    case: Case,
    backend: ToolBackend = fake_crm,
    *,
    trial: int = 0,
    system: str = "You are a CRM assistant.",
    max_calls: int = 20,
) -> Transcript:
    """Runs one episode the way the agent runner does: call, run tools, repeat."""
    headers = {CASE_HEADER: case.case_id, TRIAL_HEADER: str(trial)}
    messages = [Message.user(turn.content) for turn in case.turns]
    transcript = Transcript()
    for _ in range(max_calls):
        completion = await provider.complete(
            messages, tool_specs(case), system=system, headers=headers
        )
        transcript.completions.append(completion)
        messages.append(completion.message)
        if not completion.message.tool_calls:
            transcript.reply = completion.message.content
            return transcript
        for call in completion.message.tool_calls:
            status, body = await backend(call.name, call.arguments)
            transcript.calls.append((call.name, call.arguments, status))
            messages.append(Message.tool(call.id, tool_result_content(status, body)))
    raise AssertionError(f"no final reply after {max_calls} calls: {transcript.tools}")


# --- behaviour through HTTP -------------------------------------------------------------


async def test_no_mistake_follows_the_reference_and_reports_usage() -> None:
    with simulated(sim_config()) as provider:
        transcript = await drive(provider, WRITE_CASE)

    assert transcript.calls == [
        ("client_search", {"criteria": {"name": "Acme"}}, 200),
        ("modify_client", {"client_id": "c-1", "status": "Inactive"}, 200),
    ]
    assert transcript.reply == WRITE_CASE.expected.reference_reply
    stops = [completion.stop_reason for completion in transcript.completions]
    assert stops == ["tool_calls", "tool_calls", "end"]
    for completion in transcript.completions:
        assert completion.model == MODEL and completion.provider == "openai"
        assert completion.usage.input_tokens > 0 and completion.usage.output_tokens > 0
        assert completion.usage.cached_input_tokens == 0
    # The prompt grows with the conversation, so token counts do too.
    inputs = [completion.usage.input_tokens for completion in transcript.completions]
    assert inputs == sorted(inputs) and len(set(inputs)) == 3


async def test_trap_without_recovery_claims_success_after_the_refusal() -> None:
    with simulated(sim_config(trap=1.0, recovery=0.0)) as provider:
        transcript = await drive(provider, TRAP_CASE)

    assert transcript.calls == [
        ("opportunity_search", {"criteria": {"name": "Meridian License"}}, 200),
        ("modify_opportunity", {"opportunity_id": "o-1", "stage": "negotiation"}, 422),
    ]
    assert transcript.reply == "Done! All set."


async def test_recovery_reads_the_refusal_and_redoes_the_task_the_reference_way() -> None:
    with simulated(sim_config(trap=1.0, recovery=1.0)) as provider:
        transcript = await drive(provider, TRAP_CASE)

    assert transcript.calls == [
        ("opportunity_search", {"criteria": {"name": "Meridian License"}}, 200),
        ("modify_opportunity", {"opportunity_id": "o-1", "stage": "negotiation"}, 422),
        ("opportunity_search", {"criteria": {"name": "Meridian License"}}, 200),
        ("modify_opportunity", {"opportunity_id": "o-1", "stage": "Negotiation"}, 200),
    ]
    assert transcript.reply == TRAP_CASE.expected.reference_reply


async def test_success_mistake_leaves_out_the_last_write_or_misses_the_facts() -> None:
    with simulated(sim_config(success=1.0)) as provider:
        write = await drive(provider, WRITE_CASE)
        read = await drive(provider, READ_CASE)

    assert write.tools == ["client_search"]
    assert write.reply == WRITE_CASE.expected.reference_reply
    assert read.tools == ["client_search"]
    assert read.reply == "I couldn't find what you asked for."


async def test_unexpected_refusal_of_a_reference_call_ends_in_an_apology() -> None:
    async def refuses_writes(tool: str, args: dict[str, Any]) -> tuple[int, Any]:
        if tool in WRITE_TOOLS:
            return 403, {"error": {"code": "PERMISSION_DENIED", "field": None, "message": "no"}}
        return await fake_crm(tool, args)

    with simulated(sim_config()) as provider:
        transcript = await drive(provider, WRITE_CASE, refuses_writes)

    assert transcript.tools == ["client_search", "modify_client"]
    assert "PERMISSION_DENIED" in transcript.reply and "Sorry" in transcript.reply


async def test_unresolvable_reference_ends_in_an_apology() -> None:
    async def finds_nothing(tool: str, args: dict[str, Any]) -> tuple[int, Any]:
        return 200, {"items": [], "total": 0}

    with simulated(sim_config()) as provider:
        transcript = await drive(provider, WRITE_CASE, finds_nothing)

    assert transcript.tools == ["client_search"]
    assert "Sorry" in transcript.reply


async def test_guidance_in_the_system_prompt_lowers_the_error_rate() -> None:
    config = sim_config(trap=1.0, trap_guided=0.0, patterns=[r"exact (casing|case)"])
    with simulated(config) as provider:
        unguided = await drive(provider, TRAP_CASE, system="You are a CRM assistant.")
        guided = await drive(
            provider,
            TRAP_CASE,
            system="You are a CRM assistant.\n- Use the EXACT CASING of stage values.",
        )

    assert unguided.reply == "Done! All set."
    assert guided.tools == ["opportunity_search", "modify_opportunity"]
    assert guided.calls[-1][1]["stage"] == "Negotiation"
    assert guided.reply == TRAP_CASE.expected.reference_reply


async def test_guidance_arriving_mid_episode_restarts_the_reference_way() -> None:
    """A coach's guidance after a refused trap call: the dropped plan's calls are history."""
    config = sim_config(trap=1.0, trap_guided=0.0, patterns=[r"exact casing"])
    policy = SimulatedPolicy(config, CASES)
    messages: list[Message] = [Message.user("Do the thing.")]
    calls: list[tuple[str, int]] = []
    for _ in range(10):
        guided = len(calls) >= 2  # guidance shows up once the trap call was refused
        system = "Use the exact casing of stage values." if guided else ""
        turn = policy.next_turn(TRAP_CASE.case_id, 0, system, messages)
        if turn.tool_call is None:
            break
        call = ToolCall(
            id=turn.tool_call.id, name=turn.tool_call.name, arguments=turn.tool_call.arguments
        )
        status, body = await fake_crm(call.name, call.arguments)
        calls.append((call.name, status))
        messages += [
            Message.assistant("", [call]),
            Message.tool(call.id, tool_result_content(status, body)),
        ]

    assert calls == [
        ("opportunity_search", 200),
        ("modify_opportunity", 422),
        ("opportunity_search", 200),
        ("modify_opportunity", 200),
    ]
    assert turn.phase == "restart" and turn.content == TRAP_CASE.expected.reference_reply


async def test_same_seed_case_and_trial_give_the_same_episode() -> None:
    config = sim_config(success=0.5, trap=0.5, recovery=0.5)
    with simulated(config) as provider:
        first = [await drive(provider, case, trial=3) for case in CASES.values()]
        again = [await drive(provider, case, trial=3) for case in CASES.values()]

    assert [(t.calls, t.reply) for t in first] == [(t.calls, t.reply) for t in again]
    assert [[c.message for c in t.completions] for t in first] == [
        [c.message for c in t.completions] for t in again
    ]


async def test_bad_requests_get_a_400_in_openai_error_shape() -> None:
    with running_simulated_llm(sim_config(), CASES) as base_url:
        provider = provider_for(base_url)
        with pytest.raises(LLMError) as missing:
            await provider.complete([Message.user("hi")])
        with pytest.raises(LLMError) as unknown:
            await provider.complete([Message.user("hi")], headers={CASE_HEADER: "NOPE"})
        with pytest.raises(LLMError) as bad_trial:
            await provider.complete(
                [Message.user("hi")], headers={CASE_HEADER: "T-READ", TRIAL_HEADER: "x"}
            )
        async with httpx.AsyncClient(base_url=base_url) as http:
            headers = {CASE_HEADER: "T-READ"}
            not_json = await http.post("/chat/completions", content=b"{", headers=headers)
            no_messages = await http.post(
                "/chat/completions", json={"model": MODEL}, headers=headers
            )
            bad_message = await http.post(
                "/chat/completions",
                json={"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]},
                headers=headers,
            )
            models = await http.get("/models")

    # The SDK keeps the message, not the code: the message says what was wrong.
    for raised, said in ((missing, CASE_HEADER), (unknown, "'NOPE'"), (bad_trial, TRIAL_HEADER)):
        assert raised.value.status == 400 and not raised.value.retryable
        assert raised.value.code == "http_error" and said in raised.value.message
    for response, code in (
        (not_json, "invalid_json"),
        (no_messages, "invalid_request"),
        (bad_message, "malformed_conversation"),
    ):
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["code"] == code and error["type"] and error["message"]
    assert models.status_code == 200 and models.json()["data"][0]["id"] == MODEL


# --- the policy in process: rates over the corpus ---------------------------------------

ID_FIELDS = (
    "client_id",
    "opportunity_id",
    "quote_id",
    "contract_id",
    "contact_id",
    "company_id",
    "document_id",
)
ANY_RESULT: dict[str, Any] = {
    "items": [{name: f"{name}-{i}" for name in ID_FIELDS} for i in range(3)],
    **{name: f"{name}-new" for name in ID_FIELDS},
}
"""A result every {{step_N.path}} of the corpus can read from."""


def _resolved(actions: Sequence[Action]) -> list[tuple[str, str]]:
    return [
        (a.tool, json.dumps(resolve(a.args, [ANY_RESULT] * len(actions)), sort_keys=True))
        for a in actions
    ]


@dataclass
class Outcome:
    reply: str
    writes: Counter[tuple[str, str]]

    def passed(self, case: Case) -> bool:
        reference = Counter(
            step for step in _resolved(case.expected.reference_actions) if step[0] in WRITE_TOOLS
        )
        return self.reply == case.expected.reference_reply and self.writes == reference


def simulate(policy: SimulatedPolicy, case: Case, trial: int, system: str = "") -> Outcome:
    """One episode in process against a CRM stand-in that refuses exactly the trap calls
    (naive actions expecting an error that the reference never makes)."""
    reference = set(_resolved(case.expected.reference_actions))
    traps: set[tuple[str, str]] = set()
    if case.failure is not None:
        naive = case.failure.trap.naive_actions
        traps = {
            step
            for step, action in zip(_resolved(naive), naive, strict=True)
            if action.expect_error and step not in reference
        }
    messages: list[Message] = [Message.user(case.turns[0].content)]
    writes: Counter[tuple[str, str]] = Counter()
    for _ in range(30):
        turn = policy.next_turn(case.case_id, trial, system, messages)
        if turn.tool_call is None:
            return Outcome(turn.content, writes)
        call = turn.tool_call
        step = (call.name, json.dumps(call.arguments, sort_keys=True))
        refused = step in traps
        if not refused and call.name in WRITE_TOOLS:
            writes[step] += 1
        content = tool_result_content(
            422 if refused else 200,
            {"error": {"code": "REFUSED", "message": "no"}} if refused else ANY_RESULT,
        )
        tool_call = ToolCall(id=call.id, name=call.name, arguments=call.arguments)
        messages += [Message.assistant("", [tool_call]), Message.tool(call.id, content)]
    raise AssertionError(f"{case.case_id}: no reply")


@pytest.fixture(scope="module")
def eval_cases() -> list[Case]:
    return [case for case in load_cases() if case.split.value == "eval"]


def test_measured_pass_rate_recovers_the_configured_rate(eval_cases: list[Case]) -> None:
    config = SimulatedLLMConfig.from_yaml(default_config_path())
    policy = SimulatedPolicy(config, {case.case_id: case for case in eval_cases})
    trials = 2
    passed = sum(
        simulate(policy, case, t).passed(case) for case in eval_cases for t in range(trials)
    )
    measured = passed / (len(eval_cases) * trials)
    expected = sum(expected_pass_probability(c, config) for c in eval_cases) / len(eval_cases)
    # About four standard errors of a rate near 0.8 over ~2500 episodes.
    assert abs(measured - expected) < 0.035, (measured, expected)

    # Guidance addressing every mistake (the code names match every category's patterns).
    guidance = "Complete every step the user asks for. Avoid " + ", ".join(FAILURE_CATEGORIES)
    guided = sum(simulate(policy, case, 0, guidance).passed(case) for case in eval_cases)
    measured = guided / len(eval_cases)
    expected = sum(expected_pass_probability(c, config, guided=True) for c in eval_cases) / len(
        eval_cases
    )
    assert abs(measured - expected) < 0.025, (measured, expected)


def test_guidance_only_removes_mistakes_and_at_the_guided_rate(eval_cases: list[Case]) -> None:
    config = sim_config(success=0.5, success_guided=0.1, trap=0.5, trap_guided=0.1)
    policy = SimulatedPolicy(config, {case.case_id: case for case in eval_cases})
    plain = [policy.decide(case, 0, "").mistake for case in eval_cases]
    guided_decisions = [policy.decide(case, 0, "anything").mistake for case in eval_cases]
    # An empty pattern list: nothing counts as guidance.
    assert plain == guided_decisions
    config = sim_config(
        success=0.5, success_guided=0.1, trap=0.5, trap_guided=0.1, patterns=["checklist"]
    )
    policy = SimulatedPolicy(config, {case.case_id: case for case in eval_cases})
    unguided = [policy.decide(case, 0, "no tips").mistake for case in eval_cases]
    guided = [policy.decide(case, 0, "Follow the CHECKLIST.").mistake for case in eval_cases]
    assert not any(g and not u for g, u in zip(guided, unguided, strict=True))
    assert sum(unguided) / len(eval_cases) == pytest.approx(0.5, abs=0.05)
    assert sum(guided) / len(eval_cases) == pytest.approx(0.1, abs=0.03)


def test_trials_and_seeds_draw_independently_at_the_configured_rate(
    eval_cases: list[Case],
) -> None:
    config = sim_config(success=0.5, trap=0.5)
    policy = SimulatedPolicy(config, {case.case_id: case for case in eval_cases})
    trial_0 = [policy.decide(case, 0, "").mistake for case in eval_cases]
    trial_1 = [policy.decide(case, 1, "").mistake for case in eval_cases]
    other_seed = SimulatedPolicy(sim_config(success=0.5, trap=0.5, seed=8), policy.cases)
    reseeded = [other_seed.decide(case, 0, "").mistake for case in eval_cases]
    n = len(eval_cases)
    assert sum(trial_0) / n == pytest.approx(0.5, abs=0.05)
    assert sum(trial_1) / n == pytest.approx(0.5, abs=0.05)
    # Independent draws disagree about half the time.
    assert sum(a != b for a, b in zip(trial_0, trial_1, strict=True)) / n == pytest.approx(
        0.5, abs=0.05
    )
    assert sum(a != b for a, b in zip(trial_0, reseeded, strict=True)) / n == pytest.approx(
        0.5, abs=0.05
    )
    assert trial_0 == [policy.decide(case, 0, "").mistake for case in eval_cases]


def test_expected_pass_probability() -> None:
    config = sim_config(success=0.2, success_guided=0.05, trap=0.6, trap_guided=0.1, recovery=0.25)
    assert expected_pass_probability(WRITE_CASE, config) == pytest.approx(0.8)
    assert expected_pass_probability(WRITE_CASE, config, guided=True) == pytest.approx(0.95)
    # No mistake (0.4), or a mistake whose trap call is refused and then recovered.
    assert expected_pass_probability(TRAP_CASE, config) == pytest.approx(0.4 + 0.6 * 0.25)
    assert expected_pass_probability(TRAP_CASE, config, guided=True) == pytest.approx(
        0.9 + 0.1 * 0.25
    )
    # A trap the API never refuses leaves nothing to recover from.
    assert TRAP_CASE.failure is not None
    silent_trap = TRAP_CASE.failure.trap.model_copy(
        update={"naive_actions": [Action(tool="opportunity_search", args={})]}
    )
    silent = TRAP_CASE.model_copy(
        update={"failure": TRAP_CASE.failure.model_copy(update={"trap": silent_trap})}
    )
    assert expected_pass_probability(silent, config) == pytest.approx(0.4)


def test_default_config_is_a_mediocre_student_that_guidance_lifts(eval_cases: list[Case]) -> None:
    config = SimulatedLLMConfig.from_yaml(default_config_path())
    unguided = sum(expected_pass_probability(c, config) for c in eval_cases) / len(eval_cases)
    guided = sum(expected_pass_probability(c, config, guided=True) for c in eval_cases) / len(
        eval_cases
    )
    assert 0.75 <= unguided <= 0.85
    assert guided >= 0.95
    assert set(config.categories) == set(FAILURE_CATEGORIES)
    # The base agent prompt holds general advice only: the baseline must be unguided.
    base_prompt = (REPO_ROOT / "config" / "prompts" / "agent_system.md").read_text()
    assert not config.success.addressed_by(base_prompt)
    assert not [name for name, rule in config.categories.items() if rule.addressed_by(base_prompt)]
    # ... while naming the mistake's code does count as guidance for it.
    for name, rule in config.categories.items():
        assert rule.addressed_by(f"Avoid {name}: check the value first."), name


# --- which tools write: the CRM API's OpenAPI document ----------------------------------


def test_tool_kinds_of_the_committed_document_are_the_registrys() -> None:
    """The committed docs/openapi.json and the CRM API's tool registry never drift apart."""
    document = json.loads(default_openapi_path().read_text(encoding="utf-8"))
    registry_writes = {name for name, tool in TOOLS.items() if tool.kind is ToolKind.WRITE}

    assert tool_kinds(document) == {name: tool.kind.value for name, tool in TOOLS.items()}
    assert load_write_tools() == write_tools(document) == registry_writes
    assert "add_note" in registry_writes and "quote_details" not in registry_writes


def _tool_document(*operations: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    return {"paths": {path: {"post": operation} for path, operation in operations}}


def test_tool_kinds_come_from_x_tool_kind_only() -> None:
    document = _tool_document(
        ("/tools/add_note", {"operationId": "add_note", "x-tool-kind": "write"}),
        ("/tools/list_notes", {"operationId": "list_notes", "x-tool-kind": "read"}),
        ("/episodes", {"operationId": "create_episode"}),
    )
    assert tool_kinds(document) == {"add_note": "write", "list_notes": "read"}
    assert write_tools(document) == frozenset({"add_note"})


@pytest.mark.parametrize(
    ("document", "complaint"),
    [
        ({"openapi": "3.1.0"}, "no `paths`"),
        (_tool_document(("/tools/a", {"operationId": "a", "x-tool-kind": "delete"})), "'delete'"),
        (_tool_document(("/tools/a", {"x-tool-kind": "write"})), "no operationId"),
        (
            _tool_document(
                ("/tools/a", {"operationId": "a", "x-tool-kind": "write"}),
                ("/tools/b", {"operationId": "a", "x-tool-kind": "read"}),
            ),
            "declared twice",
        ),
    ],
)
def test_tool_kinds_refuse_a_malformed_document(document: dict[str, Any], complaint: str) -> None:
    with pytest.raises(InvalidToolKinds, match=re.escape(complaint)):
        tool_kinds(document)


def test_load_write_tools_refuses_a_document_without_write_tools(tmp_path: Path) -> None:
    path = tmp_path / "openapi.json"
    path.write_text(json.dumps(_tool_document(("/tools/a", {"operationId": "a"}))))
    with pytest.raises(InvalidToolKinds, match="declares no write tool"):
        load_write_tools(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_write_tools(path)


async def test_the_policy_leaves_out_the_last_of_the_write_tools_it_is_given() -> None:
    """The write set is the policy's input: with no write tools, a botched write task is
    botched like a lookup (every call made, the facts missed)."""

    async def episode(policy: SimulatedPolicy) -> tuple[list[str], str]:
        messages: list[Message] = [Message.user("Do the thing.")]
        tools: list[str] = []
        for _ in range(10):
            turn = policy.next_turn(WRITE_CASE.case_id, 0, "", messages)
            if turn.tool_call is None:
                return tools, turn.content
            call = ToolCall(
                id=turn.tool_call.id, name=turn.tool_call.name, arguments=turn.tool_call.arguments
            )
            status, body = await fake_crm(call.name, call.arguments)
            tools.append(call.name)
            messages += [
                Message.assistant("", [call]),
                Message.tool(call.id, tool_result_content(status, body)),
            ]
        raise AssertionError("the episode did not end")

    config = sim_config(success=1.0)
    assert await episode(SimulatedPolicy(config, CASES)) == (
        ["client_search"],
        WRITE_CASE.expected.reference_reply,
    )
    assert await episode(SimulatedPolicy(config, CASES, write_tools=frozenset())) == (
        ["client_search", "modify_client"],
        config.unhelpful_reply,
    )


# --- configuration validation -----------------------------------------------------------


def _raw_config(**changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "seed": 1,
        "success": {"error_rate": 0.1, "guided_error_rate": 0.0},
        "default": {"error_rate": 0.5, "guided_error_rate": 0.1, "recovery_rate": 0.3},
    }
    raw.update(changes)
    return raw


@pytest.mark.parametrize(
    ("changes", "complaint"),
    [
        ({"success": {"error_rate": 0.1, "guided_error_rate": 0.2}}, "may only lower"),
        ({"success": {"error_rate": 1.5, "guided_error_rate": 0.0}}, "less than or equal to 1"),
        (
            {"default": {"error_rate": 0.5, "guided_error_rate": 0.1, "recovery_rate": -0.1}},
            "greater than or equal to 0",
        ),
        (
            {
                "success": {
                    "error_rate": 0.1,
                    "guided_error_rate": 0.0,
                    "guidance_patterns": ["(oops"],
                }
            },
            "not a regex",
        ),
        (
            {
                "categories": {
                    "NOT_A_CATEGORY": {
                        "error_rate": 0.5,
                        "guided_error_rate": 0.1,
                        "recovery_rate": 0.3,
                    }
                }
            },
            "unknown failure categories",
        ),
        ({"temperature": 0.7}, "Extra inputs are not permitted"),
        ({"apology": "Sorry ({reason})"}, "placeholder"),
        ({"default": {"error_rate": 0.5, "guided_error_rate": 0.1}}, "recovery_rate"),
    ],
)
def test_config_validation_rejects_bad_values(changes: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(complaint)):
        SimulatedLLMConfig.model_validate(_raw_config(**changes))


def test_config_loads_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "sim.yaml"
    path.write_text(
        "seed: 3\nlatency_ms: 5\n"
        "success: {error_rate: 0.1, guided_error_rate: 0.05, guidance_patterns: ['every step']}\n"
        "default: {error_rate: 0.4, guided_error_rate: 0.1, recovery_rate: 0.5}\n"
        "categories:\n  PAST_DATE: {error_rate: 0.3, guided_error_rate: 0.0, recovery_rate: 0.2}\n"
    )
    config = SimulatedLLMConfig.from_yaml(path)
    assert config.seed == 3 and config.latency_ms == 5
    assert config.category_rule("PAST_DATE").error_rate == 0.3
    assert config.category_rule("ZERO_AMOUNT").error_rate == 0.4
    assert config.success.addressed_by("Do EVERY STEP the user asked for.")


# --- end to end against the real CRM API and verifier -----------------------------------


def _pick_e2e_cases(eval_cases: list[Case]) -> list[Case]:
    """A write task, a lookup, a recoverable trap and a rule the agent must explain."""
    single_turn = [case for case in eval_cases if len(case.turns) == 1]

    def first(predicate: Callable[[Case], bool]) -> Case:
        return next(case for case in single_turn if predicate(case))

    return [
        first(
            lambda c: (
                c.failure is None
                and any(a.tool in WRITE_TOOLS for a in c.expected.reference_actions)
            )
        ),
        first(
            lambda c: (
                c.failure is None
                and bool(c.expected.reference_actions)
                and not any(a.tool in WRITE_TOOLS for a in c.expected.reference_actions)
            )
        ),
        first(lambda c: c.failure is not None and c.failure.category == "ENUM_CASE_MISMATCH"),
        first(lambda c: c.failure is not None and c.failure.category == "CROSS_ENTITY_MISMATCH"),
    ]


async def test_episodes_against_the_crm_api_pass_exactly_when_configured(
    crm_api: RunningServer, corpus_index: dict[str, Case], eval_cases: list[Case]
) -> None:
    # corpus_index has loaded the whole corpus into the session's database.
    *_, explain = cases = _pick_e2e_cases(eval_cases)
    # Two students, every rate 0 or 1: one errs only on the traps (and recovers from one
    # of them), the other only on the success cases.
    never_recovers = MistakeRule(error_rate=1.0, guided_error_rate=1.0, recovery_rate=0.0)
    trap_prone = sim_config(trap=1.0, recovery=1.0).model_copy(
        update={"categories": {"CROSS_ENTITY_MISMATCH": never_recovers}}
    )
    configs = {"trap-prone": trap_prone, "careless": sim_config(success=1.0)}
    plan = [(label, case) for label in configs for case in cases]
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    by_id = {case.case_id: case for case in cases}

    with contextlib.ExitStack() as stack:
        providers = {
            label: stack.enter_context(simulated(config, by_id))
            for label, config in configs.items()
        }
        verifier_url = stack.enter_context(
            running_verifier(crm_api.base_url, ADMIN_KEY, str(default_corpus_dir()))
        )
        async with (
            httpx.AsyncClient(base_url=crm_api.base_url, timeout=60) as crm,
            httpx.AsyncClient(base_url=verifier_url, timeout=60) as verifier,
        ):

            async def passes(label: str, case: Case) -> bool:
                made = await crm.post("/episodes", json={"case_id": case.case_id}, headers=admin)
                assert made.status_code == 201, made.text
                episode = made.json()
                auth = {"Authorization": f"Bearer {episode['token']}"}

                async def call_crm(tool: str, args: dict[str, Any]) -> tuple[int, Any]:
                    response = await crm.post(f"/tools/{tool}", json=args, headers=auth)
                    return response.status_code, response.json()

                try:
                    transcript = await drive(providers[label], case, call_crm)
                    verdict = await verifier.post(
                        "/verify",
                        json={
                            "case_id": case.case_id,
                            "episode_id": episode["episode_id"],
                            "final_reply": transcript.reply,
                        },
                        headers=admin,  # the verifier's key defaults to the admin key
                    )
                finally:
                    await crm.delete(f"/episodes/{episode['episode_id']}", headers=admin)
                assert verdict.status_code == 200, verdict.text
                return bool(verdict.json()["passed"])

            verdicts = await asyncio.gather(*(passes(label, case) for label, case in plan))

    # Rates of 0 and 1 make the configured pass probability 0 or 1 for every episode:
    # the verifier must agree with it on each one.
    outcomes = {
        (label, case.case_id): passed for (label, case), passed in zip(plan, verdicts, strict=True)
    }
    configured = {
        (label, case.case_id): expected_pass_probability(case, configs[label]) == 1.0
        for label, case in plan
    }
    assert outcomes == configured
    assert outcomes == {
        **{("trap-prone", c.case_id): c is not explain for c in cases},
        **{("careless", c.case_id): c.failure is not None for c in cases},
    }
