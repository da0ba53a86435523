"""The deterministic corpus generator: blueprints x phrasing x seeds -> golden cases.

Same generator version and seed give the same bytes. Task categories are weighted by
their counts in the customer's agent logs (agent_tasks.csv, with a floor so rare tasks
appear), 60% success paths and 40% failure scenarios spread evenly over the taxonomy.
"""

from __future__ import annotations

import csv
import random
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

from crmbench_contracts.cases import (
    FAILURE_CATEGORIES,
    Actor,
    Case,
    Difficulty,
    Split,
    Turn,
)
from crmbench_corpus.builder import MANAGERS, REPS, WORLD_TODAY, CaseBuilder
from crmbench_corpus.failures import FAILURE_BLUEPRINTS
from crmbench_corpus.store import case_line, content_hash
from crmbench_corpus.success import SUCCESS_BLUEPRINTS, Blueprint, Draft

GENERATOR_VERSION = "2"
CHANGES = [
    "Outcomes (issue 9, the outcome gate): every case states the outcomes its reply may "
    "claim. Success paths and recoveries: completed; refusals: refused or "
    "needs_clarification; permission cases: needs_approval or refused; a missing amount or "
    "file extension: needs_clarification or refused.",
    "Refusal explanations are `reason` facts of their failure category, read by the offline "
    "lexicon of crmbench_contracts.replies (paraphrases pass, a reply stuffed with every "
    "rule's reason does not); generic phrases ('email address', 'invalid', '.vbs') are "
    "gone, since a false success claim could contain them. EXTRA_FIELD and "
    "UNKNOWN_FIELD_UPDATE must name the field. Facts that confirm a change are affirmed: "
    "a clause that negates them does not count.",
    "Alternative branches, so that a careful operator is not punished: PROBABILITY_DECIMAL "
    "may round to the nearest whole number and say so; EXTRA_FIELD may ask before creating "
    "the client; INVALID_ENUM 'Won' may be read as Closed-Won and refused by the stage "
    "rule; UNKNOWN_FIELD_UPDATE may keep the value in a note on the deal; MALFORMED_EMAIL "
    "may add the contact without the email and say why.",
    "Tight complex flows: allowed changes name the fields and one row per created record "
    "(a quote created and then sent is one row; a second quote is collateral), created "
    "rows' unasked fields are pinned (default quote prefix, no validity date), row counts "
    "are asserted, and a stage move may carry its probability.",
    "Seed rows look like world rows (no answer leaks): version-4 ids, owners among the "
    "world's sales reps, created dates, quote prefixes and validity drawn the way the world "
    "draws them, instead of fixed timestamps that marked them as the case's rows.",
]
"""What changed in this generator version, and why (written into the manifest)."""
DEFAULT_SEED = 20251112
DEFAULT_COUNT = 1500
SUCCESS_SHARE = 0.6
RARE_TASK_FLOOR = 12
SEED_SPLIT_SIZE = 30
# Held out so that transfer is tested across tasks and failure families, not near-copies.
HOLDOUT_TASKS = frozenset(
    {
        "CONTACT SEARCH",
        "CLONE OPPORTUNITY",
        "CREATE NEW CONTACT",
        "MODIFY CONTACT",
        "COMPANY SEARCH",
    }
)
HOLDOUT_FAMILY = "strings"
# Blueprints whose case really changes with the requested tier.
TIERED = frozenset(
    {
        "CREATE NEW OPPORTUNITY",
        "MODIFY OPPORTUNITY",
        "CREATE QUOTE",
        "UPLOAD DOCUMENT",
        "CREATE NEW CLIENT",
    }
)
TIER_WEIGHTS = {Difficulty.SIMPLE: 0.45, Difficulty.MEDIUM: 0.35, Difficulty.COMPLEX: 0.20}


def task_counts(path: Path) -> dict[str, int]:
    """Counts per task from agent_tasks.csv; unknown tasks in the file are ignored."""
    with path.open(newline="", encoding="utf-8") as handle:
        rows = {r["task_description"].strip(): int(r["count"]) for r in csv.DictReader(handle)}
    return {task: rows.get(task, 0) for task in SUCCESS_BLUEPRINTS}


def workflows(path: Path) -> dict[str, str]:
    """Task -> workflow, from the intent rows of agent_tasks.csv."""
    mapping: dict[str, str] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            intent = (row.get("intent") or "").strip()
            for task in (row.get("example_sub_actions") or "").split(","):
                if intent and task.strip():
                    mapping[task.strip()] = intent
    return mapping


def allocate(weights: dict[str, int], total: int, floor: int) -> dict[str, int]:
    """Splits `total` over keys by weight with a floor each (largest remainders; stable)."""
    keys = sorted(weights)
    counts = {k: floor for k in keys}
    rest = total - floor * len(keys)
    if rest < 0:
        raise ValueError(f"{total} cases cannot give {len(keys)} tasks {floor} each")
    weight_sum = sum(weights.values()) or 1
    shares = {k: rest * weights[k] / weight_sum for k in keys}
    for k in keys:
        counts[k] += int(shares[k])
    leftover = total - sum(counts.values())
    by_remainder = sorted(keys, key=lambda k: (-(shares[k] - int(shares[k])), k))
    for k in by_remainder[:leftover]:
        counts[k] += 1
    return counts


def _difficulty(draft: Draft, requested: Difficulty) -> Difficulty:
    actions = len(draft.actions)
    if len(draft.turns) > 1 or actions >= 4:
        return Difficulty.COMPLEX
    if draft.task_category in TIERED and draft.failure is None:
        return Difficulty.MEDIUM if requested != Difficulty.SIMPLE else Difficulty.SIMPLE
    return Difficulty.MEDIUM if actions >= 3 else Difficulty.SIMPLE


def _tier(rng: random.Random) -> Difficulty:
    tiers = list(TIER_WEIGHTS)
    return rng.choices(tiers, weights=[TIER_WEIGHTS[t] for t in tiers])[0]


def build_case(
    case_id: str, blueprint: Blueprint, seed: int, workflow_of: dict[str, str]
) -> tuple[Case, Difficulty]:
    rng = random.Random(f"{seed}:{case_id}")
    today = WORLD_TODAY + timedelta(days=rng.randrange(0, 60))
    builder = CaseBuilder(case_id, rng, today)
    requested = _tier(rng)
    draft = blueprint(builder, requested)
    difficulty = _difficulty(draft, requested)
    role = draft.role
    actor = Actor(name=rng.choice(MANAGERS if role == "manager" else REPS), role=role)  # type: ignore[arg-type]
    tags = sorted({*draft.tags, "failure" if draft.failure else "success"})
    case = Case(
        case_id=case_id,
        task_category=draft.task_category,
        workflow=workflow_of.get(draft.task_category, "General"),
        difficulty=difficulty,
        split=Split.EVAL,
        tags=tags,
        today=today,
        actor=actor,
        seed=builder.seed,  # type: ignore[arg-type]
        turns=[Turn(content=t) for t in draft.turns],
        expected=draft.expected(),
        failure=draft.failure,
    )
    return case, requested


def _assign_splits(cases: list[Case], seed: int) -> list[Case]:
    rng = random.Random(f"{seed}:splits")
    out: list[Case] = []
    holdout = {
        c.case_id
        for c in cases
        if (c.failure is None and c.task_category in HOLDOUT_TASKS)
        or (c.failure is not None and c.failure.family.value == HOLDOUT_FAMILY)
    }
    candidates = sorted(c.case_id for c in cases if c.case_id not in holdout)
    seeded = set(rng.sample(candidates, min(SEED_SPLIT_SIZE, len(candidates))))
    for case in cases:
        split = (
            Split.HOLDOUT
            if case.case_id in holdout
            else Split.SEED
            if case.case_id in seeded
            else Split.EVAL
        )
        out.append(case.model_copy(update={"split": split}))
    return out


def generate(seed: int, count: int, tasks_csv: Path) -> list[Case]:
    """The corpus for (generator version, seed, count): a pure function of its inputs."""
    success_total = round(count * SUCCESS_SHARE)
    failure_total = count - success_total
    # The floor shrinks for small corpora so that the weights still decide most of it.
    floor = min(RARE_TASK_FLOOR, success_total // (2 * len(SUCCESS_BLUEPRINTS)))
    per_task = allocate(task_counts(tasks_csv), success_total, floor)
    per_failure = allocate({c: 1 for c in FAILURE_CATEGORIES}, failure_total, 0)
    workflow_of = workflows(tasks_csv)
    plan: list[Blueprint] = []
    for task in sorted(per_task):
        plan += [SUCCESS_BLUEPRINTS[task]] * per_task[task]
    for category in sorted(per_failure):
        plan += [FAILURE_BLUEPRINTS[category]] * per_failure[category]
    random.Random(f"{seed}:order").shuffle(plan)
    cases = [build_case(f"CRM-{i + 1:05d}", bp, seed, workflow_of)[0] for i, bp in enumerate(plan)]
    return _assign_splits(cases, seed)


def manifest(cases: list[Case], *, seed: int, lines: list[str]) -> dict[str, Any]:
    total = len(cases)
    success = sum(1 for c in cases if c.failure is None)

    def tally(values: list[str]) -> dict[str, int]:
        return dict(sorted(Counter(values).items()))

    return {
        "generator_version": GENERATOR_VERSION,
        "changes": CHANGES,
        "seed": seed,
        "total": total,
        "success": success,
        "failure": total - success,
        "success_share": round(success / total, 4) if total else 0.0,
        "by_split": tally([c.split.value for c in cases]),
        "by_category": tally([c.task_category for c in cases]),
        "by_failure_category": tally([c.failure.category for c in cases if c.failure]),
        "by_failure_family": tally([c.failure.family.value for c in cases if c.failure]),
        "by_difficulty": tally([c.difficulty.value for c in cases]),
        "by_workflow": tally([c.workflow for c in cases]),
        "content_hash": content_hash(lines),
    }


def write_corpus(cases: list[Case], out: Path, *, seed: int) -> dict[str, Any]:
    import json

    out.mkdir(parents=True, exist_ok=True)
    lines = [case_line(c) for c in cases]
    (out / "cases.jsonl").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    data = manifest(cases, seed=seed, lines=lines)
    (out / "manifest.json").write_text(
        json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    return data
