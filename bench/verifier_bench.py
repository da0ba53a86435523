"""Verifier throughput, the judge path's added latency, and corpus-validation time,
against the real services.

Starts a CRM API and a verifier (on DATABASE_URL, --database-url, or the embedded
Postgres), loads the committed corpus, plays the reference actions of a sample of cases,
then measures POST /verify (HTTP, verifier reading state from the CRM API) at several
concurrencies, and in-process scoring (score_case) alone. Then the judge path: a second
verifier configured with two LLM judges and an arbiter, all fake judge servers
(tests/verifier/fake_judge.py) answering after --judge-delay-ms; each of --judge-cases
episodes is verified one at a time offline and with judges, once with judges that agree
and once with judges that read different outcomes (the arbiter is asked), and the added
latency is set against the configured delay. With --full-validation it also times
`crmbench cases validate` over the whole corpus.

    python bench/verifier_bench.py --database-url postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import log, percentile, setup_database, table

from crm_api.database import create_engine
from crm_api.world_store import load_golden_cases
from crmbench.local_services import running_crm_api, running_verifier
from crmbench_clients.crm_api import CrmApiClient
from crmbench_clients.errors import ServiceError
from crmbench_clients.serving import serving_in_thread
from crmbench_clients.verifier import VerifierClient
from crmbench_contracts.cases import Case
from crmbench_contracts.rewards import VerificationMode
from crmbench_corpus.replay import replay
from crmbench_corpus.store import case_line, default_corpus_dir, load_cases
from tests.verifier.fake_judge import JudgeBehaviour, fake_judge_server
from verifier.app import create_app
from verifier.scoring import score_case
from verifier.settings import VerifierSettings


async def _prepare(crm: CrmApiClient, cases: list[Case]) -> list[tuple[Case, str]]:
    """One finished episode per case: its reference actions played."""
    done = []
    for case in cases:
        opened = await crm.open_episode(case.case_id)
        await replay(crm, opened.token, case.expected.reference_actions)
        done.append((case, opened.episode_id))
    return done


async def _measure(
    verifier: VerifierClient, episodes: list[tuple[Case, str]], concurrency: int, seconds: float
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
            try:
                record = await verifier.verify(
                    case.case_id, episode_id, case.expected.reference_reply
                )
                failed = record.score != 1.0
            except ServiceError:
                failed = True
            latencies.append(time.perf_counter() - started)
            errors += failed
            i += concurrency

    began = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    wall = time.perf_counter() - began
    return {
        "concurrency": concurrency,
        "verifications": len(latencies),
        "per_second": len(latencies) / wall,
        "p50_ms": (percentile(latencies, 50) or 0.0) * 1000,
        "p95_ms": (percentile(latencies, 95) or 0.0) * 1000,
        "errors": errors,
    }


async def _offline(
    crm: CrmApiClient, episodes: list[tuple[Case, str]], seconds: float
) -> dict[str, float]:
    inputs = []
    for case, episode_id in episodes:
        state = await crm.episode_state(episode_id)
        changes = await crm.episode_changes(episode_id)
        inputs.append((case, state, changes))
    count = 0
    began = time.perf_counter()
    while time.perf_counter() - began < seconds:
        case, state, changes = inputs[count % len(inputs)]
        score_case(case, state, changes, case.expected.reference_reply)
        count += 1
    return {"scorings": count, "per_second": count / (time.perf_counter() - began)}


@contextlib.contextmanager
def _judging_verifier(
    crm_url: str, admin_key: str, delay: float, second: JudgeBehaviour
) -> Iterator[str]:
    """A verifier whose judges file names two fake judges (the second answering as
    `second` says) and a fake arbiter, each its own server answering after `delay`."""
    with contextlib.ExitStack() as stack:
        urls = [
            stack.enter_context(fake_judge_server(behaviour))[1]
            for behaviour in (JudgeBehaviour(delay), second, JudgeBehaviour(delay))
        ]
        llm = [
            {"provider": "openai", "model": "fake-judge", "base_url": url, "api_key_env": None}
            for url in urls
        ]
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        judges_file = folder / "judges.yaml"
        judges_file.write_text(
            yaml.safe_dump(
                {
                    "judges": [
                        {"name": "judge-a", "llm": llm[0]},
                        {"name": "judge-b", "llm": llm[1]},
                    ],
                    "arbiter": {"name": "arbiter", "llm": llm[2]},
                }
            ),
            encoding="utf-8",
        )
        settings = VerifierSettings(
            crm_api_url=crm_url,
            admin_key=admin_key,
            corpus_dir=default_corpus_dir(),
            judges_config=judges_file,
        )
        yield stack.enter_context(serving_in_thread(create_app(settings), "judging verifier"))


async def _judge_path(
    offline: VerifierClient,
    judging: VerifierClient,
    episodes: list[tuple[Case, str]],
    delay: float,
    mode: VerificationMode,
) -> dict[str, Any]:
    """Each episode verified offline then with judges, one at a time: latencies, the
    added latency per case, and how many records were not in `mode`."""
    plain: list[float] = []
    judged: list[float] = []
    added: list[float] = []
    off_mode = errors = 0
    for case, episode_id in episodes:
        reply = case.expected.reference_reply
        took = []
        for verifier in (offline, judging):
            started = time.perf_counter()
            try:
                record = await verifier.verify(case.case_id, episode_id, reply)
            except ServiceError:
                errors += 1
                break
            took.append(time.perf_counter() - started)
        else:
            plain.append(took[0])
            judged.append(took[1])
            added.append(took[1] - took[0])
            off_mode += record.verification_mode != mode
    calls = 2 if mode == VerificationMode.JUDGES_ARBITER else 1
    return {
        "mode": mode.value,
        "cases": len(added),
        "delay_ms": delay * 1000,
        "sequential_delays_ms": calls * delay * 1000,
        "offline_p50_ms": (percentile(plain, 50) or 0.0) * 1000,
        "judges_p50_ms": (percentile(judged, 50) or 0.0) * 1000,
        "judges_p95_ms": (percentile(judged, 95) or 0.0) * 1000,
        "added_p50_ms": (percentile(added, 50) or 0.0) * 1000,
        "added_p95_ms": (percentile(added, 95) or 0.0) * 1000,
        "other_mode": off_mode,
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", help="a Postgres server that allows CREATE DATABASE")
    parser.add_argument("--cases", type=int, default=60, help="episodes to verify repeatedly")
    parser.add_argument("--seconds", type=float, default=10.0, help="per concurrency level")
    parser.add_argument("--concurrency", default="1,8", help="comma-separated levels")
    parser.add_argument(
        "--judge-delay-ms",
        type=float,
        default=200.0,
        help="each fake judge's answer delay; negative: skip the judge path",
    )
    parser.add_argument(
        "--judge-cases", type=int, default=20, help="episodes verified on the judge path"
    )
    parser.add_argument(
        "--full-validation",
        action="store_true",
        help="also time `crmbench cases validate` on the whole corpus",
    )
    args = parser.parse_args()
    # The fake judges' model has no price: one `judge_unpriced` warning per verifier start.
    logging.getLogger("verifier.judges").setLevel(logging.ERROR)
    with contextlib.ExitStack() as cleanup:
        database = setup_database(args.database_url, cleanup)
        log(f"database: {database.description}")
        figures = _run(database.url, args)
    print(json.dumps(figures))


def _run(url: str, args: argparse.Namespace) -> dict[str, Any]:
    corpus = load_cases()
    step = max(1, len(corpus) // args.cases)
    sample = corpus[::step][: args.cases]
    figures: dict[str, Any] = {"cpus": os.cpu_count(), "cases": len(sample)}
    with running_crm_api(url) as (crm_url, admin_key):

        async def load() -> None:
            engine = create_engine(url, pool_size=1, max_overflow=0)
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
                    CrmApiClient(crm_url, admin_key, timeout=60) as crm,
                    VerifierClient(verifier_url, admin_key, timeout=60) as verifier,
                ):
                    episodes = await _prepare(crm, sample)
                    figures["http"] = [
                        await _measure(verifier, episodes, int(c), args.seconds)
                        for c in args.concurrency.split(",")
                    ]
                    figures["in_process"] = await _offline(crm, episodes, args.seconds)

            asyncio.run(measure())
            if args.judge_delay_ms >= 0:
                figures["judge_path"] = _measure_judges(
                    crm_url,
                    admin_key,
                    verifier_url,
                    sample[: args.judge_cases],
                    args.judge_delay_ms,
                )
    print(f"verifier throughput ({figures['cases']} finished episodes, {figures['cpus']} CPUs)")
    rows: list[tuple[str, ...]] = [("mode", "per second", "p50 ms", "p95 ms", "errors")]
    for row in figures["http"]:
        rows.append(
            (
                f"POST /verify x{row['concurrency']}",
                f"{row['per_second']:.1f}",
                f"{row['p50_ms']:.1f}",
                f"{row['p95_ms']:.1f}",
                str(row["errors"]),
            )
        )
    rows.append(
        ("score_case in process", f"{figures['in_process']['per_second']:.1f}", "-", "-", "-")
    )
    print(table(rows, right=(1, 2, 3, 4)))
    if "judge_path" in figures:
        delay = args.judge_delay_ms
        print(f"judge path (fake judges answering after {delay:g} ms; one verification at a time)")
        judge_rows: list[tuple[str, ...]] = [
            (
                "mode",
                "cases",
                "offline p50 ms",
                "judges p50 ms",
                "judges p95 ms",
                "added p50 ms",
                "added p95 ms",
                "delays in series ms",
                "other mode",
                "errors",
            )
        ]
        for row in figures["judge_path"]:
            judge_rows.append(
                (
                    row["mode"],
                    str(row["cases"]),
                    f"{row['offline_p50_ms']:.1f}",
                    f"{row['judges_p50_ms']:.1f}",
                    f"{row['judges_p95_ms']:.1f}",
                    f"{row['added_p50_ms']:.1f}",
                    f"{row['added_p95_ms']:.1f}",
                    f"{row['sequential_delays_ms']:g}",
                    str(row["other_mode"]),
                    str(row["errors"]),
                )
            )
        print(table(judge_rows, right=tuple(range(1, 10))))
    if args.full_validation:
        env = {**os.environ, "DATABASE_URL": url}
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


async def _judge_run(
    crm_url: str,
    admin_key: str,
    urls: tuple[str, str],
    cases: list[Case],
    delay: float,
    mode: VerificationMode,
) -> dict[str, Any]:
    """Fresh episodes of `cases`, verified by the offline and the judging verifier."""
    offline_url, judging_url = urls
    async with (
        CrmApiClient(crm_url, admin_key, timeout=60) as crm,
        VerifierClient(offline_url, admin_key, timeout=60) as offline,
        VerifierClient(judging_url, admin_key, timeout=60) as judging,
    ):
        episodes = await _prepare(crm, cases)
        return await _judge_path(offline, judging, episodes, delay, mode)


def _measure_judges(
    crm_url: str, admin_key: str, verifier_url: str, cases: list[Case], delay_ms: float
) -> list[dict[str, Any]]:
    """The judge path twice: judges that agree, then judges whose second reports another
    outcome than the one it reads, so that the arbiter is asked every time."""
    delay = delay_ms / 1000
    results = []
    for mode, second in (
        (VerificationMode.JUDGES, JudgeBehaviour(delay)),
        (VerificationMode.JUDGES_ARBITER, JudgeBehaviour(delay, contrary=True)),
    ):
        with _judging_verifier(crm_url, admin_key, delay, second) as judging_url:
            urls = (verifier_url, judging_url)
            results.append(asyncio.run(_judge_run(crm_url, admin_key, urls, cases, delay, mode)))
    return results


if __name__ == "__main__":
    main()
