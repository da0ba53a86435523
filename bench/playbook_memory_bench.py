"""Playbook memory: search and add latency at 1k and 10k entries, per search backend.

A fresh database (DATABASE_URL / --database-url, else an embedded Postgres with pgvector)
is migrated, filled through `PlaybookStore.import_entries` with entries whose vectors are
random (seeded), then queried with vectors near stored ones. Each backend the server
offers is measured ("arrays" always, "pgvector" where the extension is there); the first
"arrays" search of a process also loads its vector cache and is reported apart. Every
backend must return the same results; the script exits 1 when they differ.

    python bench/playbook_memory_bench.py --database-url postgresql://postgres@127.0.0.1:5432/postgres
    python bench/playbook_memory_bench.py            # embedded Postgres (pgvector)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness

from agent_runner.learning.memory import PlaybookStore, SearchBackend
from crm_api.migrate import upgrade_schema
from crmbench_contracts.playbooks import (
    Action,
    Cue,
    ExportedEntry,
    PlaybookCandidate,
    PlaybookContent,
    PlaybookExport,
)

EMBEDDER = "bench-random"


def _document(start: int, count: int, vectors: np.ndarray) -> PlaybookExport:
    now = datetime.now(UTC)
    entries = []
    for i in range(start, start + count):
        content = PlaybookContent(
            audience="student" if i % 4 else "teacher",
            level="domain",
            cue=Cue(text=f"situation {i}"),
            action=Action(text=f"do thing {i}", tools=["get_quote"]),
            expected_effect="fewer refusals",
        )
        entries.append(
            ExportedEntry.new(content, now, {EMBEDDER: {1: [float(x) for x in vectors[i]]}})
        )
    return PlaybookExport(exported_at=now, entries=entries)


async def _search_ms(
    store: PlaybookStore, queries: np.ndarray, k: int, threshold: float
) -> tuple[list[float], list[list[tuple[str, float]]]]:
    times, results = [], []
    for query in queries:
        started = time.perf_counter()
        found = await store.search([float(x) for x in query], k=k, threshold=threshold)
        times.append((time.perf_counter() - started) * 1000)
        results.append([(m.entry.entry_id, m.similarity) for m in found])
    return times, results


async def _bench(url: str, sizes: list[int], dim: int, queries: int) -> dict[str, object]:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((max(sizes), dim))
    report: dict[str, object] = {"dim": dim, "sizes": {}}
    loader = await PlaybookStore.connect(url, embedder=EMBEDDER, dimension=dim)
    backends: list[SearchBackend] = ["arrays"] + (
        ["pgvector"] if loader.backend == "pgvector" else []
    )
    report["backends"] = backends
    filled = 0
    mismatch = False
    try:
        for size in sizes:
            started = time.perf_counter()
            await loader.import_entries(_document(filled, size - filled, vectors))
            import_s = time.perf_counter() - started
            filled = size
            picks = rng.integers(size, size=queries)
            query_vectors = vectors[picks] + 0.5 * rng.standard_normal((queries, dim))
            rows: dict[str, object] = {"import_s": round(import_s, 2)}
            answers = {}
            for backend in backends:
                store = await PlaybookStore.connect(
                    url, embedder=EMBEDDER, dimension=dim, backend=backend
                )
                try:
                    cold, _ = await _search_ms(store, query_vectors[:1], 5, 0.3)
                    warm, answers[backend] = await _search_ms(store, query_vectors, 5, 0.3)
                    rows[backend] = {
                        "first_search_ms": round(cold[0], 2),
                        "search_p50_ms": round(harness.percentile(warm, 50) or 0, 2),
                        "search_p95_ms": round(harness.percentile(warm, 95) or 0, 2),
                    }
                finally:
                    await store.close()
            # Adds change the memory, so they come after every backend's searches.
            for backend in backends:
                store = await PlaybookStore.connect(
                    url, embedder=EMBEDDER, dimension=dim, backend=backend
                )
                try:
                    adds = []
                    for j in range(5):
                        candidate = PlaybookCandidate(
                            audience="student",
                            level="task",
                            cue=Cue(text=f"new situation {size}-{backend}-{j}"),
                            action=Action(text="do it"),
                            expected_effect="e",
                        )
                        vector = [float(x) for x in rng.standard_normal(dim)]
                        started = time.perf_counter()
                        await store.add_or_merge(candidate, vector, near_duplicate_threshold=0.95)
                        adds.append((time.perf_counter() - started) * 1000)
                    figures = rows[backend]
                    figures["add_or_merge_p50_ms"] = round(  # type: ignore[index]
                        harness.percentile(adds, 50) or 0, 2
                    )
                finally:
                    await store.close()
            if len(answers) > 1 and answers["arrays"] != answers["pgvector"]:
                mismatch = True
            rows["backends_agree"] = len({json.dumps(a) for a in answers.values()}) == 1
            report["sizes"][str(size)] = rows  # type: ignore[index]
    finally:
        await loader.close()
    report["mismatch"] = mismatch
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", help="a Postgres URL allowed to CREATE DATABASE")
    parser.add_argument("--sizes", default="1000,10000", help="entry counts, increasing")
    parser.add_argument("--dim", type=int, default=256, help="vector dimension")
    parser.add_argument("--queries", type=int, default=50)
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    with contextlib.ExitStack() as cleanup:
        database = harness.setup_database(args.database_url, cleanup)
        harness.log(f"database: {database.description}")
        upgrade_schema(database.url)
        report = asyncio.run(_bench(database.url, sizes, args.dim, args.queries))
    rows = [["entries", "backend", "first search ms", "search p50 ms", "p95 ms", "add p50 ms"]]
    for size, per in report["sizes"].items():  # type: ignore[attr-defined]
        for backend in report["backends"]:  # type: ignore[attr-defined]
            figures = per[backend]
            rows.append(
                [
                    size,
                    backend,
                    figures["first_search_ms"],
                    figures["search_p50_ms"],
                    figures["search_p95_ms"],
                    figures["add_or_merge_p50_ms"],
                ]
            )
    print(f"dim {report['dim']}, k=5, threshold 0.3, {args.queries} queries per size")
    print(harness.table(rows, right=(0, 2, 3, 4, 5)))
    print(json.dumps(report))
    return 1 if report["mismatch"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
