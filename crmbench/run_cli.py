"""`crmbench run`: run an agent over golden cases, resumably, with a live progress bar.

The services a run needs come from the environment when set (CRMBENCH_CRM_API_URL with
CRMBENCH_ADMIN_KEY, CRMBENCH_VERIFIER_URL with CRMBENCH_VERIFIER_KEY or the admin key,
CRMBENCH_SIMULATED_LLM_URL); any that is not
is started in this process for the run's duration, on DATABASE_URL or the embedded
Postgres, which also holds the run's queue and telemetry.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from crmbench.errors import fail, friendly_errors

RUN_FLAGS_NOTE = "ignored when DIR already holds a run: the run's stored config is used"


@dataclass
class RunEnvironment:
    database_url: str
    crm_api_url: str
    admin_key: str
    verifier_url: str
    verifier_key: str
    simulated_url: str | None


def _corpus_dir(config: Any) -> Path:
    from agent_runner.run.corpus import corpus_dir_of

    return corpus_dir_of(config)


@dataclass
class ServiceUrls:
    crm_api_url: str
    admin_key: str
    verifier_url: str
    verifier_key: str
    """The key the verifier's scoring routes take: CRMBENCH_VERIFIER_KEY, else the admin key."""
    started_here: list[str]
    """The services started by this process (the others came from the environment)."""


def _set(name: str) -> str | None:
    """An environment variable's value; empty counts as unset (as the services read it)."""
    return os.environ.get(name) or None


def check_service_keys(*, runner_routes: bool = False) -> None:
    """Fails, in one line naming the variable the user set, when a key this command will
    use is weak (see `crmbench_contracts.service_keys.key_problem`). Called before anything
    (a run folder, a queued run, a service) is made. CRMBENCH_ADMIN_KEY counts when it is
    used: with CRMBENCH_CRM_API_URL, and as the run routes' key (`runner_routes`, for
    `crmbench serve agent-runner`) when CRMBENCH_RUNNER_KEY is unset; it is checked first,
    under its own name, since the other keys default to it."""
    from crmbench_contracts.service_keys import key_problem

    names: list[str] = []
    if _set("CRMBENCH_CRM_API_URL") or (runner_routes and not _set("CRMBENCH_RUNNER_KEY")):
        names.append("CRMBENCH_ADMIN_KEY")
    if runner_routes:
        names.append("CRMBENCH_RUNNER_KEY")
    names.append("CRMBENCH_VERIFIER_KEY")
    for name in names:
        problem = key_problem(_set(name), name)
        if problem is not None:
            raise fail(problem)


@contextlib.contextmanager
def service_environment(database_url: str, corpus_dir: Path) -> Iterator[ServiceUrls]:
    """The CRM API and the verifier: configured ones by URL (CRMBENCH_CRM_API_URL with
    CRMBENCH_ADMIN_KEY, CRMBENCH_VERIFIER_URL), the others started here on the database,
    with the corpus in `corpus_dir` loaded into it."""
    from crmbench.cases_cli import load_corpus_into
    from crmbench.local_services import running_crm_api, running_verifier

    with contextlib.ExitStack() as stack:
        started: list[str] = []
        crm_url = os.environ.get("CRMBENCH_CRM_API_URL")
        admin_key = os.environ.get("CRMBENCH_ADMIN_KEY")
        if crm_url and not admin_key:
            raise fail("CRMBENCH_CRM_API_URL is set but CRMBENCH_ADMIN_KEY is not")
        if not crm_url:
            load_corpus_into(database_url, corpus_dir)
            crm_url, admin_key = stack.enter_context(running_crm_api(database_url))
            started.append("crm_api")
        assert admin_key is not None
        own_verifier_key = _set("CRMBENCH_VERIFIER_KEY")
        verifier_url = os.environ.get("CRMBENCH_VERIFIER_URL")
        if not verifier_url:
            # Without CRMBENCH_VERIFIER_KEY the verifier falls back to the admin key itself,
            # so a refusal of that key names CRMBENCH_ADMIN_KEY, the variable actually set.
            verifier_url = stack.enter_context(
                running_verifier(crm_url, admin_key, str(corpus_dir), verifier_key=own_verifier_key)
            )
            started.append("verifier")
        verifier_key = own_verifier_key or admin_key
        yield ServiceUrls(crm_url, admin_key, verifier_url, verifier_key, started)


@contextlib.contextmanager
def run_environment(config: Any, database_url: str, cases: list[Any]) -> Iterator[RunEnvironment]:
    """The services of a run: configured ones by URL, the others started here."""
    with contextlib.ExitStack() as stack:
        services = stack.enter_context(service_environment(database_url, _corpus_dir(config)))
        simulated_url: str | None = None
        if config.agent == "simulated":
            simulated_url = config.simulated.url or os.environ.get("CRMBENCH_SIMULATED_LLM_URL")
            if not simulated_url:
                from agent_runner.simulated.config import SimulatedLLMConfig
                from agent_runner.simulated.server import running_simulated_llm

                sim_config = SimulatedLLMConfig.from_yaml(
                    config.resolve_path(config.simulated.config)
                )
                simulated_url = stack.enter_context(
                    running_simulated_llm(sim_config, {case.case_id: case for case in cases})
                )
        yield RunEnvironment(
            database_url,
            services.crm_api_url,
            services.admin_key,
            services.verifier_url,
            services.verifier_key,
            simulated_url,
        )


class ProgressDisplay:
    """A live bar over the whole run (all runner processes): pass rate, cost, ETA.

    A simulated run's cost is labelled as such: it is what the priced model would have
    cost, not money spent.
    """

    def __init__(
        self, total: int, enabled: bool, simulated: bool = False, label: str = "run"
    ) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.enabled = enabled
        cost_label = "simulated cost" if simulated else "cost"
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("pass {task.fields[pass_rate]}"),
            TextColumn(cost_label + " {task.fields[cost]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            disable=not enabled,
            transient=False,
        )
        self.task = self.progress.add_task(label, total=total, pass_rate="-", cost="$0.00")

    def update(self, done: int, passed: int, harness_errors: int, cost: float) -> None:
        scored = done - harness_errors
        rate = f"{passed / scored:.1%}" if scored else "-"
        self.progress.update(self.task, completed=done, pass_rate=rate, cost=f"${cost:.2f}")


async def _execute(
    config: Any,
    env: RunEnvironment,
    run_id: str,
    out: Path,
    cases: list[Any],
    show: bool,
    label: str = "run",
) -> tuple[Any, Any]:
    from agent_runner.agents.factory import build_agent
    from agent_runner.learning.factory import run_learning_hooks
    from agent_runner.run.runner import work_on_run
    from agent_runner.run.store import RunStore
    from crmbench_clients.crm_api import CrmApiClient
    from crmbench_clients.verifier import VerifierClient

    agent = build_agent(config, simulated_url=env.simulated_url)
    store = await RunStore.connect(env.database_url, pool_size=min(config.concurrency + 2, 32))
    crm = CrmApiClient(env.crm_api_url, env.admin_key)
    verifier = VerifierClient(env.verifier_url, env.verifier_key)
    try:
        # learning.mode off: no hooks, and no embedder or playbook table is touched.
        async with run_learning_hooks(
            config, store.pool, run_id=run_id, simulated_url=env.simulated_url
        ) as hooks:
            first = await store.progress(run_id)
            display = ProgressDisplay(
                first.total, show, simulated=config.agent == "simulated", label=label
            )

            async def refresh() -> None:
                while True:
                    # The bar is cosmetic: a failed read must not stop or fail the run.
                    with contextlib.suppress(Exception):
                        now = await store.progress(run_id)
                        display.update(now.done, now.passed, now.harness_errors, now.cost_usd)
                    await asyncio.sleep(0.5)

            with display.progress:
                ticker = asyncio.create_task(refresh())
                try:
                    stats = await work_on_run(
                        store=store,
                        run_id=run_id,
                        config=config,
                        cases={case.case_id: case for case in cases},
                        agent=agent,
                        crm=crm,
                        verifier=verifier,
                        trace_dir=out,
                        hooks=hooks,
                    )
                finally:
                    ticker.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await ticker
                final = await store.progress(run_id)
                display.update(final.done, final.passed, final.harness_errors, final.cost_usd)
            return stats, final
    finally:
        await agent.aclose()
        await crm.aclose()
        await verifier.aclose()
        await store.close()


async def _prepare(
    config: Any, database_url: str, out: Path, out_dir: str, join: str | None, flags_given: bool
) -> tuple[Any, str, list[Any], bool]:
    """Creates the run, or finds the one to resume; returns (config, run_id, cases, resumed)."""
    from agent_runner.run.config import RunConfig
    from agent_runner.run.runner import RunFiles, create_run, select_cases
    from agent_runner.run.store import RunStore
    from crmbench_corpus.store import load_cases, load_manifest

    files = RunFiles(out)
    existing = files.existing_run_id()
    if join is not None and existing is not None and existing != join:
        raise fail(f"{out} holds run {existing}; give --join {join} another --out")
    run_id = join or existing
    store = await RunStore.connect(database_url, pool_size=2)
    try:
        if run_id is not None:
            run = await store.get_run(run_id)
            stored = RunConfig.model_validate(run.config)
            if flags_given and stored.model_dump(mode="json") != config.model_dump(mode="json"):
                typer.echo(f"note: resuming {run_id} with its stored config; {RUN_FLAGS_NOTE}")
            # The run's own corpus, and the same version of it: a resumed run must score
            # its remaining episodes against the cases it started with.
            manifest = load_manifest(_corpus_dir(stored))
            if str(manifest.get("content_hash")) != run.corpus_hash:
                raise fail(
                    f"run {run_id} was made with corpus {run.corpus_hash}, but "
                    f"{_corpus_dir(stored)} now holds {manifest.get('content_hash')}; "
                    "start a new run (another --out)"
                )
            if not files.run_file.exists():
                files.write(run)
            return stored, run_id, load_cases(_corpus_dir(stored)), True
        corpus = load_cases(_corpus_dir(config))
        chosen = select_cases(config, corpus)
        corpus_hash = str(load_manifest(_corpus_dir(config)).get("content_hash", "unknown"))
        run = await create_run(store, config, chosen, corpus_hash, out_dir)
        files.write(run)
        return config, run.run_id, chosen, False
    finally:
        await store.close()


@contextlib.contextmanager
def _directory_lock(out: Path) -> Iterator[None]:
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    with (out / ".run.lock").open("w") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


FLAG_OF_FIELD = {"cases": "--cases", "limit": "--limit", "trials": "--trials"}
SECTION_FLAGS = {"learning": "mode"}
"""Flags that set one key of a config section: the section and that key."""


def _config_from(config_file: Path | None, overrides: dict[str, Any]) -> Any:
    """The run config: the file with the flags on top. A bad flag value is blamed on the
    flag (with the allowed values), a bad file value on the file."""
    from pydantic import ValidationError

    from agent_runner.run.config import ConfigError, load_run_config

    try:
        return load_run_config(config_file, overrides)
    except ConfigError as exc:
        cause = exc.__cause__
        if isinstance(cause, ValidationError) and cause.errors():
            problem = cause.errors()[0]
            field = str(problem["loc"][0]) if problem["loc"] else ""
            given = overrides.get(field)
            if given is not None:
                flag = FLAG_OF_FIELD.get(field, f"--{field.replace('_', '-')}")
                if field in SECTION_FLAGS:
                    given = given[SECTION_FLAGS[field]]
                shown = ",".join(given) if isinstance(given, list) else given
                raise fail(f"{flag} {shown!r}: {problem['msg']}") from None
        raise fail(str(exc)) from None


def _id_key(case_id: str) -> str:
    """A case id up to case and zero padding: `crm-1` and `CRM-00001` are one id."""
    import re

    return re.sub(r"\d+", lambda m: str(int(m.group())), case_id.strip().upper())


def _check_cases(config: Any) -> None:
    """Fails (naming close matches of unknown case ids) when the run would have no cases."""
    import difflib

    from agent_runner.run.config import ConfigError
    from agent_runner.run.runner import select_cases
    from crmbench_corpus.store import load_cases

    corpus = load_cases(_corpus_dir(config))
    try:
        select_cases(config, corpus)
    except ConfigError as exc:
        known = [case.case_id for case in corpus]
        unknown = [case_id for case_id in config.cases or [] if case_id not in set(known)]
        by_key = {_id_key(case_id): case_id for case_id in known}
        hints = []
        for case_id in unknown[:5]:
            same = by_key.get(_id_key(case_id))
            close = [same] if same else difflib.get_close_matches(case_id, known, n=3)
            if close:
                hints.append(f"{case_id}: did you mean {' or '.join(close)}?")
        detail = f" ({'; '.join(hints)})" if hints else ""
        where = _corpus_dir(config)
        raise fail(f"{exc}{detail}; the cases are in {where}/cases.jsonl") from None


def check_can_start(config: Any) -> None:
    """Builds what a run of `config` needs and closes it again, so that a missing API key,
    embedding model or teacher config fails (one `error:` line, typer.Exit) before any run
    is queued: the agent, the embedder (learning frozen or on) and the teacher (on)."""
    from agent_runner.agents.factory import build_agent
    from agent_runner.learning.factory import build_teacher
    from crmbench_learning.embeddings import EmbeddingError, make_embedder
    from crmbench_llm.base import LLMError

    # Build the agent once now: a missing API key fails before a run is queued.
    try:
        probe = build_agent(config, simulated_url="http://127.0.0.1/unused")
    except LLMError as exc:
        raise fail(str(exc)) from None
    asyncio.run(probe.aclose())
    if config.learning.mode != "off":
        # And the embedder: a missing model or key fails before a run is queued.
        try:
            embedder = make_embedder(config.learning.embeddings)
        except (EmbeddingError, LLMError) as exc:
            raise fail(str(exc)) from None
        close = getattr(embedder, "close", None)
        if close is not None:
            close()
    # And the teacher: its key and its config fail here too.
    try:
        teacher = build_teacher(config)
    except (LLMError, ValueError) as exc:
        raise fail(f"the teacher cannot be built: {exc}") from None
    if teacher is not None:
        asyncio.run(teacher.aclose())


def register(app: typer.Typer) -> None:
    app.command("run")(run_command)


@friendly_errors
def run_command(
    agent: Annotated[
        str | None,
        typer.Option(help="student, teacher, random, oracle or simulated (default: config)."),
    ] = None,
    model: Annotated[str | None, typer.Option(help="Model of the agent's provider.")] = None,
    split: Annotated[str | None, typer.Option(help="eval, holdout or seed.")] = None,
    limit: Annotated[int | None, typer.Option(help="At most N cases.", min=1)] = None,
    cases: Annotated[
        str | None, typer.Option(help="Comma-separated case ids instead of a split.")
    ] = None,
    trials: Annotated[int | None, typer.Option(help="Trials per case.", min=1, max=100)] = None,
    concurrency: Annotated[
        int | None, typer.Option(help="Episodes in flight in this process.", min=1, max=256)
    ] = None,
    out: Annotated[
        Path, typer.Option(help="Run directory: run.json and sessions.jsonl; resumes if present.")
    ] = Path("runs/latest"),
    config_file: Annotated[
        Path | None, typer.Option("--config", help="Run config YAML (default config/run.yaml).")
    ] = None,
    join: Annotated[
        str | None,
        typer.Option("--join", help="Work on this existing run id (another process shares it)."),
    ] = None,
    learning: Annotated[
        str | None,
        typer.Option(
            help="Learning loop: off; frozen (inject the top playbook entries retrieved "
            "from the memory into the student's prompt; no synthesis); or on (also triage "
            "into lanes, the teacher's supervision, synthesis, retirement). Default: config "
            "(off).",
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Run an agent over golden cases and score every episode.

    Killed or interrupted, the same command (same --out) resumes where it stopped; more
    processes given the same --out (or --join RUN_ID) share the work.
    """
    from agent_runner.learning.memory import PlaybookError
    from agent_runner.run.runner import RunFiles, RunStopped
    from agent_runner.run.store import RunNotFound
    from crm_api.migrate import migrate
    from crm_api.settings import CrmApiSettings
    from crmbench.postgres import resolve_database_url
    from crmbench_learning.embeddings import EmbeddingError
    from crmbench_llm.base import LLMError

    overrides: dict[str, Any] = {
        "agent": agent,
        "model": model,
        "split": split,
        "limit": limit,
        "cases": [c.strip() for c in cases.split(",") if c.strip()] if cases else None,
        "trials": trials,
        "concurrency": concurrency,
        "learning": {"mode": learning} if learning is not None else None,
    }
    flags_given = any(value is not None for value in overrides.values())
    # Every key first: a weak one must not leave a run folder or a queued run behind.
    check_service_keys()
    config = _config_from(config_file, overrides)
    if join is None and not RunFiles(out).run_file.exists():
        # A new run: its cases must exist before anything (folder, lock, database) is made.
        _check_cases(config)
        check_can_start(config)
    database_url = resolve_database_url()
    migrate(database_url, CrmApiSettings().world_seed)
    try:
        # Processes started together on one --out must create one run, not one each.
        with _directory_lock(out):
            config, run_id, run_cases, resumed = asyncio.run(
                _prepare(config, database_url, out, str(out.absolute()), join, flags_given)
            )
    except RunNotFound as exc:
        raise fail(str(exc)) from None
    typer.echo(f"{'resuming' if resumed else 'started'} run {run_id} -> {out}")
    started = time.perf_counter()
    try:
        with run_environment(config, database_url, run_cases) as env:
            stats, final = asyncio.run(
                _execute(config, env, run_id, out, run_cases, show=not quiet)
            )
    except RunStopped as stopped:
        raise fail(f"{stopped} Resume with: crmbench run --out {out}") from None
    except (LLMError, EmbeddingError, PlaybookError) as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        typer.echo(f"\ninterrupted; resume with: crmbench run --out {out}", err=True)
        raise typer.Exit(130) from None
    elapsed = time.perf_counter() - started
    scored = final.done - final.harness_errors
    rate = f"{final.passed / scored:.1%}" if scored else "-"
    simulated = config.agent == "simulated"
    typer.echo(
        f"run {run_id}: {final.done}/{final.total} done ({stats.completed} here) in "
        f"{elapsed:.1f}s, pass@0.9 {rate}, harness errors {final.harness_errors}, "
        f"{'simulated cost' if simulated else 'cost'} ${final.cost_usd:.4f}"
    )
    if simulated:
        from agent_runner.reports.statistics import SIMULATED_COST_NOTE

        typer.echo(SIMULATED_COST_NOTE)
    if final.harness_errors:
        typer.echo(
            f"warning: {final.harness_errors} episodes ended in harness errors (a service or "
            "the model provider failed, not the agent) and are left out of the pass rate; "
            f"crmbench results {out} lists them",
            err=True,
        )
    if stats.failures:
        for failure in stats.failures:
            typer.echo(f"error: {failure}", err=True)
        raise fail(f"run {run_id} cannot be finished with this corpus")
    if final.done < final.total:
        typer.echo(f"{final.total - final.done} episodes left; rerun to resume", err=True)
    typer.echo(f"results: crmbench results {out}")
