"""Retrieval quality and latency of the learning loop's embedders, in one run.

For the local model (all-MiniLM-L6-v2 int8 on onnxruntime, CPU) and the hashing embedder
(unit tests only), over the committed labelled set (learning/crmbench_learning/data/
retrieval_set.jsonl: 30 playbook-entry cues, 90 paraphrased requests): recall@1 and
recall@3, then embedding latency in milliseconds per text, one text per call (as the loop
embeds one task per episode) and in batches (as synthesis embeds new entries). No
services, no network.

    python bench/embedding_bench.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import log, percentile, table

from crmbench_learning.embeddings import (
    DEFAULT_LOCAL_MODEL,
    LOCAL_MODELS,
    Embedder,
    HashingEmbedderForTests,
    LocalOnnxEmbedder,
)
from crmbench_learning.retrieval_set import load_retrieval_set, recall_at_k


def measure(embedder: Embedder, repeats: int, batch_size: int) -> dict[str, Any]:
    entries = load_retrieval_set()
    score = recall_at_k(embedder, entries)
    queries = [query for entry in entries for query in entry.queries]
    texts = [entry.cue for entry in entries] + queries
    embedder.embed(texts[:batch_size])  # warm-up: first-call allocations
    single: list[float] = []
    for _ in range(repeats):
        for query in queries:
            started = time.perf_counter()
            embedder.embed([query])
            single.append((time.perf_counter() - started) * 1000)
    batched: list[float] = []
    for _ in range(repeats):
        for start in range(0, len(texts), batch_size):
            batch = texts[start : start + batch_size]
            started = time.perf_counter()
            embedder.embed(batch)
            batched.append((time.perf_counter() - started) * 1000 / len(batch))
    return {
        "embedder": embedder.name,
        "dimensions": embedder.dimensions,
        "entries": score.entries,
        "queries": score.queries,
        "recall_at_1": round(score.recall[1], 4),
        "recall_at_3": round(score.recall[3], 4),
        "single_ms_p50": round(percentile(single, 50) or 0.0, 3),
        "single_ms_p95": round(percentile(single, 95) or 0.0, 3),
        "batched_ms_per_text_p50": round(percentile(batched, 50) or 0.0, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="Passes over the texts.")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads.")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    started = time.perf_counter()
    local = LocalOnnxEmbedder(LOCAL_MODELS[DEFAULT_LOCAL_MODEL], threads=args.threads)
    load_ms = (time.perf_counter() - started) * 1000
    log(f"local model loaded in {load_ms:.0f} ms (sha256 check, tokenizer, onnxruntime session)")
    results = [
        measure(embedder, args.repeats, args.batch_size)
        for embedder in (local, HashingEmbedderForTests())
    ]
    entries, queries = results[0]["entries"], results[0]["queries"]
    print(
        f"Retrieval set: {entries} entries, {queries} queries (recall@3 by chance: "
        f"{3 / entries:.2f}); local model load {load_ms:.0f} ms, {args.threads} thread(s)"
    )
    rows: list[list[Any]] = [
        [
            "embedder",
            "dims",
            "recall@1",
            "recall@3",
            "ms/text single p50",
            "p95",
            f"ms/text batch of {args.batch_size}",
        ]
    ]
    for r in results:
        rows.append(
            [
                r["embedder"],
                r["dimensions"],
                f"{r['recall_at_1']:.3f}",
                f"{r['recall_at_3']:.3f}",
                f"{r['single_ms_p50']:.2f}",
                f"{r['single_ms_p95']:.2f}",
                f"{r['batched_ms_per_text_p50']:.2f}",
            ]
        )
    print(table(rows, right=(1, 2, 3, 4, 5, 6)))
    report = {"load_ms": round(load_ms, 1), "threads": args.threads, "results": results}
    print(json.dumps(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
