"""`crmbench experiment --config FILE`: the customer's flow as resumable stages.

Baseline on eval, seeding on the seed split, the learning run on eval, optionally the
shuffled-guidance control and the frozen retrieval run, then holdout without learning and
the frozen transfer run: each an ordinary `crmbench run` in `<out>/<stage>/`, all in the
experiment's own database (so its memory starts empty and is nobody else's). The services
are started once for the whole experiment; killed, the same command continues where it
stopped. Layout and record: docs/experiment.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from crmbench.errors import fail, friendly_errors

if TYPE_CHECKING:
    from crmbench.experiment import ExperimentConfig, ExperimentRecord, StagePlan, StageRecord

LOCK_FILE = ".experiment.lock"


def register(app: typer.Typer) -> None:
    app.command("experiment")(experiment_command)


@contextlib.contextmanager
def _experiment_lock(out: Path) -> Iterator[None]:
    """One process per experiment folder: a second one fails at once, naming the folder
    (the kernel drops the lock of a killed process)."""
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    with (out / LOCK_FILE).open("w") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise fail(f"another crmbench experiment is running on {out}") from None
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def _continue_on_interrupt(resume_hint: str) -> Iterator[None]:
    """Ctrl-C or SIGTERM anywhere inside (creating the database, starting the services, a
    stage, the export, the report, stopping the services): the `finally` blocks have
    stopped what ran; prints how to continue and exits 130."""
    try:
        yield
    except KeyboardInterrupt:
        typer.echo(f"\ninterrupted; continue with: {resume_hint}", err=True)
        raise typer.Exit(130) from None


def _server_shown(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(database="").render_as_string(hide_password=True)


async def _ensure_database(server_url: str, name: str, *, create: bool) -> str:
    """The URL of database `name` on the server of `server_url`, created when missing and
    `create` (else ExperimentConfigError: a database an experiment's runs lived in is
    gone)."""
    import asyncpg
    from sqlalchemy.engine import make_url

    from agent_runner.run.store import asyncpg_dsn
    from crmbench.experiment import DATABASE_PREFIX, ExperimentConfigError

    if not name.startswith(DATABASE_PREFIX) or not name.replace("_", "").isalnum():
        raise ExperimentConfigError(f"{name!r} is not an experiment database name")
    conn = await asyncpg.connect(asyncpg_dsn(server_url))
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            if not create:
                raise ExperimentConfigError(
                    f"the experiment's database {name} is gone from {_server_shown(server_url)} "
                    "(its runs and memory with it); start a new experiment with another --out"
                )
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


def _apply_judges(config: ExperimentConfig) -> None:
    """The verifier this command starts reads its judges from CRMBENCH_JUDGES_CONFIG: the
    experiment config decides it, so the record says what scored the episodes."""
    from crmbench.experiment import resolve_path

    if config.judges is not None and os.environ.get("CRMBENCH_VERIFIER_URL"):
        raise fail(
            "the config names judges, but CRMBENCH_VERIFIER_URL names a running verifier, "
            "whose judges are its own: unset CRMBENCH_VERIFIER_URL or remove `judges`"
        )
    if config.judges is not None:
        os.environ["CRMBENCH_JUDGES_CONFIG"] = str(resolve_path(config.judges))
    elif os.environ.pop("CRMBENCH_JUDGES_CONFIG", None) and not os.environ.get(
        "CRMBENCH_VERIFIER_URL"
    ):
        typer.echo("note: CRMBENCH_JUDGES_CONFIG ignored: the experiment config names no judges")


def _new_record(
    config: ExperimentConfig,
    config_file: Path,
    base: Any,
    plans: list[StagePlan],
    out: Path,
    corpus_dir: Path,
    corpus_hash: str,
    server_url: str,
) -> ExperimentRecord:
    from agent_runner.run.runner import package_version
    from crmbench.experiment import (
        CONFIG_COPY,
        DATABASE_PREFIX,
        DatabaseRecord,
        ExperimentRecord,
        config_files,
        experiment_id,
        new_stage_records,
        resolved_config,
        versions,
    )

    identifier = experiment_id(config.name, out)
    now = datetime.now(UTC)
    record = ExperimentRecord(
        experiment_id=identifier,
        name=config.name,
        created_at=now,
        updated_at=now,
        config=resolved_config(config, base),
        run_config=base.model_dump(mode="json"),
        config_files=config_files(config, base),
        corpus_dir=str(corpus_dir),
        corpus_hash=corpus_hash,
        package_version=package_version(),
        versions=versions(),
        database=DatabaseRecord(
            name=f"{DATABASE_PREFIX}{identifier}", server=_server_shown(server_url)
        ),
        stages=new_stage_records(plans),
    )
    shutil.copyfile(config_file, out / CONFIG_COPY)
    return record


async def _postgres_version(url: str) -> str:
    import asyncpg

    from agent_runner.run.store import asyncpg_dsn

    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


async def _export_memory(database_url: str, path: Path) -> int:
    """Writes the memory (`crmbench playbooks export`'s document) atomically; returns its
    number of entries."""
    from agent_runner.learning.memory import PlaybookStore
    from crmbench.playbooks_cli import NO_EMBEDDER

    name, dimension = NO_EMBEDDER
    store = await PlaybookStore.connect(
        database_url, embedder=name, dimension=dimension, pool_size=1
    )
    try:
        document = await store.export()
    finally:
        await store.close()
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_text(document.model_dump_json(indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, path)
    return len(document.entries)


def _report_command_exists() -> bool:
    """Whether this installation's command line has `crmbench report` (issue 11's
    comparative report, built apart from this command)."""
    import typer.main

    from crmbench.cli import app

    group = typer.main.get_command(app)
    return "report" in getattr(group, "commands", {})


def _build_report(out: Path) -> dict[str, Any]:
    """`crmbench report <out> --out <out>/report` (the experiment directory: its stage
    folders and playbooks.json), in a child process (its failure must not lose the
    experiment); skipped with a note where this installation has no such command."""
    from crmbench.experiment import REPORT_DIR

    command = ["report", str(out), "--out", str(out / REPORT_DIR)]
    if not _report_command_exists():
        return {
            "status": "skipped",
            "note": "this installation has no `crmbench report`; build it later with "
            f"crmbench {' '.join(command)}",
        }
    done = subprocess.run(
        [sys.executable, "-c", "from crmbench.cli import app; app()", *command],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        return {"status": "failed", "note": lines[-1] if lines else f"exit {done.returncode}"}
    return {"status": "built", "note": f"{out / REPORT_DIR}/report.md"}


def _summary(record: ExperimentRecord, simulated: bool) -> None:
    """The per-stage table (always printed: it is the result, not progress)."""
    from rich.console import Console
    from rich.table import Table

    cost_label = "simulated cost $" if simulated else "cost $"
    table = Table(title=f"experiment {record.experiment_id}")
    for column in ("stage", "split", "learning", "run", "episodes", "passed", "pass rate"):
        table.add_column(column, justify="right" if column in ("episodes", "passed") else "left")
    table.add_column(cost_label, justify="right")
    table.add_column("wall s", justify="right")
    for stage in record.stages:
        scored = (stage.episodes or 0) - (stage.harness_errors or 0)
        rate = f"{stage.passed / scored:.1%}" if scored and stage.passed is not None else "-"
        learning = stage.learning.mode + (
            " shuffled" if stage.learning.control == "shuffled" else ""
        )
        table.add_row(
            stage.name,
            stage.split.value,
            learning,
            stage.run_id or "-",
            "-" if stage.episodes is None else str(stage.episodes),
            "-" if stage.passed is None else str(stage.passed),
            rate,
            "-" if stage.cost_usd is None else f"{stage.cost_usd:.4f}",
            f"{stage.wall_s:.1f}",
        )
    Console(width=max(shutil.get_terminal_size().columns, 140)).print(table)


def _run_stage(
    index: int,
    plans: list[StagePlan],
    stage: StageRecord,
    config: Any,
    env: Any,
    record: ExperimentRecord,
    out: Path,
    show: bool,
) -> None:
    """Runs (or resumes) one stage's run to its end and records it done; raises typer.Exit
    when the run cannot be finished."""
    from crmbench.experiment import EXPERIMENT_FILE
    from crmbench.run_cli import _directory_lock, _execute, _prepare

    stage_out = out / stage.folder
    record_file = out / EXPERIMENT_FILE
    with _directory_lock(stage_out):
        config, run_id, cases, resumed = asyncio.run(
            _prepare(config, env.database_url, stage_out, str(stage_out.absolute()), None, False)
        )
    if stage.run_id is not None and stage.run_id != run_id:
        raise fail(f"{stage_out} holds run {run_id}, but {record_file} says {stage.run_id}")
    label = f"{index + 1}/{len(plans)} {stage.name}"
    typer.echo(
        f"stage {label} ({stage.split.value}, learning {stage.learning.mode}"
        f"{', shuffled' if stage.learning.control == 'shuffled' else ''}): "
        f"{'resuming' if resumed else 'started'} run {run_id} -> {stage_out}"
    )
    stage.run_id = run_id
    stage.status = "running"
    stage.started_at = stage.started_at or datetime.now(UTC)
    record.write(record_file)
    started = time.perf_counter()
    try:
        stats, final = asyncio.run(
            _execute(config, env, run_id, stage_out, cases, show=show, label=label)
        )
    finally:
        stage.wall_s = round(stage.wall_s + time.perf_counter() - started, 3)
        record.write(record_file)
    stage.episodes = final.done
    stage.passed = final.passed
    stage.harness_errors = final.harness_errors
    stage.cost_usd = round(final.cost_usd, 6)
    if stats.failures:
        for failure in stats.failures:
            typer.echo(f"error: {failure}", err=True)
        raise fail(f"stage {stage.name}: run {run_id} cannot be finished with this corpus")
    if final.done < final.total:
        raise fail(
            f"stage {stage.name}: {final.total - final.done} episodes of run {run_id} left; "
            "run the same command again to resume"
        )
    if final.harness_errors:
        typer.echo(
            f"warning: stage {stage.name}: {final.harness_errors} episodes ended in harness "
            f"errors and are left out of its pass rate; crmbench results {stage_out} lists them",
            err=True,
        )
    stage.status = "done"
    stage.finished_at = datetime.now(UTC)
    record.write(record_file)
    scored = final.done - final.harness_errors
    rate = f"{final.passed / scored:.1%}" if scored else "-"
    typer.echo(
        f"stage {label} done: {final.done} episodes, pass@0.9 {rate}, "
        f"${final.cost_usd:.4f}, {stage.wall_s:.1f}s"
    )


@friendly_errors
def experiment_command(
    config_file: Annotated[
        Path,
        typer.Option("--config", help="Experiment config YAML (config/experiment.*.yaml)."),
    ],
    out: Annotated[
        Path | None,
        typer.Option(help="Experiment folder; resumes if present. Default experiments/<name>."),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option(help="At most N cases per stage (replaces the config's limit).", min=1),
    ] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Run the customer's experiment: baseline, seeding, learning, (control, retrieval),
    holdout baseline and frozen transfer, each a resumable run; then the memory's export
    and the report.

    Killed or interrupted, the same command continues: stages done are not run again and
    the stage that was running resumes its run.
    """
    from agent_runner.learning.memory import PlaybookError
    from agent_runner.run.runner import RunStopped
    from agent_runner.run.store import RunNotFound
    from crm_api.migrate import migrate
    from crm_api.settings import CrmApiSettings
    from crmbench.experiment import (
        EXPERIMENT_FILE,
        PLAYBOOKS_FILE,
        ExperimentConfigError,
        ExperimentRecord,
        base_run_config,
        config_differences,
        load_experiment_config,
        resolved_config,
        stage_plan,
        stage_run_config,
    )
    from crmbench.postgres import resolve_database_url
    from crmbench.run_cli import _corpus_dir, check_can_start, check_service_keys, run_environment
    from crmbench_corpus.store import load_cases, load_manifest
    from crmbench_learning.embeddings import EmbeddingError
    from crmbench_llm.base import LLMError

    check_service_keys()
    try:
        config = load_experiment_config(config_file, limit)
        base = base_run_config(config, config_file)
        plans = stage_plan(config.control)
        configs = {plan.name: stage_run_config(base, plan) for plan in plans}
    except ExperimentConfigError as exc:
        raise fail(str(exc)) from None
    out = out or Path("experiments") / config.name
    record_file = out / EXPERIMENT_FILE
    corpus_dir = _corpus_dir(base)
    corpus_hash = str(load_manifest(corpus_dir).get("content_hash", "unknown"))
    simulated = base.agent == "simulated"
    resume_hint = f"crmbench experiment --config {config_file} --out {out}"
    if limit is not None:
        resume_hint += f" --limit {limit}"
    _apply_judges(config)
    # Everything the stages need (keys, embedder, teacher) before anything is made or any
    # service starts: `learn` needs the agent, the embedder and the teacher.
    check_can_start(configs["learn"])
    with _continue_on_interrupt(resume_hint), _experiment_lock(out):
        record = ExperimentRecord.read(record_file) if record_file.exists() else None
        if record is None:
            server_url = resolve_database_url()
            record = _new_record(
                config, config_file, base, plans, out, corpus_dir, corpus_hash, server_url
            )
            record.write(record_file)
            typer.echo(f"experiment {record.experiment_id} -> {out}")
        else:
            differs = config_differences(record.config, resolved_config(config, base))
            if differs:
                raise fail(
                    f"{out} holds experiment {record.experiment_id} made with other settings "
                    f"({', '.join(differs)}); give this config another --out"
                )
            if record.corpus_hash != corpus_hash:
                raise fail(
                    f"experiment {record.experiment_id} ran on corpus {record.corpus_hash}, but "
                    f"{corpus_dir} now holds {corpus_hash}; start a new experiment (another --out)"
                )
            if [s.name for s in record.stages] != [p.name for p in plans]:
                raise fail(f"{record_file}: its stages are not this config's")
            server_url = resolve_database_url()
            typer.echo(f"continuing experiment {record.experiment_id} -> {out}")
        started_any = any(stage.status != "pending" for stage in record.stages)
        database_url = asyncio.run(
            _ensure_database(server_url, record.database.name, create=not started_any)
        )
        migrate(database_url, CrmApiSettings().world_seed)
        record.versions.setdefault("postgres", asyncio.run(_postgres_version(database_url)))
        record.write(record_file)
        for index, stage in enumerate(record.stages):
            if stage.status == "done":
                typer.echo(
                    f"stage {index + 1}/{len(plans)} {stage.name}: done (run {stage.run_id}), "
                    "not run again"
                )
        try:
            if any(stage.status != "done" for stage in record.stages):
                # Started once for every stage: the simulated LLM knows every case.
                with run_environment(base, database_url, load_cases(corpus_dir)) as env:
                    for index, stage in enumerate(record.stages):
                        if stage.status != "done":
                            _run_stage(
                                index,
                                plans,
                                stage,
                                configs[stage.name],
                                env,
                                record,
                                out,
                                show=not quiet,
                            )
        except RunStopped as stopped:
            raise fail(f"{stopped} Continue with: {resume_hint}") from None
        except (LLMError, EmbeddingError, PlaybookError) as exc:
            raise fail(f"{exc}; continue with: {resume_hint}") from None
        except RunNotFound as exc:
            raise fail(str(exc)) from None
        entries = asyncio.run(_export_memory(database_url, out / PLAYBOOKS_FILE))
        record.playbooks = {"file": PLAYBOOKS_FILE, "entries": entries}
        typer.echo(f"memory: {entries} playbook entries -> {out / PLAYBOOKS_FILE}")
        record.report = _build_report(out)
        typer.echo(f"report: {record.report['status']}: {record.report['note']}")
        record.status = "done"
        record.finished_at = record.finished_at or datetime.now(UTC)
        record.write(record_file)
    _summary(record, simulated)
    if simulated:
        from agent_runner.reports.statistics import SIMULATED_COST_NOTE

        typer.echo(SIMULATED_COST_NOTE)
