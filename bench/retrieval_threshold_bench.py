"""The similarity threshold of frozen-run retrieval (`learning.threshold`), swept over the
labelled retrieval set with the local model (or --hashing), k = 3 as the runs inject.

For each threshold t, over the 90 queries of learning/crmbench_learning/data/
retrieval_set.jsonl (30 cues, 3 paraphrased requests each):
- recall@3 >= t: the query's own cue is among the 3 most similar AND at least t similar
  (what retrieval would inject);
- wrong per query: other cues injected (in the top 3 and >= t), on average; precision:
  the share of injected cues that are the query's own; F1 of that precision and recall;
- hit without own: the query's own cue left out of the memory, the share of queries for
  which some other cue still reaches t (a task the memory has no lesson for: any hit is
  noise, though a neighbouring lesson can be relevant);
and over the committed corpus's tasks (`task_text`: user turns + task category), the share
with at least one of the 30 cues at t or above (the cue hit rate this memory would give).
Similarity of own cue, nearest other cue: percentiles printed first. No services.

    python bench/retrieval_threshold_bench.py [--hashing] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import log, table

from agent_runner.learning.retrieval import task_text
from crmbench_corpus.store import load_cases
from crmbench_learning.embeddings import EmbeddingConfig, make_embedder
from crmbench_learning.retrieval_set import load_retrieval_set

K = 3
THRESHOLDS = [round(0.2 + 0.025 * i, 3) for i in range(13)]


def sweep(hashing: bool) -> dict[str, Any]:
    embedder = make_embedder(EmbeddingConfig(provider="hashing" if hashing else "local"))
    entries = load_retrieval_set()
    cues = np.array(embedder.embed([e.cue for e in entries]))
    labelled = [(q, i) for i, e in enumerate(entries) for q in e.queries]
    queries = np.array(embedder.embed([q for q, _ in labelled]))
    sims = queries @ cues.T
    own = np.array([sims[row, i] for row, (_, i) in enumerate(labelled)])
    others = sims.copy()
    for row, (_, i) in enumerate(labelled):
        others[row, i] = -np.inf
    nearest_other = others.max(axis=1)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :K]
    tasks = [task_text(case) for case in load_cases()]
    task_sims = np.array(embedder.embed(tasks)) @ cues.T
    task_best = task_sims.max(axis=1)
    rows = []
    for t in THRESHOLDS:
        recalled = wrong = 0
        for row, (_, i) in enumerate(labelled):
            top = [j for j in order[row] if sims[row, j] >= t]
            recalled += i in top
            wrong += sum(j != i for j in top)
        rows.append(
            {
                "threshold": t,
                "recall_at_3": round(recalled / len(labelled), 3),
                "wrong_per_query": round(wrong / len(labelled), 2),
                "precision": round(recalled / (recalled + wrong), 3) if recalled + wrong else None,
                "f1": round(2 * recalled / (2 * recalled + wrong + (len(labelled) - recalled)), 3),
                "hit_without_own": round(float(np.mean(nearest_other >= t)), 3),
                "corpus_task_hit": round(float(np.mean(task_best >= t)), 3),
            }
        )
    percentiles = [10, 25, 50, 75, 90]
    return {
        "embedder": embedder.name,
        "queries": len(labelled),
        "corpus_tasks": len(tasks),
        "own_similarity": {p: round(float(np.percentile(own, p)), 3) for p in percentiles},
        "nearest_other": {p: round(float(np.percentile(nearest_other, p)), 3) for p in percentiles},
        "corpus_task_best": {p: round(float(np.percentile(task_best, p)), 3) for p in percentiles},
        "sweep": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hashing", action="store_true", help="the hashing embedder instead")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    result = sweep(args.hashing)
    log(f"{result['embedder']}: {result['queries']} queries, {result['corpus_tasks']} tasks")
    for name in ("own_similarity", "nearest_other", "corpus_task_best"):
        log(f"{name} percentiles {result[name]}")
    print(
        table(
            [
                [
                    "threshold",
                    "recall@3 >= t",
                    "wrong/query",
                    "precision",
                    "F1",
                    "hit w/o own",
                    "corpus task hit",
                ],
                *(
                    [
                        f"{row['threshold']:.3f}",
                        f"{row['recall_at_3']:.3f}",
                        f"{row['wrong_per_query']:.2f}",
                        "-" if row["precision"] is None else f"{row['precision']:.3f}",
                        f"{row['f1']:.3f}",
                        f"{row['hit_without_own']:.3f}",
                        f"{row['corpus_task_hit']:.3f}",
                    ]
                    for row in result["sweep"]
                ),
            ],
            right=(1, 2, 3, 4, 5, 6),
        )
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
