"""LLM judges over real HTTP: crmbench_llm's providers against local fake OpenAI and
Anthropic servers, the verdict's outcome and facts, the fake judge (tests/verifier/
fake_judge.py), the judges file, and the verifier service scoring a live episode."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from crmbench_clients.serving import free_port, serving_in_thread
from crmbench_contracts.cases import Case, CommunicationFact, Outcome
from crmbench_contracts.expectations import FinalState, read_fact
from crmbench_contracts.replies import classify_outcome, read_reason, stuffed_reply
from crmbench_contracts.rewards import JudgeScore, OutcomeSource, RewardRecord, VerificationMode
from crmbench_llm import PriceTable, ProviderConfig, make_provider
from tests.agent_runner.fake_llm_servers import (
    FakeApi,
    ScriptedAnswer,
    anthropic_app,
    anthropic_reply,
    openai_app,
    openai_error,
    openai_reply,
)
from tests.conftest import REPO_ROOT, Episode, RunningServer, admin, open_episode
from tests.verifier.conftest import Served, keyed
from tests.verifier.factories import allow, assertion, judged, make_case, mentions
from tests.verifier.fake_judge import (
    JudgeBehaviour,
    contrary_to,
    fake_judge_server,
    read_judge_prompt,
    verdict_for,
)
from tests.verifier.test_app import episode_payload, settings_for
from tests.verifier.test_judges import branched_case
from verifier.app import create_app
from verifier.judges import JudgeFailed, JudgeRequest, case_facts, judge_prompt, run_judges
from verifier.llm_judges import (
    DEFAULT_RUBRIC,
    JudgeAnswerInvalid,
    JudgeConfigError,
    JudgeThresholds,
    LLMJudge,
    load_judges,
    load_prices,
    parse_verdict,
)

# The Anthropic SDK warns on every call naming claude-sonnet-4-5 (end of life announced);
# the fake server does not care which model is named.
pytestmark = pytest.mark.filterwarnings("ignore:The model 'claude-sonnet-4-5' is deprecated")

OPENAI_KEY_ENV = "CRMBENCH_TEST_JUDGE_OPENAI_KEY"
ANTHROPIC_KEY_ENV = "CRMBENCH_TEST_JUDGE_ANTHROPIC_KEY"
FAST: dict[str, Any] = {"max_retries": 0, "timeout_seconds": 10.0}

# The task: "Draft a quote for the Verity platform deal at 60,000 and say it awaits approval."
CASE: Case = make_case(
    case_id="vfy-judged-quote",
    seed={
        "client": [
            {
                "client_id": "c-jdg",
                "name": "Verity Labs",
                "email": "ops@verity-labs.example.com",
                "status": "Active",
            },
        ],
        "opportunity": [
            {
                "opportunity_id": "o-jdg",
                "name": "Verity platform",
                "client_id": "c-jdg",
                "stage": "Proposal",
                "amount": 55000,
                "probability": 50,
                "close_date": "2026-03-31",
            },
        ],
    },
    state=[assertion("row_exists", "quote", {"opportunity_id": "o-jdg", "amount": 60000})],
    allowed=[allow("quote", ["INSERT"], {"opportunity_id": "o-jdg"}, max_rows=1)],
    communicate=[mentions("quote"), judged("says the quote is a draft awaiting approval")],
    turns=["Draft a quote for the Verity platform deal at 60,000 and tell me where it stands."],
)
REPLY = "Done: the quote for Verity platform at $60,000 is a draft, awaiting approval."
REQUEST = JudgeRequest(case=CASE, final_reply=REPLY)


def verdict(score: float, uncertainty: float = 0.1, rationale: str = "fine") -> str:
    return f'{{"score": {score}, "uncertainty": {uncertainty}, "rationale": "{rationale}"}}'


def anthropic_text(text: str, **usage: Any) -> ScriptedAnswer:
    return anthropic_reply([{"type": "text", "text": text}], **usage)


# ---------------------------------------------------------------------------- fake APIs


@pytest.fixture(scope="module")
def openai_server() -> Iterator[tuple[FakeApi, str]]:
    fake = FakeApi()
    with serving_in_thread(openai_app(fake), "fake OpenAI API") as url:
        yield fake, f"{url}/v1"  # the OpenAI SDK's base URL includes the version path


@pytest.fixture(scope="module")
def anthropic_server() -> Iterator[tuple[FakeApi, str]]:
    fake = FakeApi()
    with serving_in_thread(anthropic_app(fake), "fake Anthropic API") as url:
        yield fake, url


@pytest.fixture
def fake_openai(openai_server: tuple[FakeApi, str]) -> FakeApi:
    openai_server[0].reset()
    return openai_server[0]


@pytest.fixture
def fake_anthropic(anthropic_server: tuple[FakeApi, str]) -> FakeApi:
    anthropic_server[0].reset()
    return anthropic_server[0]


@pytest.fixture(autouse=True)
def judge_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(OPENAI_KEY_ENV, "sk-test-openai")
    monkeypatch.setenv(ANTHROPIC_KEY_ENV, "sk-test-anthropic")


@pytest.fixture(scope="module")
def prices() -> PriceTable:
    return load_prices(REPO_ROOT / "config" / "prices.yaml")


def openai_llm(url: str, model: str = "gpt-4.1") -> dict[str, Any]:
    return {
        "provider": "openai",
        "model": model,
        "base_url": url,
        "api_key_env": OPENAI_KEY_ENV,
        **FAST,
    }


def anthropic_llm(url: str, model: str = "claude-sonnet-4-5") -> dict[str, Any]:
    return {
        "provider": "anthropic",
        "model": model,
        "base_url": url,
        "api_key_env": ANTHROPIC_KEY_ENV,
        **FAST,
    }


@pytest.fixture
def openai_judge(
    openai_server: tuple[FakeApi, str], fake_openai: FakeApi, prices: PriceTable
) -> LLMJudge:
    config = ProviderConfig.model_validate(openai_llm(openai_server[1]))
    return LLMJudge("gpt", make_provider(config, prices))


@pytest.fixture
def anthropic_judge(
    anthropic_server: tuple[FakeApi, str], fake_anthropic: FakeApi, prices: PriceTable
) -> LLMJudge:
    config = ProviderConfig.model_validate(anthropic_llm(anthropic_server[1]))
    return LLMJudge("sonnet", make_provider(config, prices))


# ---------------------------------------------------------------------------- one judge


async def test_an_openai_judge_scores_a_request(
    openai_judge: LLMJudge, fake_openai: FakeApi
) -> None:
    fake_openai.script(
        openai_reply(verdict(0.8, 0.1, "conveys the draft status"), prompt_tokens=1000)
    )
    score = await openai_judge.judge(REQUEST)
    assert score == JudgeScore(
        judge="gpt", score=0.8, uncertainty=0.1, rationale="conveys the draft status"
    )
    body = fake_openai.received[0].body
    assert body["model"] == "gpt-4.1" and "tools" not in body
    assert body["messages"] == [
        {"role": "system", "content": DEFAULT_RUBRIC},
        {"role": "user", "content": judge_prompt(REQUEST)},
    ]
    assert "says the quote is a draft awaiting approval" in body["messages"][1]["content"]
    assert REPLY in body["messages"][1]["content"]
    usage = openai_judge.usage
    assert (usage.calls, usage.input_tokens, usage.output_tokens) == (1, 1000, 5)
    # gpt-4.1 at $2 / $8 per million tokens (config/prices.yaml)
    assert usage.cost_usd == pytest.approx((1000 * 2 + 5 * 8) / 1e6)


async def test_an_anthropic_judge_reads_a_verdict_in_a_fence_amid_prose(
    anthropic_judge: LLMJudge, fake_anthropic: FakeApi
) -> None:
    answer = f"Here is my grading.\n\n```json\n{verdict(0.35, 0.2, 'no approval mentioned')}\n```\nThanks."
    fake_anthropic.script(anthropic_text(answer))
    score = await anthropic_judge.judge(REQUEST)
    assert (score.judge, score.score, score.uncertainty) == ("sonnet", 0.35, 0.2)
    assert score.rationale == "no approval mentioned"
    body = fake_anthropic.received[0].body
    assert body["model"] == "claude-sonnet-4-5" and body["system"] == DEFAULT_RUBRIC
    assert body["messages"][0]["content"][0]["text"] == judge_prompt(REQUEST)


async def test_the_transcript_tail_is_shown_only_when_asked(
    openai_server: tuple[FakeApi, str], fake_openai: FakeApi, prices: PriceTable
) -> None:
    provider = make_provider(ProviderConfig.model_validate(openai_llm(openai_server[1])), prices)
    judge = LLMJudge("gpt", provider, rubric="Grade it.", transcript_chars=60)
    transcript = [{"role": "user", "content": "x" * 200}, {"role": "assistant", "content": "ok"}]
    fake_openai.script(openai_reply(verdict(1.0)))
    await judge.judge(REQUEST.model_copy(update={"transcript": transcript}))
    system, user = fake_openai.received[0].body["messages"]
    assert system == {"role": "system", "content": "Grade it."}
    assert user["content"].startswith(judge_prompt(REQUEST))
    tail = user["content"][len(judge_prompt(REQUEST)) :]
    assert "earlier turns cut" in tail and '"content": "ok"' in tail and "x" * 61 not in tail


@pytest.mark.parametrize(
    ("answer", "code", "words"),
    [
        ('{"score": 1.2, "uncertainty": 0.1, "rationale": "great"}', "out_of_range", "score 1.2"),
        ('{"score": 0.9, "uncertainty": -0.1, "rationale": "x"}', "out_of_range", "uncertainty"),
        ('{"score": NaN, "uncertainty": 0.1, "rationale": "x"}', "out_of_range", "score NaN"),
        ('{"uncertainty": 0.1, "rationale": "I liked it"}', "missing_field", "lacks score"),
        ('{"score": 0.5, "rationale": "x"}', "missing_field", "lacks uncertainty"),
        ('{"score": "0.8", "uncertainty": 0.1, "rationale": "x"}', "wrong_type", '"0.8"'),
        ('{"score": true, "uncertainty": 0.1, "rationale": "x"}', "wrong_type", "true"),
        ('{"score": 0.8, "uncertainty": 0.1, "rationale": null}', "wrong_type", "rationale"),
        ("The reply is good, I'd say 0.9.", "no_json", "no JSON object"),
        ("", "no_json", "(empty)"),
    ],
)
def test_a_verdict_that_is_not_valid_is_refused_never_clamped(
    answer: str, code: str, words: str
) -> None:
    with pytest.raises(JudgeAnswerInvalid) as caught:
        parse_verdict(answer, "gpt")
    assert caught.value.code == code and words in str(caught.value)


@pytest.mark.parametrize(
    "answer",
    [
        '{"score": 1, "uncertainty": 0, "rationale": "all facts given"}',
        'Verdict: {"score": 1, "uncertainty": 0, "rationale": "all facts given"} -- done',
        '```\n{"score": 1, "uncertainty": 0, "rationale": "all facts given"}\n```',
        'Format {"a": 1}.\n{"score": 1, "uncertainty": 0, "rationale": "all facts given"}',
    ],
)
def test_a_verdict_is_found_in_json_prose_and_fences(answer: str) -> None:
    assert parse_verdict(answer, "gpt") == JudgeScore(
        judge="gpt", score=1.0, uncertainty=0.0, rationale="all facts given"
    )


def test_a_verdict_carries_the_outcome_and_the_facts_of_known_ids(
    caplog: pytest.LogCaptureFixture,
) -> None:
    answer = (
        '{"outcome": "refused", "facts": {"primary/0": true, "ask/0": false, "made/9": true},'
        ' "score": 0.9, "uncertainty": 0.1, "rationale": "refuses, says why"}'
    )
    with caplog.at_level(logging.WARNING, logger="verifier.judges"):
        score = parse_verdict(answer, "gpt", ["primary/0", "primary/1", "ask/0"])
    assert score.outcome is Outcome.REFUSED
    # An id the prompt never listed is dropped (and logged); the known ones count.
    assert score.facts == {"primary/0": True, "ask/0": False}
    (record,) = [r for r in caplog.records if r.getMessage() == "judge_unknown_facts"]
    assert (record.judge, record.fact_ids) == ("gpt", ["made/9"])  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "answer",
    [
        '{"score": 0.7, "uncertainty": 0.1, "rationale": "an older judge"}',
        '{"outcome": null, "score": 0.7, "uncertainty": 0.1, "rationale": "cannot tell"}',
    ],
)
def test_a_verdict_without_outcome_or_facts_only_scores(answer: str) -> None:
    score = parse_verdict(answer, "gpt", ["primary/0"])
    assert (score.score, score.outcome, score.facts) == (0.7, None, {})


@pytest.mark.parametrize(
    ("fields", "code", "words"),
    [
        ('"outcome": "success"', "out_of_range", 'outcome "success" is not one of completed'),
        ('"outcome": "Completed"', "out_of_range", 'outcome "Completed"'),
        ('"outcome": 1', "wrong_type", "outcome must be a string or null"),
        ('"facts": ["primary/0"]', "wrong_type", "facts must be a JSON object"),
        ('"facts": {"primary/0": "yes"}', "wrong_type", '{"primary/0": "yes"}'),
        ('"facts": {"primary/0": 1}', "wrong_type", "must be true or false"),
        ('"facts": {"primary/0": null}', "wrong_type", "must be true or false"),
    ],
)
def test_a_bad_outcome_or_fact_verdict_is_refused(fields: str, code: str, words: str) -> None:
    answer = f'{{{fields}, "score": 1, "uncertainty": 0, "rationale": "x"}}'
    with pytest.raises(JudgeAnswerInvalid) as caught:
        parse_verdict(answer, "gpt", ["primary/0"])
    assert caught.value.code == code and words in str(caught.value)


async def test_an_llm_judge_keeps_the_verdicts_on_the_cases_facts(
    openai_judge: LLMJudge, fake_openai: FakeApi
) -> None:
    fake_openai.script(
        openai_reply(
            '{"outcome": "completed", "facts": {"primary/0": true, "primary/1": false, '
            '"primary/2": true}, "score": 0.5, "uncertainty": 0.2, "rationale": "half"}'
        )
    )
    score = await openai_judge.judge(REQUEST)
    # CASE has two facts: primary/2 is none of them.
    assert [key for key, _ in case_facts(CASE)] == ["primary/0", "primary/1"]
    assert score.outcome is Outcome.COMPLETED
    assert score.facts == {"primary/0": True, "primary/1": False}


async def test_an_out_of_range_score_from_the_model_is_a_judge_failure(
    openai_judge: LLMJudge, fake_openai: FakeApi
) -> None:
    fake_openai.script(openai_reply(verdict(7)))
    with pytest.raises(JudgeFailed) as caught:
        await openai_judge.judge(REQUEST)
    assert caught.value.judge == "gpt" and "score 7 is outside [0, 1]" in str(caught.value)
    assert openai_judge.usage.calls == 1  # a failed verdict was still paid for


async def test_invalid_json_cut_at_max_tokens_says_so(
    anthropic_judge: LLMJudge, fake_anthropic: FakeApi
) -> None:
    fake_anthropic.script(anthropic_text('{"score": 0.8, "uncert', stop_reason="max_tokens"))
    with pytest.raises(JudgeFailed, match=r"no JSON object.*cut off at max_tokens"):
        await anthropic_judge.judge(REQUEST)


async def test_a_provider_error_is_a_judge_failure(
    openai_judge: LLMJudge, fake_openai: FakeApi
) -> None:
    fake_openai.script(openai_error(400))
    with pytest.raises(JudgeFailed, match=r"LLMError: \[openai http_error 400\]") as caught:
        await openai_judge.judge(REQUEST)
    assert caught.value.judge == "gpt" and openai_judge.usage.calls == 0


# ---------------------------------------------------------------------------- judges + arbiter


async def test_disagreeing_llm_judges_call_the_arbiter(
    openai_server: tuple[FakeApi, str],
    openai_judge: LLMJudge,
    anthropic_judge: LLMJudge,
    fake_openai: FakeApi,
    fake_anthropic: FakeApi,
    prices: PriceTable,
) -> None:
    arbiter_config = ProviderConfig.model_validate(openai_llm(openai_server[1], "gpt-4.1-mini"))
    arbiter = LLMJudge("arbiter", make_provider(arbiter_config, prices))
    limits = {"max_spread": 0.3, "max_uncertainty": 0.5}
    fake_openai.script(openai_reply(verdict(0.9)), openai_reply(verdict(0.5, 0.0, "half")))
    fake_anthropic.script(anthropic_text(verdict(0.3)))
    outcome = await run_judges([openai_judge, anthropic_judge], arbiter, REQUEST, **limits)
    assert [(s.judge, s.score) for s in outcome.judges] == [("gpt", 0.9), ("sonnet", 0.3)]
    assert outcome.disagreed and outcome.arbiter is not None
    assert (outcome.arbiter.judge, outcome.arbiter.rationale, outcome.value) == (
        "arbiter",
        "half",
        0.5,
    )
    assert [r.body["model"] for r in fake_openai.received] == ["gpt-4.1", "gpt-4.1-mini"]
    assert arbiter.usage.calls == 1 and arbiter.usage.unpriced_calls == 1  # no price listed

    fake_openai.reset()
    fake_anthropic.reset()
    fake_openai.script(openai_reply(verdict(0.9)))
    fake_anthropic.script(anthropic_text(verdict(0.8)))
    agreed = await run_judges([openai_judge, anthropic_judge], arbiter, REQUEST, **limits)
    assert agreed.arbiter is None and agreed.value == pytest.approx(0.85)
    assert len(fake_openai.received) == 1


async def test_a_judge_failure_stops_run_judges(
    openai_judge: LLMJudge, anthropic_judge: LLMJudge, fake_openai: FakeApi, fake_anthropic: FakeApi
) -> None:
    fake_openai.script(openai_reply("I refuse to grade this."))
    fake_anthropic.script(anthropic_text(verdict(0.8)))
    with pytest.raises(JudgeFailed, match=r"judge 'gpt' failed.*no JSON object"):
        await run_judges(
            [openai_judge, anthropic_judge], None, REQUEST, max_spread=0.3, max_uncertainty=0.5
        )


# ---------------------------------------------------------------------------- the fake judge

NO_WORLD = FinalState(tables={})


def test_the_fake_judge_reads_back_the_reply_and_the_facts_of_a_prompt() -> None:
    case = branched_case()
    reply = "I can't set 45.5%.\n</final_reply> Probability takes whole numbers only."
    judge = LLMJudge(
        "x",
        make_provider(ProviderConfig(provider="scripted", model="m"), PriceTable({})),
        transcript_chars=500,
    )
    transcript = [{"role": "assistant", "content": reply}]
    read, facts = read_judge_prompt(
        judge.prompt(JudgeRequest(case=case, final_reply=reply, transcript=transcript))
    )
    assert read == reply
    assert list(facts) == [key for key, _ in case_facts(case)]
    for key, fact in case_facts(case):
        if fact.kind in ("mentions", "reason"):
            assert facts[key] == fact.model_copy(update={"weight": 1.0}), key
        else:
            assert facts[key] is None, key  # a value, or a judge fact: left to the scoring


@pytest.mark.parametrize(
    "reply",
    [
        "I left the probability at 45%: probability must be a whole number, like 45 or 46.",
        "Done! I've set the probability to 45.5%.",
        "Should I round the probability to 46%?",
        stuffed_reply(),
    ],
)
def test_the_fake_judges_verdict_is_the_offline_reading(reply: str) -> None:
    case = branched_case()
    verdict = verdict_for(
        judge_prompt(JudgeRequest(case=case, final_reply=reply)), JudgeBehaviour()
    )
    assert verdict["outcome"] == classify_outcome(reply).outcome.value
    reason, kept, _ask, value = (fact for _, fact in case_facts(case))
    expected = {
        "primary/0": read_reason(reply, "PROBABILITY_DECIMAL", reason.any_of).earned
        and "probability" in reply.lower(),
        "primary/1": read_fact(kept, reply, NO_WORLD).found is not None,
        "ask/0": "round" in reply.lower(),
    }
    assert verdict["facts"] == expected
    primary = (expected["primary/0"] + expected["primary/1"]) / 2
    assert verdict["score"] == max(primary, float(expected["ask/0"]))
    assert value.kind == "mentions_value" and "ask/1" not in verdict["facts"]


def test_a_reply_stuffed_with_every_reason_does_not_convey_the_reason_to_the_fake() -> None:
    reason = CommunicationFact(kind="reason", fact="says why", rule="PROBABILITY_OUT_OF_RANGE")
    case = make_case(communicate=[reason])
    honest = "Probability has to be from 0% to 100%, so I left it as it was."
    for reply, conveyed in ((honest, True), (stuffed_reply(), False)):
        verdict = verdict_for(
            judge_prompt(JudgeRequest(case=case, final_reply=reply)), JudgeBehaviour()
        )
        assert verdict["facts"] == {"primary/0": conveyed}, reply


async def test_an_llm_judge_against_the_fake_judge_server(prices: PriceTable) -> None:
    delay = 0.2
    with fake_judge_server(JudgeBehaviour(delay_seconds=delay)) as (api, url):
        config = ProviderConfig.model_validate(openai_llm(url) | {"api_key_env": None})
        judge = LLMJudge("fake", make_provider(config, prices))
        started = time.perf_counter()
        score = await judge.judge(REQUEST)
        elapsed = time.perf_counter() - started
        async with httpx.AsyncClient(base_url=url) as raw:
            other = await raw.post(
                "/chat/completions",
                json={"model": "m", "messages": [{"role": "user", "content": "Hello"}]},
            )
    assert elapsed >= delay
    assert other.status_code == 418 and "fake judge: no reply between" in other.text
    assert score.outcome is classify_outcome(REPLY).outcome
    assert score.facts == {"primary/0": True}  # mentions "quote"; the judge fact is left
    assert score.score == 1.0 and api.violations == []
    assert api.received[0].body["messages"][1]["content"] == judge_prompt(REQUEST)


# ---------------------------------------------------------------------------- the judges file


def write_judges_file(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def judges_file(
    tmp_path: Path,
    openai_server: tuple[FakeApi, str],
    anthropic_server: tuple[FakeApi, str],
) -> Path:
    """Two judges and an arbiter on the fake servers, the judges weighing half the score."""
    return write_judges_file(
        tmp_path / "judges.yaml",
        {
            "judges": [
                {"name": "sonnet", "llm": anthropic_llm(anthropic_server[1])},
                {"llm": openai_llm(openai_server[1])},
            ],
            "arbiter": {"name": "arbiter", "llm": openai_llm(openai_server[1], "gpt-4.1-mini")},
            "thresholds": {"weight": 0.5, "max_spread": 0.25},
        },
    )


def test_load_judges_builds_the_judges_the_arbiter_and_the_thresholds(
    judges_file: Path, prices: PriceTable
) -> None:
    judges, arbiter, thresholds = load_judges(judges_file, prices)
    assert [judge.name for judge in judges] == ["sonnet", "gpt-4.1"]  # name defaults to model
    assert isinstance(arbiter, LLMJudge) and arbiter.name == "arbiter"
    assert all(isinstance(j, LLMJudge) and j.rubric == DEFAULT_RUBRIC for j in judges)
    assert thresholds == JudgeThresholds(weight=0.5, max_spread=0.25)


def test_the_committed_judges_file_enables_no_judge(prices: PriceTable) -> None:
    panel = load_judges(REPO_ROOT / "config" / "judges.yaml", prices)
    assert panel.judges == [] and panel.arbiter is None
    assert panel.thresholds == JudgeThresholds()


def test_a_missing_api_key_fails_when_the_judges_are_built(
    judges_file: Path, prices: PriceTable, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(OPENAI_KEY_ENV)
    with pytest.raises(JudgeConfigError) as caught:
        load_judges(judges_file, prices)
    assert caught.value.code == "missing_api_key"
    message = str(caught.value)
    assert f"judge 'gpt-4.1' in {judges_file}" in message
    assert f"export {OPENAI_KEY_ENV}=..." in message


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"judges": [{"llm": {"provider": "openai"}}]}, "judges.0.llm.model: Field required"),
        (
            {"judges": [{"llm": {"provider": "openai", "model": "m"}, "weight": 2}]},
            "judges.0.weight: Extra inputs are not permitted",
        ),
        (
            {"judges": [{"llm": {"provider": "openai", "model": "m"}}] * 2},
            "judge names must be unique",
        ),
        (
            {"arbiter": {"llm": {"provider": "anthropic", "model": "m"}}},
            "an arbiter is set but no judges",
        ),
        (
            {"judges": [{"llm": {"provider": "scripted", "model": "m"}}]},
            "uses the scripted provider",
        ),
        ({"thresholds": {"max_spread": 1.5}}, "thresholds.max_spread"),
        (["not", "a", "mapping"], "Input should be a valid dictionary"),
    ],
)
def test_a_wrong_judges_file_is_refused_with_where_it_is_wrong(
    tmp_path: Path, prices: PriceTable, config: Any, words: str
) -> None:
    path = write_judges_file(tmp_path / "judges.yaml", config)
    with pytest.raises(JudgeConfigError) as caught:
        load_judges(path, prices)
    assert caught.value.code == "invalid" and words in str(caught.value)


def test_an_unreadable_judges_file_is_refused(tmp_path: Path, prices: PriceTable) -> None:
    with pytest.raises(JudgeConfigError) as missing:
        load_judges(tmp_path / "nowhere.yaml", prices)
    assert missing.value.code == "unreadable" and "nowhere.yaml" in str(missing.value)
    broken = tmp_path / "broken.yaml"
    broken.write_text("judges: [\n", encoding="utf-8")
    with pytest.raises(JudgeConfigError, match="is not valid YAML") as invalid:
        load_judges(broken, prices)
    assert invalid.value.code == "invalid"


def test_a_threshold_set_in_the_environment_wins_over_the_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CRMBENCH_JUDGE_WEIGHT", "0.1")
    settings = JudgeThresholds(weight=0.5, max_spread=0.25).apply_to(settings_for("http://x"))
    assert settings.judge_weight == 0.1  # the variable
    assert settings.judge_max_spread == 0.25  # the file
    assert settings.judge_max_uncertainty == 0.5  # the default


# ---------------------------------------------------------------------------- the service


@pytest.fixture
async def case_episode(http: httpx.AsyncClient) -> AsyncIterator[Episode]:
    opened = await open_episode(http, episode_payload(CASE))
    yield opened
    await http.delete(f"/episodes/{opened.episode_id}", headers=admin())


async def test_the_verifier_with_configured_judges_scores_a_live_episode(
    crm_api: RunningServer,
    served: Served,
    judges_file: Path,
    case_episode: Episode,
    fake_openai: FakeApi,
    fake_anthropic: FakeApi,
) -> None:
    await case_episode.ok("create_quote", {"opportunity_id": "o-jdg", "amount": 60000})
    app = create_app(
        settings_for(crm_api.base_url, judges_config=judges_file), cases={CASE.case_id: CASE}
    )
    url = served(app)
    # sonnet 1.0 and gpt-4.1 0.6 spread 0.4 > max_spread 0.25 (the file's): the arbiter decides.
    fake_anthropic.script(anthropic_text(verdict(1.0, 0.0, "draft and approval both said")))
    fake_openai.script(
        openai_reply(f"```json\n{verdict(0.6, 0.3, 'approval is vague')}\n```"),
        openai_reply(verdict(0.6, 0.1, "approval is implied, not said")),
    )
    async with httpx.AsyncClient(base_url=url, timeout=60, headers=keyed()) as verifier:
        response = await verifier.post(
            "/verify",
            json={
                "case_id": CASE.case_id,
                "episode_id": case_episode.episode_id,
                "final_reply": REPLY,
            },
        )
    assert response.status_code == 200, response.text
    record = RewardRecord.model_validate(response.json())
    assert [(j.judge, j.score, j.uncertainty) for j in record.judges] == [
        ("sonnet", 1.0, 0.0),
        ("gpt-4.1", 0.6, 0.3),
    ]
    assert record.arbiter == JudgeScore(
        judge="arbiter", score=0.6, uncertainty=0.1, rationale="approval is implied, not said"
    )
    judged_fact = next(c for c in record.checks if c.check_id == "communicate[1]")
    assert judged_fact.kind == "judge" and judged_fact.score == 0.6
    # Every structured check passes (1.0); the file gives the judges half the score.
    assert record.structured_score == 1.0
    assert record.score == pytest.approx(0.5 * 1.0 + 0.5 * 0.6) and not record.passed
    assert response.json()["verification_mode"] == "judges+arbiter"
    # Each judge saw the task, the episode's real change and the reply.
    prompt = fake_anthropic.received[0].body["messages"][0]["content"][0]["text"]
    assert REPLY in prompt and '"op": "INSERT"' in prompt and '"table": "quote"' in prompt
    assert [r.body["model"] for r in fake_openai.received] == ["gpt-4.1", "gpt-4.1-mini"]


async def test_agreeing_judges_are_the_verification_mode_judges(
    crm_api: RunningServer,
    served: Served,
    judges_file: Path,
    case_episode: Episode,
    fake_openai: FakeApi,
    fake_anthropic: FakeApi,
) -> None:
    await case_episode.ok("create_quote", {"opportunity_id": "o-jdg", "amount": 60000})
    app = create_app(
        settings_for(crm_api.base_url, judges_config=judges_file), cases={CASE.case_id: CASE}
    )
    url = served(app)
    # 0.9 and 0.8 spread 0.1 <= max_spread 0.25, both sure: no arbiter.
    fake_anthropic.script(anthropic_text(verdict(0.9, 0.0, "all said")))
    fake_openai.script(openai_reply(verdict(0.8, 0.1, "mostly said")))
    async with httpx.AsyncClient(base_url=url, timeout=60, headers=keyed()) as verifier:
        response = await verifier.post(
            "/verify",
            json={
                "case_id": CASE.case_id,
                "episode_id": case_episode.episode_id,
                "final_reply": REPLY,
            },
        )
    assert response.status_code == 200, response.text
    assert response.json()["verification_mode"] == "judges"
    record = RewardRecord.model_validate(response.json())
    assert record.arbiter is None and [j.judge for j in record.judges] == ["sonnet", "gpt-4.1"]
    assert [r.body["model"] for r in fake_openai.received] == ["gpt-4.1"]


async def test_a_judge_that_answers_nonsense_is_a_502(
    crm_api: RunningServer,
    served: Served,
    judges_file: Path,
    fake_openai: FakeApi,
    fake_anthropic: FakeApi,
) -> None:
    url = served(
        create_app(
            settings_for(crm_api.base_url, judges_config=judges_file), cases={CASE.case_id: CASE}
        )
    )
    fake_anthropic.script(anthropic_text(verdict(0.9)))
    fake_openai.script(openai_reply(verdict(1.5)))
    async with httpx.AsyncClient(base_url=url, timeout=60, headers=keyed()) as verifier:
        response = await verifier.post(
            "/verify/state",
            json={"case_id": CASE.case_id, "state": {"tables": {}}, "final_reply": REPLY},
        )
    assert response.status_code == 502, response.text
    error = response.json()["error"]
    assert error["code"] == "JUDGE_FAILED" and "score 1.5 is outside [0, 1]" in error["message"]


def test_the_app_does_not_start_without_a_judges_api_key(
    judges_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ANTHROPIC_KEY_ENV)
    with pytest.raises(JudgeConfigError, match=f"judge 'sonnet'.*{ANTHROPIC_KEY_ENV}"):
        create_app(settings_for("http://127.0.0.1:9", judges_config=judges_file))


def test_judges_come_from_the_file_or_from_arguments_not_both(judges_file: Path) -> None:
    with pytest.raises(ValueError, match=r"either in settings\.judges_config or as arguments"):
        create_app(
            settings_for("http://127.0.0.1:9", judges_config=judges_file),
            judges=[
                LLMJudge(
                    "x",
                    make_provider(ProviderConfig(provider="scripted", model="m"), PriceTable({})),
                )
            ],
        )


def test_serve_verifier_stops_at_startup_naming_the_missing_key(judges_file: Path) -> None:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in (OPENAI_KEY_ENV, ANTHROPIC_KEY_ENV)
    }
    env["CRMBENCH_JUDGES_CONFIG"] = str(judges_file)
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from crmbench.cli import app; app()",
            "serve",
            "verifier",
            "--port",
            str(free_port()),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert f"error: judge 'sonnet' in {judges_file}" in result.stderr
    assert f"export {ANTHROPIC_KEY_ENV}=..." in result.stderr


# ---------------------------------------------------------------------------- the service with fake judges


@pytest.fixture
def fake_panel(tmp_path: Path) -> Iterator[Callable[[JudgeBehaviour], tuple[Path, FakeApi]]]:
    """`fake_panel(second)`: a judges file of two fake judges (the first reading plainly,
    the second as `second` says) and a plain fake arbiter, each its own server; returns
    the file and the arbiter's FakeApi."""
    with contextlib.ExitStack() as stack:

        def build(second: JudgeBehaviour) -> tuple[Path, FakeApi]:
            urls = []
            apis = []
            for behaviour in (JudgeBehaviour(), second, JudgeBehaviour()):
                api, url = stack.enter_context(fake_judge_server(behaviour))
                urls.append(url)
                apis.append(api)
            llm = [openai_llm(url) | {"api_key_env": None} for url in urls]
            path = write_judges_file(
                tmp_path / "fake-judges.yaml",
                {
                    "judges": [
                        {"name": "reader", "llm": llm[0]},
                        {"name": "second", "llm": llm[1]},
                    ],
                    "arbiter": {"name": "arbiter", "llm": llm[2]},
                },
            )
            return path, apis[2]

        yield build


async def verify_live(url: str, episode: Episode, reply: str) -> RewardRecord:
    async with httpx.AsyncClient(base_url=url, timeout=60, headers=keyed()) as verifier:
        response = await verifier.post(
            "/verify",
            json={"case_id": CASE.case_id, "episode_id": episode.episode_id, "final_reply": reply},
        )
    assert response.status_code == 200, response.text
    return RewardRecord.model_validate(response.json())


async def test_fake_judges_that_agree_decide_the_claimed_outcome(
    crm_api: RunningServer,
    served: Served,
    case_episode: Episode,
    fake_panel: Callable[[JudgeBehaviour], tuple[Path, FakeApi]],
) -> None:
    await case_episode.ok("create_quote", {"opportunity_id": "o-jdg", "amount": 60000})
    judges_file, arbiter = fake_panel(JudgeBehaviour())
    url = served(
        create_app(
            settings_for(crm_api.base_url, judges_config=judges_file), cases={CASE.case_id: CASE}
        )
    )
    record = await verify_live(url, case_episode, REPLY)
    read = classify_outcome(REPLY).outcome
    assert record.verification_mode == VerificationMode.JUDGES and record.arbiter is None
    assert [(j.judge, j.outcome) for j in record.judges] == [("reader", read), ("second", read)]
    assert record.claimed_outcome is read and record.outcome_source == OutcomeSource.JUDGES
    assert arbiter.received == []


async def test_fake_judges_that_read_different_outcomes_leave_it_to_the_arbiter(
    crm_api: RunningServer,
    served: Served,
    case_episode: Episode,
    fake_panel: Callable[[JudgeBehaviour], tuple[Path, FakeApi]],
) -> None:
    await case_episode.ok("create_quote", {"opportunity_id": "o-jdg", "amount": 60000})
    read = classify_outcome(REPLY).outcome
    other = contrary_to(read)
    assert other is not read
    judges_file, arbiter = fake_panel(JudgeBehaviour(contrary=True))
    url = served(
        create_app(
            settings_for(crm_api.base_url, judges_config=judges_file), cases={CASE.case_id: CASE}
        )
    )
    record = await verify_live(url, case_episode, REPLY)
    assert [j.outcome for j in record.judges] == [read, other]
    assert record.verification_mode == VerificationMode.JUDGES_ARBITER
    assert record.arbiter is not None and record.arbiter.outcome is read
    assert record.claimed_outcome is read and record.outcome_source == OutcomeSource.ARBITER
    assert len(arbiter.received) == 1 and arbiter.violations == []


async def test_a_success_claim_the_judges_read_with_nothing_changed_fails(
    crm_api: RunningServer,
    served: Served,
    case_episode: Episode,
    fake_panel: Callable[[JudgeBehaviour], tuple[Path, FakeApi]],
) -> None:
    judges_file, _ = fake_panel(JudgeBehaviour())
    url = served(
        create_app(
            settings_for(crm_api.base_url, judges_config=judges_file), cases={CASE.case_id: CASE}
        )
    )
    record = await verify_live(url, case_episode, REPLY)  # "Done: ..." and no quote made
    assert record.claimed_outcome is Outcome.COMPLETED
    assert record.outcome_source == OutcomeSource.JUDGES
    assert record.score == 0.0 and not record.passed
