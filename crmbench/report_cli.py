"""`crmbench report`: the comparative report of runs or of an experiment (report.md,
metrics.json, PNG plots); `register(app)` adds it to the crmbench app."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from crmbench.errors import fail, friendly_errors

RUNS_HELP = (
    "Run folders (run.json + sessions.jsonl; an experiment's stage folders), or one "
    "experiment directory (its stage folders and playbooks.json are read)."
)


@friendly_errors
def report(
    runs: Annotated[
        list[Path], typer.Argument(help=RUNS_HELP, metavar="RUN...", show_default=False)
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Folder for report.md, metrics.json and the PNGs "
            "(default: EXPERIMENT/report for an experiment directory).",
            show_default=False,
        ),
    ] = None,
    baseline: Annotated[
        Path | None,
        typer.Option(
            "--baseline",
            help="The run the others are compared with, paired by case (default: the "
            "learning-off run on the same split).",
            show_default=False,
        ),
    ] = None,
    names: Annotated[
        str | None,
        typer.Option(
            "--names", help="Comma-separated names for the runs, in order.", show_default=False
        ),
    ] = None,
    playbooks: Annotated[
        Path | None,
        typer.Option(
            "--playbooks",
            help="A playbook export (crmbench playbooks export) for the entries' texts "
            "(default: the experiment's playbooks.json).",
            show_default=False,
        ),
    ] = None,
    phase: Annotated[
        int, typer.Option("--phase", min=1, help="Episodes per phase of the learning curves.")
    ] = 25,
) -> None:
    """Comparative report: baseline vs learning vs control vs frozen transfer, learning
    curves, breakdowns, cost per success, thresholds, playbook entries, lanes, teacher.

    Every number comes from the runs' traces (the learning metrics); the tables of
    report.md and the plots are drawn from the same data, saved as metrics.json.
    """
    from agent_runner.reports.report_builder import build_report, is_experiment

    if out is None:
        if len(runs) == 1 and is_experiment(runs[0]):
            out = runs[0] / "report"
        else:
            raise fail("say where the report goes: --out DIR")
    started = time.perf_counter()
    listed = [name.strip() for name in names.split(",")] if names else None
    built, files = build_report(
        runs, out, baseline=baseline, names=listed, playbooks=playbooks, phase_size=phase
    )
    elapsed = time.perf_counter() - started
    typer.echo(
        f"report of {len(built.runs)} run(s) in {out}: {len(files)} files "
        f"({len(built.figures)} plots) in {elapsed:.1f} s"
    )
    typer.echo(f"  {out / 'report.md'}")


def register(app: typer.Typer) -> None:
    """Adds `report` to the crmbench command line."""
    app.command("report")(report)
