"""The FastAPI application: tool endpoints generated from the registry, plus the episode routes."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import logging
import math
import os
import re
from collections.abc import AsyncIterator
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from starlette.exceptions import HTTPException as StarletteHTTPException

from crm_api import __version__
from crm_api.context import ToolContext
from crm_api.database import create_engine
from crm_api.episode_gate import EpisodeGate
from crm_api.episodes import Credentials, EpisodeManager, bearer_token, repository
from crm_api.episodes import router as episode_router
from crm_api.episodes.service import hash_token
from crm_api.errors import (
    SERVICE_ERROR_RESPONSES,
    TOOL_ERROR_RESPONSES,
    CrmError,
    ErrorResponse,
    database_error,
    database_unavailable,
    internal_error,
    is_database_unavailable,
)
from crm_api.settings import CrmApiSettings, get_settings
from crm_api.tool_schemas import AgentToolFormat, agent_tools
from crm_api.tools import TOOLS, Tool, ToolKind
from crm_api.validation import translate_validation_errors
from crmbench_contracts.api_errors import ErrorCode
from crmbench_contracts.canonical import canonical_json
from crmbench_contracts.service_keys import require_strong_key
from crmbench_contracts.settings_names import renamed_variable_warnings

log = logging.getLogger("crm_api")

_TOOL_CALL_ID = re.compile(r"^[\x21-\x7e]{1,128}$")

TOOL_CALL_ID_HEADER = "X-Tool-Call-Id"
REPLAYED_HEADER = "X-Tool-Call-Replayed"
# Seconds a client is asked to wait when the database cannot be reached.
UNAVAILABLE_RETRY_AFTER = "5"
# How long the start-up check of the database may take before the service starts anyway.
_STARTUP_PROBE_SECONDS = 10


def _error_response(error: CrmError) -> JSONResponse:
    return JSONResponse(
        status_code=error.status_code,
        content=error.to_response().model_dump(mode="json"),
        headers=error.headers,
    )


class Services:
    """Process-wide objects, created in the lifespan and shared by every request."""

    def __init__(self, settings: CrmApiSettings, engine: AsyncEngine) -> None:
        self.settings = settings
        self.engine = engine
        self.episodes = EpisodeManager(
            engine,
            default_ttl=settings.episode_ttl_seconds,
            pool_size=settings.pool_size,
            admin_key=settings.admin_key,
            max_live=settings.max_live_episodes,
            retry_after_seconds=max(1, math.ceil(settings.reaper_interval_seconds)),
        )
        self.gate = EpisodeGate(settings.episode_max_connections)


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(_services)]


def create_app(settings: CrmApiSettings | None = None) -> FastAPI:
    """The CRM API app. Raises WeakServiceKey (a ValueError, one line) when the admin key is
    empty, short or a well-known placeholder."""
    settings = settings or get_settings()
    require_strong_key(settings.admin_key, "CRMBENCH_ADMIN_KEY")
    for message in renamed_variable_warnings(os.environ):
        log.warning(message)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not settings.database_url:
            raise RuntimeError(
                "DATABASE_URL is not set; start the service with `crmbench serve crm-api`, "
                "which starts an embedded Postgres when no URL is given."
            )
        engine = create_engine(
            settings.database_url,
            pool_size=settings.crm_api_db_pool_size,
            max_overflow=settings.crm_api_db_max_overflow,
        )
        services = Services(settings, engine)
        app.state.services = services
        await _report_database(engine)
        tasks = []
        if settings.pool_size > 0:
            tasks.append(asyncio.create_task(services.episodes.run_pool()))
        tasks.append(
            asyncio.create_task(services.episodes.run_reaper(settings.reaper_interval_seconds))
        )
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await engine.dispose()

    app = FastAPI(
        title="crm-bench CRM API",
        version=__version__,
        description=(
            "A sandboxed CRM whose endpoints are an agent's tools. Create an episode "
            "(POST /episodes, admin key) to get an isolated copy of the CRM and a bearer "
            "token, then call tools with POST /tools/{name}. Every refusal is a 4xx JSON "
            "body with a stable code, the field, a message and the allowed values."
        ),
        lifespan=lifespan,
    )
    _install_error_handlers(app)
    _add_service_routes(app)
    app.include_router(episode_router)
    for registered in TOOLS.values():
        _add_tool_route(app, registered)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(CrmError)
    async def crm_error(request: Request, exc: CrmError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        path = request.url.path
        tool_name = path.removeprefix("/tools/") if path.startswith("/tools/") else None
        known: list[str] | None = None
        errors = list(exc.errors())
        registered = TOOLS.get(tool_name or "")
        if registered is not None and errors and len(errors[0].get("loc", ())) == 2:
            known = sorted(registered.request_model.model_fields)
        error = translate_validation_errors(
            errors, is_update=bool(tool_name and tool_name.startswith("modify_")), known=known
        )
        return _error_response(error)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        path = request.url.path
        if exc.status_code == 404 and path.startswith("/tools/"):
            error = CrmError(
                ErrorCode.UNKNOWN_TOOL,
                f"There is no tool {path.removeprefix('/tools/')!r}; GET /tools lists them.",
                allowed=sorted(TOOLS),
                status_code=404,
            )
        elif exc.status_code == 404:
            error = CrmError(ErrorCode.NOT_FOUND, f"No route {path}; see /docs.", status_code=404)
        elif exc.status_code == 400:
            # FastAPI answers a body it cannot decode (not UTF-8) with 400; like any other
            # unreadable body it is a 422 here, the status the contract documents.
            error = CrmError(
                ErrorCode.INVALID_REQUEST,
                f"The request body could not be read: {exc.detail}. Send UTF-8 encoded JSON.",
            )
        elif exc.status_code == 405:
            error = CrmError(
                ErrorCode.INVALID_REQUEST,
                f"{request.method} is not allowed on {path}; see /docs.",
                status_code=405,
            )
        else:
            error = CrmError(
                ErrorCode.INVALID_REQUEST, str(exc.detail), status_code=exc.status_code
            )
        return _error_response(error)

    # Failures of the database the service's checks did not prevent. The transaction has
    # rolled back, so nothing changed; each is told for what it is (see database_error).
    @app.exception_handler(DBAPIError)
    async def database_failure(request: Request, exc: DBAPIError) -> JSONResponse:
        error = database_error(exc)
        if error.status_code >= 500 and error.code != ErrorCode.DATABASE_UNAVAILABLE:
            log.error("database error on %s", request.url.path, exc_info=exc)
        else:
            log.warning("database error on %s: %s", request.url.path, _first_line(exc))
        return _failure_response(error)

    # asyncpg raises connection failures (refused, reset, unknown host, timeout) as they
    # come, and the pool times out when every connection stays busy. (Requests do no other
    # I/O that could raise an OSError.)
    @app.exception_handler(OSError)
    @app.exception_handler(PoolTimeoutError)
    async def unreachable(request: Request, exc: Exception) -> JSONResponse:
        log.warning("database unavailable on %s: %s", request.url.path, _first_line(exc))
        return _failure_response(database_unavailable())

    # Anything else is a bug: a JSON 500 like every other error (Starlette re-raises it
    # after this answer, so the server logs the traceback).
    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        return _error_response(internal_error())


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc) or type(exc).__name__
    return text.splitlines()[0]


def _failure_response(error: CrmError) -> JSONResponse:
    response = _error_response(error)
    if error.status_code == 503:
        response.headers["Retry-After"] = UNAVAILABLE_RETRY_AFTER
    return response


async def _report_database(engine: AsyncEngine) -> None:
    """Logs one line when the database cannot be reached at start; the service still
    starts and answers 503 DATABASE_UNAVAILABLE until the database is back."""
    try:
        async with asyncio.timeout(_STARTUP_PROBE_SECONDS), engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
    except Exception as exc:
        if not is_database_unavailable(exc):
            raise
        log.error("the database cannot be reached: %s", _first_line(exc))


def _add_service_routes(app: FastAPI) -> None:
    @app.get(
        "/health",
        tags=["service"],
        operation_id="health",
        responses={409: {"model": ErrorResponse}, **SERVICE_ERROR_RESPONSES},
    )
    async def health(services: ServicesDep) -> dict[str, Any]:
        """Liveness and readiness: the database answers and the world is loaded."""
        async with services.engine.connect() as conn:
            version = (
                await conn.execute(sa.text("SELECT version FROM crm_meta.world_info WHERE id = 1"))
            ).scalar_one_or_none()
        if version is None:
            raise CrmError(
                ErrorCode.CONFLICT, "World not loaded; run `crmbench db migrate`.", status_code=409
            )
        return {"status": "ok", "version": __version__, "world_version": version}

    @app.get(
        "/tools",
        tags=["service"],
        operation_id="list_tool_definitions",
        responses={422: {"model": ErrorResponse}, 500: SERVICE_ERROR_RESPONSES[500]},
    )
    async def tool_definitions(
        request: Request,
        format: Annotated[AgentToolFormat, Query(description="Tool definition dialect.")] = (
            "openai"
        ),
    ) -> list[dict[str, Any]]:
        """Tool definitions for agent frameworks, generated from this OpenAPI document."""
        return agent_tools(request.app.openapi(), format)


class _Replay(Exception):
    """Raised inside a call's transaction when its tool-call id was answered before: the
    transaction rolls back (the episode clock does not move) and the first answer is sent."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__("replay")
        self.status = status
        self.body = body


def request_digest(tool: str, args: BaseModel) -> str:
    """The identity of a call's request: its tool and validated arguments (as sent)."""
    arguments = args.model_dump(mode="json", exclude_unset=True)
    return hashlib.sha256(
        canonical_json({"tool": tool, "arguments": arguments}).encode()
    ).hexdigest()


async def _check_repeated_id(
    conn: AsyncConnection, schema: str, tool_call_id: str, tool: str, digest: str
) -> None:
    """Raises _Replay when `tool_call_id` was answered in this episode with the same tool and
    arguments, TOOL_CALL_ID_REUSED (409) when it was with others; returns if it is new."""
    stored = await repository.stored_tool_call(conn, schema, tool_call_id)
    if stored is None:
        return
    if stored["tool"] != tool or stored["request_hash"] != digest:
        raise CrmError(
            ErrorCode.TOOL_CALL_ID_REUSED,
            f"{TOOL_CALL_ID_HEADER} {tool_call_id!r} was already used in this episode for "
            f"another request ({stored['tool']} with other arguments); it identifies one "
            "call. Use a new id for a new call, or repeat the first call exactly to get its "
            "result again.",
            field=TOOL_CALL_ID_HEADER,
            status_code=409,
        )
    raise _Replay(int(stored["status"]), str(stored["body"]))


def _add_tool_route(app: FastAPI, registered: Tool) -> None:
    async def call_tool(
        args: Any,
        services: Services,
        credentials: HTTPAuthorizationCredentials | None,
        tool_call_id: str | None,
    ) -> Response:
        token = bearer_token(credentials)
        if tool_call_id is not None and not _TOOL_CALL_ID.match(tool_call_id):
            raise CrmError(
                ErrorCode.INVALID_REQUEST,
                "X-Tool-Call-Id must be 1-128 printable ASCII characters without spaces.",
                field=TOOL_CALL_ID_HEADER,
            )
        digest = request_digest(registered.name, args) if tool_call_id is not None else ""
        write = registered.kind == ToolKind.WRITE
        try:
            # At most `episode_max_connections` calls of one episode hold a connection; the
            # rest wait here, so a busy episode cannot take the pool from the others.
            async with (
                services.gate.admit(hash_token(token)),
                services.engine.begin() as conn,
            ):
                episode = await services.episodes.authenticate(
                    conn,
                    token,
                    tool=registered.name if write else None,
                    tool_call_id=tool_call_id,
                )
                if tool_call_id is not None:
                    await _check_repeated_id(
                        conn, episode.schema_name, tool_call_id, registered.name, digest
                    )
                call_id = tool_call_id or f"{episode.episode_id}:{episode.call_seq}"
                context = ToolContext(conn, episode, registered.name, call_id)
                result = await registered.handler(context, args)
                response = JSONResponse(result, headers={TOOL_CALL_ID_HEADER: call_id})
                if tool_call_id is not None:
                    # Stored with the change it made: both commit, or neither.
                    await repository.store_tool_call(
                        conn,
                        episode.schema_name,
                        tool_call_id,
                        tool=registered.name,
                        request_hash=digest,
                        status=response.status_code,
                        body=bytes(response.body).decode("utf-8"),
                        call_seq=episode.call_seq,
                    )
        except _Replay as replay:
            return Response(
                replay.body,
                status_code=replay.status,
                media_type="application/json",
                headers={TOOL_CALL_ID_HEADER: str(tool_call_id), REPLAYED_HEADER: "true"},
            )
        return response

    async def endpoint(**kwargs: Any) -> Response:
        return await call_tool(
            kwargs["args"], kwargs["services"], kwargs["credentials"], kwargs["tool_call_id"]
        )

    # FastAPI reads the endpoint's signature; the body model differs per tool.
    endpoint.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter(
                "args", inspect.Parameter.KEYWORD_ONLY, annotation=registered.request_model
            ),
            inspect.Parameter("services", inspect.Parameter.KEYWORD_ONLY, annotation=ServicesDep),
            inspect.Parameter(
                "credentials", inspect.Parameter.KEYWORD_ONLY, annotation=Credentials
            ),
            inspect.Parameter(
                "tool_call_id",
                inspect.Parameter.KEYWORD_ONLY,
                annotation=Annotated[
                    str | None,
                    Header(
                        alias=TOOL_CALL_ID_HEADER,
                        description=(
                            "Your id for this call (1-128 printable ASCII characters): "
                            "recorded in the change log, and an idempotency key. Repeating "
                            "an id in the same episode with the same tool and arguments "
                            "answers the first result again (header X-Tool-Call-Replayed: "
                            "true) without applying the call twice; with other arguments "
                            "it is refused (409 TOOL_CALL_ID_REUSED)."
                        ),
                    ),
                ],
                default=None,
            ),
        ]
    )
    summary, _, _ = registered.description.partition("\n")
    app.add_api_route(
        f"/tools/{registered.name}",
        endpoint,
        methods=["POST"],
        operation_id=registered.name,
        summary=summary.strip(),
        description=registered.description,
        tags=[f"tools: {registered.tag}"],
        response_model=None,
        responses={
            200: {
                "model": registered.response_model,
                "description": f"{registered.kind.value} tool result",
            },
            **TOOL_ERROR_RESPONSES,
        },
        openapi_extra={"x-tool-kind": registered.kind.value},
    )
