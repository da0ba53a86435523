"""`crmbench learning-report`: the learning metrics of runs, and their comparison with a
baseline run, from the traces only (agent_runner.reports.learning_metrics).

`register(app)` adds the command to the crmbench app (crmbench.cli calls it).
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from crmbench.errors import fail, friendly_errors

if TYPE_CHECKING:
    from agent_runner.reports.learning_metrics import RunData
    from crmbench_contracts.playbooks import PlaybookExport


class ReportFormat(StrEnum):
    MARKDOWN = "markdown"
    JSON = "json"


def _load(path: Path, taken: set[str]) -> RunData:
    """One run folder; its name is the folder's, or the path as given when two runs
    would share a name."""
    from agent_runner.reports.learning_metrics import load_run
    from agent_runner.reports.reading import ResultsError

    if not path.exists():
        raise fail(f"no run directory or trace file at {path}")
    try:
        run = load_run(path)
    except ResultsError as exc:
        raise fail(str(exc)) from None
    if run.name in taken:
        run.name = str(path)
    taken.add(run.name)
    return run


def _playbooks(file: Path) -> PlaybookExport:
    import json

    from pydantic import ValidationError

    from crmbench_contracts.playbooks import PlaybookExport

    try:
        return PlaybookExport.model_validate(json.loads(file.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise fail(f"no file {file}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        reason = str(exc).splitlines()[0] if isinstance(exc, ValidationError) else str(exc)
        raise fail(f"{file} is not a playbook export (crmbench.playbooks/1): {reason}") from None


@friendly_errors
def learning_report(
    runs: Annotated[
        list[Path],
        typer.Argument(
            help="Run folders (run.json and sessions.jsonl), or an experiment's stage folders.",
            metavar="RUN...",
            show_default=False,
        ),
    ],
    baseline: Annotated[
        Path | None,
        typer.Option(
            help="The baseline run: every RUN is compared with it, paired by case.",
            show_default=False,
        ),
    ] = None,
    phase: Annotated[
        int, typer.Option("--phase", help="Episodes per phase (trend windows).", min=1)
    ] = 25,
    format: Annotated[
        ReportFormat, typer.Option("--format", "-f", help="markdown or json.")
    ] = ReportFormat.MARKDOWN,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="File to write (default: stdout).")
    ] = None,
    playbooks: Annotated[
        Path | None,
        typer.Option(
            help="A playbook export (crmbench playbooks export) that names the top entries' "
            "text and level.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Learning metrics of runs from their traces: reliability at 0.7/0.8/0.9 and pass^k,
    cue hit, adoption, mean reward and tokens, cost per success, their trend in phases;
    with --baseline, reward, token and reliability deltas and transfer, paired by case.

    Every figure has its count and a 95% interval (Wilson for rates, bootstrap over cases
    for means and deltas; docs/experiment.md).
    """
    from agent_runner.reports.learning_metrics import learning_report as build
    from agent_runner.reports.learning_metrics import render_markdown

    taken: set[str] = set()
    base = _load(baseline, taken) if baseline is not None else None
    loaded = [_load(path, taken) for path in runs]
    export = _playbooks(playbooks) if playbooks is not None else None
    report = build(loaded, base, phase_size=phase, playbooks=export)
    text = (
        report.model_dump_json(indent=2) + "\n"
        if format == ReportFormat.JSON
        else render_markdown(report)
    )
    if out is None:
        typer.echo(text, nl=False)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    typer.echo(f"wrote the learning report of {len(report.runs)} run(s) to {out}", err=True)


def register(app: typer.Typer) -> None:
    """Adds `learning-report` to the crmbench command line."""
    app.command("learning-report")(learning_report)
