"""Verifier throughput and corpus-validation time, against the real services.

Starts a CRM API and a verifier (on DATABASE_URL, --database-url, or the embedded
Postgres), loads the committed corpus, plays the reference actions of a sample of cases,
then measures POST /verify (HTTP, verifier reading state from the CRM API) at several
concurrencies, and in-process scoring (score_case) alone. With --full-validation it also
times `crmbench cases validate` over the whole corpus.

    python bench/verifier_bench.py --database-url postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from sqlalchemy.engine import make_url

from crm_api.database import create_engine
from crm_api.world_store import load_golden_cases
from crmbench.local_services import running_crm_api, running_verifier
from crmbench_contracts.cases import Case
from crmbench_corpus.replay import replay
from crmbench_corpus.store import case_line, default_corpus_dir, load_cases
from verifier.scoring import score_case


async def _admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(make_url(url).set(drivername="postgresql").render_as_string(False))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _prepare(
    crm: httpx.AsyncClient, admin_key: str, cases: list[Case]
) -> list[tuple[Case, str]]:
    """One finished episode per case: its reference actions played."""
    done = []
    for case in cases:
        made = await crm.post(
            "/episodes",
            json={"case_id": case.case_id},
            headers={"Authorization": f"Bearer {admin_key}"},
        )
        made.raise_for_status()
        await replay(crm, made.json()["token"], case.expected.reference_actions)
        done.append((case, made.json()["episode_id"]))
    return done


async def _measure(
    verifier: httpx.AsyncClient, episodes: list[tuple[Case, str]], concurrency: int, seconds: float
) -> dict[str, float]:
    latencies: list[float] = []
    stop = time.perf_counter() + seconds
    errors = 0

    async def worker(offset: int) -> None:
        nonlocal errors
        i = offset
        while time.perf_counter() < stop:
            case, episode_id = episodes[i % len(episodes)]
            started = time.perf_counter()
            response = await verifier.post(
                "/verify",
                json={
                    "case_id": case.case_id,
                    "episode_id": episode_id,
                    "final_reply": case.expected.reference_reply,
                },
            )
            latencies.append(time.perf_counter() - started)
            if response.status_code != 200 or response.json()["score"] != 1.0:
                errors += 1
            i += concurrency

    began = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    wall = time.perf_counter() - began
    latencies.sort()
    return {
        "concurrency": concurrency,
        "verifications": len(latencies),
        "per_second": len(latencies) / wall,
        "p50_ms": statistics.median(latencies) * 1000,
        "p95_ms": latencies[int(len(latencies) * 0.95) - 1] * 1000,
        "errors": errors,
    }


async def _offline(
    crm: httpx.AsyncClient, admin_key: str, episodes: list[tuple[Case, str]], seconds: float
) -> dict[str, float]:
    auth = {"Authorization": f"Bearer {admin_key}"}
    inputs = []
    for case, episode_id in episodes:
        state = (await crm.get(f"/episodes/{episode_id}/state", headers=auth)).json()
        changes = (await crm.get(f"/episodes/{episode_id}/changes", headers=auth)).json()
        inputs.append((case, state, changes))
    count = 0
    began = time.perf_counter()
    while time.perf_counter() - began < seconds:
        case, state, changes = inputs[count % len(inputs)]
        score_case(case, state, changes, case.expected.reference_reply)
        count += 1
    return {"scorings": count, "per_second": count / (time.perf_counter() - began)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", help="a Postgres server that allows CREATE DATABASE")
    parser.add_argument("--cases", type=int, default=60, help="episodes to verify repeatedly")
    parser.add_argument("--seconds", type=float, default=10.0, help="per concurrency level")
    parser.add_argument("--concurrency", default="1,8", help="comma-separated levels")
    parser.add_argument(
        "--full-validation",
        action="store_true",
        help="also time `crmbench cases validate` on the whole corpus",
    )
    args = parser.parse_args()
    server = args.database_url or os.environ.get("DATABASE_URL")
    url = None
    name = None
    if server:
        name = f"crmbench_bench_{secrets.token_hex(4)}"
        asyncio.run(_admin(server, f'CREATE DATABASE "{name}"'))
        url = make_url(server).set(database=name).render_as_string(hide_password=False)
    try:
        figures = _run(url, args)
    finally:
        if server and name:
            asyncio.run(_admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    print(json.dumps(figures))


def _run(url: str | None, args: argparse.Namespace) -> dict[str, Any]:
    corpus = load_cases()
    step = max(1, len(corpus) // args.cases)
    sample = corpus[::step][: args.cases]
    figures: dict[str, Any] = {"cpus": os.cpu_count(), "cases": len(sample)}
    with running_crm_api(url) as (crm_url, admin_key):
        from crmbench.postgres import resolve_database_url

        database = url or resolve_database_url()

        async def load() -> None:
            engine = create_engine(database, pool_size=1, max_overflow=0)
            try:
                await load_golden_cases(
                    engine, [(c.case_id, json.loads(case_line(c))) for c in corpus], "bench"
                )
            finally:
                await engine.dispose()

        asyncio.run(load())
        with running_verifier(crm_url, admin_key, str(default_corpus_dir())) as verifier_url:

            async def measure() -> None:
                async with (
                    httpx.AsyncClient(base_url=crm_url, timeout=60) as crm,
                    httpx.AsyncClient(base_url=verifier_url, timeout=60) as verifier,
                ):
                    episodes = await _prepare(crm, admin_key, sample)
                    figures["http"] = [
                        await _measure(verifier, episodes, int(c), args.seconds)
                        for c in args.concurrency.split(",")
                    ]
                    figures["in_process"] = await _offline(crm, admin_key, episodes, args.seconds)

            asyncio.run(measure())
    print(f"verifier throughput ({figures['cases']} finished episodes, {figures['cpus']} CPUs)")
    print(f"{'mode':<28} {'per second':>11} {'p50 ms':>8} {'p95 ms':>8} {'errors':>7}")
    for row in figures["http"]:
        print(
            f"{'POST /verify x' + str(row['concurrency']):<28} {row['per_second']:>11.1f} "
            f"{row['p50_ms']:>8.1f} {row['p95_ms']:>8.1f} {row['errors']:>7}"
        )
    print(f"{'score_case in process':<28} {figures['in_process']['per_second']:>11.1f}")
    if args.full_validation:
        env = dict(os.environ)
        if url:
            env["DATABASE_URL"] = url
        began = time.perf_counter()
        done = subprocess.run(
            [
                str(Path(sys.executable).parent / "crmbench"),
                "cases",
                "validate",
                "--report",
                "/tmp/crmbench-validate.json",
            ],
            env=env,
            capture_output=True,
            text=True,
        )
        figures["validate_seconds"] = round(time.perf_counter() - began, 1)
        figures["validate_exit"] = done.returncode
        print(f"full corpus validation: {figures['validate_seconds']} s (exit {done.returncode})")
    return figures


if __name__ == "__main__":
    main()
