"""The real-model teacher through the official SDKs against the strict fake OpenAI and
Anthropic servers: what it sends (one valid request, the view but never the case's
answer), what it parses, and how it fails (an error reply, or a raised setup fault)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from string import Template
from typing import Any

import pytest

from agent_runner.agents.base import EpisodeContext, EpisodeLimits
from agent_runner.learning.llm_teacher import (
    ANSWER_MODELS,
    DEFAULT_PROMPTS_DIR,
    PLACEHOLDERS,
    PROMPT_FILES,
    SYSTEM_PROMPT_FILE,
    LLMTeacher,
    TeacherPrompts,
    build_teacher,
    first_json_object,
    placeholder_values,
)
from agent_runner.learning.teacher import teacher_view
from agent_runner.run.config import ConfigError, RunConfig, load_run_config
from crmbench_clients.crm_api import CrmApiClient
from crmbench_contracts.cases import Case, Outcome
from crmbench_contracts.expectations import FinalState
from crmbench_contracts.rewards import CheckResult, RewardRecord, VerificationMode
from crmbench_contracts.teaching import (
    TEACHER_CALLS,
    PlannedCall,
    TeacherCall,
    TeacherReply,
    TeacherView,
)
from crmbench_contracts.traces import StepTrace
from crmbench_corpus.store import load_index
from crmbench_llm import LLMError, PriceTable, Usage
from tests.agent_runner.conftest import ApiUnderTest
from tests.agent_runner.fake_llm_servers import ScriptedAnswer, anthropic_reply, openai_reply
from verifier.scoring import check_state

UNUSED_CRM_URL = "http://127.0.0.1:18649"
"""The episode context needs a CRM client; building a view never calls it."""

EXPECTED_SENTINEL = "EXPECTED-VALUE-7731"
PASSED_RATIONALE = "PASSED-CHECK-RATIONALE-2718"
FAILED_RATIONALE = "the probability was changed although the request could not be done"

GOOD_ANSWERS: dict[TeacherCall, dict[str, Any]] = {
    "triage": {"lane": "coach", "reason": "A write with a format rule.", "confidence": 0.7},
    "plan_review": {"guidance": "Look the opportunity up first.", "reason": "No lookup."},
    "step_guidance": {"guidance": "Send probability as a whole number.", "reason": "400."},
    "outcome_review": {"retry": True, "guidance": "Ask the user to pick a whole number."},
    "synthesis": {
        "candidates": [
            {
                "audience": "student",
                "level": "domain",
                "cue": {
                    "text": "setting an opportunity's probability",
                    "patterns": [r"probabilit(y|ies)"],
                },
                "action": {
                    "text": "Send probability as a whole percentage; ask before rounding.",
                    "tools": ["modify_opportunity"],
                    "argument_rules": [
                        {
                            "tool": "modify_opportunity",
                            "argument": "probability",
                            "rule": "a whole number from 0 to 100",
                            "pattern": r"\d{1,3}",
                        }
                    ],
                },
                "expected_effect": "No PROBABILITY_DECIMAL refusal.",
            }
        ]
    },
}


# ------------------------------------------------------------------------------- helpers


def a_case() -> Case:
    """A real corpus case with a trap, a reference reply and expected field values."""
    return next(
        case
        for case in load_index().values()
        if case.failure is not None
        and case.expected.reference_reply
        and any(a.kind == "field_equals" for a in case.expected.state)
    )


def step(step_id: int, tool: str, arguments: dict[str, Any], *, ok: bool) -> StepTrace:
    error = None if ok else {"code": "INVALID_VALUE", "field": "probability", "message": "whole"}
    return StepTrace(
        session_id="run-1/case/0",
        step_id=step_id,
        tool_call_id=f"call_{step_id}",
        tool=tool,
        arguments=arguments,
        status=200 if ok else 400,
        ok=ok,
        error=error,
        latency_ms=1.0,
        started_at="2026-01-01T00:00:00Z",  # type: ignore[arg-type]
    )


def failed_state_checks(case: Case) -> list[CheckResult]:
    """The verifier's own results of the case's field checks on a final state where each
    checked row holds a wrong value: rationales quoting the expected values and keys."""
    checks = []
    for index, assertion in enumerate(case.expected.state):
        if assertion.kind != "field_equals" or assertion.field is None:
            continue
        value = assertion.value
        wrong = "XXX" if isinstance(value, str) else (value or 0) * 2 + 1
        world = FinalState({assertion.table: [{**assertion.where, assertion.field: wrong}]})
        checks.append(check_state(index, assertion, world))
    assert checks and not any(check.passed for check in checks)
    return checks


def reward(case: Case) -> RewardRecord:
    return RewardRecord(
        case_id=case.case_id,
        episode_id="run-1/case/0",
        score=0.4,
        passed=False,
        verdicts={"0.9": False},
        checks=[
            *failed_state_checks(case),
            CheckResult(
                check_id="state[0]",
                kind="field_equals",
                passed=False,
                score=0.0,
                weight=1.0,
                expected={"value": EXPECTED_SENTINEL},
                actual=33.3,
                rationale=FAILED_RATIONALE,
            ),
            CheckResult(
                check_id="state[1]",
                kind="field_equals",
                passed=True,
                score=1.0,
                weight=1.0,
                expected={"value": "also hidden"},
                rationale=PASSED_RATIONALE,
            ),
        ],
        collateral=[],
        structured_score=0.5,
        claimed_outcome=Outcome.COMPLETED,
        verification_mode=VerificationMode.OFFLINE,
    )


async def episode_view(case: Case, call: TeacherCall) -> TeacherView:
    """The view `teacher_view` builds of a live episode of `case` with a read and a
    refused write, with what `call` is given on top."""
    crm = CrmApiClient(UNUSED_CRM_URL)
    try:
        ctx = EpisodeContext(
            session_id=f"run-1/{case.case_id}/0",
            case=case,
            trial=0,
            tools=[],
            crm=crm,
            token="unused",
            limits=EpisodeLimits(30, 300_000),
        )
        ctx.steps = [
            step(1, "opportunity_search", {"criteria": {"name": "the deal"}}, ok=True),
            step(2, "modify_opportunity", {"probability": 33.3}, ok=False),
        ]
        return teacher_view(
            ctx,
            lane="coach",
            planned=[PlannedCall(tool="modify_opportunity", arguments={"probability": 33})]
            if call == "plan_review"
            else [],
            final_reply="Done." if call in ("outcome_review", "synthesis") else None,
            reward=reward(case) if call == "synthesis" else None,
        )
    finally:
        await crm.aclose()


def answer(api: ApiUnderTest, text: str, **usage: int) -> ScriptedAnswer:
    """A 200 answer with `text`, usage as given (input, output, cached)."""
    if api.provider == "openai":
        return openai_reply(
            text,
            prompt_tokens=usage.get("input", 10),
            completion_tokens=usage.get("output", 5),
            cached_tokens=usage.get("cached", 0),
        )
    return anthropic_reply(
        [{"type": "text", "text": text}],
        # Anthropic's input_tokens leaves out cache reads.
        input_tokens=usage.get("input", 10) - usage.get("cached", 0),
        output_tokens=usage.get("output", 5),
        cache_read_input_tokens=usage.get("cached", 0),
    )


def sent(api: ApiUnderTest) -> tuple[str, str, dict[str, Any]]:
    """(system prompt, user message, body) of the one request the fake received."""
    (request,) = api.fake.received
    body = request.body
    if api.provider == "openai":
        system, user = body["messages"]
        assert system["role"] == "system" and user["role"] == "user"
        return system["content"], user["content"], body
    (user,) = body["messages"]
    assert user["role"] == "user"
    (block,) = user["content"]
    return body["system"], block["text"], body


def teacher(api: ApiUnderTest, prices: PriceTable, **overrides: Any) -> LLMTeacher:
    return LLMTeacher(api.make(prices, **overrides), api.model, DEFAULT_PROMPTS_DIR)


async def ask(t: LLMTeacher, call: TeacherCall, view: TeacherView) -> TeacherReply[Any]:
    if call == "triage":
        return await t.triage(view)
    if call == "plan_review":
        return await t.review_plan(view)
    if call == "step_guidance":
        return await t.guide_step(view)
    if call == "outcome_review":
        return await t.review_outcome(view)
    return await t.synthesize(view)


def leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in leaves(item)]
    if isinstance(value, list):
        return [leaf for item in value for leaf in leaves(item)]
    return [value]


def hidden_values(case: Case, view: TeacherView) -> list[str]:
    """Distinctive values of the case's expected answer (state values and keys,
    reference actions' arguments, the reference reply) that the view does not hold for
    another reason (the user's turns, the steps; the reward record holds them in its
    checks): none may reach the teacher."""
    assertions = [*case.expected.state]
    for branch in case.expected.alternatives:
        assertions += branch.state
    expected: list[Any] = [[a.where, a.value] for a in assertions]
    expected += [action.args for action in case.expected.reference_actions]
    shown = json.dumps(view.model_dump(mode="json", exclude={"reward"}), ensure_ascii=False)
    values = {case.expected.reference_reply}
    for leaf in leaves(expected):
        if isinstance(leaf, str) and len(leaf) >= 5:
            values.add(leaf)
        elif isinstance(leaf, int | float) and not isinstance(leaf, bool) and abs(leaf) >= 100:
            values.add(str(leaf))
    return sorted(value for value in values if value not in shown)


# --------------------------------------------------------------- each call, both APIs


@pytest.mark.parametrize("call", TEACHER_CALLS)
async def test_each_call_parses_a_good_answer_and_sends_a_valid_request_without_the_answer(
    api: ApiUnderTest, prices: PriceTable, call: TeacherCall
) -> None:
    case = a_case()
    view = await episode_view(case, call)
    if api.provider == "anthropic":
        api.fake.quirks.add("thinking")  # a thinking model's reply starts with its thinking
    api.fake.script(answer(api, json.dumps(GOOD_ANSWERS[call]), input=1200, output=300, cached=200))
    t = teacher(api, prices)
    try:
        reply = await ask(t, call, view)
    finally:
        await t.aclose()

    assert reply.error is None, reply.error
    assert reply.answer == ANSWER_MODELS[call].model_validate(GOOD_ANSWERS[call])
    assert reply.call == call and reply.call_id == f"{view.session_id}#teacher-{call}-1"
    assert (reply.input_tokens, reply.output_tokens, reply.cached_input_tokens) == (1200, 300, 200)
    usage = Usage(input_tokens=1200, output_tokens=300, cached_input_tokens=200)
    assert reply.cost_usd == pytest.approx(prices.cost(usage, api.model))
    assert reply.latency_ms > 0
    assert json.loads(reply.raw_text) == GOOD_ANSWERS[call]

    # The strict fake accepted the request: one user turn, a system prompt, no tools.
    assert api.fake.violations == []
    system, prompt, body = sent(api)
    assert "tools" not in body
    assert system == (DEFAULT_PROMPTS_DIR / SYSTEM_PROMPT_FILE).read_text().strip()
    for turn in (t.content for t in case.turns):
        assert json.dumps(turn, ensure_ascii=False)[1:-1] in prompt
    assert "modify_opportunity" in prompt and "INVALID_VALUE" in prompt
    hidden = hidden_values(case, view)
    assert case.expected.reference_reply in hidden and len(hidden) > 1
    leaked = [value for value in hidden if value in json.dumps(body) or value in prompt]
    assert leaked == []
    # The view's empty and None fields are left out of the prompt.
    assert '"guidance_given"' not in prompt and '"error_code": null' not in prompt


async def test_synthesis_is_told_the_failed_checks_but_not_their_expected_values(
    anthropic_api: ApiUnderTest, prices: PriceTable
) -> None:
    case = a_case()
    view = await episode_view(case, "synthesis")
    anthropic_api.fake.script(answer(anthropic_api, json.dumps(GOOD_ANSWERS["synthesis"])))
    t = teacher(anthropic_api, prices)
    await t.synthesize(view)
    await t.aclose()

    _, prompt, body = sent(anthropic_api)
    assert FAILED_RATIONALE in prompt and '"check_id": "state[0]"' in prompt
    # The verifier's rationales are there, the case's values in them redacted.
    for check in failed_state_checks(case):
        assert check.rationale not in prompt
        assert f"{check.rationale.split(':')[0]}:" in prompt
    assert "expected <case value>" in prompt
    assert '"score": 0.4' in prompt and '"claimed_outcome": "completed"' in prompt
    for hidden in (EXPECTED_SENTINEL, "also hidden", PASSED_RATIONALE):
        assert hidden not in json.dumps(body)


# ------------------------------------------------------------------------ what parses


@pytest.mark.parametrize(
    "text",
    [
        "```json\n{payload}\n```",
        "Here is my decision, {not json} as asked:\n{payload}\nHope this helps {{}}.",
    ],
    ids=["fenced", "prose"],
)
async def test_fenced_and_prose_wrapped_json_parse(
    api: ApiUnderTest, prices: PriceTable, text: str
) -> None:
    payload = json.dumps(GOOD_ANSWERS["triage"], indent=2)
    api.fake.script(answer(api, text.replace("{payload}", payload)))
    t = teacher(api, prices)
    reply = await t.triage(await episode_view(a_case(), "triage"))
    await t.aclose()

    assert reply.error is None
    assert reply.answer is not None and reply.answer.lane == "coach"


def test_first_json_object_skips_braces_that_are_not_json() -> None:
    assert first_json_object('say {hi} then {"a": {"b": 1}} and {"c": 2}') == {"a": {"b": 1}}
    assert first_json_object("[1, 2] no object") is None
    assert first_json_object("{" * 100_000) is None


# ---------------------------------------------------------------- bad answers: errors


@pytest.mark.parametrize(
    ("call", "text", "error"),
    [
        ("triage", "I would coach this one.", "holds no JSON object"),
        (
            "triage",
            '{"lane": "supervise", "reason": "r", "confidence": 0.5}',
            "not a valid TriageAnswer: lane:",
        ),
        ("outcome_review", '{"retry": true, "guidance": "  "}', "retry without guidance"),
        (
            "synthesis",
            json.dumps(
                {
                    "candidates": [
                        GOOD_ANSWERS["synthesis"]["candidates"][0],
                        {**GOOD_ANSWERS["synthesis"]["candidates"][0], "level": "case"},
                    ]
                }
            ),
            "not a valid SynthesisAnswer: candidates.1.level:",
        ),
    ],
    ids=["not-json", "wrong-lane", "retry-without-guidance", "one-bad-candidate"],
)
async def test_a_bad_answer_is_an_error_reply_not_an_exception(
    api: ApiUnderTest, prices: PriceTable, call: TeacherCall, text: str, error: str
) -> None:
    api.fake.script(answer(api, text, input=50, output=20))
    t = teacher(api, prices)
    reply = await ask(t, call, await episode_view(a_case(), call))
    await t.aclose()

    assert reply.answer is None
    assert reply.error is not None and error in reply.error
    assert reply.raw_text == text
    assert (reply.input_tokens, reply.output_tokens) == (50, 20)  # the call still cost


# ---------------------------------------------------------------- provider failures


async def test_an_outage_after_every_retry_is_an_error_reply(
    api: ApiUnderTest, prices: PriceTable
) -> None:
    api.fake.script(api.error(500), api.error(500))
    t = teacher(api, prices, max_retries=1)
    reply = await t.guide_step(await episode_view(a_case(), "step_guidance"))
    await t.aclose()

    assert reply.answer is None and reply.raw_text == ""
    assert reply.error is not None
    assert "(outage)" in reply.error and "retries_exhausted" in reply.error
    assert len(api.fake.received) == 2


async def test_a_refused_key_is_raised_as_a_setup_fault(
    api: ApiUnderTest, prices: PriceTable
) -> None:
    api.fake.script(api.error(401))
    t = teacher(api, prices)
    with pytest.raises(LLMError) as raised:
        await t.triage(await episode_view(a_case(), "triage"))
    await t.aclose()

    assert raised.value.fault == "setup" and raised.value.status == 401


async def test_call_ids_count_each_call_per_session(
    openai_api: ApiUnderTest, prices: PriceTable
) -> None:
    view = await episode_view(a_case(), "step_guidance")
    other = view.model_copy(update={"session_id": "run-1/other/0"})
    for _ in range(3):
        openai_api.fake.script(answer(openai_api, json.dumps(GOOD_ANSWERS["step_guidance"])))
    t = teacher(openai_api, prices)
    ids = [(await t.guide_step(v)).call_id for v in (view, view, other)]
    await t.aclose()

    assert ids == [
        f"{view.session_id}#teacher-step_guidance-1",
        f"{view.session_id}#teacher-step_guidance-2",
        "run-1/other/0#teacher-step_guidance-1",
    ]


# --------------------------------------------------------------------- prompts, config


PLACEHOLDER = re.compile(r"\$(\{?[A-Za-z_])")


@pytest.mark.parametrize("call", TEACHER_CALLS)
async def test_every_placeholder_of_every_prompt_is_filled(call: TeacherCall) -> None:
    raw = (DEFAULT_PROMPTS_DIR / PROMPT_FILES[call]).read_text(encoding="utf-8")
    template = Template(raw)
    values = placeholder_values(call, await episode_view(a_case(), call))
    assert set(template.get_identifiers()) == set(values) == PLACEHOLDERS[call]
    # Markers instead of the values (the answer schemas hold "$ref"): nothing is left.
    rendered = template.substitute({name: f"<<{name}>>" for name in values})
    assert PLACEHOLDER.search(rendered) is None
    assert all(f"<<{name}>>" in rendered for name in values)
    system = (DEFAULT_PROMPTS_DIR / SYSTEM_PROMPT_FILE).read_text(encoding="utf-8")
    assert PLACEHOLDER.search(system) is None


def test_a_prompt_with_an_unknown_placeholder_is_refused(tmp_path: Path) -> None:
    shutil.copytree(DEFAULT_PROMPTS_DIR, tmp_path, dirs_exist_ok=True)
    path = tmp_path / PROMPT_FILES["triage"]
    path.write_text(path.read_text() + "\n$reward\n")
    with pytest.raises(
        ConfigError, match=r"teacher_triage.md: unknown placeholder\(s\) \['reward'\]"
    ):
        TeacherPrompts.from_dir(tmp_path)
    (tmp_path / PROMPT_FILES["synthesis"]).unlink()
    path.write_text("$view $answer_schema")
    with pytest.raises(ConfigError, match=r"teacher_synthesis\.md"):
        TeacherPrompts.from_dir(tmp_path)


async def test_build_teacher_uses_the_configured_teacher(prices: PriceTable) -> None:
    config = load_run_config()
    built = build_teacher(config)
    try:
        assert built.provider.name == config.providers["teacher"].provider == "anthropic"
        assert built.model == config.providers["teacher"].model
    finally:
        await built.aclose()

    without = RunConfig(agent="random", providers={})
    with pytest.raises(ConfigError, match=r"providers\.teacher"):
        build_teacher(without)


async def test_an_openai_teacher_built_from_config_answers(
    openai_api: ApiUnderTest, prices: PriceTable
) -> None:
    config = RunConfig.model_validate(
        {
            "agent": "random",
            "providers": {"teacher": openai_api.config().model_dump(mode="json")},
        }
    )
    openai_api.fake.script(answer(openai_api, json.dumps(GOOD_ANSWERS["triage"])))
    built = build_teacher(config)
    reply = await built.triage(await episode_view(a_case(), "triage"))
    await built.aclose()

    assert reply.answer is not None and reply.answer.lane == "coach"
    assert openai_api.fake.received[0].body["model"] == openai_api.model
