"""The whole learning loop (`learning.mode: on`) through `crmbench run` as a subprocess, on
real services: the simulated student (the simulated LLM the command starts) supervised by
the simulated teacher, the local embedding model, the playbook memory in Postgres.

- One run, one process: lanes from the triage rule, the teacher's guidance reaching the
  student and the traces, lessons synthesised into the memory (with provenance), later
  episodes retrieving them, and every counter equal to a recount from the trajectory
  events.
- A run killed with SIGKILL and resumed: no entry stored twice, no counter lost or
  counted twice (the same recount), every episode's outcome bookkeeping applied once.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml

from agent_runner.run.store import asyncpg_dsn
from crmbench_contracts.cases import Case
from crmbench_contracts.traces import SessionTrace
from tests.agent_runner.conftest import RunServices
from tests.agent_runner.test_playbook_memory import EMPTY
from tests.agent_runner.test_run_processes import (
    assert_exactly_once,
    done_count,
    fetch,
    run_id_of,
    start_run,
)
from tests.agent_runner.test_runner import read_trace_file


def learning_config(tmp_path: Path, concurrency: int) -> Path:
    config = {
        "agent": "simulated",
        "concurrency": concurrency,
        "learning": {
            "mode": "on",
            "teacher": "simulated",
            "embeddings": {"provider": "local"},
        },
    }
    path = tmp_path / "learning.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def learning_cases(cases: dict[str, Case], per_category: int, categories: int) -> list[str]:
    """`per_category` eval failure cases of each of the first `categories` failure
    categories (corpus order), interleaved with as many success cases."""
    by_category: dict[str, list[str]] = {}
    successes: list[str] = []
    for case in cases.values():
        if case.split != "eval":
            continue
        if case.failure is None:
            successes.append(case.case_id)
            continue
        members = by_category.setdefault(case.failure.category, [])
        if len(members) < per_category:
            members.append(case.case_id)
    chosen = [ids for ids in by_category.values() if len(ids) == per_category][:categories]
    failures = [case_id for round_ in zip(*chosen, strict=True) for case_id in round_]
    mixed: list[str] = []
    for failure, success in zip(failures, successes, strict=False):
        mixed += [failure, success]
    return mixed


@pytest.fixture
async def empty_memory(run_services: RunServices) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(run_services.database_url))
    try:
        await conn.execute(EMPTY)
    finally:
        await conn.close()


async def recount(services: RunServices) -> None:
    """Every entry's counters equal what the trajectory events and the bookkeeping keys
    say happened, each counted once: `retrieved`/`injected` from the retrieval events,
    `followed` from the adoption events, `episodes_with` from the retrieval events of the
    sessions whose outcome was booked."""
    events = await fetch(services, "SELECT session_id, kind, payload FROM runner.trajectory_event")
    booked = {
        row["key"].removesuffix("#outcome")
        for row in await fetch(services, "SELECT key FROM runner.playbook_bookkeeping")
        if row["key"].endswith("#outcome")
    }
    retrieved: Counter[str] = Counter()
    injected: Counter[str] = Counter()
    followed: Counter[str] = Counter()
    with_: Counter[str] = Counter()
    retrieval_sessions: Counter[str] = Counter()
    for row in events:
        payload = json.loads(row["payload"])
        if row["kind"] == "retrieval":
            retrieval_sessions[row["session_id"]] += 1
            for item in payload["retrieved"]:
                if item.get("audience", "student") != "student":
                    continue
                retrieved[item["entry_id"]] += 1
                if item["injected"]:
                    injected[item["entry_id"]] += 1
                    if row["session_id"] in booked:
                        with_[item["entry_id"]] += 1
        elif row["kind"] == "adoption":
            followed[payload["entry_id"]] += 1
    assert max(retrieval_sessions.values(), default=1) == 1, "a retrieval was recorded twice"
    counters = await fetch(
        services,
        "SELECT c.* FROM runner.playbook_counter c JOIN runner.playbook_entry e USING (entry_id)"
        " WHERE e.audience = 'student'",
    )
    assert counters, "the loop stored no student entry"
    for row in counters:
        entry = row["entry_id"]
        assert (row["retrieved"], row["injected"], row["followed"], row["episodes_with"]) == (
            retrieved[entry],
            injected[entry],
            followed[entry],
            with_[entry],
        ), entry


async def test_a_learning_run_supervises_distils_and_retrieves(
    run_services: RunServices, empty_memory: None, tmp_path: Path
) -> None:
    ids = learning_cases(run_services.cases, per_category=3, categories=4)
    out = tmp_path / "run"
    process = start_run(
        run_services,
        out,
        "--config",
        str(learning_config(tmp_path, concurrency=1)),
        "--cases",
        ",".join(ids),
    )
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output.decode()
    sessions, _ = read_trace_file(out / "sessions.jsonl")
    assert [s.case_id for s in sessions] == ids  # concurrency 1: in order

    # Every episode was triaged by the rule; the first of each task category was coached.
    seen: set[str] = set()
    for session in sessions:
        context = session.crm_context
        assert context.learning_mode == "on" and context.lane is not None
        assert context.lane.source == "rule"
        assert context.supervision_transitions[0].to_lane == context.lane.lane
        if context.task_category not in seen:
            assert context.lane.lane == "coach", session.session_id
        seen.add(context.task_category)

    # Guidance the teacher gave is in the trace, on the step it followed.
    guided = [s for s in sessions if any(e["kind"] == "guidance" for e in s.crm_context.trajectory)]
    assert guided, "the teacher never guided a coached episode"
    _, steps = read_trace_file(out / "sessions.jsonl")
    steps_of: dict[str, list[Any]] = {}
    for step in steps:
        steps_of.setdefault(step.session_id, []).append(step)
    for session in guided:
        for event in session.crm_context.trajectory:
            if event["kind"] == "guidance" and event["step"] > 0:
                step = steps_of[session.session_id][event["step"] - 1]
                assert event["text"] in step.guidance

    # Lessons went into the memory with their provenance, and later episodes found them.
    entries = await fetch(run_services, "SELECT entry_id, provenance FROM runner.playbook_entry")
    assert entries
    session_ids = {s.session_id for s in sessions}
    for row in entries:
        provenance = json.loads(row["provenance"])
        assert set(provenance["episode_ids"]) <= session_ids
    hits = [s for s in sessions if any(r.injected for r in s.crm_context.playbooks_retrieved)]
    assert hits and min(sessions.index(s) for s in hits) > 0
    await recount(run_services)

    # `crmbench results` shows the learning fields.
    from typer.testing import CliRunner

    from crmbench.cli import app

    result = CliRunner().invoke(app, ["results", str(out)])
    assert result.exit_code == 0, result.output
    assert "cue hit rate" in result.output and "lanes:" in result.output


async def test_a_learning_run_killed_with_sigkill_resumes_without_double_counting(
    run_services: RunServices, empty_memory: None, tmp_path: Path
) -> None:
    ids = learning_cases(run_services.cases, per_category=3, categories=6)
    total = len(ids)
    out = tmp_path / "run"
    args = ["--config", str(learning_config(tmp_path, concurrency=3)), "--cases", ",".join(ids)]
    first = start_run(run_services, out, *args)
    run_id = run_id_of(out)
    deadline = time.monotonic() + 300
    while await done_count(run_services, run_id) < total // 2:
        assert first.poll() is None, first.stdout.read().decode() if first.stdout else ""
        assert time.monotonic() < deadline, "the run made no progress"
        await asyncio.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert await done_count(run_services, run_id) < total

    second = start_run(run_services, out, *args)
    output, _ = second.communicate(timeout=600)
    assert second.returncode == 0, output.decode()
    await assert_exactly_once(run_services, run_id, out, total)
    await recount(run_services)
    # One synthesis and one outcome booking per session at most; no duplicate content.
    keys = await fetch(run_services, "SELECT key FROM runner.playbook_bookkeeping")
    per_session = Counter(row["key"] for row in keys)
    assert max(per_session.values()) == 1
    synthesis = await fetch(
        run_services,
        "SELECT session_id, count(*) AS n FROM runner.trajectory_event"
        " WHERE kind = 'synthesis' GROUP BY 1",
    )
    assert synthesis and max(row["n"] for row in synthesis) == 1
    hashes = await fetch(
        run_services,
        "SELECT content_hash, count(DISTINCT entry_id) AS n FROM runner.playbook_entry_version"
        " GROUP BY 1",
    )
    assert max(row["n"] for row in hashes) == 1
    sessions, _ = read_trace_file(out / "sessions.jsonl")
    assert all(isinstance(s, SessionTrace) for s in sessions)
