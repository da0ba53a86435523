"""CrmEnv against the real CRM API and verifier: episodes, rewards, truncation, errors."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import gymnasium
import httpx
import pytest
from gymnasium.utils.env_checker import check_env

from agent_runner.gym_env import (
    ENV_ID,
    CrmEnv,
    EnvironmentClosed,
    EpisodeNotRunning,
    InvalidCrmAction,
    ServiceError,
    register_env,
)
from agent_runner.protocol import parse_tool_result
from crmbench.cases_cli import load_corpus_into
from crmbench.local_services import running_verifier
from crmbench_clients.serving import free_port
from crmbench_contracts.cases import Case
from crmbench_contracts.rewards import RewardRecord
from crmbench_corpus.replay import resolve
from crmbench_corpus.store import load_index
from tests.conftest import ADMIN_KEY, RunningServer, admin

CASES = load_index()
WRITE_CASE = "CRM-00002"  # modify an opportunity found by a search
"""A success path that must change the CRM, with a {{step_N}} reference in its actions."""
SAMPLE = ("CRM-00001", "CRM-00002", "CRM-00003", "CRM-00008", "CRM-00015")

MakeEnv = Callable[..., CrmEnv]


@pytest.fixture(scope="module")
def verifier_url(crm_api: RunningServer, database_url: str) -> Iterator[str]:
    load_corpus_into(database_url, None)
    with running_verifier(crm_api.base_url, ADMIN_KEY) as url:
        yield url


@pytest.fixture
def make_env(crm_api: RunningServer, verifier_url: str) -> Iterator[MakeEnv]:
    """`make_env(**kwargs)` builds a CrmEnv over the test services; all closed afterwards."""
    made: list[CrmEnv] = []

    def make(**kwargs: Any) -> CrmEnv:
        env = CrmEnv(crm_api.base_url, verifier_url, ADMIN_KEY, **kwargs)
        made.append(env)
        return env

    yield make
    for env in made:
        env.close()


def episode_status(crm_api: RunningServer, episode_id: str) -> int:
    response = httpx.get(f"{crm_api.base_url}/episodes/{episode_id}", headers=admin())
    return response.status_code


def replay_reference(env: CrmEnv, case: Case) -> None:
    """Plays the case's reference actions as tool-call steps, resolving {{step_N}} refs."""
    results: list[Any] = []
    for action in case.expected.reference_actions:
        call = {"tool": action.tool, "arguments": resolve(action.args, results)}
        observation, reward, terminated, truncated, info = env.step(call)
        assert (reward, terminated, truncated) == (0.0, False, False)
        assert info["ok"] is (action.expect_error is None), observation
        ok, body = parse_tool_result(observation)
        results.append(body if ok else None)


# -------------------------------------------------------------------------- episodes


@pytest.mark.parametrize("case_id", ["CRM-00001", WRITE_CASE, "CRM-00015"])
def test_the_reference_actions_and_reply_earn_reward_one(
    make_env: MakeEnv, crm_api: RunningServer, case_id: str
) -> None:
    case = CASES[case_id]
    env = make_env()
    observation, info = env.reset(options={"case_id": case_id})
    assert observation == "\n\n".join(turn.content for turn in case.turns)
    assert "case_id" not in info and info["turns"] == [t.content for t in case.turns]
    assert info["actor"]["name"] == case.actor.name and info["today"] == case.today.isoformat()
    names = {tool["function"]["name"] for tool in info["tools"]}
    assert {action.tool for action in case.expected.reference_actions} <= names

    replay_reference(env, case)
    reply = json.dumps({"reply": case.expected.reference_reply})
    observation, reward, terminated, truncated, record = env.step(reply)

    assert (observation, reward, terminated, truncated) == ("", 1.0, True, False)
    assert "case_id" not in record  # kept from the policy
    assert RewardRecord.model_validate({**record, "case_id": case_id}).passed
    assert record["episode_id"] == info["episode_id"]
    assert episode_status(crm_api, info["episode_id"]) == 404  # dropped once scored
    with pytest.raises(EpisodeNotRunning, match="has terminated; call reset"):
        env.step({"reply": "again"})


def test_replying_without_doing_the_work_scores_below_the_pass_mark(make_env: MakeEnv) -> None:
    env = make_env()
    env.reset(options={"case_id": WRITE_CASE})
    _, reward, terminated, truncated, record = env.step({"reply": "Done, all updated."})
    assert terminated and not truncated
    assert reward < 0.9 and reward == record["score"] and not record["passed"]


def test_the_step_limit_truncates_and_still_scores_the_episode(make_env: MakeEnv) -> None:
    case = CASES[WRITE_CASE]
    search = case.expected.reference_actions[0]
    env = make_env(max_steps=2)
    env.reset(options={"case_id": WRITE_CASE})
    call = {"tool": search.tool, "arguments": search.args}

    _, reward, terminated, truncated, info = env.step(call)
    assert (reward, terminated, truncated, info["step"]) == (0.0, False, False, 1)
    observation, reward, terminated, truncated, info = env.step(call)

    assert truncated and not terminated
    assert parse_tool_result(observation)[0]  # the last tool result is still observed
    assert info["tool"] == search.tool and info["step"] == 2 and info["ok"]
    assert "case_id" not in info
    record = RewardRecord.model_validate({**info, "case_id": WRITE_CASE})
    assert reward == record.score < 0.9
    with pytest.raises(EpisodeNotRunning, match="has truncated"):
        env.step(call)


def test_a_refused_call_is_observed_and_the_episode_goes_on(make_env: MakeEnv) -> None:
    case = CASES[WRITE_CASE]
    env = make_env()
    env.reset(options={"case_id": WRITE_CASE})

    observation, reward, terminated, truncated, info = env.step(
        {"tool": "modify_opportunity", "arguments": {"opportunity_id": "no-such-deal"}}
    )
    assert (reward, terminated, truncated) == (0.0, False, False)
    body = json.loads(observation)
    assert set(body) == {"status", "error"} and body["status"] == info["status"] >= 400
    assert info["ok"] is False and info["error_code"] == body["error"]["code"]
    assert {"code", "field", "message"} <= set(body["error"])

    observation, *_ = env.step({"tool": "no_such_tool"})
    assert json.loads(observation)["error"]["code"] == "UNKNOWN_TOOL"

    # The refusals changed nothing: the reference still earns full marks.
    replay_reference(env, case)
    _, reward, terminated, _, _ = env.step({"reply": case.expected.reference_reply})
    assert terminated and reward == 1.0


def test_a_tool_step_reports_status_and_latency(make_env: MakeEnv) -> None:
    action = CASES[WRITE_CASE].expected.reference_actions[0]
    env = make_env()
    env.reset(options={"case_id": WRITE_CASE})
    _, _, _, _, info = env.step(json.dumps({"tool": action.tool, "arguments": action.args}))
    assert info["status"] == 200 and info["ok"] and info["error_code"] is None
    assert info["tool_call_id"] == "step-1" and info["latency_ms"] > 0


@pytest.mark.parametrize("expose", [False, True])
def test_the_policy_sees_the_case_id_only_when_asked(make_env: MakeEnv, expose: bool) -> None:
    case = CASES[WRITE_CASE]
    env = make_env(expose_case_id=True) if expose else make_env()
    observation, info = env.reset(options={"case_id": WRITE_CASE})
    seen = [observation, json.dumps(info)]
    search = case.expected.reference_actions[0]
    for action in (
        {"tool": search.tool, "arguments": search.args},
        {"tool": "modify_opportunity", "arguments": {"opportunity_id": "nope"}},  # refused
        {"tool": "no_such_tool"},
    ):
        observation, _, _, _, step_info = env.step(action)
        seen += [observation, json.dumps(step_info)]
    observation, _, terminated, _, record = env.step({"reply": "Done."})
    assert terminated
    seen += [observation, json.dumps(record)]
    with pytest.raises(EpisodeNotRunning) as ended:
        env.step({"reply": "again"})
    seen.append(str(ended.value))
    leaks = [text[:80] for text in seen if WRITE_CASE in text]
    if expose:
        assert info["case_id"] == record["case_id"] == WRITE_CASE
        assert RewardRecord.model_validate(record).case_id == WRITE_CASE
    else:
        assert leaks == []
        assert "case_id" not in info and "case_id" not in record


# ---------------------------------------------------------------------- reset and close


def case_sequence(env: CrmEnv, seed: int, resets: int = 3) -> list[tuple[str, str]]:
    """(case id, observation) of a seeded reset and the unseeded resets after it."""
    observation, info = env.reset(seed=seed)
    seen = [(info["case_id"], observation)]
    for _ in range(resets - 1):
        observation, info = env.reset()
        seen.append((info["case_id"], observation))
    return seen


def test_the_same_seed_gives_the_same_cases(make_env: MakeEnv) -> None:
    one = make_env(case_ids=SAMPLE, expose_case_id=True)
    two = make_env(case_ids=SAMPLE, expose_case_id=True)
    sequence = case_sequence(one, 7)
    assert case_sequence(two, 7) == sequence
    assert case_sequence(one, 7) == sequence  # re-seeding the same env replays it too
    assert {case_id for case_id, _ in sequence} <= set(SAMPLE)
    assert case_sequence(one, 8) != sequence


def test_reset_drops_the_previous_episode(make_env: MakeEnv, crm_api: RunningServer) -> None:
    env = make_env()
    _, first = env.reset(options={"case_id": WRITE_CASE})
    _, second = env.reset(options={"case_id": WRITE_CASE})
    assert first["episode_id"] != second["episode_id"]
    assert episode_status(crm_api, first["episode_id"]) == 404
    assert episode_status(crm_api, second["episode_id"]) == 200


def test_reset_refuses_an_unknown_case(make_env: MakeEnv) -> None:
    env = make_env()
    with pytest.raises(ValueError, match="'CRM-99999' is not a case"):
        env.reset(options={"case_id": "CRM-99999"})
    with pytest.raises(ValueError, match="only 'case_id'"):
        env.reset(options={"case": WRITE_CASE})
    with pytest.raises(ValueError, match="unknown: \\['nope'\\]"):
        make_env(case_ids=["nope"])


def test_close_deletes_the_episode(make_env: MakeEnv, crm_api: RunningServer) -> None:
    env = make_env()
    _, info = env.reset(options={"case_id": WRITE_CASE})
    assert episode_status(crm_api, info["episode_id"]) == 200
    env.close()
    assert episode_status(crm_api, info["episode_id"]) == 404
    env.close()  # a second close is allowed
    with pytest.raises(EnvironmentClosed, match="closed"):
        env.step({"reply": "hello"})
    with pytest.raises(EnvironmentClosed):
        env.reset()


# ------------------------------------------------------------------------------- errors


def test_step_before_reset_asks_for_a_reset(make_env: MakeEnv) -> None:
    env = make_env()
    with pytest.raises(EpisodeNotRunning, match="before reset") as raised:
        env.step({"reply": "hi"})
    assert isinstance(raised.value, gymnasium.error.ResetNeeded)
    assert raised.value.code == "RESET_NEEDED"


@pytest.mark.parametrize(
    ("action", "message"),
    [
        ("create a quote", "not valid JSON"),
        ("[1, 2]", "must be a JSON object, not list"),
        (42, "JSON string or a mapping, not int"),
        ({"arguments": {}}, "needs 'tool'"),
        ({"tool": "client_search", "reply": "x"}, "not both"),
        ({"tool": "client_search", "args": {}}, "remove \\['args'\\]"),
        ({"tool": "../episodes"}, "must be a tool name"),
        ({"tool": "client_search", "arguments": "{}"}, "'arguments' must be a JSON object"),
        ({"reply": None}, "'reply' must be a string"),
        ({"tool": "client_search", "arguments": {"limit": float("nan")}}, "only JSON values"),
    ],
)
def test_a_malformed_action_is_a_value_error_and_changes_nothing(
    make_env: MakeEnv, action: Any, message: str
) -> None:
    env = make_env()
    env.reset(options={"case_id": WRITE_CASE})
    with pytest.raises(ValueError, match=message) as raised:
        env.step(action)
    assert isinstance(raised.value, InvalidCrmAction)
    assert action not in env.action_space
    _, _, _, _, info = env.step({"tool": "client_search", "arguments": {}})
    assert info["step"] == 1  # the bad action was not counted


def test_an_unreachable_verifier_is_a_service_error(crm_api: RunningServer) -> None:
    env = CrmEnv(crm_api.base_url, f"http://127.0.0.1:{free_port()}", ADMIN_KEY, timeout=5)
    try:
        _, info = env.reset(options={"case_id": WRITE_CASE})
        with pytest.raises(ServiceError) as raised:
            env.step({"reply": "done"})
        assert raised.value.service == "verifier" and raised.value.status == 0
        assert raised.value.code == "UNREACHABLE"
        with pytest.raises(EpisodeNotRunning):
            env.step({"reply": "done"})
    finally:
        env.close()
    assert episode_status(crm_api, info["episode_id"]) == 404


def test_a_dropped_episode_fails_the_step_and_still_closes(
    make_env: MakeEnv, crm_api: RunningServer
) -> None:
    env = make_env()
    _, info = env.reset(options={"case_id": WRITE_CASE})
    httpx.delete(f"{crm_api.base_url}/episodes/{info['episode_id']}", headers=admin())
    with pytest.raises(ServiceError, match="crm_api answered 401 UNAUTHORIZED"):
        env.step({"tool": "client_search", "arguments": {}})
    with pytest.raises(EpisodeNotRunning, match="failed on a CRM API error"):
        env.step({"tool": "client_search", "arguments": {}})
    env.close()  # the episode is gone already: nothing to drop, no error


def test_a_wrong_admin_key_is_a_service_error(crm_api: RunningServer, verifier_url: str) -> None:
    env = CrmEnv(crm_api.base_url, verifier_url, "not-the-key")
    try:
        with pytest.raises(ServiceError, match="crm_api answered 403 FORBIDDEN") as raised:
            env.reset(options={"case_id": WRITE_CASE})
        assert raised.value.status == 403
    finally:
        env.close()


# --------------------------------------------------------------------------- Gymnasium


def test_the_registered_env_passes_gymnasiums_checker(
    crm_api: RunningServer, verifier_url: str
) -> None:
    register_env()
    env = gymnasium.make(
        ENV_ID,
        crm_api_url=crm_api.base_url,
        verifier_url=verifier_url,
        admin_key=ADMIN_KEY,
        case_ids=SAMPLE,
    )
    try:
        assert env.spec is not None and env.spec.nondeterministic
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            check_env(env.unwrapped)
        assert [str(w.message) for w in caught] == []
    finally:
        env.close()


def test_sampled_actions_are_valid_actions(make_env: MakeEnv) -> None:
    env = make_env(case_ids=SAMPLE)
    env.action_space.seed(3)
    samples = [env.action_space.sample() for _ in range(200)]
    assert all(sample in env.action_space for sample in samples)
    assert any('"reply"' in s for s in samples) and any('"tool"' in s for s in samples)
    assert '{"tool": "client_search", "arguments": {}}' in env.action_space
    assert "hello" not in env.action_space
