"""`crmbench serve agent-runner`: the agent runner as an HTTP service (POST /runs, GET
/runs/{id}) whose worker plays queued episodes.

Like `crmbench run`, it uses the CRM API and the verifier named by CRMBENCH_CRM_API_URL
(with CRMBENCH_ADMIN_KEY) and CRMBENCH_VERIFIER_URL, and starts any that is not set in
this process for its lifetime, on DATABASE_URL or the embedded Postgres. Its run routes
take CRMBENCH_RUNNER_KEY, else CRMBENCH_ADMIN_KEY; with neither, a key is printed once.
"""

from __future__ import annotations

import secrets
import sys
from typing import Annotated

import typer

from crmbench.errors import friendly_errors
from crmbench.foreground import bind, serve, shown_host
from crmbench_contracts.service_keys import require_strong_key


def register(serve_app: typer.Typer) -> None:
    serve_app.command("agent-runner")(serve_agent_runner)


@friendly_errors
def serve_agent_runner(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8003,
    work: Annotated[
        bool | None,
        typer.Option(
            "--work/--no-work",
            help="Play queued episodes here, or only serve the API (default: CRMBENCH_WORK, "
            "else on).",
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "warning",
) -> None:
    """Serve the agent runner: POST /runs queues a run, GET /runs/{id} reports it.

    Every replica on the same database shares every run (and so does `crmbench run`).
    """
    from sqlalchemy.engine import make_url

    from agent_runner.app import create_app
    from agent_runner.run.config import load_run_config
    from agent_runner.run.corpus import corpus_dir_of
    from agent_runner.settings import AgentRunnerSettings
    from crm_api.migrate import migrate
    from crm_api.settings import CrmApiSettings
    from crmbench.postgres import resolve_database_url
    from crmbench.run_cli import check_service_keys, service_environment

    # Every key under the variable the user set (CRMBENCH_ADMIN_KEY first: the others
    # default to it), before anything starts.
    check_service_keys(runner_routes=True)
    settings = AgentRunnerSettings()
    if work is not None:
        settings = settings.model_copy(update={"work": work})
    # The run routes' key: CRMBENCH_RUNNER_KEY, else the admin key given in the
    # environment; with neither, the CRM API started here has a key no one else knows,
    # so one is generated for the runner and printed once.
    require_strong_key(settings.api_key, settings.api_key_variable)
    generated_key = settings.api_key is None
    if generated_key:
        settings = settings.model_copy(update={"runner_key": secrets.token_urlsafe(24)})
    elif settings.runner_key is None:
        # Pinned now: the admin key is replaced below when the CRM API starts here.
        settings = settings.model_copy(update={"runner_key": settings.admin_key})
    # A bad run config fails here, in one line, before any service starts.
    config = load_run_config(settings.run_config)
    sock = bind(host, port)  # a busy port fails now, before any service starts
    database_url = resolve_database_url()
    migrate(database_url, CrmApiSettings().world_seed)
    with service_environment(database_url, corpus_dir_of(config)) as services:
        settings = settings.model_copy(
            update={
                "database_url": database_url,
                "crm_api_url": services.crm_api_url,
                "admin_key": services.admin_key,
                "verifier_url": services.verifier_url,
                "verifier_key": services.verifier_key,
            }
        )
        app = create_app(settings)
        shown = shown_host(host)

        def origin(name: str) -> str:
            return "started here" if name in services.started_here else "configured"

        typer.echo(f"agent_runner listening on http://{shown}:{port}")
        typer.echo(f"  API docs:  http://{shown}:{port}/docs")
        if generated_key:
            typer.echo(
                f"  runner key: {settings.runner_key} (send it as 'Authorization: Bearer "
                "<key>'; set CRMBENCH_RUNNER_KEY to fix it)"
            )
        typer.echo(f"  CRM API:   {services.crm_api_url} ({origin('crm_api')})")
        typer.echo(f"  verifier:  {services.verifier_url} ({origin('verifier')})")
        typer.echo(f"  database:  {make_url(database_url).render_as_string(hide_password=True)}")
        typer.echo(f"  run config: {settings.run_config}")
        typer.echo(f"  runs dir:  {settings.runs_dir.absolute()}")
        typer.echo(
            "  worker:    plays queued episodes"
            if settings.work
            else "  worker:    off (API only; another replica plays the runs)"
        )
        sys.stdout.flush()
        # Ctrl-C and SIGTERM: uvicorn finishes in-flight requests, then the services stop.
        serve(app, sock, log_level=log_level)
