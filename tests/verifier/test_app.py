"""The verifier service over real HTTP, reading real episodes from the session's crm_api."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from crmbench_clients.serving import free_port
from crmbench_contracts.cases import Case
from crmbench_contracts.rewards import JudgeScore, RewardRecord
from crmbench_corpus.store import case_line
from tests.conftest import ADMIN_KEY, Episode, RunningServer, admin, open_episode
from tests.verifier.conftest import Served, keyed
from tests.verifier.factories import (
    allow,
    assertion,
    client,
    make_case,
    mentions,
    mentions_value,
    opportunity,
    state_of,
)
from verifier.app import create_app
from verifier.judges import JudgeRequest, ScriptedJudge
from verifier.settings import VerifierSettings

# The task: "Draft a quote for the Verity platform deal at 60,000 and tell me the amount."
CASE: Case = make_case(
    case_id="vfy-http-quote",
    seed={
        "client": [
            {
                "client_id": "c-vfy",
                "name": "Verity Labs",
                "email": "ops@verity-labs.example.com",
                "status": "Active",
            },
        ],
        "opportunity": [
            {
                "opportunity_id": "o-vfy",
                "name": "Verity platform",
                "client_id": "c-vfy",
                "stage": "Proposal",
                "amount": 55000,
                "probability": 50,
                "close_date": "2026-03-31",
            },
        ],
    },
    state=[assertion("row_exists", "quote", {"opportunity_id": "o-vfy", "amount": 60000})],
    allowed=[allow("quote", ["INSERT"], {"opportunity_id": "o-vfy"}, max_rows=1)],
    communicate=[
        mentions("quote"),
        mentions_value("quote", {"opportunity_id": "o-vfy"}, "amount"),
    ],
    turns=["Draft a quote for the Verity platform deal at 60,000 and tell me the amount."],
)
REPLY = "Done: I drafted a quote for Verity platform at $60,000."


def episode_payload(case: Case) -> dict[str, Any]:
    """The episode route does not take a case id yet: the case's seed, clock and actor."""
    return {
        "today": case.today.isoformat(),
        "actor": case.actor.model_dump(),
        "seed": case.seed,
    }


def settings_for(crm_api_url: str, **overrides: Any) -> VerifierSettings:
    values: dict[str, Any] = {"crm_api_url": crm_api_url, "admin_key": ADMIN_KEY} | overrides
    return VerifierSettings(**values)


@pytest.fixture
async def verifier(crm_api: RunningServer, served: Served) -> AsyncIterator[httpx.AsyncClient]:
    """A verifier over the session's crm_api, knowing only CASE."""
    url = served(create_app(settings_for(crm_api.base_url), cases={CASE.case_id: CASE}))
    async with httpx.AsyncClient(base_url=url, timeout=60, headers=keyed()) as client_:
        yield client_


@pytest.fixture
async def case_episode(http: httpx.AsyncClient) -> AsyncIterator[Episode]:
    opened = await open_episode(http, episode_payload(CASE))
    yield opened
    await http.delete(f"/episodes/{opened.episode_id}", headers=admin())


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and {"code", "field", "message", "allowed"} <= set(body["error"])
    error: dict[str, Any] = body["error"]
    return error


# ---------------------------------------------------------------------------- POST /verify


async def test_a_correct_episode_scores_one(
    verifier: httpx.AsyncClient, case_episode: Episode
) -> None:
    await case_episode.ok("create_quote", {"opportunity_id": "o-vfy", "amount": 60000})
    response = await verifier.post(
        "/verify",
        json={"case_id": CASE.case_id, "episode_id": case_episode.episode_id, "final_reply": REPLY},
    )
    assert response.status_code == 200, response.text
    record = RewardRecord.model_validate(response.json())
    assert record.episode_id == case_episode.episode_id
    assert record.collateral == []
    assert [c.passed for c in record.checks] == [True, True, True, True, True], record.checks
    assert record.checks[-1].check_id == "outcome" and record.claimed_outcome == "completed"
    assert record.score == 1.0 and record.passed
    assert record.verdicts == {"0.7": True, "0.8": True, "0.9": True}
    # no judge is configured: the reply was read offline, and the record says so
    assert response.json()["verification_mode"] == "offline"


async def test_a_missing_change_and_a_vague_reply_score_low(
    verifier: httpx.AsyncClient, case_episode: Episode
) -> None:
    response = await verifier.post(
        "/verify",
        json={
            "case_id": CASE.case_id,
            "episode_id": case_episode.episode_id,
            "final_reply": "Sorry, I could not do it.",
        },
    )
    record = RewardRecord.model_validate(response.json())
    by_id = {c.check_id: c for c in record.checks}
    assert not by_id["state[0]"].passed and by_id["collateral"].passed
    assert "$ref: no quote row matches" in by_id["communicate[1]"].rationale
    # the reply claims a refusal, which a case that asks for a quote does not accept
    assert record.claimed_outcome == "refused" and not by_id["outcome"].passed
    assert record.score == 0.0 and not record.passed


async def test_an_extra_unrelated_change_is_collateral_and_scores_zero(
    verifier: httpx.AsyncClient, case_episode: Episode, http: httpx.AsyncClient
) -> None:
    await case_episode.ok("create_quote", {"opportunity_id": "o-vfy", "amount": 60000})
    extra = await http.post(
        "/tools/modify_client",
        json={"client_id": "c-vfy", "phone": "555-0100"},
        headers={**case_episode.auth, "X-Tool-Call-Id": "extra-1"},
    )
    assert extra.status_code == 200, extra.text
    response = await verifier.post(
        "/verify",
        json={"case_id": CASE.case_id, "episode_id": case_episode.episode_id, "final_reply": REPLY},
    )
    record = RewardRecord.model_validate(response.json())
    assert record.score == 0.0 and record.structured_score == 0.0 and not record.passed
    assert [(c.table, c.op, c.key, c.tool_call_id) for c in record.collateral] == [
        ("client", "UPDATE", "c-vfy", "extra-1")
    ]
    collateral = next(c for c in record.checks if c.check_id == "collateral")
    assert not collateral.passed and collateral.actual == {"changes": 2, "collateral": 1}


async def test_an_unknown_case_is_404(verifier: httpx.AsyncClient, case_episode: Episode) -> None:
    response = await verifier.post(
        "/verify",
        json={"case_id": "no-such-case", "episode_id": case_episode.episode_id, "final_reply": ""},
    )
    error = error_of(response, 404)
    assert error["code"] == "CASE_NOT_FOUND" and error["field"] == "case_id"


async def test_a_non_existent_episode_is_404(verifier: httpx.AsyncClient) -> None:
    response = await verifier.post(
        "/verify",
        json={"case_id": CASE.case_id, "episode_id": "ep_0000000000000000", "final_reply": ""},
    )
    error = error_of(response, 404)
    assert error["code"] == "EPISODE_NOT_FOUND" and error["field"] == "episode_id"


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        ([], "INVALID_REQUEST", None),
        ("a string", "INVALID_REQUEST", None),
        ({"case_id": CASE.case_id, "episode_id": "ep_1"}, "MISSING_REQUIRED_FIELD", "final_reply"),
        (
            {"case_id": CASE.case_id, "episode_id": "ep_1", "final_reply": "", "score": 1},
            "EXTRA_FIELD",
            "score",
        ),
        (
            {"case_id": CASE.case_id, "episode_id": "../health", "final_reply": ""},
            "INVALID_REQUEST",
            "episode_id",
        ),
        ({"case_id": 7, "episode_id": "ep_1", "final_reply": ""}, "TYPE_MISMATCH", "case_id"),
    ],
)
async def test_a_bad_body_is_422(
    verifier: httpx.AsyncClient, body: Any, code: str, field: str | None
) -> None:
    error = error_of(await verifier.post("/verify", json=body), 422)
    assert (error["code"], error["field"]) == (code, field)


async def test_a_body_that_is_not_json_is_422(verifier: httpx.AsyncClient) -> None:
    response = await verifier.post(
        "/verify", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert error_of(response, 422)["code"] == "INVALID_REQUEST"


async def test_an_unreachable_crm_api_is_502(served: Served) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    url = served(create_app(settings_for(dead), cases={CASE.case_id: CASE}))
    async with httpx.AsyncClient(base_url=url, timeout=60, headers=keyed()) as verifier:
        response = await verifier.post(
            "/verify",
            json={"case_id": CASE.case_id, "episode_id": "ep_0000000000000000", "final_reply": ""},
        )
    error = error_of(response, 502)
    assert error["code"] == "CRM_API_UNAVAILABLE"
    assert dead in error["message"] and "is it running?" in error["message"]


async def test_a_wrong_admin_key_is_502_and_no_key_is_503(
    crm_api: RunningServer, served: Served
) -> None:
    body = {"case_id": CASE.case_id, "episode_id": "ep_0000000000000000", "final_reply": ""}
    cases = {CASE.case_id: CASE}
    wrong_key = "not-the-crm-api-admin-key"
    wrong = served(create_app(settings_for(crm_api.base_url, admin_key=wrong_key), cases=cases))
    # Its own key for the scoring routes, but none for the CRM API.
    own = settings_for(crm_api.base_url, admin_key=None, verifier_key=ADMIN_KEY)
    missing = served(create_app(own, cases=cases))
    async with httpx.AsyncClient(timeout=60) as http:
        refused = error_of(
            await http.post(
                f"{wrong}/verify", json=body, headers={"Authorization": f"Bearer {wrong_key}"}
            ),
            502,
        )
        unset = error_of(await http.post(f"{missing}/verify", json=body, headers=keyed()), 503)
    assert refused["code"] == "CRM_API_ERROR" and "CRMBENCH_ADMIN_KEY" in refused["message"]
    assert unset["code"] == "NOT_CONFIGURED" and "CRMBENCH_ADMIN_KEY" in unset["message"]


# ---------------------------------------------------------------------------- the verifier key


@pytest.mark.parametrize("route", ["/verify", "/verify/state"])
async def test_scoring_needs_the_verifier_key(
    verifier: httpx.AsyncClient, case_episode: Episode, route: str
) -> None:
    """No key is 401, another key 403, and an episode token, which an agent holds, is
    refused too: an agent can never learn its score or the expected values early."""
    await case_episode.ok("create_quote", {"opportunity_id": "o-vfy", "amount": 60000})
    body: dict[str, Any] = {"case_id": CASE.case_id, "final_reply": REPLY}
    if route == "/verify":
        body["episode_id"] = case_episode.episode_id
    else:
        body |= {"state": {"tables": {}}, "changes": {"tool_calls": []}}
    async with httpx.AsyncClient(base_url=str(verifier.base_url), timeout=60) as bare:
        missing = error_of(await bare.post(route, json=body), 401)
        token = error_of(await bare.post(route, json=body, headers=case_episode.auth), 403)
        other = error_of(
            await bare.post(route, json=body, headers={"Authorization": "Bearer " + "x" * 32}),
            403,
        )
        not_bearer = error_of(
            await bare.post(route, json=body, headers={"Authorization": f"Basic {ADMIN_KEY}"}),
            401,
        )
        health = await bare.get("/health")
    assert missing["code"] == not_bearer["code"] == "UNAUTHORIZED"
    assert token["code"] == other["code"] == "FORBIDDEN"
    for refusal in (missing, token, other):
        assert "expected" not in str(refusal) and "60000" not in str(refusal)
    assert health.status_code == 200
    # The key itself gets the score.
    assert (await verifier.post(route, json=body)).status_code == 200


async def test_a_separate_verifier_key_replaces_the_admin_key(
    crm_api: RunningServer, served: Served, case_episode: Episode
) -> None:
    own_key = "a-verifier-key-of-its-own-0123"
    settings = settings_for(crm_api.base_url, verifier_key=own_key)
    url = served(create_app(settings, cases={CASE.case_id: CASE}))
    body = {"case_id": CASE.case_id, "episode_id": case_episode.episode_id, "final_reply": ""}
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        admin_refused = error_of(await http.post("/verify", json=body, headers=keyed()), 403)
        scored = await http.post(
            "/verify", json=body, headers={"Authorization": f"Bearer {own_key}"}
        )
    assert admin_refused["code"] == "FORBIDDEN"
    assert scored.status_code == 200, scored.text


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"admin_key": None}, "set CRMBENCH_VERIFIER_KEY, or CRMBENCH_ADMIN_KEY"),
        ({"admin_key": "change-me"}, "CRMBENCH_ADMIN_KEY is a well-known placeholder"),
        ({"verifier_key": "short-key"}, "CRMBENCH_VERIFIER_KEY is too short (9 characters"),
    ],
)
def test_the_verifier_refuses_to_start_without_a_strong_key(
    overrides: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)) as refused:
        create_app(settings_for("http://127.0.0.1:9", **overrides))
    assert "\n" not in str(refused.value)


# ---------------------------------------------------------------------------- POST /verify/state


async def test_verify_state_scores_an_inline_state(verifier: httpx.AsyncClient) -> None:
    quote = {
        "quote_id": "q-1",
        "opportunity_id": "o-vfy",
        "version": "1",
        "amount": 60000.0,
        "status": "Draft",
        "valid_until": None,
        "created_date": None,
        "quote_prefix": "Q",
    }
    state = state_of(
        client=[client("c-vfy", "Verity Labs")],
        opportunity=[opportunity("o-vfy", "c-vfy")],
        quote=[quote],
    )
    changes = {
        "tool_calls": [
            {
                "tool_call_id": "t1",
                "tool": "create_quote",
                "changes": [
                    {
                        "seq": 1,
                        "table": "quote",
                        "op": "INSERT",
                        "key": "q-1",
                        "before": None,
                        "after": quote,
                    }
                ],
            }
        ]
    }
    body = {"case_id": CASE.case_id, "state": state, "changes": changes, "final_reply": REPLY}
    response = await verifier.post("/verify/state", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["score"] == 1.0
    without_changes = await verifier.post("/verify/state", json={**body, "changes": None})
    assert error_of(without_changes, 422)["field"] == "changes"
    empty_log = {k: v for k, v in body.items() if k != "changes"}
    record = RewardRecord.model_validate(
        (await verifier.post("/verify/state", json=empty_log)).json()
    )
    # no changes given: the state holds the quote, but "done" with nothing done fails
    gate = next(c for c in record.checks if c.check_id == "outcome")
    assert not gate.passed and "changed nothing" in gate.rationale
    bad = await verifier.post("/verify/state", json={**body, "state": {"tables": {"quote": [1]}}})
    assert error_of(bad, 422)["field"] == "state.tables.quote.0"


async def test_judges_are_run_and_recorded(crm_api: RunningServer, served: Served) -> None:
    judges = [ScriptedJudge("a", 1.0), ScriptedJudge("b", 0.4)]
    arbiter = ScriptedJudge("arbiter", 0.5, rationale="half right")
    app = create_app(
        settings_for(crm_api.base_url), cases={CASE.case_id: CASE}, judges=judges, arbiter=arbiter
    )
    url = served(app)
    state = state_of(client=[client("c-vfy", "Verity Labs")])
    async with httpx.AsyncClient(base_url=url, timeout=60, headers=keyed()) as verifier:
        response = await verifier.post(
            "/verify/state",
            json={
                "case_id": CASE.case_id,
                "state": state,
                "final_reply": "hello",
                "transcript": [{"role": "user", "content": "hi"}],
            },
        )
    record = RewardRecord.model_validate(response.json())
    assert [j.judge for j in record.judges] == ["a", "b"]
    assert record.arbiter == JudgeScore(
        judge="arbiter", score=0.5, uncertainty=0.0, rationale="half right"
    )
    request: JudgeRequest = arbiter.requests[0]
    assert request.transcript == [{"role": "user", "content": "hi"}]
    assert request.state_summary == {"changes": []}
    # "hello" claims nothing was refused, but nothing changed: the outcome gate fails
    # whatever the judges say (the weighting itself: tests/verifier/test_judges.py)
    assert record.score == 0.0 and record.claimed_outcome == "completed"
    assert response.json()["verification_mode"] == "judges+arbiter"


async def test_a_failing_judge_is_502(crm_api: RunningServer, served: Served) -> None:
    class BrokenJudge(ScriptedJudge):
        async def judge(self, request: JudgeRequest) -> JudgeScore:
            raise ConnectionError("provider down")

    url = served(
        create_app(
            settings_for(crm_api.base_url),
            cases={CASE.case_id: CASE},
            judges=[BrokenJudge("broken")],
        )
    )
    async with httpx.AsyncClient(base_url=url, timeout=60, headers=keyed()) as verifier:
        response = await verifier.post(
            "/verify/state", json={"case_id": CASE.case_id, "state": state_of(), "final_reply": ""}
        )
    error = error_of(response, 502)
    assert error["code"] == "JUDGE_FAILED" and "provider down" in error["message"]


# ---------------------------------------------------------------------------- corpus, service


async def test_without_a_corpus_verify_is_503_until_the_file_appears(
    crm_api: RunningServer, served: Served, tmp_path: Path
) -> None:
    url = served(create_app(settings_for(crm_api.base_url, corpus_dir=tmp_path)))
    body = {"case_id": CASE.case_id, "state": state_of(), "final_reply": "quote $60,000"}
    async with httpx.AsyncClient(base_url=url, timeout=60, headers=keyed()) as verifier:
        assert (await verifier.get("/health")).json()["cases"] is None
        error = error_of(await verifier.post("/verify/state", json=body), 503)
        assert error["code"] == "CORPUS_UNAVAILABLE" and "cases.jsonl" in error["message"]
        episode_body = {"case_id": CASE.case_id, "episode_id": "ep_1", "final_reply": ""}
        missing = error_of(await verifier.post("/verify", json=episode_body), 503)
        assert missing["code"] == "CORPUS_UNAVAILABLE"
        (tmp_path / "cases.jsonl").write_text(case_line(CASE) + "\n", encoding="utf-8")
        response = await verifier.post("/verify/state", json=body)
        assert response.status_code == 200, response.text
        assert (await verifier.get("/health")).json()["cases"] == 1


async def test_health_routes_and_operation_ids(verifier: httpx.AsyncClient) -> None:
    health = (await verifier.get("/health")).json()
    assert health["status"] == "ok" and health["cases"] == 1
    document = (await verifier.get("/openapi.json")).json()
    operations = {
        (path, method): spec.get("operationId")
        for path, methods in document["paths"].items()
        for method, spec in methods.items()
    }
    assert operations == {
        ("/health", "get"): "health",
        ("/verify", "post"): "verify_episode",
        ("/verify/state", "post"): "verify_state",
    }
    assert error_of(await verifier.get("/nowhere"), 404)["code"] == "NOT_FOUND"
    assert error_of(await verifier.get("/verify"), 405)["code"] == "METHOD_NOT_ALLOWED"
