"""`crmbench results` and `crmbench export`: a run's report, and its traces in Atlas's shape.

`register(app)` adds both commands to the crmbench app (crmbench.cli calls it).
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from crmbench.errors import fail, friendly_errors

if TYPE_CHECKING:
    from crmbench_contracts.traces import SessionTrace, StepTrace


class ExportFormat(StrEnum):
    ATLAS = "atlas"


def _warn(message: str) -> None:
    typer.secho(f"warning: {message}", fg=typer.colors.YELLOW, err=True)


@friendly_errors
def results(
    directory: Annotated[
        Path,
        typer.Argument(
            help="A run directory (holding sessions.jsonl and run.json) or a sessions .jsonl.",
            show_default=False,
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Report a run: pass rates at 0.7/0.8/0.9 with 95% intervals, pass^k, breakdowns, cost.

    Harness errors (the CRM API or the verifier failed) are listed apart and never
    counted in a pass rate.
    """
    from agent_runner.reports.reading import ResultsError
    from agent_runner.reports.rendering import render_report
    from agent_runner.reports.statistics import load_report

    try:
        report = load_report(directory)
    except ResultsError as exc:
        raise fail(str(exc)) from None
    if as_json:
        typer.echo(report.model_dump_json(indent=2))
    else:
        typer.echo(render_report(report), nl=False)


def _from_directory(directory: Path, run_id: str) -> list[tuple[SessionTrace, list[StepTrace]]]:
    from agent_runner.reports.reading import ResultsError, read_traces

    try:
        contents = read_traces(directory)
    except ResultsError as exc:
        raise fail(str(exc)) from None
    for warning in contents.notes.warnings:
        _warn(warning)
    pairs = [(s, steps) for s, steps in contents.pairs() if s.run_id == run_id]
    if not pairs:
        held = sorted({s.run_id for s in contents.sessions})
        runs = f"it holds run(s) {', '.join(held)}" if held else "it holds no session"
        raise fail(f"no session of run {run_id!r} in {contents.notes.source}; {runs}")
    cut = set(contents.incomplete())
    cut_here = [s.session_id for s, _ in pairs if s.session_id in cut]
    if cut_here:
        _warn(
            f"{len(cut_here)} session(s) have fewer step lines than they made "
            f"(exported as they are): {', '.join(cut_here[:5])}"
        )
    return pairs


def _from_database(run_id: str) -> list[tuple[SessionTrace, list[StepTrace]]]:
    import asyncio

    import asyncpg
    from sqlalchemy.engine import make_url

    from agent_runner.run.store import RunNotFound, load_run_traces
    from crmbench.postgres import resolve_database_url

    url = resolve_database_url()
    try:
        pairs = asyncio.run(load_run_traces(url, run_id))
    except RunNotFound as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        shown = make_url(url).render_as_string(hide_password=True)
        raise fail(f"cannot connect to the database at {shown}: {exc.strerror or exc}") from None
    except asyncpg.UndefinedTableError:
        raise fail("this database has no runner tables: no run was ever made on it") from None
    except asyncpg.PostgresError as exc:
        raise fail(f"database error: {str(exc).splitlines()[0]}") from None
    if not pairs:
        raise fail(f"run {run_id!r} has no finished episode yet")
    return pairs


@friendly_errors
def export(
    run_id: Annotated[str, typer.Option("--run", help="The run's id.", show_default=False)],
    format: Annotated[
        ExportFormat, typer.Option("--format", "-f", help="Trace format.")
    ] = ExportFormat.ATLAS,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="File to write (default: stdout).")
    ] = None,
    directory: Annotated[
        Path | None,
        typer.Option(
            "--dir",
            help="Read the run directory's sessions.jsonl instead of Postgres.",
        ),
    ] = None,
) -> None:
    """Export a run's session and step traces, one JSON line per session (Atlas SDK shape).

    Reads Postgres (DATABASE_URL, else the embedded server) unless --dir is given.
    """
    from agent_runner.reports.atlas import atlas_lines, write_atlas_jsonl

    pairs = _from_directory(directory, run_id) if directory else _from_database(run_id)
    if out is None:
        for line in atlas_lines(pairs):
            typer.echo(line)
        return
    count = write_atlas_jsonl(pairs, out)
    typer.echo(f"wrote {count} session(s) of run {run_id} to {out} ({format} format)", err=True)


def register(app: typer.Typer) -> None:
    """Adds `results` and `export` to the crmbench command line."""
    app.command("results")(results)
    app.command("export")(export)
