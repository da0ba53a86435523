"""`crmbench cases ...`: generate, inspect, load and validate the golden-case corpus."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from crmbench.errors import fail, friendly_errors
from crmbench.postgres import resolve_database_url
from crmbench_contracts.paths import REFERENCE_DIR

cases_app = typer.Typer(
    help="Golden cases: generate, stats, load, validate, import.", no_args_is_help=True
)

DirOption = Annotated[
    Path | None,
    typer.Option("--dir", help="Corpus folder (default: the committed corpus/cases)."),
]


def _tasks_csv() -> Path:
    configured = os.environ.get("CRMBENCH_AGENT_TASKS_CSV")
    if configured:
        return Path(configured)
    return REFERENCE_DIR / "agent_tasks.csv"


def _corpus_dir(directory: Path | None) -> Path:
    from crmbench_corpus.store import default_corpus_dir

    return directory or default_corpus_dir()


@cases_app.command("generate")
@friendly_errors
def cases_generate(
    out: Annotated[
        Path, typer.Option("--out", help="Folder to write cases.jsonl and manifest.json.")
    ],
    seed: Annotated[int, typer.Option(help="Generator seed.")] = 20251112,
    count: Annotated[int, typer.Option(help="Number of cases.", min=50, max=100_000)] = 1500,
) -> None:
    """Generate the corpus: same generator version and seed, same bytes."""
    from crmbench_corpus.generator import generate, write_corpus

    tasks = _tasks_csv()
    if not tasks.exists():
        raise fail(f"task frequencies not found at {tasks} (set CRMBENCH_AGENT_TASKS_CSV)")
    with typer.progressbar(length=1, label="generating") as bar:
        cases = generate(seed, count, tasks)
        bar.update(1)
    manifest = write_corpus(cases, out, seed=seed)
    typer.echo(f"wrote {manifest['total']} cases to {out} (hash {manifest['content_hash'][:16]})")


@cases_app.command("stats")
@friendly_errors
def cases_stats(
    directory: DirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
) -> None:
    """Print the corpus manifest: counts per split, category, failure family, difficulty."""
    from crmbench_corpus.generator import manifest
    from crmbench_corpus.store import case_line, load_cases, load_manifest

    folder = _corpus_dir(directory)
    try:
        cases = load_cases(folder)
        stored = load_manifest(folder)
    except (FileNotFoundError, ValueError) as exc:
        raise fail(str(exc)) from None
    data = manifest(cases, seed=int(stored.get("seed", 0)), lines=[case_line(c) for c in cases])
    if data["content_hash"] != stored.get("content_hash"):
        typer.secho(
            "warning: cases.jsonl does not match its manifest's hash",
            err=True,
            fg=typer.colors.YELLOW,
        )
    if as_json:
        typer.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    typer.echo(
        f"{data['total']} cases, {data['success_share']:.1%} success paths "
        f"(hash {data['content_hash'][:16]})"
    )
    for title in (
        "by_split",
        "by_difficulty",
        "by_failure_family",
        "by_category",
        "by_failure_category",
    ):
        typer.echo(f"\n{title.removeprefix('by_').replace('_', ' ')}:")
        for key, value in data[title].items():
            typer.echo(f"  {key:<32} {value:>5}")


async def _load(url: str, folder: Path) -> int:
    from crm_api.database import create_engine
    from crm_api.world_store import load_golden_cases
    from crmbench_corpus.store import case_line, content_hash, load_cases

    cases = load_cases(folder)
    lines = [case_line(c) for c in cases]
    engine = create_engine(url, pool_size=1, max_overflow=0)
    try:
        rows = [(c.case_id, json.loads(line)) for c, line in zip(cases, lines, strict=True)]
        return await load_golden_cases(engine, rows, content_hash(lines))
    finally:
        await engine.dispose()


def load_corpus_into(url: str, directory: Path | None) -> int:
    """Loads a corpus folder into the (migrated) database at `url`; returns the case count."""
    return asyncio.run(_load(url, _corpus_dir(directory)))


@cases_app.command("load")
@friendly_errors
def cases_load(directory: DirOption = None) -> None:
    """Put the corpus in Postgres so that POST /episodes {case_id} can build episodes."""
    from crm_api.migrate import migrate
    from crm_api.settings import CrmApiSettings

    url = resolve_database_url()
    migrate(url, CrmApiSettings().world_seed)
    typer.echo(f"loaded {load_corpus_into(url, directory)} cases")


def _ratio(pair: tuple[int, int]) -> str:
    ok, n = pair
    return "-" if n == 0 else f"{ok}/{n}"


async def _validate(
    folder: Path,
    crm_api_url: str,
    admin_key: str,
    verifier_url: str,
    concurrency: int,
    limit: int | None,
) -> list[Any]:
    from crmbench_clients.crm_api import CrmApiClient
    from crmbench_clients.verifier import VerifierClient
    from crmbench_corpus.store import load_cases
    from crmbench_corpus.validation import ServiceClients, validate_cases

    cases = load_cases(folder)[:limit] if limit else load_cases(folder)
    connections = concurrency * 2
    async with (
        CrmApiClient(crm_api_url, admin_key, timeout=120, max_connections=connections) as crm,
        VerifierClient(
            verifier_url, admin_key, timeout=120, max_connections=connections
        ) as verifier,
    ):
        clients = ServiceClients(crm, verifier)
        with typer.progressbar(length=len(cases), label="validating") as bar:
            return await validate_cases(
                clients, cases, concurrency=concurrency, progress=lambda _: bar.update(1)
            )


_COLUMNS = (
    ("reference", "ref"),
    ("noop", "noop"),
    ("trap", "trap"),
    ("universal", "univ"),
    ("off_rule", "offrule"),
    ("trap_stuffed", "stuffed"),
    ("false_success", "claim"),
    ("duplicates", "dups"),
    ("plain_refusal", "refusal"),
    ("plain_confirmation", "confirm"),
)
"""The group table's columns: a run kind and its short header."""


@cases_app.command("validate")
@friendly_errors
def cases_validate(
    directory: DirOption = None,
    concurrency: Annotated[int, typer.Option(min=1, max=64)] = 8,
    limit: Annotated[int | None, typer.Option(help="Only the first N cases.", min=1)] = None,
    report: Annotated[Path | None, typer.Option(help="Write a JSON report here.")] = None,
) -> None:
    """Play every case's reference, a no-op, its trap and the adversaries; check each
    kind of run against its target (the targets table: reference 100% score 1.0, no-op,
    trap, false claims, duplicates and off-rule form replies 0% pass, the universal reply
    < 1% of cases, trap +
    stuffed reply 0 failure categories, plain refusals and confirmations 100% pass).

    Starts a CRM API and a verifier for its duration (on DATABASE_URL or the embedded
    Postgres) and loads the corpus first. Exits non-zero when a target is missed.
    """
    import time

    from crmbench.local_services import running_crm_api, running_verifier
    from crmbench_corpus.validation import summary_rows, target_rows

    folder = _corpus_dir(directory)
    url = resolve_database_url()
    started = time.perf_counter()
    with running_crm_api(url) as (crm_api_url, admin_key):
        asyncio.run(_load(url, folder))
        with running_verifier(crm_api_url, admin_key, str(folder)) as verifier_url:
            results = asyncio.run(
                _validate(folder, crm_api_url, admin_key, verifier_url, concurrency, limit)
            )
    elapsed = time.perf_counter() - started
    rows = summary_rows(results)
    header = " ".join(f"{h:>8}" for _, h in _COLUMNS)
    typer.echo(f"\nruns that met their rule, per group:\n{'group':<44} {'cases':>5} {header}")
    for row in rows:
        cells = " ".join(f"{_ratio(row['runs'][kind]):>8}" for kind, _ in _COLUMNS)
        typer.echo(f"{row['group']:<44} {row['cases']:>5} {cells}")
    targets = target_rows(results)
    typer.echo(f"\n{'kind':<19} {'what it plays':<45} {'target':<26} measured")
    for t in targets:
        kind, meaning, rule = t.target.kind, t.target.meaning, t.target.rule
        mark = "ok  " if t.met else "MISS"
        typer.echo(f"{kind:<19} {meaning:<45} {rule:<26} {mark} {t.measured}")
    misses = [(r.case, run) for r in results for run in r.runs if not run.ok]
    runs = sum(len(r.runs) for r in results)
    missed = [t for t in targets if not t.met]
    typer.echo(
        f"\n{len(results)} cases, {runs} runs in {elapsed:.1f} s; {len(misses)} run(s) off "
        f"their rule; {len(missed)} of {len(targets)} targets missed"
    )
    for case, run in misses[:30]:
        typer.echo(f"  {case.case_id} {run.kind}: {run.detail}")
    if report is not None:
        report.write_text(
            json.dumps(
                {
                    "cases": len(results),
                    "runs": runs,
                    "seconds": round(elapsed, 1),
                    "targets": [t.as_json() for t in targets],
                    "groups": rows,
                    "misses": [
                        {
                            "case_id": c.case_id,
                            "category": c.failure.category if c.failure else c.task_category,
                            "kind": r.kind,
                            "score": r.score,
                            "claimed": r.claimed,
                            "reply": r.reply,
                            "detail": r.detail,
                        }
                        for c, r in misses
                    ],
                },
                indent=2,
            )
            + "\n",
            encoding="utf-8",
        )
    if missed:
        raise typer.Exit(1)
