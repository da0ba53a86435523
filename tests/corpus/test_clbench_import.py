"""Importing CL-Bench conversations as cases, against a real CRM API over HTTP.

The customer's sample file must import whole, every imported case must replay in a fresh
episode and pass its own checks with its reference reply (and fail when nothing is done),
inconsistent data must be reported with a reason, and the command must work end to end.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from crmbench.cli import app
from crmbench_clients.crm_api import CrmApiClient
from crmbench_contracts.cases import Case
from crmbench_corpus.clbench import (
    INCONSISTENT_TAG,
    REPORT_FILE,
    ImportResult,
    ImportStatus,
    assertion_holds,
    case_id_for,
    collateral,
    fact_holds,
    import_clbench,
)
from crmbench_corpus.replay import replay
from crmbench_corpus.store import case_line, content_hash, load_cases
from tests.conftest import ADMIN_KEY, REPO_ROOT, RunningServer, admin, open_episode

try:
    from verifier.scoring import score_case
except ImportError:  # pragma: no cover - the verifier is optional for this test
    score_case = None

SAMPLE = REPO_ROOT / "corpus" / "reference" / "clbench_sample.jsonl"
SAMPLE_LINES = [line for line in SAMPLE.read_text(encoding="utf-8").splitlines() if line.strip()]
SAMPLE_IDS = [json.loads(line)["conversation_id"] for line in SAMPLE_LINES]


@pytest.fixture(scope="module")
async def imported(crm_api: RunningServer) -> ImportResult:
    return await import_clbench(SAMPLE, crm_api.base_url, ADMIN_KEY)


def _case(result: ImportResult, conversation_id: str) -> Case:
    wanted = case_id_for(conversation_id)
    return next(case for case in result.cases if case.case_id == wanted)


async def _play(http: httpx.AsyncClient, case: Case) -> tuple[Any, Any, Any]:
    """Replays the case's reference in a fresh episode of its seed, today and actor;
    returns (state before, state after, change log)."""
    body = case.model_dump(mode="json")
    episode = await open_episode(
        http, {"today": body["today"], "actor": body["actor"], "seed": body["seed"]}
    )
    try:
        before = json.loads(await episode.state())
        async with CrmApiClient(str(http.base_url), ADMIN_KEY) as crm:
            await replay(crm, episode.token, case.expected.reference_actions, strict=True)
        return before, json.loads(await episode.state()), await episode.changes()
    finally:
        await http.delete(f"/episodes/{episode.episode_id}", headers=admin())


def _score(case: Case, state: Any, changes: Any, reply: str) -> tuple[float, list[str]]:
    """The verifier's score when it is there, else the importer's own checker."""
    if score_case is not None:
        record = score_case(case, state, changes, reply)
        return record.score, [c.rationale for c in record.checks if not c.passed]
    tables = state["tables"]
    checks = [(a.weight, assertion_holds(a, tables), a.description) for a in case.expected.state]
    damage = collateral(case.expected.allowed_changes, changes["tool_calls"], tables)
    checks.append((1.0, not damage, f"collateral: {damage}"))
    checks += [(f.weight, fact_holds(f, reply), f.fact) for f in case.expected.communicate]
    score = 0.0 if damage else sum(w for w, ok, _ in checks if ok) / sum(w for w, _, _ in checks)
    return score, [why for _, ok, why in checks if not ok]


async def _assert_solvable(http: httpx.AsyncClient, case: Case) -> None:
    before, after, changes = await _play(http, case)
    for assertion in case.expected.state:
        assert assertion_holds(assertion, after["tables"]), assertion.description
    score, failed = _score(case, after, changes, case.expected.reference_reply)
    assert score == 1.0, (case.case_id, failed)
    nothing, _ = _score(case, before, {"tool_calls": []}, "")
    assert nothing < 0.9, f"{case.case_id}: doing nothing scores {nothing}"


# ---------------------------------------------------------------------------- the sample


def test_every_sample_conversation_is_imported_and_reported(imported: ImportResult) -> None:
    assert len(SAMPLE_LINES) == 25
    assert [entry.conversation_id for entry in imported.entries] == SAMPLE_IDS
    assert [entry.line for entry in imported.entries] == list(range(1, 26))
    for entry in imported.entries:
        assert entry.status in (ImportStatus.IMPORTED, ImportStatus.REPAIRED), entry
        assert entry.reason
        assert (entry.status == ImportStatus.REPAIRED) == bool(entry.repairs)
    assert len(imported.cases) == 25
    assert len({case.case_id for case in imported.cases}) == 25
    for case, conversation_id in zip(imported.cases, SAMPLE_IDS, strict=True):
        assert Case.model_validate_json(case_line(case)) == case
        assert case.case_id == case_id_for(conversation_id) and case.case_id.startswith("CLB-")
        assert f"clbench:{conversation_id}" in case.tags
        assert case.split == "eval" and case.today.isoformat() == "2025-11-12"
        assert case.expected.state or case.expected.communicate


def test_categories_difficulty_actor_and_seed(imported: ImportResult) -> None:
    created = _case(imported, "SKEL-CREATE NEW OPPORTUNITY_simple_0_3786bdf1")
    assert created.task_category == "CREATE NEW OPPORTUNITY"
    assert created.workflow == "Opportunity Management" and created.difficulty == "simple"
    assert created.actor.model_dump() == {"name": "Sam Rivera", "role": "sales_rep"}
    assert created.seed["client"][0]["client_id"] == "b470153e-838b-4355-8cbb-84406dc5edec"
    complex_case = _case(imported, "SKEL-CREATE NEW OPPORTUNITY_complex_0_2_5a5eb461")
    assert complex_case.difficulty == "complex" and len(complex_case.turns) == 10
    deleting = _case(imported, "SKEL-DELETE OPPORTUNITY_simple_0_3c29897f")
    assert deleting.actor.role == "manager"
    assert deleting.expected.state[0].kind == "row_absent"
    # Two seeded quotes of one deal share version "1.0": renumbered, and reported.
    quotes = _case(imported, "SKEL-MODIFY QUOTE_medium_0_2_b89302fe")
    assert [q["version"] for q in quotes.seed["quote"]] == ["1", "2"]
    entry = next(e for e in imported.entries if e.case_id == quotes.case_id)
    assert entry.status == ImportStatus.REPAIRED and "version" in entry.repairs[0]


def test_references_are_converted_and_placeholders_replaced(imported: ImportResult) -> None:
    for case in imported.cases:
        text = case_line(case)
        assert "{{turn_" not in text, case.case_id
        for turn in case.turns:
            assert "{{" not in turn.content and not re.search(r"\{\w+\}", turn.content), turn
        for action in case.expected.reference_actions:
            assert "document_url" not in action.args
    # {{turn_1.client_id}} became a step reference the replay resolves.
    deal = _case(imported, "SKEL-CREATE NEW OPPORTUNITY_medium_0_12_8ce4c848")
    assert deal.expected.reference_actions[1].args["client_id"] == "{{step_1.client_id}}"
    assert deal.expected.reference_actions[2].args == {
        "opportunity_id": "{{step_2.opportunity_id}}"
    }
    # ...and the user's words name what the reference refers to, without ids to guess.
    assert "the one you created earlier" in deal.turns[2].content
    assert "amount: 75000" in deal.turns[1].content
    # {{opportunity_name}}: one deterministic value, in the words and in the arguments.
    created = _case(imported, "SKEL-CREATE NEW OPPORTUNITY_simple_0_3786bdf1")
    name = created.expected.reference_actions[0].args["name"]
    assert "{{" not in name and name in created.turns[0].content
    assert created.expected.state[0].where["name"] == name
    # upload_document takes file_url.
    upload = _case(imported, "SKEL-UPLOAD DOCUMENT_medium_0_13_2f200383")
    args = upload.expected.reference_actions[1].args
    assert args["file_url"] == "https://example.com/document.pdf"
    # A search whose first result here is a world record is pinned to the seeded record.
    contact = _case(imported, "SKEL-CONTACT SEARCH_medium_0_2_95112ec6")
    seeded = contact.seed["contact"][0]["contact_id"]
    assert contact.expected.reference_actions[1].args["contact_id"] == seeded
    assert seeded in contact.turns[1].content


def test_read_only_conversations_must_say_what_they_found(imported: ImportResult) -> None:
    search = _case(imported, "SKEL-CLIENT SEARCH_medium_0_7_a57accd6")
    assert not search.expected.state and not search.expected.allowed_changes
    assert any("Acme Corporation" in f.any_of for f in search.expected.communicate)
    empty = _case(imported, "SKEL-CONTRACT SEARCH_simple_0_2_759daaa4")
    assert "no results" in empty.expected.communicate[0].any_of


@pytest.mark.parametrize("conversation_id", SAMPLE_IDS)
async def test_imported_case_replays_and_passes(
    http: httpx.AsyncClient, imported: ImportResult, conversation_id: str
) -> None:
    await _assert_solvable(http, _case(imported, conversation_id))


# ---------------------------------------------------------------------------- bad data

CLIENT = "11111111-1111-4111-8111-111111111111"
OPP = "22222222-2222-4222-8222-222222222222"
SEED = {
    "Client": {CLIENT: {"name": "Tessellate Test Works", "email": "hi@tessellate.example.com",
                        "status": "Active"}},
    "Opportunity": {OPP: {"name": "Tessellate Renewal", "client_id": CLIENT,
                          "stage": "Qualification", "amount": 40000}},
}  # fmt: skip


def _conversation(conversation_id: str, *turns: dict[str, Any]) -> str:
    full = [
        {"turn_id": n, "expect_success": True, "expected_args": {}, **turn}
        for n, turn in enumerate(turns, start=1)
    ]
    return json.dumps(
        {
            "conversation_id": conversation_id,
            "workflow_category": "Opportunity Management",
            "complexity_level": "simple",
            "turns": full,
            "initial_entities": {"seed_data": SEED},
        }
    )


async def test_inconsistent_conversations_are_reported(
    crm_api: RunningServer, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    wrong_client = "99999999-9999-4999-8999-999999999999"
    lines = [
        _conversation("TEST-wrong-client", {
            "user_utterance": f"Create an opportunity Tessellate Pilot for client {wrong_client}",
            "expected_tool": "create_new_opportunity",
            "expected_args": {"name": "Tessellate Pilot", "client_id": wrong_client,
                              "stage": "Prospecting", "amount": 12000}}),
        _conversation("TEST-missing-turn", {
            "user_utterance": "Show me the details",
            "expected_tool": "quote_details",
            "expected_args": {"quote_id": "{{turn_7.quote_id}}"}}),
        _conversation("TEST-refused", {
            "user_utterance": f"Mark opportunity {OPP} as won",
            "expected_tool": "modify_opportunity",
            "expected_args": {"opportunity_id": OPP, "stage": "Closed-Won"}}),
        _conversation("TEST-expected-failure", {
            "user_utterance": f"Set the probability of {OPP} to 150",
            "expected_tool": "modify_opportunity",
            "expected_args": {"opportunity_id": OPP, "probability": 150},
            "expect_success": False, "failure_category": "PROBABILITY_OUT_OF_RANGE"}),
        _conversation("TEST-unknown-tool", {
            "user_utterance": "Email the client", "expected_tool": "send_email"}),
        '{"conversation_id": "TEST-broken", "turns": "not a list"}',
        _conversation("TEST-wrong-client", {
            "user_utterance": "again", "expected_tool": "client_search"}),
    ]  # fmt: skip
    source = tmp_path / "bad.jsonl"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")

    result = await import_clbench(source, crm_api.base_url, ADMIN_KEY)

    entries = {(e.line, e.conversation_id): e for e in result.entries}
    assert len(result.entries) == len(lines)
    repaired = entries[(1, "TEST-wrong-client")]
    assert repaired.status == ImportStatus.REPAIRED
    assert wrong_client in repaired.repairs[0] and CLIENT in repaired.repairs[0]
    missing = entries[(2, "TEST-missing-turn")]
    assert missing.status == ImportStatus.NOT_IMPORTED and "turn 7" in missing.reason
    refused = entries[(3, "TEST-refused")]
    assert refused.status == ImportStatus.REPAIRED
    assert "INVALID_STAGE_TRANSITION" in refused.repairs[0]
    expected_failure = entries[(4, "TEST-expected-failure")]
    assert expected_failure.status == ImportStatus.IMPORTED, expected_failure
    unknown = entries[(5, "TEST-unknown-tool")]
    assert unknown.status == ImportStatus.NOT_IMPORTED and "send_email" in unknown.reason
    broken = entries[(6, "TEST-broken")]
    assert broken.status == ImportStatus.NOT_IMPORTED and "turns" in broken.reason
    duplicate = entries[(7, "TEST-wrong-client")]
    assert duplicate.status == ImportStatus.NOT_IMPORTED and "duplicate" in duplicate.reason

    cases = {case.case_id: case for case in result.cases}
    assert len(cases) == 3
    mismatch = cases[case_id_for("TEST-wrong-client")]
    assert INCONSISTENT_TAG in mismatch.tags
    assert mismatch.expected.reference_actions[0].args["client_id"] == CLIENT
    assert CLIENT in mismatch.turns[0].content and wrong_client not in case_line(mismatch)
    won = cases[case_id_for("TEST-refused")]
    assert won.expected.reference_actions[0].expect_error == "INVALID_STAGE_TRANSITION"
    assert won.failure is not None and won.failure.category == "INVALID_STAGE_TRANSITION"
    assert not won.expected.state and won.expected.communicate
    probability = cases[case_id_for("TEST-expected-failure")]
    assert probability.expected.reference_actions[0].expect_error == "PROBABILITY_OUT_OF_RANGE"
    assert INCONSISTENT_TAG not in probability.tags
    for case in cases.values():
        await _assert_solvable(http, case)


async def test_missing_seed_fields_get_documented_defaults(
    crm_api: RunningServer, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    quote = "33333333-3333-4333-8333-333333333333"
    line = json.dumps(
        {
            "conversation_id": "TEST-defaults",
            "complexity_level": "simple",
            "turns": [{"turn_id": 1, "user_utterance": f"Show me quote {quote}",
                       "expected_tool": "quote_details", "expected_args": {"quote_id": quote}}],
            "initial_entities": {"seed_data": {
                "Client": {CLIENT: {"name": "Tessellate Test Works"}},
                "Opportunity": {OPP: {"name": "Tessellate Renewal", "client_id": CLIENT}},
                "Quote": {quote: {"opportunity_id": OPP}},
            }},
        }
    )  # fmt: skip
    source = tmp_path / "defaults.jsonl"
    source.write_text(line + "\n", encoding="utf-8")

    result = await import_clbench(source, crm_api.base_url, ADMIN_KEY)

    [entry] = result.entries
    assert entry.status == ImportStatus.IMPORTED, entry
    assert any("opportunity.amount" in note for note in entry.notes)
    [case] = result.cases
    assert "clbench:default:quote.version" in case.tags
    assert case.seed["client"][0]["status"] == "Prospect"
    assert (
        case.seed["opportunity"][0] | {"stage": "Prospecting", "amount": 10000}
        == (case.seed["opportunity"][0])
    )
    assert (
        case.seed["quote"][0] | {"version": "1", "amount": 10000, "status": "Draft"}
        == (case.seed["quote"][0])
    )
    assert case.workflow == "General" and case.task_category == "QUOTE DETAILS"
    await _assert_solvable(http, case)


# ---------------------------------------------------------------------------- the command


def test_command_imports_end_to_end(
    crm_api: RunningServer,
    imported: ImportResult,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source = tmp_path / "three.jsonl"
    source.write_text("\n".join(SAMPLE_LINES[:3]) + "\nnot json\n", encoding="utf-8")
    out = tmp_path / "out"
    monkeypatch.setenv("CRMBENCH_ADMIN_KEY", ADMIN_KEY)
    runner = CliRunner()
    args = ["cases", "import-clbench", str(source), "--out", str(out),
            "--crm-api-url", crm_api.base_url]  # fmt: skip

    result = runner.invoke(app, args)

    assert result.exit_code == 0, result.output
    assert "conversation_id" in result.output and "not imported" in result.output
    assert "4 conversation(s): 3 imported, 0 imported-with-repairs, 1 not imported" in result.output
    cases = load_cases(out)
    lines = (out / "cases.jsonl").read_text(encoding="utf-8").splitlines()
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["total"] == 3 and manifest["source"] == str(source)
    assert manifest["content_hash"] == content_hash(lines)
    report = json.loads((out / REPORT_FILE).read_text(encoding="utf-8"))
    assert [e["status"] for e in report["entries"]] == ["imported"] * 3 + ["not imported"]
    assert "not a CL-Bench conversation" in report["entries"][3]["reason"]
    # Same conversation, same case, byte for byte, whichever way it was imported.
    for case, conversation_id in zip(cases, SAMPLE_IDS[:3], strict=True):
        assert case_line(case) == case_line(_case(imported, conversation_id))

    monkeypatch.delenv("CRMBENCH_ADMIN_KEY")
    refused = runner.invoke(app, args)
    assert refused.exit_code == 1 and "CRMBENCH_ADMIN_KEY" in refused.output


def test_command_starts_its_own_crm_api(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "one.jsonl"
    source.write_text(SAMPLE_LINES[2] + "\n", encoding="utf-8")
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.delenv("CRMBENCH_ADMIN_KEY", raising=False)

    result = CliRunner().invoke(
        app, ["cases", "import-clbench", str(source), "--out", str(tmp_path / "out")]
    )

    assert result.exit_code == 0, result.output
    [case] = load_cases(tmp_path / "out")
    assert case.case_id == case_id_for(SAMPLE_IDS[2]) and case.actor.role == "manager"


def test_command_refuses_a_wrong_admin_key(
    crm_api: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "one.jsonl"
    source.write_text(SAMPLE_LINES[0] + "\n", encoding="utf-8")
    monkeypatch.setenv("CRMBENCH_ADMIN_KEY", "not-the-key")
    args = ["cases", "import-clbench", str(source), "--out", str(tmp_path / "out"),
            "--crm-api-url", crm_api.base_url]  # fmt: skip

    result = CliRunner().invoke(app, args)

    assert result.exit_code == 1 and "admin key" in result.output
    assert not (tmp_path / "out").exists()


def _failing_proxy(upstream: str, failing_path: str) -> Any:
    """An ASGI app that forwards every request to `upstream`, except POST `failing_path`,
    which it answers with a 500 in the error format (a CRM API fault on one tool)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    async def forward(request: Request) -> Response:
        if request.method == "POST" and request.url.path == failing_path:
            body = {"error": {"code": "INTERNAL_ERROR", "message": "injected fault"}}
            return JSONResponse(body, status_code=500)
        async with httpx.AsyncClient(base_url=upstream, timeout=60) as client:
            answer = await client.request(
                request.method,
                request.url.path,
                params=request.query_params,
                content=await request.body(),
                headers={k: v for k, v in request.headers.items() if k.lower() != "host"},
            )
        headers = {k: v for k, v in answer.headers.items() if k.lower() == "content-type"}
        return Response(answer.content, status_code=answer.status_code, headers=headers)

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
    return Starlette(routes=[Route("/{path:path}", forward, methods=methods)])


async def test_a_server_error_on_one_conversation_does_not_stop_the_import(
    crm_api: RunningServer,
) -> None:
    from crmbench_clients.serving import serving_in_thread

    proxy = _failing_proxy(crm_api.base_url, "/tools/create_quote")
    with serving_in_thread(proxy, "fault-injecting proxy") as url:
        result = await import_clbench(SAMPLE, url, ADMIN_KEY)
    uses_quotes = {
        json.loads(line)["conversation_id"]
        for line in SAMPLE_LINES
        if any(t.get("expected_tool") == "create_quote" for t in json.loads(line)["turns"])
    }
    assert uses_quotes, "the sample has conversations that create quotes"
    statuses = {entry.conversation_id: entry for entry in result.entries}
    assert len(statuses) == len(SAMPLE_IDS)
    for conversation_id in uses_quotes:
        entry = statuses[conversation_id]
        assert entry.status is ImportStatus.NOT_IMPORTED, conversation_id
        assert "500" in entry.reason and "INTERNAL_ERROR" in entry.reason, entry.reason
    others = [e for cid, e in statuses.items() if cid not in uses_quotes]
    assert any(e.status is not ImportStatus.NOT_IMPORTED for e in others)
