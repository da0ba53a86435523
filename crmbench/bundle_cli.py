"""`crmbench bundle`: pack an experiment into one verifiable file, and `bundle verify` it
(crmbench.bundle; docs/experiment.md, "Hand-off bundle")."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from crmbench.errors import fail, friendly_errors

bundle_app = typer.Typer(
    help="Hand-off bundle: pack an experiment (--experiment DIR --out FILE), or verify one.",
    invoke_without_command=True,
    no_args_is_help=False,
)


@bundle_app.callback()
@friendly_errors
def bundle(
    ctx: typer.Context,
    experiment: Annotated[
        Path | None, typer.Option("--experiment", help="The experiment folder (experiment.json).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="The bundle file (.tar.gz).")
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            help="Any database URL of the server holding the experiment's database "
            "(default: DATABASE_URL, else the embedded Postgres).",
        ),
    ] = None,
) -> None:
    """Pack an experiment into one tar.gz: a database dump, the corpus, every stage's
    traces, playbooks.json, the report, the configs and a manifest of sha256 hashes."""
    from crmbench.bundle import BundleError, human_size, pack
    from crmbench.postgres import resolve_database_url

    if ctx.invoked_subcommand is not None:
        return
    if experiment is None or out is None:
        typer.echo(ctx.get_help())
        raise fail("give --experiment DIR and --out FILE (or: crmbench bundle verify FILE)", 2)
    try:
        result = pack(experiment, out, database_url or resolve_database_url())
    except BundleError as exc:
        raise fail(str(exc)) from None
    for warning in result.warnings:
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(
        f"wrote {result.path}: {human_size(result.size)}, {result.members + 1} members "
        f"({result.sessions} sessions; database dump {human_size(result.dump_size)}) "
        f"in {result.seconds:.1f}s"
    )


@bundle_app.command("verify")
@friendly_errors
def bundle_verify(
    file: Annotated[Path, typer.Argument(help="A bundle written by `crmbench bundle`.")],
    sample: Annotated[
        int, typer.Option("--sample", help="Episodes re-scored from their final states.", min=0)
    ] = 20,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the re-scored sample.")] = 0,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            help="An admin URL of a server to restore into (a temporary database is created "
            "and dropped there); default: a temporary embedded Postgres.",
        ),
    ] = None,
) -> None:
    """Check every hash, restore the dump into an empty database, compare it with the
    traces and playbooks.json, re-score a sample of episodes and rebuild the reliability
    figures. Exit 0 and "verified" when all agree; else each difference and exit 1."""
    from crmbench.bundle import BundleError, verify

    try:
        result = verify(file, sample=sample, seed=seed, admin_url=database_url, progress=typer.echo)
    except BundleError as exc:
        raise fail(str(exc)) from None
    for figure in result.figures:
        shown = "  ".join(
            f"@{key} {passed}/{figure.scored} {rate:.1%} [{low:.1%}, {high:.1%}]"
            for key, (passed, rate, low, high) in figure.reliability.items()
        )
        typer.echo(f"stage {figure.stage}: {shown or 'no scored episode'}")
    for note in result.notes:
        typer.echo(f"note: {note}")
    summary = (
        f"{result.files} files, {result.sessions} sessions, {result.playbook_entries} playbook "
        f"entries, {result.rescored} episodes re-scored; {result.seconds:.1f}s "
        f"(restore {result.restore_seconds:.1f}s)"
    )
    if result.verified:
        typer.echo(f"verified: {summary}")
        return
    for difference in result.differences:
        typer.echo(f"differs: {difference}", err=True)
    raise fail(f"{len(result.differences)} difference(s) in {file}; {summary}")
