"""The agent runner's FastAPI application: `POST /runs` queues a run in Postgres, `GET
/runs/{run_id}` reports its progress and results, and a background worker (unless
`work` is off) plays queued episodes, sharing every run with the other replicas. The run
routes need the runner key (bearer); /health is open.

Same contract as `crmbench run`: a run's fields override the run config
(config/run.yaml), the effective config is stored with the run, and its traces go to
Postgres and to `<runs_dir>/<run_id>/sessions.jsonl`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections.abc import AsyncIterator
from typing import Annotated, Any

import asyncpg
from fastapi import Depends, FastAPI, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError

from agent_runner.agents.factory import build_agent
from agent_runner.errors import ErrorResponse, RunnerError, RunnerErrorCode, from_problem
from agent_runner.reports.reading import RunInfo
from agent_runner.reports.statistics import build_report
from agent_runner.run.config import ConfigError, RunConfig, load_run_config
from agent_runner.run.corpus import CorpusCatalog, RunCorpus, corpus_dir_of
from agent_runner.run.queue_worker import AGENT_BUILD_ERRORS, QueueWorker, SimulatedLLMs, describe
from agent_runner.run.runner import (
    RunFiles,
    create_run,
    new_run_id,
    package_version,
    select_cases,
    worker_name,
)
from agent_runner.run.store import Progress, RunNotFound, RunRow, RunStore
from agent_runner.schemas import (
    RUN_ID_PATTERN,
    Health,
    RunCreated,
    RunDetail,
    RunList,
    RunRequest,
    RunSummary,
)
from agent_runner.settings import AgentRunnerSettings
from crmbench_clients.crm_api import CrmApiClient
from crmbench_clients.http_errors import error_response, install_error_handlers
from crmbench_clients.verifier import VerifierClient
from crmbench_contracts.api_errors import RequestProblem
from crmbench_contracts.service_keys import check_bearer, require_strong_key
from crmbench_contracts.settings_names import renamed_variable_warnings
from crmbench_llm.base import MissingApiKey

log = logging.getLogger("agent_runner")

UNCONTACTED_URL = "http://127.0.0.1:9/v1"
"""Stands in for the simulated LLM's URL when POST /runs builds a simulated agent only to
check it can be built; nothing is sent to it."""

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "No bearer key was sent."},
    403: {"model": ErrorResponse, "description": "The bearer key is not the runner key."},
    404: {"model": ErrorResponse, "description": "No such run."},
    422: {
        "model": ErrorResponse,
        "description": "The request is not valid, or names a run "
        "this service cannot play (unknown cases, a missing API key).",
    },
    503: {"model": ErrorResponse, "description": "The database or the corpus is unavailable."},
}


DATABASE_UNAVAILABLE: tuple[type[Exception], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    ConnectionError,
)
"""Errors that mean Postgres cannot be reached now (503), not a bug of this service."""


class RunnerServices:
    """Process-wide objects, created in the lifespan and shared by every request."""

    def __init__(
        self,
        settings: AgentRunnerSettings,
        store: RunStore,
        corpora: CorpusCatalog,
        default_corpus: RunCorpus,
        worker: QueueWorker | None,
        name: str,
    ) -> None:
        self.settings = settings
        self.store = store
        self.corpora = corpora
        self.default_corpus = default_corpus
        self.worker = worker
        self.name = name
        self.runs_dir = settings.runs_dir.absolute()

    # ------------------------------------------------------------------ creating runs

    def config_for(self, body: RunRequest) -> RunConfig:
        try:
            return load_run_config(self.settings.run_config, body.overrides())
        except ConfigError as exc:
            raise config_problem(exc) from None

    async def corpus_for(self, config: RunConfig) -> RunCorpus:
        try:
            return await self.corpora.for_config(config)
        except (OSError, ValueError) as exc:
            raise RunnerError(
                RunnerErrorCode.CORPUS_UNAVAILABLE,
                f"The corpus in {corpus_dir_of(config)} cannot be read: {describe(exc)}",
                status_code=503,
            ) from None

    async def check_agent(self, config: RunConfig) -> None:
        """Builds the run's agent once, so a run no worker could start (no API key, an
        unreadable prompt) is refused now rather than failing later."""
        simulated_url: str | None = None
        if config.agent == "simulated":
            simulated_url = config.simulated.url or self.settings.simulated_llm_url
            if simulated_url is None:
                from agent_runner.simulated.config import SimulatedLLMConfig

                path = config.resolve_path(config.simulated.config)
                try:
                    SimulatedLLMConfig.from_yaml(path)
                except (OSError, ValueError) as exc:
                    raise RunnerError(
                        RunnerErrorCode.AGENT_UNAVAILABLE,
                        f"The simulated LLM's config {path} is not usable: {describe(exc)}",
                        field="agent",
                        status_code=422,
                    ) from None
                simulated_url = UNCONTACTED_URL
        try:
            probe = build_agent(config, simulated_url=simulated_url)
        except MissingApiKey as exc:
            raise RunnerError(
                RunnerErrorCode.MISSING_API_KEY,
                f"The {config.agent} agent calls {exc.provider} with the API key in the "
                f"environment variable {exc.env_var}, which is not set for this runner "
                f"service. Set {exc.env_var} where the service runs (compose passes it "
                "through from the host's environment) and restart it.",
                field="agent",
                status_code=422,
            ) from None
        except AGENT_BUILD_ERRORS as exc:
            raise RunnerError(
                RunnerErrorCode.AGENT_UNAVAILABLE,
                f"The {config.agent} agent cannot be built: {describe(exc)}",
                field="agent",
                status_code=422,
            ) from None
        await probe.aclose()

    async def create(self, body: RunRequest) -> RunRow:
        config = self.config_for(body)
        corpus = await self.corpus_for(config)
        try:
            cases = select_cases(config, corpus.cases)
        except ConfigError as exc:
            unknown = any(case_id not in corpus.index for case_id in config.cases or [])
            raise RunnerError(
                RunnerErrorCode.CASE_NOT_FOUND if unknown else RunnerErrorCode.NO_CASES,
                f"{exc} (the corpus has {len(corpus.cases)} cases)",
                field="cases" if config.cases else "split",
                status_code=422,
            ) from None
        await self.check_agent(config)
        run_id = new_run_id()
        run_dir = self.runs_dir / run_id
        out_dir: str | None = str(run_dir)
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            # Postgres holds the run and its traces; the JSONL copy is a convenience.
            log.warning(
                "%s is not writable (%s); run %s is traced in Postgres only",
                self.runs_dir,
                exc,
                run_id,
            )
            out_dir = None
        run = await create_run(
            self.store, config, cases, corpus.content_hash, out_dir, run_id=run_id
        )
        if out_dir is not None:
            try:
                RunFiles(run_dir).write(run)
            except OSError as exc:
                log.warning("cannot write %s/run.json: %s", run_dir, exc)
        log.info("queued run %s: %s, %d episodes", run.run_id, run.agent, run.total_items)
        return run

    # ------------------------------------------------------------------ reading runs

    async def get(self, run_id: str) -> RunRow:
        try:
            return await self.store.get_run(run_id)
        except RunNotFound:
            raise RunnerError(
                RunnerErrorCode.RUN_NOT_FOUND,
                f"No run {run_id!r} in this database; GET /runs lists the recent ones.",
                field="run_id",
                status_code=404,
            ) from None

    async def detail(self, run_id: str, report: bool) -> RunDetail:
        run = await self.get(run_id)
        progress = await self.store.progress(run_id)
        summary = RunSummary.of(run, progress)
        results = None
        if report or summary.status == "done":
            sessions = await self.store.sessions(run_id)
            info = RunInfo(
                run_id=run.run_id,
                agent=run.agent,
                model=run.model,
                total_items=run.total_items,
                corpus_hash=run.corpus_hash,
                package_version=run.package_version,
                config=run.config,
            )
            results = build_report(sessions, run=info)
        return RunDetail(
            **summary.model_dump(),
            config=run.config,
            corpus_hash=run.corpus_hash,
            package_version=run.package_version,
            out_dir=run.out_dir,
            results=results,
        )

    async def recent(self, limit: int) -> RunList:
        runs = await self.store.list_runs(limit)
        progress = await self.store.progress_of([run.run_id for run in runs])
        empty = Progress(total=0, done=0, running=0, passed=0, harness_errors=0, cost_usd=0.0)
        return RunList(runs=[RunSummary.of(run, progress.get(run.run_id, empty)) for run in runs])


def config_problem(exc: ConfigError) -> RunnerError:
    """A run config the request's fields make invalid, naming the field (422)."""
    cause = exc.__cause__
    if isinstance(cause, ValidationError):
        first = cause.errors()[0]
        field = ".".join(str(part) for part in first.get("loc", ())) or None
        problem = str(first.get("msg", "")).removeprefix("Value error, ")
        return RunnerError(
            RunnerErrorCode.INVALID_RUN_CONFIG,
            f"{field}: {problem}" if field else problem,
            field=field,
            status_code=422,
        )
    # The run config file itself is unreadable: the service's problem, not the request's.
    return RunnerError(RunnerErrorCode.INVALID_RUN_CONFIG, str(exc), status_code=503)


def _services(request: Request) -> RunnerServices:
    services: RunnerServices = request.app.state.services
    return services


ServicesDep = Annotated[RunnerServices, Depends(_services)]
RunIdPath = Annotated[
    str, Path(pattern=RUN_ID_PATTERN, description="A run id, as POST /runs returned it.")
]

KEY_NAME = "the runner key (CRMBENCH_RUNNER_KEY, else the CRM API's admin key)"
bearer_scheme = HTTPBearer(auto_error=False, description=KEY_NAME)


def require_key(
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> None:
    """Lets a run request through only with the runner key: no key is UNAUTHORIZED (401),
    any other key, an episode token included, FORBIDDEN (403)."""
    expected = services.settings.api_key
    assert expected is not None  # create_app refuses to start without one
    presented = credentials.credentials if credentials is not None else None
    refusal = check_bearer(presented, expected, KEY_NAME)
    if refusal is not None:
        raise RunnerError(
            RunnerErrorCode(refusal.code), refusal.message, status_code=refusal.status_code
        )


KeyDep = Annotated[None, Depends(require_key)]


def _required(settings: AgentRunnerSettings) -> None:
    """The settings a replica cannot start without (what it needs to play episodes)."""
    missing = ["DATABASE_URL"] if not settings.database_url else []
    if settings.work:
        names = {
            "CRMBENCH_CRM_API_URL": settings.crm_api_url,
            "CRMBENCH_ADMIN_KEY": settings.admin_key,
            "CRMBENCH_VERIFIER_URL": settings.verifier_url,
        }
        missing += [name for name, value in names.items() if not value]
    if missing:
        raise ValueError(
            f"the agent runner service needs {', '.join(missing)} "
            "(or CRMBENCH_WORK=false for a replica that only serves the API)"
        )
    if settings.api_key is None:
        raise ValueError(
            "the agent runner service needs a key for its run routes: set "
            "CRMBENCH_RUNNER_KEY, or CRMBENCH_ADMIN_KEY (used for both)"
        )
    require_strong_key(settings.api_key, settings.api_key_variable)
    if settings.verifier_key is not None:
        require_strong_key(settings.verifier_key, "CRMBENCH_VERIFIER_KEY")


async def _stop(task: asyncio.Task[None]) -> None:
    # Cancelling releases the claims in flight (RunWorker._play) for another replica.
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def create_app(
    settings: AgentRunnerSettings | None = None, *, corpus: RunCorpus | None = None
) -> FastAPI:
    """The runner app. `corpus` replaces loading the default corpus at startup (tests).
    Raises ValueError when a required setting is missing."""
    settings = settings or AgentRunnerSettings()
    _required(settings)
    for message in renamed_variable_warnings(os.environ):
        log.warning(message)
    name = f"{worker_name()}:{secrets.token_hex(2)}"

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        base = load_run_config(settings.run_config)  # a bad default config fails startup
        default_corpus = corpus
        if default_corpus is None:
            default_corpus = await asyncio.to_thread(RunCorpus.load, corpus_dir_of(base))
        corpora = CorpusCatalog(default_corpus)
        async with contextlib.AsyncExitStack() as stack:
            assert settings.database_url is not None
            store = await RunStore.connect(
                settings.database_url, pool_size=settings.runner_db_pool_size
            )
            stack.push_async_callback(store.close)
            worker: QueueWorker | None = None
            if settings.work:
                assert settings.crm_api_url and settings.admin_key and settings.verifier_url
                crm = CrmApiClient(settings.crm_api_url, settings.admin_key)
                stack.push_async_callback(crm.aclose)
                verifier = VerifierClient(settings.verifier_url, settings.verifier_api_key)
                stack.push_async_callback(verifier.aclose)
                simulated = SimulatedLLMs()
                stack.push_async_callback(simulated.close)
                worker = QueueWorker(
                    store=store,
                    corpora=corpora,
                    crm=crm,
                    verifier=verifier,
                    simulated=simulated,
                    simulated_llm_url=settings.simulated_llm_url,
                    runs_dir=settings.runs_dir.absolute(),
                    poll_seconds=settings.poll_seconds,
                    name=name,
                )
                task = asyncio.create_task(worker.run_forever(), name=f"runner worker {name}")
                stack.push_async_callback(_stop, task)  # runs first: before the clients close
            app.state.services = RunnerServices(
                settings, store, corpora, default_corpus, worker, name
            )
            yield

    app = FastAPI(
        title="crm-bench agent runner",
        version=package_version(),
        description=(
            "Queues runs of an agent over golden cases and reports their progress and "
            "results. Runs live in Postgres: every replica of this service (and every "
            "`crmbench run` process on the same database) claims their episodes from one "
            "queue, so replicas share a run without a broker."
        ),
        lifespan=lifespan,
    )
    _install_error_handlers(app)
    _add_routes(app)
    return app


def _add_routes(app: FastAPI) -> None:
    @app.get("/health", response_model=Health, tags=["service"], operation_id="health")
    async def health(services: ServicesDep) -> Health:
        """Liveness, the default corpus's size, and what this replica's worker is doing."""
        worker = services.worker
        return Health(
            status="ok",
            version=package_version(),
            cases=len(services.default_corpus.cases),
            worker=worker is not None,
            worker_name=services.name,
            current_run=worker.current_run if worker is not None else None,
        )

    @app.post(
        "/runs",
        response_model=RunCreated,
        status_code=201,
        tags=["runs"],
        operation_id="create_run",
        responses=ERROR_RESPONSES,
    )
    async def post_run(
        body: RunRequest,
        request: Request,
        response: Response,
        services: ServicesDep,
        _: KeyDep,
    ) -> RunCreated:
        """Queue a run: the fields override the service's run config. Any replica's
        worker plays it; poll `status_url` for progress, and results once done."""
        run = await services.create(body)
        status_url = str(request.url_for("get_run", run_id=run.run_id))
        response.headers["Location"] = status_url
        return RunCreated(run_id=run.run_id, total_items=run.total_items, status_url=status_url)

    @app.get(
        "/runs",
        response_model=RunList,
        tags=["runs"],
        operation_id="list_runs",
        responses=ERROR_RESPONSES,
    )
    async def list_runs(
        services: ServicesDep,
        _: KeyDep,
        limit: Annotated[int | None, Query(ge=1, le=1000, description="Newest first.")] = None,
    ) -> RunList:
        """The most recent runs (newest first) with their status and progress."""
        return await services.recent(limit or services.settings.recent_runs)

    @app.get(
        "/runs/{run_id}",
        name="get_run",
        response_model=RunDetail,
        tags=["runs"],
        operation_id="get_run",
        responses=ERROR_RESPONSES,
    )
    async def get_run(
        run_id: RunIdPath,
        services: ServicesDep,
        _: KeyDep,
        report: Annotated[
            bool, Query(description="Include the report even before the run is done.")
        ] = False,
    ) -> RunDetail:
        """A run: its config, status (queued, running, done, failed), progress, and its
        report (pass rates, breakdowns, cost) once done."""
        return await services.detail(run_id, report)


def _refused(problem: RequestProblem) -> RunnerError:
    error = from_problem(problem)
    if error.field == "run_id":
        error.message = f"Not a run id: use the run_id POST /runs returned ({RUN_ID_PATTERN})."
    return error


def _install_error_handlers(app: FastAPI) -> None:
    install_error_handlers(app, _refused)

    async def database_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("database unavailable: %s", exc)
        return error_response(
            RunnerError(
                RunnerErrorCode.DATABASE_UNAVAILABLE,
                f"The run database is unavailable: {describe(exc)}",
                status_code=503,
            )
        )

    for unavailable in DATABASE_UNAVAILABLE:
        app.add_exception_handler(unavailable, database_error)
