"""The agent runner service end to end: POST /runs and GET /runs/{id} over real HTTP, its
worker playing episodes on the real CRM API and verifier, replicas sharing one Postgres
queue. Each test starts with an empty queue, so no other test's run is picked up."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import yaml
from sqlalchemy.engine import make_url

from agent_runner.app import create_app
from agent_runner.run.config import RunConfig
from agent_runner.run.corpus import RunCorpus
from agent_runner.run.runner import create_run, select_cases
from agent_runner.run.store import RunStore, asyncpg_dsn
from agent_runner.settings import AgentRunnerSettings
from crm_api.migrate import upgrade_schema
from crmbench_clients.serving import serving_in_thread
from crmbench_corpus.store import default_corpus_dir
from tests.agent_runner.conftest import ApiUnderTest, RunServices, stratified_sample
from tests.conftest import ADMIN_KEY, _admin_sql

RUN_TIMEOUT_SECONDS = 60.0
KEYED = {"Authorization": f"Bearer {ADMIN_KEY}"}
"""The run routes' key: the runner's own (CRMBENCH_RUNNER_KEY), else the admin key."""


@pytest.fixture(scope="module")
def queue_database(run_services: RunServices) -> Iterator[str]:
    """A migrated database for the run queues of this module (the CRM API keeps its own)."""
    name = f"crmbench_queue_{secrets.token_hex(4)}"
    url = make_url(run_services.database_url)
    server = url.set(database="postgres").render_as_string(hide_password=False)
    asyncio.run(_admin_sql(server, f'CREATE DATABASE "{name}"'))
    try:
        database = url.set(database=name).render_as_string(hide_password=False)
        upgrade_schema(database)
        yield database
    finally:
        asyncio.run(_admin_sql(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def queue_url(queue_database: str) -> str:
    """The queue database emptied, so no earlier test's run is picked up by a worker."""
    asyncio.run(_admin_sql(queue_database, "TRUNCATE runner.runs CASCADE"))
    return queue_database


@pytest.fixture(scope="module")
def corpus(run_services: RunServices) -> RunCorpus:
    return RunCorpus(default_corpus_dir(), list(run_services.cases.values()), "test-corpus")


@pytest.fixture
def sample(run_services: RunServices) -> list[str]:
    return stratified_sample(run_services.cases)


class Runner:
    """Starts replicas of the runner service on one queue database."""

    def __init__(
        self, services: RunServices, queue_url: str, corpus: RunCorpus, runs_dir: Path
    ) -> None:
        self.services = services
        self.queue_url = queue_url
        self.corpus = corpus
        self.runs_dir = runs_dir

    def settings(self, **overrides: Any) -> AgentRunnerSettings:
        values: dict[str, Any] = {
            "database_url": self.queue_url,
            "crm_api_url": self.services.crm_api_url,
            "admin_key": ADMIN_KEY,
            "verifier_url": self.services.verifier_url,
            "runs_dir": self.runs_dir,
            "poll_seconds": 0.05,
            "work": True,
            **overrides,
        }
        return AgentRunnerSettings(**values)

    @contextlib.contextmanager
    def replica(self, **overrides: Any) -> Iterator[httpx.Client]:
        app = create_app(self.settings(**overrides), corpus=self.corpus)
        with (
            serving_in_thread(app, "agent runner") as url,
            httpx.Client(base_url=url, timeout=30, headers=KEYED) as client,
        ):
            yield client


@pytest.fixture
def runner(run_services: RunServices, queue_url: str, corpus: RunCorpus, tmp_path: Path) -> Runner:
    return Runner(run_services, queue_url, corpus, tmp_path / "runs")


def post_run(client: httpx.Client, **body: Any) -> dict[str, Any]:
    response = client.post("/runs", json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    assert response.headers["location"] == created["status_url"]
    return created


def wait_for(client: httpx.Client, run_id: str, *statuses: str) -> dict[str, Any]:
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    while True:
        response = client.get(f"/runs/{run_id}")
        assert response.status_code == 200, response.text
        run: dict[str, Any] = response.json()
        if run["status"] in statuses:
            return run
        assert time.monotonic() < deadline, f"run still {run['status']}: {run['progress']}"
        time.sleep(0.1)


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    return error


async def queue_rows(queue_url: str, run_id: str) -> tuple[list[Any], list[Any]]:
    """The run's queue items and the (case, trial, worker) of its committed sessions."""
    conn = await asyncpg.connect(asyncpg_dsn(queue_url))
    try:
        items = await conn.fetch(
            "SELECT case_id, trial, status FROM runner.run_items WHERE run_id = $1", run_id
        )
        sessions = await conn.fetch(
            "SELECT case_id, trial, record->>'worker' AS worker FROM runner.sessions "
            "WHERE run_id = $1",
            run_id,
        )
        return list(items), list(sessions)
    finally:
        await conn.close()


async def held_items(queue_url: str, run_id: str) -> list[Any]:
    """Items claimed by a worker that is still connected (nobody else may take them)."""
    conn = await asyncpg.connect(asyncpg_dsn(queue_url))
    try:
        rows = await conn.fetch(
            """
            SELECT case_id, trial, worker FROM runner.run_items AS q
            WHERE run_id = $1 AND status = 'running' AND lease_until > now()
              AND EXISTS (SELECT 1 FROM pg_stat_activity AS a WHERE a.pid = q.worker_pid)
            """,
            run_id,
        )
        return list(rows)
    finally:
        await conn.close()


def wait_until_none_held(queue_url: str, run_id: str) -> list[Any]:
    # A closed connection leaves pg_stat_activity a moment after the client is gone.
    deadline = time.monotonic() + 5
    while (held := asyncio.run(held_items(queue_url, run_id))) and time.monotonic() < deadline:
        time.sleep(0.05)
    return held


# ---------------------------------------------------------------------------- tests


def test_posted_oracle_run_completes_with_its_report(runner: Runner, sample: list[str]) -> None:
    with runner.replica() as client:
        created = post_run(client, agent="oracle", cases=sample[:3])
        assert created["total_items"] == 3
        run = wait_for(client, created["run_id"], "done", "failed")

        assert run["status"] == "done", run
        assert run["agent"] == "oracle" and run["error"] is None
        assert run["config"]["cases"] == sample[:3] and run["corpus_hash"] == "test-corpus"
        progress = run["progress"]
        assert progress["done"] == progress["total"] == 3
        assert progress["pending"] == progress["running"] == progress["harness_errors"] == 0
        assert progress["pass_rate"] == 1.0
        report = run["results"]
        assert report["episodes"] == 3 and report["cases"] == 3
        assert report["pass_rates"]["0.9"]["rate"] == 1.0
        assert report["run"]["run_id"] == created["run_id"]

        listed = client.get("/runs").json()["runs"]
        assert [(r["run_id"], r["status"]) for r in listed] == [(created["run_id"], "done")]
        health = client.get("/health").json()
        assert health["status"] == "ok" and health["worker"] is True

    # The run's directory holds what `crmbench results DIR` reads.
    directory = runner.runs_dir / created["run_id"]
    assert json.loads((directory / "run.json").read_text())["run_id"] == created["run_id"]
    lines = (directory / "sessions.jsonl").read_text().splitlines()
    assert sum(json.loads(line)["type"] == "session" for line in lines) == 3


def test_bad_requests_are_refused_with_the_field_named(runner: Runner, sample: list[str]) -> None:
    with runner.replica(work=False) as client:
        agent = error_of(client.post("/runs", json={"agent": "genius"}), 422)
        assert agent["field"] == "agent" and "oracle" in agent["allowed"]

        extra = error_of(client.post("/runs", json={"agent": "oracle", "color": "red"}), 422)
        assert (extra["code"], extra["field"]) == ("EXTRA_FIELD", "color")

        unknown = error_of(client.post("/runs", json={"cases": [sample[0], "NOPE-1"]}), 422)
        assert (unknown["code"], unknown["field"]) == ("CASE_NOT_FOUND", "cases")
        assert "NOPE-1" in unknown["message"]

        for trials in (0, 101):
            bad = error_of(client.post("/runs", json={"agent": "oracle", "trials": trials}), 422)
            assert (bad["code"], bad["field"]) == ("INVALID_RUN_CONFIG", "trials")
        typed = error_of(client.post("/runs", json={"trials": "many"}), 422)
        assert (typed["code"], typed["field"]) == ("TYPE_MISMATCH", "trials")
        empty = error_of(client.post("/runs", json={"cases": []}), 422)
        assert empty["field"] == "cases"
        not_json = client.post(
            "/runs", content=b"{nope", headers={"content-type": "application/json"}
        )
        assert error_of(not_json, 422)["code"] == "INVALID_REQUEST"

        missing = error_of(client.get("/runs/run-20990101-000000-abcdef"), 404)
        assert (missing["code"], missing["field"]) == ("RUN_NOT_FOUND", "run_id")
        assert error_of(client.get("/runs/bad id!"), 422)["field"] == "run_id"
        assert error_of(client.get("/nowhere"), 404)["code"] == "NOT_FOUND"
        # Nothing was queued by any of these.
        assert client.get("/runs").json() == {"runs": []}


def test_student_run_without_its_api_key_is_refused(
    runner: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    with runner.replica(work=False) as client:
        error = error_of(client.post("/runs", json={"agent": "student", "limit": 1}), 422)
        assert (error["code"], error["field"]) == ("MISSING_API_KEY", "agent")
        assert "OPENAI_API_KEY" in error["message"]
        assert client.get("/runs").json() == {"runs": []}


def test_two_replicas_share_one_run_with_one_result_per_item(
    runner: Runner, sample: list[str]
) -> None:
    with runner.replica() as first, runner.replica() as second:
        created = post_run(first, agent="oracle", cases=sample[:4], trials=2, concurrency=1)
        assert created["total_items"] == 8
        run = wait_for(second, created["run_id"], "done", "failed")
    assert run["status"] == "done" and run["progress"]["passed"] == 8

    items, sessions = asyncio.run(queue_rows(runner.queue_url, created["run_id"]))
    assert sorted((s["case_id"], s["trial"]) for s in sessions) == sorted(
        (i["case_id"], i["trial"]) for i in items
    )
    assert len(items) == 8 and all(i["status"] == "done" for i in items)
    assert len({s["worker"] for s in sessions}) == 2, "both replicas played episodes"
    # Both replicas appended to the one trace file, each episode once.
    lines = (runner.runs_dir / created["run_id"] / "sessions.jsonl").read_text().splitlines()
    session_ids = [json.loads(line)["session_id"] for line in lines if '"type":"session"' in line]
    assert len(session_ids) == len(set(session_ids)) == 8


def test_api_only_replica_queues_and_a_worker_replica_plays(
    runner: Runner, sample: list[str]
) -> None:
    with runner.replica(work=False) as api:
        created = post_run(api, agent="oracle", cases=sample[:2])
        time.sleep(0.5)
        queued = api.get(f"/runs/{created['run_id']}").json()
        assert queued["status"] == "queued" and queued["results"] is None
        assert queued["progress"]["pending"] == 2
        partial = api.get(f"/runs/{created['run_id']}", params={"report": "true"}).json()
        assert partial["results"]["episodes"] == 0

        with runner.replica():
            run = wait_for(api, created["run_id"], "done", "failed")
    assert run["status"] == "done" and run["progress"]["pass_rate"] == 1.0


def test_stopping_a_replica_gives_its_episodes_back(runner: Runner, sample: list[str]) -> None:
    with runner.replica(work=False) as api:
        created = post_run(api, agent="oracle", cases=sample[:6], concurrency=3)
        run_id = created["run_id"]
        with runner.replica():
            deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
            while api.get(f"/runs/{run_id}").json()["progress"]["running"] == 0:
                assert time.monotonic() < deadline
                time.sleep(0.02)
        # Stopped mid-run: no item is left held (each is done, given back, or claimable
        # at once because its worker's liveness connection is gone), and work remains.
        assert wait_until_none_held(runner.queue_url, run_id) == []
        items, _ = asyncio.run(queue_rows(runner.queue_url, run_id))
        assert any(item["status"] != "done" for item in items)
        with runner.replica():
            run = wait_for(api, run_id, "done", "failed")
    assert run["status"] == "done" and run["progress"]["done"] == 6
    _, sessions = asyncio.run(queue_rows(runner.queue_url, run_id))
    assert len(sessions) == 6


def test_a_run_no_replica_can_play_is_failed_with_the_reason(
    runner: Runner, corpus: RunCorpus, sample: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Queued elsewhere (as `crmbench run` would) for an agent whose key this replica lacks.
    config = RunConfig.model_validate(
        {
            "agent": "student",
            "cases": sample[:1],
            "providers": {"student": {"provider": "openai", "model": "gpt-4.1"}},
        }
    )

    async def queue() -> str:
        store = await RunStore.connect(runner.queue_url, pool_size=2)
        try:
            run = await create_run(store, config, select_cases(config, corpus.cases), "x", None)
            return run.run_id
        finally:
            await store.close()

    run_id = asyncio.run(queue())
    monkeypatch.delenv("OPENAI_API_KEY")
    with runner.replica() as client:
        run = wait_for(client, run_id, "failed", "done")
    assert run["status"] == "failed" and "OPENAI_API_KEY" in run["error"]
    assert run["progress"]["pending"] == 1


def test_simulated_run_uses_an_in_process_simulated_llm(runner: Runner, sample: list[str]) -> None:
    with runner.replica() as client:
        created = post_run(client, agent="simulated", cases=sample[:3])
        run = wait_for(client, created["run_id"], "done", "failed")
    assert run["status"] == "done", run
    assert run["model"] == "simulated-llm" and run["progress"]["harness_errors"] == 0
    assert run["results"]["episodes"] == 3 and run["results"]["models"] == ["simulated-llm"]


def test_a_refused_api_key_fails_the_run_with_the_reason_and_scores_nothing(
    runner: Runner, sample: list[str], openai_api: ApiUnderTest, tmp_path: Path
) -> None:
    """Through the real OpenAI SDK: the worker stops the run at the provider's 401, the
    run's status says why, and its episodes stay queued (unscored) for a resume."""
    openai_api.fake.script(*(openai_api.error(401) for _ in range(4)))
    config = tmp_path / "run.yaml"
    student = openai_api.config().model_dump(mode="json")
    config.write_text(yaml.safe_dump({"agent": "student", "providers": {"student": student}}))
    with runner.replica(run_config=config) as client:
        created = post_run(client, agent="student", cases=sample[:2], concurrency=1)
        run = wait_for(client, created["run_id"], "failed", "done")
    assert run["status"] == "failed", run
    assert "401" in run["error"] and "API key was refused" in run["error"]
    progress = run["progress"]
    assert (progress["done"], progress["harness_errors"], progress["pending"]) == (0, 0, 2)
    assert len(openai_api.fake.received) == 1
    _, sessions = asyncio.run(queue_rows(runner.queue_url, created["run_id"]))
    assert sessions == []


# ---------------------------------------------------------------------------- the runner key


def test_the_run_routes_need_the_runner_key(runner: Runner, sample: list[str]) -> None:
    opened = httpx.post(
        f"{runner.services.crm_api_url}/episodes", json={}, headers=KEYED, timeout=60
    )
    assert opened.status_code == 201, opened.text
    token = {"Authorization": f"Bearer {opened.json()['token']}"}
    wrong = {"Authorization": "Bearer " + "w" * 32}
    body = {"agent": "oracle", "cases": sample[:1]}
    try:
        with (
            runner.replica(work=False) as keyed,
            httpx.Client(base_url=str(keyed.base_url), timeout=30) as bare,
        ):
            assert error_of(bare.post("/runs", json=body), 401)["code"] == "UNAUTHORIZED"
            assert error_of(bare.post("/runs", json=body, headers=wrong), 403)["code"] == (
                "FORBIDDEN"
            )
            # An agent's episode token reaches no run either.
            assert error_of(bare.post("/runs", json=body, headers=token), 403)["code"] == (
                "FORBIDDEN"
            )
            assert error_of(bare.get("/runs"), 401)["code"] == "UNAUTHORIZED"
            assert error_of(bare.get("/runs/run-20990101-000000-abcdef"), 401)["field"] is None
            assert bare.get("/health").status_code == 200
            # Nothing was queued by the refused requests; the key does queue.
            assert keyed.get("/runs").json() == {"runs": []}
            created = post_run(keyed, **body)
            assert keyed.get(f"/runs/{created['run_id']}").status_code == 200
    finally:
        httpx.delete(
            f"{runner.services.crm_api_url}/episodes/{opened.json()['episode_id']}",
            headers=KEYED,
            timeout=60,
        )


def test_a_runner_key_of_its_own_replaces_the_admin_key(runner: Runner) -> None:
    own = {"Authorization": "Bearer runner-key-of-its-own-0123"}
    with runner.replica(work=False, runner_key="runner-key-of-its-own-0123") as client:
        assert error_of(client.get("/runs"), 403)["code"] == "FORBIDDEN"  # the admin key
        assert client.get("/runs", headers=own).json() == {"runs": []}


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"admin_key": None}, "set CRMBENCH_RUNNER_KEY, or CRMBENCH_ADMIN_KEY"),
        ({"admin_key": "password"}, "CRMBENCH_ADMIN_KEY is a well-known placeholder"),
        ({"runner_key": "short"}, "CRMBENCH_RUNNER_KEY is too short (5 characters"),
        ({"verifier_key": "secret"}, "CRMBENCH_VERIFIER_KEY is a well-known placeholder"),
    ],
)
def test_the_runner_refuses_to_start_without_a_strong_key(
    runner: Runner, overrides: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)) as refused:
        create_app(runner.settings(work=False, **overrides), corpus=runner.corpus)
    assert "\n" not in str(refused.value)
