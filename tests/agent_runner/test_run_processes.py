"""`crmbench run` as separate processes on real services: killed with SIGKILL and
restarted, and two processes sharing one run."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg

from agent_runner.run.store import asyncpg_dsn
from agent_runner.run.trace_log import complete_blocks
from tests.agent_runner.conftest import RunServices, stratified_sample

CRMBENCH = str(Path(sys.executable).parent / "crmbench")


def start_run(services: RunServices, out: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [CRMBENCH, "run", "--out", str(out), "--quiet", *args],
        env={**os.environ, **services.env()},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


async def fetch(services: RunServices, sql: str, *params: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(asyncpg_dsn(services.database_url))
    try:
        rows: list[asyncpg.Record] = await conn.fetch(sql, *params)
        return rows
    finally:
        await conn.close()


def run_id_of(out: Path, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return str(json.loads((out / "run.json").read_text())["run_id"])
        except (OSError, ValueError, KeyError):
            time.sleep(0.1)
    raise AssertionError(f"no run.json in {out}")


async def done_count(services: RunServices, run_id: str) -> int:
    rows = await fetch(
        services,
        "SELECT count(*) AS n FROM runner.run_items WHERE run_id = $1 AND status = 'done'",
        run_id,
    )
    return int(rows[0]["n"])


async def assert_exactly_once(services: RunServices, run_id: str, out: Path, total: int) -> None:
    """Every (case, trial) has one result, and the trace file holds each once, whole."""
    items = await fetch(
        services,
        "SELECT status, count(*) AS n FROM runner.run_items WHERE run_id = $1 GROUP BY 1",
        run_id,
    )
    assert {row["status"]: row["n"] for row in items} == {"done": total}
    sessions = await fetch(
        services, "SELECT session_id, case_id, trial FROM runner.sessions WHERE run_id = $1", run_id
    )
    assert len(sessions) == total
    assert len({(row["case_id"], row["trial"]) for row in sessions}) == total
    steps = await fetch(
        services,
        "SELECT count(*) AS n FROM runner.steps JOIN runner.sessions USING (session_id) WHERE run_id = $1",
        run_id,
    )
    data = (out / "sessions.jsonl").read_bytes()
    blocks, damaged = complete_blocks(data)
    assert not damaged, "the trace file has a cut-off or repeated episode"
    assert sorted(sid for sid, _ in blocks) == sorted(row["session_id"] for row in sessions)
    lines = data.splitlines()
    assert len(lines) == total + steps[0]["n"]


async def test_a_run_killed_with_sigkill_resumes_with_every_result_exactly_once(
    run_services: RunServices, tmp_path: Path
) -> None:
    ids = stratified_sample(run_services.cases)[:24]
    total = len(ids) * 2
    out = tmp_path / "run"
    args = ["--agent", "oracle", "--cases", ",".join(ids), "--trials", "2", "--concurrency", "3"]
    first = start_run(run_services, out, *args)
    run_id = run_id_of(out)
    deadline = time.monotonic() + 120
    while await done_count(run_services, run_id) < total // 3:
        assert first.poll() is None, first.stdout.read().decode() if first.stdout else ""
        assert time.monotonic() < deadline, "the run made no progress"
        await asyncio.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert first.returncode == -signal.SIGKILL
    done_at_kill = await done_count(run_services, run_id)
    assert done_at_kill < total

    second = start_run(run_services, out, *args)
    output, _ = second.communicate(timeout=300)
    assert second.returncode == 0, output.decode()
    assert f"resuming run {run_id}" in output.decode()
    await assert_exactly_once(run_services, run_id, out, total)
    rows = await fetch(
        run_services,
        "SELECT count(*) FILTER (WHERE passed) AS passed FROM runner.run_items WHERE run_id = $1",
        run_id,
    )
    assert rows[0]["passed"] == total  # the oracle passes every case, resumed or not


async def test_two_processes_share_a_run_and_match_one_process(
    run_services: RunServices, tmp_path: Path
) -> None:
    ids = stratified_sample(run_services.cases)[:20]
    args = ["--agent", "random", "--cases", ",".join(ids), "--trials", "2", "--concurrency", "2"]
    shared = tmp_path / "shared"
    workers = [start_run(run_services, shared, *args) for _ in range(2)]
    outputs = [w.communicate(timeout=300)[0].decode() for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    run_id = run_id_of(shared)
    assert sum(f"resuming run {run_id}" in text for text in outputs) == 1
    await assert_exactly_once(run_services, run_id, shared, len(ids) * 2)
    by_worker = await fetch(
        run_services,
        "SELECT record->>'worker' AS worker, count(*) AS n FROM runner.sessions WHERE run_id = $1 GROUP BY 1",
        run_id,
    )
    assert len(by_worker) == 2, "both processes should have played episodes"

    single = tmp_path / "single"
    alone = start_run(run_services, single, *args)
    output, _ = alone.communicate(timeout=300)
    assert alone.returncode == 0, output.decode()
    alone_id = run_id_of(single)

    async def results(run: str) -> dict[tuple[str, int], tuple[float, bool]]:
        rows = await fetch(
            run_services,
            "SELECT case_id, trial, score, passed FROM runner.run_items WHERE run_id = $1",
            run,
        )
        return {(r["case_id"], r["trial"]): (r["score"], r["passed"]) for r in rows}

    assert await results(run_id) == await results(alone_id)
