"""`crmbench results` and `crmbench export`: a run's report, and its traces in Atlas's shape.

`register(app)` adds both commands to the crmbench app (crmbench.cli calls it).
"""

from __future__ import annotations

import contextlib
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from crmbench.errors import fail, friendly_errors

if TYPE_CHECKING:
    from agent_runner.run.store import RunRow
    from crmbench_contracts.traces import SessionTrace, StepTrace


class ExportFormat(StrEnum):
    ATLAS = "atlas"


def _warn(message: str) -> None:
    typer.secho(f"warning: {message}", fg=typer.colors.YELLOW, err=True)


def _source(value: str) -> Path | str:
    """A run directory or trace file when `value` names an existing path (or looks like
    one), else a run id to read from the database."""
    path = Path(value)
    if path.exists():
        return path
    if "/" in value or value.endswith(".jsonl") or value in (".", ".."):
        raise fail(f"no run directory or trace file at {path}")
    return value


SOURCE_HELP = (
    "A run directory (holding run.json and sessions.jsonl), a sessions .jsonl, or a run id "
    "(read from the database: DATABASE_URL, else the embedded Postgres)."
)


@friendly_errors
def results(
    source: Annotated[
        str, typer.Argument(help=SOURCE_HELP, metavar="RUN_DIR_OR_ID", show_default=False)
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Report a run: pass rates at 0.7/0.8/0.9 with 95% intervals, pass^k, breakdowns, cost.

    Harness errors (the CRM API or the verifier failed) are listed apart and never
    counted in a pass rate.
    """
    from agent_runner.reports.reading import ResultsError, RunInfo
    from agent_runner.reports.rendering import render_report
    from agent_runner.reports.statistics import build_report, load_report

    where = _source(source)
    if isinstance(where, Path):
        try:
            report = load_report(where)
        except ResultsError as exc:
            raise fail(str(exc)) from None
    else:
        row, pairs = _from_database(where)
        info = RunInfo.model_validate(
            {name: getattr(row, name) for name in RunInfo.model_fields if hasattr(row, name)}
        )
        report = build_report([session for session, _ in pairs], run=info)
    if as_json:
        typer.echo(report.model_dump_json(indent=2))
    else:
        typer.echo(render_report(report), nl=False)


def _from_directory(
    directory: Path, run_id: str | None
) -> tuple[str, list[tuple[SessionTrace, list[StepTrace]]]]:
    """The run's sessions with their steps from a run directory; `run_id` None: the run
    of its run.json, else its only run. Returns (run id, pairs)."""
    from agent_runner.reports.reading import ResultsError, load_run_info, read_traces

    try:
        contents = read_traces(directory)
    except ResultsError as exc:
        raise fail(str(exc)) from None
    for warning in contents.notes.warnings:
        _warn(warning)
    if run_id is None:
        with contextlib.suppress(ResultsError):
            info = load_run_info(directory if directory.is_dir() else directory.parent)
            run_id = info.run_id if info is not None else None
    if run_id is None:
        held = sorted({s.run_id for s in contents.sessions})
        if len(held) != 1:
            runs = ", ".join(held) or "none"
            raise fail(f"{contents.notes.source} holds runs {runs}; say which with --run")
        run_id = held[0]
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
    return run_id, pairs


async def _run_and_traces(
    url: str, run_id: str
) -> tuple[RunRow, list[tuple[SessionTrace, list[StepTrace]]]]:
    from agent_runner.run.store import RunStore, load_run_traces

    pairs = await load_run_traces(url, run_id)  # raises RunNotFound first
    store = await RunStore.connect(url, pool_size=1)
    try:
        return await store.get_run(run_id), pairs
    finally:
        await store.close()


def _from_database(run_id: str) -> tuple[RunRow, list[tuple[SessionTrace, list[StepTrace]]]]:
    """The run's row and its sessions with their steps, from Postgres."""
    import asyncio

    import asyncpg
    from sqlalchemy.engine import make_url

    from agent_runner.run.store import RunNotFound
    from crmbench.postgres import resolve_database_url

    url = resolve_database_url()
    try:
        row, pairs = asyncio.run(_run_and_traces(url, run_id))
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
    return row, pairs


@friendly_errors
def export(
    source: Annotated[
        str | None,
        typer.Argument(
            help=SOURCE_HELP + " Or give --run / --dir.",
            metavar="RUN_DIR_OR_ID",
            show_default=False,
        ),
    ] = None,
    run_id: Annotated[
        str | None, typer.Option("--run", help="The run's id.", show_default=False)
    ] = None,
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

    The run is a run directory or a run id, as for `crmbench results`; a run id is read
    from Postgres (DATABASE_URL, else the embedded server).
    """
    from agent_runner.reports.atlas import atlas_lines, write_atlas_jsonl

    if source is not None:
        where = _source(source)
        if isinstance(where, Path):
            if directory is not None and directory != where:
                raise fail(f"give the run directory once: {source} or --dir {directory}")
            directory = where
        else:
            if run_id is not None and run_id != where:
                raise fail(f"give the run id once: {source} or --run {run_id}")
            run_id = where
    if directory is not None:
        run_id, pairs = _from_directory(directory, run_id)
    elif run_id is not None:
        pairs = _from_database(run_id)[1]
    else:
        raise fail("say which run: crmbench export RUN_DIR_OR_ID (or --run ID / --dir DIR)")
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
