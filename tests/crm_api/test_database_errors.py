"""Errors that tell the truth (issue 12, item 7): a database that cannot be reached is 503
DATABASE_UNAVAILABLE, a value Postgres refuses is a 422 naming the field, a unique clash is
409 DUPLICATE_UNIQUE_FIELD, an unexpected failure is a JSON 500, and case-insensitive
comparison has one definition (Postgres' lower(), on both sides)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from crm_api.app import create_app
from crm_api.database import create_engine
from crm_api.errors import database_error
from crm_api.settings import CrmApiSettings
from crmbench_clients.serving import free_port, serving_in_thread
from crmbench_contracts.api_errors import ErrorCode
from tests.conftest import ADMIN_KEY, REPO_ROOT, Episode, admin, open_episode

RETRY_MESSAGE = "Retry the call"


def _error(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"].startswith("application/json"), response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"code", "field", "message", "allowed"}
    return error


@contextlib.contextmanager
def _serve(app: FastAPI) -> Iterator[str]:
    with serving_in_thread(app, "CRM API") as base_url:
        yield base_url


def _settings(database_url: str) -> CrmApiSettings:
    return CrmApiSettings(
        database_url=database_url, admin_key=ADMIN_KEY, pool_size=1, reaper_interval_seconds=60
    )


def _unreachable_urls(database_url: str) -> dict[str, str]:
    url = make_url(database_url)
    return {
        "closed port": url.set(host="127.0.0.1", port=free_port()).render_as_string(False),
        "missing database": url.set(database="crmbench_no_such_db").render_as_string(False),
        "missing role": url.set(username="crmbench_no_such_role").render_as_string(False),
    }


@pytest.mark.parametrize("problem", ["closed port", "missing database", "missing role"])
def test_a_database_that_cannot_be_reached_is_503_json_never_a_retry_or_plain_text(
    database_url: str, problem: str
) -> None:
    url = _unreachable_urls(database_url)[problem]
    with _serve(create_app(_settings(url))) as base_url, httpx.Client(base_url=base_url) as http:
        token = {"Authorization": "Bearer some-episode-token"}
        answers = [
            http.post("/episodes", json={}, headers=admin()),
            http.post("/tools/client_search", json={}, headers=token),
            http.post(
                "/tools/add_note",
                json={"entity_type": "Client", "entity_id": "c", "content": "x"},
                headers=token,
            ),
            http.get("/episodes", headers=admin()),
            http.get("/health"),
        ]
        for response in answers:
            assert response.status_code == 503, (problem, response.request.url, response.text)
            error = _error(response)
            assert error["code"] == ErrorCode.DATABASE_UNAVAILABLE
            assert RETRY_MESSAGE not in error["message"]
            assert response.headers["retry-after"] == "5"


def test_an_unexpected_failure_is_a_json_500(database_url: str) -> None:
    app = create_app(_settings(database_url))

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    with _serve(app) as base_url:
        response = httpx.get(f"{base_url}/boom")
    assert response.status_code == 500
    assert _error(response)["code"] == ErrorCode.INTERNAL_ERROR


async def test_a_nul_byte_in_a_snapshot_name_is_422_naming_the_field(
    http: httpx.AsyncClient, episode: Episode
) -> None:
    base = f"/episodes/{episode.episode_id}/snapshots"
    refused = [
        await http.post(f"{base}/a%00b/restore", headers=admin()),
        await http.delete(f"{base}/a%00b", headers=admin()),
        await http.post(base, json={"name": "a\x00b"}, headers=admin()),
    ]
    for response in refused:
        assert response.status_code == 422, response.text
        assert _error(response)["field"] == "name"


async def test_values_postgres_refuses_are_refused_before_sql_naming_the_field(
    episode: Episode,
) -> None:
    for args, field in (
        ({"name": "Nul\x00 Corp"}, "name"),
        ({"name": "Fine Corp", "industry": "bad \x00 industry"}, "industry"),
        ({"name": "Surrogate \ud800 Corp"}, "name"),
    ):
        response = await episode.http.post(
            "/tools/create_new_client",
            content=_json_with_raw_strings(args),
            headers={**episode.auth, "content-type": "application/json"},
        )
        assert response.status_code == 422, response.text
        assert _error(response)["field"] == field
    assert (await episode.changes())["total_changes"] == 0


def _json_with_raw_strings(args: dict[str, str]) -> bytes:
    """JSON with \\u escapes (a lone surrogate cannot be encoded otherwise)."""
    import json

    return json.dumps(args, ensure_ascii=True).encode()


async def _lower_equal(database_url: str, a: str, b: str) -> bool:
    conn = await asyncpg.connect(make_url(database_url).set(drivername="postgresql")
                                 .render_as_string(hide_password=False))  # fmt: skip
    try:
        return bool(await conn.fetchval("SELECT lower($1) = lower($2)", a, b))
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("ix@example.com", "\u0130x@example.com"),
        ("\u03b1\u03c3@example.com", "\u0391\u03a3@example.com"),
    ],
)
async def test_emails_compare_in_any_case_by_one_definition(
    episode: Episode, database_url: str, first: str, second: str
) -> None:
    # Python folds these pairs apart ('İ'.lower() is 'i' + a combining dot, a final 'Σ'
    # becomes 'ς'); the service compares with Postgres' lower() on both sides, the function
    # of the unique index, so its check, its searches and the index always agree.
    clash = await _lower_equal(database_url, first, second)
    created = await episode.ok("create_new_client", {"name": "First Co", "email": first})
    found = await episode.ok("client_search", {"criteria": {"email": second}})
    assert [c["client_id"] for c in found["items"]] == ([created["client_id"]] if clash else [])
    contact = {"first_name": "A", "last_name": "B", "client_id": created["client_id"]}
    await episode.ok("create_new_contact", {**contact, "email": first})
    contacts = await episode.ok("contact_search", {"criteria": {"email": second}})
    assert contacts["total"] == (1 if clash else 0)
    again = await episode.call("create_new_client", {"name": "Second Co", "email": second})
    if clash:
        assert again.status_code == 409, again.text
        error = _error(again)
        assert (error["code"], error["field"]) == (ErrorCode.DUPLICATE_UNIQUE_FIELD, "email")
        assert RETRY_MESSAGE not in error["message"]
    else:
        assert again.status_code == 200, again.text
    # The server this suite runs on (C.UTF-8 or ICU) folds both pairs together.
    assert clash


def test_python_and_postgres_fold_these_pairs_differently() -> None:
    assert "\u0130x@example.com".lower() != "ix@example.com"  # 'İx'
    assert "\u0391\u03a3@example.com".lower() != "\u03b1\u03c3@example.com"


def test_no_tool_folds_case_in_python() -> None:
    tools = REPO_ROOT / "services" / "crm_api" / "tools"
    offenders = [
        f"{path.name}:{number}"
        for path in sorted(tools.glob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if re.search(r"\.(lower|casefold|upper)\(\)", line) or "func.lower" in line
    ]
    assert offenders == [], "compare with crm_api.repository.equal_any_case"


# ---------------------------------------------------------------------------- classification


async def _database_failure(database_url: str, statement: str) -> DBAPIError:
    engine = create_engine(database_url, pool_size=1, max_overflow=0)
    try:
        async with engine.begin() as conn:
            for part in statement.split("; "):
                await conn.execute(sa.text(part))
    except DBAPIError as exc:
        return exc
    finally:
        await engine.dispose()
    raise AssertionError(f"{statement} did not fail")


@pytest.mark.parametrize(
    ("statement", "status", "code", "field"),
    [
        (
            "CREATE TEMP TABLE t (email text); CREATE UNIQUE INDEX ON t (lower(email));"
            " INSERT INTO t VALUES ('a@x.io'), ('A@x.io')",
            409,
            "DUPLICATE_UNIQUE_FIELD",
            "email",
        ),
        (
            "CREATE TEMP TABLE q (opportunity_id text, version text,"
            " UNIQUE (opportunity_id, version)); INSERT INTO q VALUES ('o', 'v1'), ('o', 'v1')",
            409,
            "DUPLICATE_UNIQUE_FIELD",
            "version",
        ),
        (
            "CREATE TEMP TABLE n (a text NOT NULL); INSERT INTO n VALUES (NULL)",
            422,
            "INVALID_REQUEST",
            "a",
        ),
        ("SELECT 1/0", 422, "INVALID_REQUEST", None),
        ("SELECT * FROM no_such_schema_x.client", 409, "CONFLICT", None),
        ("SELECT no_such_function_x()", 500, "INTERNAL_ERROR", None),
    ],
)
async def test_database_errors_are_classified_by_what_they_mean(
    database_url: str, statement: str, status: int, code: str, field: str | None
) -> None:
    error = database_error(await _database_failure(database_url, statement))
    assert (error.status_code, error.code, error.field) == (status, code, field)
    assert (RETRY_MESSAGE in error.message) == (code == "CONFLICT")


async def test_a_unique_clash_the_checks_miss_is_409_duplicate_not_a_retry(
    http: httpx.AsyncClient, database_url: str
) -> None:
    # Bypass the service's own check by writing the row behind its back: the index still
    # refuses the insert, and the answer names the field instead of asking for a retry.
    episode = await open_episode(http)
    try:
        conn = await asyncpg.connect(make_url(database_url).set(drivername="postgresql")
                                     .render_as_string(hide_password=False))  # fmt: skip
        try:
            await conn.execute(
                f'CREATE UNIQUE INDEX twin_key ON "{episode.episode_id}".client (name)'
                " WHERE name LIKE 'Twin %'"
            )
        finally:
            await conn.close()
        await episode.ok("create_new_client", {"name": "Twin Co"})
        twin = await episode.call("create_new_client", {"name": "Twin Co"})
        assert twin.status_code == 409, twin.text
        error = _error(twin)
        assert (error["code"], error["field"]) == (ErrorCode.DUPLICATE_UNIQUE_FIELD, "name")
    finally:
        await http.delete(f"/episodes/{episode.episode_id}", headers=admin())


# ---------------------------------------------------------------------------- docs


def test_the_doc_names_every_error_code_and_setting_with_its_default() -> None:
    doc = (REPO_ROOT / "docs" / "crm_api.md").read_text(encoding="utf-8")
    missing = [code.value for code in ErrorCode if f"`{code.value}`" not in doc]
    assert missing == [], f"docs/crm_api.md does not document {missing}"
    rows = dict(re.findall(r"^\| `(CRMBENCH_[A-Z_]+)` \| ([^|]+) \|", doc, re.MULTILINE))
    for name, info in CrmApiSettings.model_fields.items():
        if name in ("database_url", "admin_key"):
            continue
        variable = f"CRMBENCH_{name.upper()}"
        assert variable in rows, f"docs/crm_api.md does not list {variable}"
        documented = rows[variable].strip().strip("`")
        assert float(documented) == float(info.default), (variable, documented, info.default)
    assert "X-Tool-Call-Id" in doc and "TOOL_CALL_ID_REUSED" in doc
    assert Path(REPO_ROOT / "docs" / "openapi.json").exists()
