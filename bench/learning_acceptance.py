#!/usr/bin/env python
"""The learning loop's acceptance runs (issue 10) with the simulated student and the
simulated teacher, on real services, through `crmbench run` (each stage a resumable run
in its own folder; run the same command again to continue after a kill):

1. `seed`: learning on, the seed split (the memory starts empty, or as it is);
2. `learn`: learning on, the eval split (the memory keeps learning);
3. `off`: learning off, the eval split (the unguided baseline);
4. `frozen`: learning frozen, the eval split (retrieval from the learned memory alone);
5. `shuffled`: frozen with the shuffled-guidance control (as many entries per episode,
   drawn at random from the same memory);
5b. `frozen-tools`: frozen with tool subsetting (the student is offered only the tools
   its task category and injected entries need, plus the search tools);
6. `holdout-off` and 7. `holdout-frozen`: the holdout split without and with the frozen
   memory (transfer).

Then it prints, from the traces only: each run's reliability (pass at 0.9) with its
Wilson 95% interval; for every run the rate the simulated student's configuration
predicts for it (per episode, `expected_pass_probability` with `guided` true when the
guidance the student received, injected entries and teacher messages, addresses the
case's mistake by the student's own patterns); the uplift of each eval run over `off`,
paired by case, with a 95% bootstrap interval (scipy.stats.bootstrap, BCa, 10,000
resamples); cue hit and adoption rates with counts; lane mix; entries in the memory.

    python bench/learning_acceptance.py --out runs/acceptance \\
        --database-url postgresql://postgres@127.0.0.1:5432/crmbench_accept

`--limit N` plays the first N cases of each split (a quick look). The database must be
one the runs may use (the memory lives in it); `--fresh` empties its memory first.
Exit status is non-zero when a stage failed, never because a target was missed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import REPO_ROOT, log, table

from agent_runner.reports.reading import read_traces
from agent_runner.reports.statistics import build_report, wilson_interval
from agent_runner.simulated.config import SimulatedLLMConfig
from agent_runner.simulated.policy import expected_pass_probability
from crmbench_contracts.cases import Case
from crmbench_contracts.traces import SessionTrace
from crmbench_corpus.store import load_cases

CRMBENCH = str(Path(sys.executable).parent / "crmbench")

BASE = {
    "agent": "simulated",
    "concurrency": 4,
    "learning": {"teacher": "simulated", "embeddings": {"provider": "local"}},
}


@dataclass(frozen=True)
class Stage:
    name: str
    split: str
    learning: dict[str, Any]


STAGES = [
    Stage("seed", "seed", {"mode": "on"}),
    Stage("learn", "eval", {"mode": "on"}),
    Stage("off", "eval", {"mode": "off"}),
    Stage("frozen", "eval", {"mode": "frozen"}),
    Stage("shuffled", "eval", {"mode": "frozen", "control": "shuffled"}),
    Stage("frozen-tools", "eval", {"mode": "frozen", "tool_subset": True}),
    Stage("holdout-off", "holdout", {"mode": "off"}),
    Stage("holdout-frozen", "holdout", {"mode": "frozen"}),
]


def write_config(out: Path, stage: Stage, concurrency: int) -> Path:
    import yaml

    config = json.loads(json.dumps(BASE))
    config["concurrency"] = concurrency
    config["learning"].update(stage.learning)
    path = out / f"{stage.name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=True))
    return path


def run_stage(
    out: Path, stage: Stage, database_url: str, concurrency: int, limit: int | None
) -> float:
    config = write_config(out, stage, concurrency)
    command = [CRMBENCH, "run", "--config", str(config), "--split", stage.split]
    command += ["--out", str(out / stage.name), "--quiet"]
    if limit is not None:
        command += ["--limit", str(limit)]
    log(f"stage {stage.name}: {' '.join(command[1:])}")
    started = time.perf_counter()
    done = subprocess.run(
        command, env={**os.environ, "DATABASE_URL": database_url}, capture_output=True, text=True
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"stage {stage.name} failed:\n{done.stdout}\n{done.stderr}")
    log(done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "(no output)")
    return seconds


def guidance_text(session: SessionTrace) -> str:
    """Everything the student was told: injected entries and teacher messages."""
    context = session.crm_context
    messages = [str(event.get("text", "")) for event in context.trajectory]
    messages += [g for t in context.supervision_transitions for g in t.guidance]
    return "\n".join([context.injected_guidance or "", *messages])


def predicted(
    sessions: list[SessionTrace], cases: dict[str, Case], sim: SimulatedLLMConfig
) -> float:
    """Mean configured pass probability, guided where the guidance addressed the mistake."""
    values = []
    for session in sessions:
        case = cases[session.case_id]
        guided = sim.rule_for(case).addressed_by(guidance_text(session))
        values.append(expected_pass_probability(case, sim, guided=guided))
    return sum(values) / len(values)


def share(part: int, whole: int) -> str:
    return f"{part / whole:.1%} ({part}/{whole})" if whole else f"- (0/{whole})"


def passed(session: SessionTrace) -> bool:
    return session.verdicts.get("0.9", session.passed)


def uplift(run: list[SessionTrace], base: list[SessionTrace]) -> tuple[float, float, float, int]:
    """Paired by case: mean(pass here - pass in base), with a BCa 95% interval."""
    import numpy as np
    from scipy.stats import bootstrap

    here = {s.case_id: float(passed(s)) for s in run}
    there = {s.case_id: float(passed(s)) for s in base}
    common = sorted(set(here) & set(there))
    a = np.array([here[c] for c in common])
    b = np.array([there[c] for c in common])
    diff = float(np.mean(a - b))
    if np.all(a - b == (a - b)[0]):
        return diff, diff, diff, len(common)
    result = bootstrap(
        (a, b),
        lambda x, y: np.mean(x - y),
        paired=True,
        vectorized=False,
        n_resamples=10_000,
        confidence_level=0.95,
        method="BCa",
        random_state=np.random.default_rng(20261201),
    )
    low, high = result.confidence_interval
    return diff, float(low), float(high), len(common)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "runs" / "acceptance")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--fresh", action="store_true", help="empty the playbook memory first")
    parser.add_argument("--stages", default=",".join(stage.name for stage in STAGES))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    chosen = [stage for stage in STAGES if stage.name in args.stages.split(",")]
    if args.fresh:
        # `playbooks list` migrates the database first, so the tables exist.
        subprocess.run(
            [CRMBENCH, "playbooks", "list"],
            env={**os.environ, "DATABASE_URL": args.database_url},
            capture_output=True,
            check=True,
        )
        import asyncio

        import asyncpg

        from agent_runner.run.store import asyncpg_dsn

        async def empty() -> None:
            conn = await asyncpg.connect(asyncpg_dsn(args.database_url))
            try:
                await conn.execute(
                    "TRUNCATE runner.playbook_entry, runner.playbook_bookkeeping,"
                    " runner.trajectory_event, runner.learning_task_record CASCADE"
                )
            finally:
                await conn.close()

        asyncio.run(empty())
    seconds = {
        stage.name: run_stage(args.out, stage, args.database_url, args.concurrency, args.limit)
        for stage in chosen
    }
    cases = {case.case_id: case for case in load_cases()}
    sim = SimulatedLLMConfig.from_yaml(REPO_ROOT / "config" / "simulated_llm.yaml")
    sessions = {
        stage.name: read_traces(args.out / stage.name, with_steps=False).sessions
        for stage in STAGES
        if (args.out / stage.name / "sessions.jsonl").exists()
    }
    rows = []
    for name, runs in sessions.items():
        scored = [s for s in runs if s.outcome != "harness_error"]
        ok = sum(passed(s) for s in scored)
        if not scored:
            continue
        low, high = wilson_interval(ok, len(scored))
        report = build_report(runs)
        hit = report.cue_hit
        adoption = report.adoption
        rows.append(
            [
                name,
                f"{ok}/{len(scored)}",
                f"{ok / len(scored):.1%} [{low:.1%}, {high:.1%}]",
                f"{predicted(scored, cases, sim):.1%}",
                share(hit.passed, hit.total) if hit else "-",
                share(adoption.passed, adoption.total) if adoption else "-",
                ", ".join(f"{k} {v}" for k, v in report.lanes.items()) or "-",
                f"{sum(s.total_tokens for s in scored) / len(scored):.0f}",
                f"{seconds[name]:.0f}" if name in seconds else "-",
            ]
        )
    print()
    header = [
        "run",
        "passed",
        "reliability [95% Wilson]",
        "predicted",
        "cue hit",
        "adoption",
        "lanes",
        "tokens/episode",
        "wall s",
    ]
    print(table([header, *rows]))
    base = {"eval": sessions.get("off"), "holdout": sessions.get("holdout-off")}
    up_rows = []
    for name, split in [
        ("learn", "eval"),
        ("frozen", "eval"),
        ("shuffled", "eval"),
        ("frozen-tools", "eval"),
        ("holdout-frozen", "holdout"),
    ]:
        if name in sessions and base[split]:
            diff, low, high, n = uplift(sessions[name], base[split])
            up_rows.append([name, str(n), f"{diff:+.1%} [{low:+.1%}, {high:+.1%}]"])
    if up_rows:
        print()
        header = ["run vs its baseline (paired by case)", "cases", "uplift [95% BCa]"]
        print(table([header, *up_rows]))


if __name__ == "__main__":
    main()
