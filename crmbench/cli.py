"""The `crmbench` command line."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from typer.core import TyperGroup

from crmbench.bundle_cli import bundle_app
from crmbench.cases_cli import cases_app
from crmbench.errors import fail, friendly_errors
from crmbench.experiment_cli import register as register_experiment
from crmbench.foreground import bind, handle_sigterm_as_sigint, serve, shown_host
from crmbench.learning_report_cli import register as register_learning_report
from crmbench.playbooks_cli import playbooks_app
from crmbench.postgres import resolve_database_url
from crmbench.report_cli import register as register_report
from crmbench.results_cli import register as register_results
from crmbench.run_cli import register as register_run
from crmbench.serve_runner_cli import register as register_serve_runner


class _CrmbenchGroup(TyperGroup):
    """The top command: usage errors (unknown option, bad value) print in the one style of
    every crmbench error, `error: ...` on stderr, after the usage line."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        call = (args, prog_name, complete_var, False, windows_expand_args)
        if not standalone_mode:
            return super().main(*call, **extra)
        try:
            code = super().main(*call, **extra)
        except typer.TyperException as exc:  # click's usage errors, as typer ships them
            exit_code = int(getattr(exc, "exit_code", 2))
            if type(exc).__name__ == "NoArgsIsHelpError":
                sys.exit(exit_code)  # the help is printed already
            ctx = getattr(exc, "ctx", None)
            if ctx is not None:
                typer.echo(ctx.get_usage(), err=True)
                typer.echo(f"Try '{ctx.command_path} --help' for help.", err=True)
            fail(exc.format_message() if hasattr(exc, "format_message") else str(exc))
            sys.exit(exit_code)
        except typer.Abort:
            fail("aborted")
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=_CrmbenchGroup,
    help="crm-bench: a CRM benchmark for tool-calling LLM agents.",
    no_args_is_help=True,
    add_completion=False,
)
db_app = typer.Typer(
    help="Database: migrate, reset, snapshot, restore; status and stop of the embedded server.",
    no_args_is_help=True,
)
serve_app = typer.Typer(help="Run a service.", no_args_is_help=True)
tools_app = typer.Typer(help="Agent tool definitions.", no_args_is_help=True)
openapi_app = typer.Typer(help="The CRM API's OpenAPI contract.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(serve_app, name="serve")
app.add_typer(tools_app, name="tools")
app.add_typer(openapi_app, name="openapi")
app.add_typer(cases_app, name="cases")
app.add_typer(playbooks_app, name="playbooks")
app.add_typer(bundle_app, name="bundle")
register_run(app)
register_experiment(app)
register_results(app)
register_report(app)
register_learning_report(app)
register_serve_runner(serve_app)

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_OPENAPI = Path("docs/openapi.json")


@app.callback()
def _main() -> None:
    # SIGTERM stops every command as Ctrl-C does: services shut down, the embedded
    # Postgres is released (a handler only the main thread of a real process may set).
    handle_sigterm_as_sigint()


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def _settings() -> Any:
    from crm_api.settings import CrmApiSettings

    return CrmApiSettings()


async def _with_engine(url: str, action: Callable[[Any], Coroutine[Any, Any, T]]) -> T:
    from crm_api.database import create_engine

    engine = create_engine(url, pool_size=1, max_overflow=0)
    try:
        return await action(engine)
    finally:
        await engine.dispose()


# ---------------------------------------------------------------------------- db


@db_app.command("migrate")
@friendly_errors
def db_migrate() -> None:
    """Apply the schema migrations and load the world data set (idempotent)."""
    from crm_api.migrate import migrate

    url = resolve_database_url()
    reloaded, version = migrate(url, _settings().world_seed)
    state = "loaded" if reloaded else "already current"
    typer.echo(f"schema at head; world {version} {state}")


@db_app.command("reset")
@friendly_errors
def db_reset(
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Drop every episode and snapshot and reload the world data set."""
    from crm_api.migrate import upgrade_schema
    from crm_api.world_store import reset_database

    url = resolve_database_url()
    if not yes and sys.stdin.isatty():
        typer.confirm("Drop every live episode and reload the world?", abort=True)
    upgrade_schema(url)
    seed = _settings().world_seed
    dropped, version = run(_with_engine(url, lambda e: reset_database(e, seed)))
    typer.echo(f"dropped {dropped} episode(s); world {version} reloaded")


@db_app.command("snapshot")
@friendly_errors
def db_snapshot(
    out: Annotated[Path, typer.Option("--out", "-o", help="File to write the dump to.")],
) -> None:
    """Write the whole CRM state (world, episodes, change logs, snapshots) as canonical JSON."""
    from crm_api.world_store import dump_database
    from crmbench_contracts.canonical import canonical_json

    url = resolve_database_url()
    dump = run(_with_engine(url, dump_database))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(canonical_json(dump) + "\n", encoding="utf-8")
    typer.echo(f"wrote {out} ({len(dump['episodes'])} episode(s))")


@db_app.command("restore")
@friendly_errors
def db_restore(
    file: Annotated[Path, typer.Argument(help="A dump written by `crmbench db snapshot`.")],
) -> None:
    """Replace the whole CRM state with a dump written by `crmbench db snapshot`."""
    from crm_api.migrate import upgrade_schema
    from crm_api.world_store import restore_database

    try:
        dump = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise fail(f"{file} is not JSON: {exc}") from None
    if not isinstance(dump, dict):
        raise fail(f"{file} is not a crm-bench database dump")
    url = resolve_database_url()
    upgrade_schema(url)
    restored = run(_with_engine(url, lambda e: restore_database(e, dump)))
    typer.echo(f"restored the world and {restored} episode(s) from {file}")


def _database_url_note(status: Any) -> str | None:
    """A line saying where DATABASE_URL points when it is set (None when unset)."""
    from sqlalchemy.engine import make_url

    url = os.environ.get("DATABASE_URL")
    if not url:
        return None
    try:
        parsed = make_url(url)
    except Exception:
        return f"DATABASE_URL is set but is not a valid URL: {url!r}"
    shown = parsed.render_as_string(hide_password=True)
    host = parsed.query.get("host")
    if status.socket_dir is not None and host is not None and Path(str(host)) == status.socket_dir:
        return f"DATABASE_URL points at this embedded server ({shown})"
    return (
        f"DATABASE_URL is set: commands use {shown}, not the embedded Postgres "
        f"in {status.pgdata}; db status and db stop only concern the embedded one"
    )


@db_app.command("status")
@friendly_errors
def db_status() -> None:
    """Say whether the embedded Postgres of CRMBENCH_DATA_DIR runs, and which processes use it."""
    from crmbench.postgres import embedded_status

    status = embedded_status()
    note = _database_url_note(status)
    if note:
        typer.echo(note)
    if not status.initialised:
        typer.echo(f"no embedded Postgres in {status.pgdata} (none was ever started there)")
    elif not status.running:
        typer.echo(f"embedded Postgres in {status.pgdata}: not running")
    else:
        typer.echo(f"embedded Postgres in {status.pgdata}: running (pid {status.server_pid})")
        typer.echo(f"  url:   {status.url()}")
        users = ", ".join(str(pid) for pid in status.users) or "none"
        typer.echo(f"  used by processes: {users}")
        if not status.users:
            typer.echo("  no process uses it; stop it with: crmbench db stop")
    if status.stale:
        stale = ", ".join(str(pid) for pid in status.stale)
        typer.echo(f"  dropped handles of processes that no longer run: {stale}")


@db_app.command("stop")
@friendly_errors
def db_stop(
    force: Annotated[
        bool, typer.Option("--force", help="Stop it even while crmbench processes use it.")
    ] = False,
) -> None:
    """Stop the embedded Postgres of CRMBENCH_DATA_DIR (it restarts when a command needs it)."""
    from crmbench.postgres import ServerInUse, embedded_status, stop_embedded

    note = _database_url_note(embedded_status())
    if note:
        typer.echo(note)
    try:
        status = stop_embedded(force=force)
    except ServerInUse as exc:
        pids = ", ".join(str(pid) for pid in exc.status.users)
        raise fail(
            f"the embedded Postgres in {exc.status.pgdata} is in use by process(es) {pids}; "
            "stop them first (Ctrl-C), or use --force"
        ) from None
    if not status.running:
        typer.echo(f"no embedded Postgres runs in {status.pgdata}; nothing to stop")
        return
    typer.echo(f"stopped the embedded Postgres in {status.pgdata} (pid {status.server_pid})")


# ---------------------------------------------------------------------------- serve


@serve_app.command("crm-api")
@friendly_errors
def serve_crm_api(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8000,
    migrate_first: Annotated[
        bool, typer.Option("--migrate/--no-migrate", help="Apply migrations before serving.")
    ] = True,
    load_corpus: Annotated[
        bool,
        typer.Option("--load-corpus", help="Load the committed golden cases before serving."),
    ] = False,
    workers: Annotated[int, typer.Option(help="Worker processes.", min=1, max=64)] = 1,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "warning",
) -> None:
    """Serve the CRM API (on the embedded Postgres when DATABASE_URL is unset).

    The admin key comes from CRMBENCH_ADMIN_KEY; unset, one is generated and printed once.
    An empty, short or well-known key is refused before anything starts.
    """
    import secrets

    from crmbench_contracts.service_keys import require_strong_key

    require_strong_key(os.environ.get("CRMBENCH_ADMIN_KEY"), "CRMBENCH_ADMIN_KEY")
    sock = bind(host, port)  # a busy port fails now, before any migration
    url = resolve_database_url()
    if migrate_first:
        from crm_api.migrate import migrate

        migrate(url, _settings().world_seed)
    if load_corpus:
        from crmbench.cases_cli import load_corpus_into

        typer.echo(f"loaded {load_corpus_into(url, None)} golden cases")
    generated_key = "CRMBENCH_ADMIN_KEY" not in os.environ
    if generated_key:
        os.environ["CRMBENCH_ADMIN_KEY"] = secrets.token_urlsafe(24)
    shown = shown_host(host)
    typer.echo(f"crm_api listening on http://{shown}:{port}")
    typer.echo(f"  API docs:  http://{shown}:{port}/docs")
    typer.echo(f"  OpenAPI:   http://{shown}:{port}/openapi.json")
    if generated_key:
        typer.echo(
            f"  admin key: {os.environ['CRMBENCH_ADMIN_KEY']} (set CRMBENCH_ADMIN_KEY to fix it)"
        )
    sys.stdout.flush()
    serve("crm_api.app:create_app", sock, log_level=log_level, workers=workers)


# ---------------------------------------------------------------------------- tools, openapi


def _openapi_document() -> dict[str, Any]:
    from crm_api.app import create_app
    from crm_api.settings import CrmApiSettings

    # Building the document needs no database: the app is never started.
    document: dict[str, Any] = create_app(CrmApiSettings(database_url=None)).openapi()
    return document


def _write_or_print(text: str, out: Path | None) -> None:
    if out is None:
        typer.echo(text)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n", encoding="utf-8")
        typer.echo(f"wrote {out}", err=True)


@tools_app.command("export")
@friendly_errors
def tools_export(
    format: Annotated[str, typer.Option("--format", "-f", help="openai or anthropic")] = "openai",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="File (default stdout).")] = None,
) -> None:
    """Print the agent tool definitions generated from the CRM API's OpenAPI document."""
    from crm_api.tool_schemas import agent_tools

    if format not in ("openai", "anthropic"):
        raise fail(f"unknown format {format!r}; use openai or anthropic")
    tools = agent_tools(_openapi_document(), format)  # type: ignore[arg-type]
    _write_or_print(json.dumps(tools, indent=2, ensure_ascii=False), out)


@openapi_app.command("export")
@friendly_errors
def openapi_export(
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write it.")] = DEFAULT_OPENAPI,
) -> None:
    """Write the CRM API's OpenAPI document (commit it: it is the contract)."""
    _write_or_print(json.dumps(_openapi_document(), indent=2, sort_keys=True), out)


@openapi_app.command("check")
@friendly_errors
def openapi_check(
    against: Annotated[Path, typer.Option(help="The committed document.")] = DEFAULT_OPENAPI,
) -> None:
    """Compare the current OpenAPI document with the committed one; fail on any difference."""
    from crm_api.contract import diff_openapi, render_report

    committed = json.loads(against.read_text(encoding="utf-8"))
    current = _openapi_document()
    if committed == current:
        typer.echo(f"OpenAPI document matches {against}")
        return
    changes = diff_openapi(committed, current)
    typer.echo(render_report(changes) if changes else "documents differ (descriptions only)")
    raise fail(
        f"the served OpenAPI document differs from {against}; review the changes above "
        "and run `crmbench openapi export` to accept them"
    )


# ---------------------------------------------------------------------------- verifier
# `crmbench serve verifier` and `crmbench verify` (offline scoring of a saved state).


@serve_app.command("verifier")
@friendly_errors
def serve_verifier(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8001,
    crm_api_url: Annotated[
        str | None,
        typer.Option("--crm-api-url", help="The CRM API to read episodes from."),
    ] = None,
    corpus_dir: Annotated[
        Path | None, typer.Option("--corpus-dir", help="Folder with cases.jsonl.")
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "warning",
) -> None:
    """Serve the verifier (POST /verify scores an episode of the CRM API).

    Its scoring routes take CRMBENCH_VERIFIER_KEY, else CRMBENCH_ADMIN_KEY; with neither
    set, a key is generated and printed once. A weak key is refused before it starts.
    """
    import secrets

    from verifier.app import check_settings
    from verifier.settings import VerifierSettings

    # The app reads its settings from the environment, also in uvicorn's workers.
    if crm_api_url is not None:
        os.environ["CRMBENCH_CRM_API_URL"] = crm_api_url
    if corpus_dir is not None:
        os.environ["CRMBENCH_CORPUS_DIR"] = str(corpus_dir)
    settings = VerifierSettings()
    generated_key = settings.api_key is None  # an empty variable counts as unset
    if generated_key:
        os.environ["CRMBENCH_VERIFIER_KEY"] = secrets.token_urlsafe(24)
        settings = VerifierSettings()
    check_settings(settings)  # one line and exit 1 for an empty, short or known key
    sock = bind(host, port)
    shown = shown_host(host)
    typer.echo(f"verifier listening on http://{shown}:{port}")
    typer.echo(f"  API docs:  http://{shown}:{port}/docs")
    typer.echo(f"  CRM API:   {settings.crm_api_url}")
    if generated_key:
        typer.echo(f"  verifier key: {settings.api_key} (set CRMBENCH_VERIFIER_KEY to fix it)")
    if not settings.admin_key:
        typer.echo("  warning: CRMBENCH_ADMIN_KEY is not set; POST /verify cannot read episodes")
    sys.stdout.flush()
    serve("verifier.app:create_app", sock, log_level=log_level)


@serve_app.command("simulated-llm")
@friendly_errors
def serve_simulated_llm(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8004,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="Error rates and guidance effects (YAML)."),
    ] = None,
    latency_ms: Annotated[
        float | None,
        typer.Option("--latency-ms", help="Added wall time per model call.", min=0),
    ] = None,
    corpus_dir: Annotated[
        Path | None, typer.Option("--corpus-dir", help="Folder with cases.jsonl.")
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "warning",
) -> None:
    """Serve the simulated LLM: an OpenAI-compatible endpoint (/v1) playing a seeded,
    imperfect model that knows each case (sent as a header by the simulated agent)."""
    from agent_runner.simulated import SimulatedLLMConfig, create_simulated_app
    from agent_runner.simulated.config import default_config_path
    from crmbench_corpus.store import load_index

    settings = SimulatedLLMConfig.from_yaml(config or default_config_path())
    if latency_ms is not None:
        settings = settings.model_copy(update={"latency_ms": latency_ms})
    app_ = create_simulated_app(settings, load_index(corpus_dir))
    sock = bind(host, port)
    shown = shown_host(host)
    typer.echo(f"simulated LLM listening on http://{shown}:{port}/v1")
    typer.echo(f"  seed {settings.seed}, {settings.latency_ms:.0f} ms added per call")
    sys.stdout.flush()
    serve(app_, sock, log_level=log_level)


def _read_json_file(path: Path, what: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise fail(f"cannot read the {what} file {path}: {exc.strerror or exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise fail(f"the {what} file {path} is not JSON: {exc}") from None


def _print_reward(record: Any) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    marks = {True: "[green]pass[/green]", False: "[red]FAIL[/red]"}
    table = Table(title=f"case {record.case_id}", show_lines=False)
    for column in ("check", "kind", "result", "weight", "rationale"):
        table.add_column(column, overflow="fold")
    for check in record.checks:
        result = "[yellow]skip[/yellow]" if check.kind == "judge_skipped" else marks[check.passed]
        table.add_row(
            escape(check.check_id),
            escape(check.kind),
            result,
            f"{check.weight:g}",
            escape(check.rationale),
        )
    console = Console(highlight=False)
    console.print(table)
    for change in record.collateral:
        console.print(
            f"[red]collateral[/red] {escape(change.op)} {escape(change.table)} "
            f"{escape(change.key)} (tool call {escape(str(change.tool_call_id))}): "
            f"{escape(change.reason)}"
        )
    verdicts = "  ".join(f"{k}:{'yes' if v else 'no'}" for k, v in record.verdicts.items())
    outcome = "PASS" if record.passed else "FAIL"
    console.print(
        f"score {record.score:.3f} (structured {record.structured_score:.3f})  "
        f"{outcome}  verdicts {verdicts}"
    )


@app.command("verify")
@friendly_errors
def verify(
    case_id: Annotated[str, typer.Option("--case", help="The golden case's id.")],
    state: Annotated[
        Path, typer.Option("--state", help="The final state (GET /episodes/{id}/state).")
    ],
    changes: Annotated[
        Path | None,
        typer.Option("--changes", help="The change log (GET /episodes/{id}/changes)."),
    ] = None,
    reply: Annotated[str | None, typer.Option("--reply", help="The agent's final reply.")] = None,
    reply_file: Annotated[
        Path | None, typer.Option("--reply-file", help="A file holding the final reply.")
    ] = None,
    corpus_dir: Annotated[
        Path | None, typer.Option("--corpus-dir", help="Folder with cases.jsonl.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the reward record as JSON.")] = (
        False
    ),
) -> None:
    """Score a saved state against a case, offline (no services; no LLM judges)."""
    from crmbench_corpus.store import load_index
    from verifier.scoring import score_case

    if reply is not None and reply_file is not None:
        raise fail("give the reply with --reply or --reply-file, not both")
    final_reply = reply or ""
    if reply_file is not None:
        try:
            final_reply = reply_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise fail(f"cannot read the reply file {reply_file}: {exc.strerror or exc}") from None
    state_data = _read_json_file(state, "state")
    changes_data = _read_json_file(changes, "changes") if changes else {"tool_calls": []}
    cases = load_index(corpus_dir)
    case = cases.get(case_id)
    if case is None:
        raise fail(f"no case {case_id!r} in the corpus ({len(cases)} cases)")
    record = score_case(case, state_data, changes_data, final_reply)
    if as_json:
        typer.echo(record.model_dump_json(indent=2))
    else:
        _print_reward(record)


# ---------------------------------------------------------------------------- cases: import-clbench
# `crmbench cases import-clbench`: the customer's CL-Bench conversations as golden cases
# (crmbench_corpus.clbench). Registered on the `cases_app` of crmbench.cases_cli.


@cases_app.command("import-clbench")
@friendly_errors
def cases_import_clbench(
    file: Annotated[Path, typer.Argument(help="CL-Bench conversations, one JSON per line.")],
    out: Annotated[
        Path,
        typer.Option("--out", help="Folder for cases.jsonl, manifest.json, import_report.json."),
    ],
    crm_api_url: Annotated[
        str | None,
        typer.Option(
            "--crm-api-url",
            help="A running CRM API to replay against (admin key from CRMBENCH_ADMIN_KEY); "
            "default: start one for this command.",
        ),
    ] = None,
) -> None:
    """Import CL-Bench conversations as cases, replaying each against the CRM API."""
    from crmbench.local_services import running_crm_api
    from crmbench_clients.errors import ServiceError
    from crmbench_corpus.clbench import (
        REPORT_FILE,
        CrmApiUnavailable,
        import_file,
        render_report,
        write_import,
    )

    if not file.is_file():
        raise fail(f"no CL-Bench file at {file}")
    try:
        if crm_api_url:
            admin_key = os.environ.get("CRMBENCH_ADMIN_KEY")
            if not admin_key:
                raise fail("--crm-api-url needs the service's admin key in CRMBENCH_ADMIN_KEY")
            result = import_file(file, crm_api_url, admin_key)
        else:
            with running_crm_api() as (base_url, admin_key):
                result = import_file(file, base_url, admin_key)
    except CrmApiUnavailable as exc:
        raise fail(str(exc)) from None
    except ServiceError as exc:
        raise fail(f"the CRM API at {crm_api_url or 'the local service'} failed: {exc}") from None
    manifest = write_import(result, out)
    typer.echo(render_report(result))
    typer.echo(
        f"wrote {manifest['total']} case(s) to {out} (hash {manifest['content_hash'][:16]}); "
        f"report in {out / REPORT_FILE}"
    )
    if result.entries and not result.cases:
        raise fail("no conversation could be imported; see the report")


def main() -> None:  # pragma: no cover
    app()
