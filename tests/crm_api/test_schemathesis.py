"""Schemathesis over the whole served OpenAPI document of a live crm_api (real HTTP).

Every operation of ``GET /openapi.json`` is fuzzed (explicit examples, the coverage phase and
bounded Hypothesis fuzzing, with both schema-valid and schema-invalid data) and every response
must: not be a 5xx, have a documented status code, a documented content type and a body that
matches the documented schema. Checks that demand that schema-valid input be accepted are not
run: business rules legitimately refuse schema-valid data with documented 4xx codes.

Tool routes are called with the token of one real episode (the seed of the tool-rule tests,
acting as a manager) and admin routes with the admin key. On a deterministic share of the cases
the generated ``episode_id``/``name`` path parameters and the ids in tool bodies are replaced by
real ones, so the routes are reached beyond 404; the episode is reset before each operation.
``DELETE /episodes/{episode_id}`` never gets the module's episode (a throwaway one instead), and
episodes the fuzzer creates through ``POST /episodes`` are dropped. A last test checks that every
operation was called and that each episode route answered something other than 404/422.
"""

from __future__ import annotations

import math
import re
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core import NotSet
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from crm_api.app import create_app
from crm_api.settings import CrmApiSettings
from tests.conftest import ADMIN_KEY, RunningServer, admin
from tests.crm_api.seed import SEED, payload

Case = schemathesis.Case[Any]

MAX_EXAMPLES = 25
SEED_VALUE = 20251112

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]

SNAPSHOT = "schemathesis-base"
MISSING_EPISODE = "ep_0000000000000000"

# Real ids of the module's episode (from its seed), per body field of the tool requests.
_IDS: dict[str, list[str]] = {
    key: [row[key] for row in SEED[table]]
    for table, key in [
        ("client", "client_id"),
        ("contact", "contact_id"),
        ("opportunity", "opportunity_id"),
        ("quote", "quote_id"),
        ("contract", "contract_id"),
    ]
}
_IDS["entity_id"] = [value for ids in list(_IDS.values()) for value in ids]
MONEY = ("amount", "value")


@dataclass
class FuzzTarget:
    """The module's episode and what the fuzzer did to the server."""

    base_url: str
    episode_id: str
    token: str
    calls: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    served: dict[str, Any] = field(default_factory=dict)
    throwaway: list[str] = field(default_factory=list)

    @property
    def total_calls(self) -> int:
        return sum(sum(counter.values()) for counter in self.calls.values())


@pytest.fixture(scope="module")
def fuzz_target(crm_api: RunningServer) -> Iterator[FuzzTarget]:
    with httpx.Client(base_url=crm_api.base_url, timeout=60) as client:
        response = client.post("/episodes", json=payload("manager"), headers=admin())
        assert response.status_code == 201, response.text
        body = response.json()
        episode_id = body["episode_id"]
        snapshot = client.post(
            f"/episodes/{episode_id}/snapshots", json={"name": SNAPSHOT}, headers=admin()
        )
        assert snapshot.status_code == 201, snapshot.text
        served = client.get("/openapi.json")
        assert served.status_code == 200, served.text
        assert served.json() == DOCUMENT, "the live server serves another OpenAPI document"
        target = FuzzTarget(crm_api.base_url, episode_id, body["token"], served=served.json())
        yield target
        for leftover in [episode_id, *target.throwaway]:  # 404 for those already deleted
            client.delete(f"/episodes/{leftover}", headers=admin())


@pytest.fixture(scope="module")
def http_session() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def _served_document() -> dict[str, Any]:
    """The document the server serves at /openapi.json (the same app, built without a database).

    Built at import so that pytest collects one test per operation; the fuzz test checks that
    the live server serves exactly this document.
    """
    document: dict[str, Any] = create_app(CrmApiSettings(admin_key=ADMIN_KEY)).openapi()
    return document


DOCUMENT = _served_document()
CONFIG = schemathesis.Config.from_dict(
    {
        "seed": SEED_VALUE,
        "generation": {
            "mode": "all",
            "max-examples": MAX_EXAMPLES,
            "deterministic": True,
            "database": "none",
        },
        # Learning from responses (error feedback, values seen in responses) would make the
        # generated data depend on random ids and timestamps the server returns: off, so that
        # a run is reproducible.
        "phases": {
            "examples": {"enabled": True, "extra-data-sources": {"responses": False}},
            "coverage": {"enabled": True, "extra-data-sources": {"responses": False}},
            "fuzzing": {
                "enabled": True,
                "extra-data-sources": {"responses": False},
                "error-feedback": {"enabled": False},
            },
            "stateful": {"enabled": False},
        },
    }
)
schema = schemathesis.openapi.from_dict(DOCUMENT, config=CONFIG)


def _bucket(case: Case, salt: str, buckets: int) -> int:
    """A stable choice derived from the generated data, so Hypothesis replays stay exact."""
    body = None if isinstance(case.body, NotSet) else case.body  # its repr has an address
    key = repr((salt, case.operation.label, case.path_parameters, case.query, body))
    return zlib.crc32(key.encode()) % buckets


def _use_real_ids(case: Case, target: FuzzTarget, session: requests.Session) -> None:
    """Point two cases out of three at the real episode, snapshot and seed rows.

    Tool bodies also get money with two decimals and file names with an extension, rules the
    schema cannot express, so that writes get past validation to the business rules.

    The generated containers are replaced, never edited in place: schemathesis may share them
    between cases, and a real (random) id leaking into later cases would break reproducibility.
    """
    real = _bucket(case, "path", 3) != 0
    use_ids = _bucket(case, "ids", 3) != 0
    pick = _bucket(case, "pick", 99)
    params = dict(case.path_parameters or {})
    if case.method.upper() == "DELETE" and case.path == "/episodes/{episode_id}":
        # The tool calls need the module's episode: deletes get a throwaway one instead.
        if params and real:
            params["episode_id"] = _throwaway_episode(target, session)
        elif params.get("episode_id") == target.episode_id:
            params["episode_id"] = MISSING_EPISODE
    elif real:
        if "episode_id" in params:
            params["episode_id"] = target.episode_id
        if "name" in params:
            params["name"] = SNAPSHOT
    if params:
        case.path_parameters = params
    if not (use_ids and case.path.startswith("/tools/") and isinstance(case.body, dict)):
        return
    body = dict(case.body)
    for key, ids in _IDS.items():
        if isinstance(body.get(key), str):
            body[key] = ids[pick % len(ids)]
    if isinstance(body.get("quote_ids"), list):
        quotes = _IDS["quote_id"]
        body["quote_ids"] = [quotes[pick % len(quotes)], quotes[(pick + 1) % len(quotes)]]
    for key in MONEY:
        value = body.get(key)
        if isinstance(value, float) and math.isfinite(value):
            # Money has at most two decimals, which JSON Schema cannot say exactly.
            body[key] = round(value, 2) or math.copysign(0.01, value)
    if isinstance(body.get("file_name"), str):
        # Documents need a known extension; a random name rarely has one.
        body["file_name"] = body["file_name"][:250] + ".pdf"
    case.body = body


def _throwaway_episode(target: FuzzTarget, session: requests.Session) -> str:
    response = session.post(f"{target.base_url}/episodes", json={}, headers=admin(), timeout=60)
    assert response.status_code == 201, response.text
    episode_id: str = response.json()["episode_id"]
    target.throwaway.append(episode_id)
    return episode_id


def _auth(case: Case, target: FuzzTarget) -> dict[str, str]:
    if case.path in ("/health", "/tools"):
        return {}
    if case.path.startswith("/tools/"):
        return {"Authorization": f"Bearer {target.token}"}
    return {"Authorization": f"Bearer {ADMIN_KEY}"}


def _clean_up(
    case: Case,
    response: schemathesis.Response,
    target: FuzzTarget,
    session: requests.Session,
) -> None:
    """Drop episodes the fuzzer created; put back the snapshot it deleted."""
    method, path = case.method.upper(), case.path
    if method == "POST" and path == "/episodes" and response.status_code == 201:
        created = response.json().get("episode_id")
        if isinstance(created, str) and created != target.episode_id:
            session.delete(f"{target.base_url}/episodes/{created}", headers=admin(), timeout=60)
    if (
        method == "DELETE"
        and path == "/episodes/{episode_id}/snapshots/{name}"
        and response.status_code == 204
        and case.path_parameters == {"episode_id": target.episode_id, "name": SNAPSHOT}
    ):
        restored = session.post(
            f"{target.base_url}/episodes/{target.episode_id}/snapshots",
            json={"name": SNAPSHOT},
            headers=admin(),
            timeout=60,
        )
        assert restored.status_code == 201, restored.text


@pytest.fixture
def fresh_episode(fuzz_target: FuzzTarget, http_session: requests.Session) -> FuzzTarget:
    """Each operation starts from the seed rows, whatever the operations before it wrote."""
    response = http_session.post(
        f"{fuzz_target.base_url}/episodes/{fuzz_target.episode_id}/reset",
        headers=admin(),
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return fuzz_target


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_api_conforms_to_openapi(
    case: Case, fresh_episode: FuzzTarget, http_session: requests.Session
) -> None:
    fuzz_target = fresh_episode
    _use_real_ids(case, fuzz_target, http_session)
    headers = _auth(case, fuzz_target)
    response = case.call(
        base_url=fuzz_target.base_url, session=http_session, headers=headers, timeout=60
    )
    fuzz_target.calls[case.operation.label][response.status_code] += 1
    _clean_up(case, response, fuzz_target, http_session)
    case.validate_response(response, checks=CHECKS, headers=headers)


def test_every_operation_was_exercised(
    request: pytest.FixtureRequest, fuzz_target: FuzzTarget
) -> None:
    """Runs after the fuzz test: each served operation got calls, episode routes beyond 404."""
    selected = {
        match.group(1)
        for item in request.session.items
        if (match := re.fullmatch(r"test_api_conforms_to_openapi\[(.+)\]", item.name))
    }
    served = {
        f"{method.upper()} {path}"
        for path, item in fuzz_target.served["paths"].items()
        for method in item
    }
    print(f"\nschemathesis: {fuzz_target.total_calls} calls over {len(served)} operations")
    for label in sorted(fuzz_target.calls):
        print(f"  {label}: {dict(sorted(fuzz_target.calls[label].items()))}")
    assert selected <= served
    # Calls with methods the operation does not have (405, from the coverage phase) don't count.
    called = {label for label, statuses in fuzz_target.calls.items() if set(statuses) - {405}}
    missing = sorted(selected - called)
    assert not missing, f"operations never called: {missing}"
    only_404 = sorted(
        label
        for label in selected
        if "{episode_id}" in label and not set(fuzz_target.calls[label]) - {404, 405, 422}
    )
    assert not only_404, f"operations never reached beyond 404/422: {only_404}"
