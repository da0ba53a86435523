"""The labelled retrieval set (data/retrieval_set.jsonl) and recall@k of an embedder over it.

The set holds 30 playbook-entry cues, CRM lessons of the kind synthesis writes, each with
3 requests or situations that the entry should be retrieved for, phrased as users and
agents phrase them (a request, an error the agent saw, a question), not with the cue's
words. Recall@k is the share of those 90 queries whose own entry is among the k cues
most similar to them (cosine similarity; ties keep the file's order).
"""

from __future__ import annotations

import importlib.resources
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from crmbench_learning.embeddings import Embedder


@dataclass(frozen=True)
class LabelledEntry:
    """One playbook entry's cue and the queries that should retrieve it."""

    entry: str
    """A stable id (kebab-case)."""
    cue: str
    queries: tuple[str, ...]


def load_retrieval_set() -> list[LabelledEntry]:
    """The committed set, in file order. Raises ValueError naming the line of a malformed
    record or a repeated id."""
    text = (
        importlib.resources.files("crmbench_learning")
        .joinpath("data/retrieval_set.jsonl")
        .read_text(encoding="utf-8")
    )
    entries: list[LabelledEntry] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            entry = LabelledEntry(
                str(record["entry"]), str(record["cue"]), tuple(map(str, record["queries"]))
            )
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"retrieval_set.jsonl line {number}: {error}") from error
        if not entry.queries or any(e.entry == entry.entry for e in entries):
            raise ValueError(f"retrieval_set.jsonl line {number}: no queries or a repeated id")
        entries.append(entry)
    return entries


@dataclass(frozen=True)
class RetrievalScore:
    """Recall of one embedder over a labelled set."""

    embedder: str
    entries: int
    queries: int
    recall: dict[int, float]
    """k -> share of queries (0..1) whose entry ranks in the top k."""
    misses_at_1: tuple[tuple[str, str, str], ...]
    """(query, its entry, the entry ranked first instead), for reading the failures."""


def recall_at_k(
    embedder: Embedder, entries: Sequence[LabelledEntry], ks: Sequence[int] = (1, 3)
) -> RetrievalScore:
    """Embeds every cue and every query (two `embed` calls) and ranks the cues for each
    query by cosine similarity."""
    cues = np.array(embedder.embed([e.cue for e in entries]), dtype=np.float64)
    labelled = [(query, index) for index, e in enumerate(entries) for query in e.queries]
    queries = np.array(embedder.embed([query for query, _ in labelled]), dtype=np.float64)
    similarity = queries @ cues.T
    order = np.argsort(-similarity, axis=1, kind="stable")
    ranks = [int(np.flatnonzero(order[row] == index)[0]) for row, (_, index) in enumerate(labelled)]
    recall = {k: sum(rank < k for rank in ranks) / len(ranks) for k in ks}
    misses = tuple(
        (query, entries[index].entry, entries[int(order[row, 0])].entry)
        for row, (query, index) in enumerate(labelled)
        if ranks[row] != 0
    )
    return RetrievalScore(embedder.name, len(entries), len(labelled), recall, misses)
