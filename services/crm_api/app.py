"""The FastAPI application: tool endpoints generated from the registry, episode routes."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import re
import secrets
from collections.abc import AsyncIterator
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.exceptions import HTTPException as StarletteHTTPException

from crm_api import __version__
from crm_api.context import ToolContext
from crm_api.database import create_engine
from crm_api.domain import ENTITY_TABLES
from crm_api.episode_schemas import (
    Deleted,
    EpisodeChanges,
    EpisodeCreate,
    EpisodeCreated,
    EpisodeList,
    EpisodeOut,
    EpisodeState,
    SnapshotCreate,
    SnapshotList,
    SnapshotOut,
)
from crm_api.episodes import EpisodeManager, episode_public
from crm_api.errors import TOOL_ERROR_RESPONSES, CrmError, ErrorResponse
from crm_api.settings import CrmApiSettings, get_settings
from crm_api.tool_schemas import AgentToolFormat, agent_tools
from crm_api.tools import TOOLS, Tool, ToolKind
from crm_api.validation import translate_validation_errors
from crmbench_contracts.api_errors import ErrorCode
from crmbench_contracts.canonical import canonical_json

log = logging.getLogger("crm_api")

bearer_scheme = HTTPBearer(auto_error=False, description="Admin key or episode token")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]

_TOOL_CALL_ID = re.compile(r"^[\x21-\x7e]{1,128}$")

ADMIN_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Missing bearer credentials."},
    403: {"model": ErrorResponse, "description": "The credentials may not do this."},
    404: {"model": ErrorResponse, "description": "No such episode or snapshot."},
    409: {"model": ErrorResponse, "description": "Conflicts with the episode's state."},
    422: {"model": ErrorResponse, "description": "The request is not valid."},
}


def _error_response(error: CrmError) -> JSONResponse:
    return JSONResponse(
        status_code=error.status_code,
        content=error.to_response().model_dump(mode="json"),
    )


class Services:
    """Process-wide objects, created in the lifespan and shared by every request."""

    def __init__(self, settings: CrmApiSettings, engine: AsyncEngine) -> None:
        self.settings = settings
        self.engine = engine
        self.episodes = EpisodeManager(
            engine, default_ttl=settings.episode_ttl_seconds, pool_size=settings.pool_size
        )
        self.pool_wanted = asyncio.Event()


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(_services)]


def _token(credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is None or not credentials.credentials:
        raise CrmError(
            ErrorCode.UNAUTHORIZED,
            "Send 'Authorization: Bearer <token>' (an episode token, or the admin key).",
            status_code=401,
        )
    return credentials.credentials


def require_admin(services: ServicesDep, credentials: Credentials) -> None:
    token = _token(credentials)
    if not secrets.compare_digest(token.encode(), services.settings.admin_key.encode()):
        raise CrmError(
            ErrorCode.FORBIDDEN,
            "This route needs the admin key; episode tokens only reach their own episode.",
            status_code=403,
        )


AdminDep = Annotated[None, Depends(require_admin)]


async def require_admin_or_owner(
    episode_id: str, services: ServicesDep, credentials: Credentials
) -> None:
    """The admin key, or the episode's own token (another episode's token gets a 404)."""
    token = _token(credentials)
    if secrets.compare_digest(token.encode(), services.settings.admin_key.encode()):
        return
    owner = await services.episodes.episode_for_token(token)
    if owner is None:
        raise CrmError(ErrorCode.UNAUTHORIZED, "Unknown or expired token.", status_code=401)
    if owner != episode_id:
        raise CrmError(
            ErrorCode.EPISODE_NOT_FOUND,
            f"No live episode {episode_id!r} for this token.",
            field="episode_id",
            status_code=404,
        )


OwnerDep = Annotated[None, Depends(require_admin_or_owner)]


async def _refill_loop(services: Services) -> None:
    while True:
        try:
            built = await services.episodes.refill_pool()
            if built:
                log.info("episode pool: built %d schema(s)", built)
        except CrmError as exc:
            log.warning("episode pool not refilled: %s", exc.message)
        except Exception:
            log.exception("episode pool refill failed")
        services.pool_wanted.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(services.pool_wanted.wait(), timeout=10)


async def _reaper_loop(services: Services) -> None:
    while True:
        await asyncio.sleep(services.settings.reaper_interval_seconds)
        try:
            await services.episodes.reap_expired()
        except Exception:
            log.exception("episode reaper failed")


def create_app(settings: CrmApiSettings | None = None) -> FastAPI:
    settings = settings or get_settings()

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
        tasks = []
        if settings.pool_size > 0:
            tasks.append(asyncio.create_task(_refill_loop(services)))
        tasks.append(asyncio.create_task(_reaper_loop(services)))
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
    _add_episode_routes(app)
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

    @app.exception_handler(DBAPIError)
    async def database_error(request: Request, exc: DBAPIError) -> JSONResponse:
        # Reached only by races (an episode dropped or reset during a call) or bugs; the
        # transaction has rolled back, so nothing changed.
        log.warning("database error on %s: %s", request.url.path, exc.orig)
        return _error_response(
            CrmError(
                ErrorCode.CONFLICT,
                "The episode changed while this call ran (reset, restored or dropped); "
                "nothing was written. Retry the call.",
                status_code=409,
            )
        )


def _add_service_routes(app: FastAPI) -> None:
    @app.get("/health", tags=["service"], operation_id="health")
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
        responses={422: {"model": ErrorResponse}},
    )
    async def tool_definitions(
        request: Request,
        format: Annotated[AgentToolFormat, Query(description="Tool definition dialect.")] = (
            "openai"
        ),
    ) -> list[dict[str, Any]]:
        """Tool definitions for agent frameworks, generated from this OpenAPI document."""
        return agent_tools(request.app.openapi(), format)


def _add_episode_routes(app: FastAPI) -> None:
    @app.post(
        "/episodes",
        status_code=201,
        response_model=EpisodeCreated,
        tags=["episodes"],
        operation_id="create_episode",
        responses=ADMIN_RESPONSES,
    )
    async def create_episode(
        body: EpisodeCreate, services: ServicesDep, _: AdminDep
    ) -> dict[str, Any]:
        """Create an isolated episode: the world template plus the seed rows (admin key)."""
        row, token = await services.episodes.create(body)
        services.pool_wanted.set()
        return {**episode_public(row), "token": token, "tools": sorted(TOOLS)}

    @app.get(
        "/episodes",
        response_model=EpisodeList,
        tags=["episodes"],
        operation_id="list_episodes",
        responses=ADMIN_RESPONSES,
    )
    async def list_episodes(
        services: ServicesDep,
        _: AdminDep,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
        offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    ) -> dict[str, Any]:
        """List live episodes (admin key)."""
        total, rows = await services.episodes.list_episodes(limit, offset)
        return {"episodes": [episode_public(r) for r in rows], "total": total}

    @app.get(
        "/episodes/{episode_id}",
        response_model=EpisodeOut,
        tags=["episodes"],
        operation_id="get_episode",
        responses=ADMIN_RESPONSES,
    )
    async def get_episode(episode_id: str, services: ServicesDep, _: OwnerDep) -> dict[str, Any]:
        """One episode's registry entry (admin key or the episode's token)."""
        return episode_public(await services.episodes.get(episode_id))

    @app.delete(
        "/episodes/{episode_id}",
        response_model=Deleted,
        tags=["episodes"],
        operation_id="delete_episode",
        responses=ADMIN_RESPONSES,
    )
    async def delete_episode(episode_id: str, services: ServicesDep, _: AdminDep) -> dict[str, Any]:
        """Drop an episode, its schema and its snapshots (admin key)."""
        await services.episodes.delete(episode_id)
        services.pool_wanted.set()  # its schema waits to be recycled into the pool
        return {"episode_id": episode_id, "deleted": True}

    @app.post(
        "/episodes/{episode_id}/reset",
        response_model=EpisodeOut,
        tags=["episodes"],
        operation_id="reset_episode",
        responses=ADMIN_RESPONSES,
    )
    async def reset_episode(episode_id: str, services: ServicesDep, _: AdminDep) -> dict[str, Any]:
        """Return the episode to its starting state (world + seed, clock at zero)."""
        return episode_public(await services.episodes.reset(episode_id))

    @app.get(
        "/episodes/{episode_id}/state",
        response_model=EpisodeState,
        tags=["episodes"],
        operation_id="get_episode_state",
        responses=ADMIN_RESPONSES,
    )
    async def episode_state(
        episode_id: str,
        services: ServicesDep,
        _: OwnerDep,
        tables: Annotated[
            str | None,
            Query(
                max_length=200,
                description="Comma-separated entity tables to include (default: all).",
            ),
        ] = None,
    ) -> Response:
        """Canonical JSON of every entity table, rows ordered by id (byte-stable)."""
        selected = None
        if tables is not None:
            selected = [t.strip() for t in tables.split(",") if t.strip()]
            unknown = [t for t in selected if t not in ENTITY_TABLES]
            if unknown or not selected:
                raise CrmError(
                    ErrorCode.INVALID_ENUM,
                    f"Unknown tables {unknown}; choose from the entity tables.",
                    field="tables",
                    allowed=list(ENTITY_TABLES),
                )
        state = await services.episodes.state(episode_id, selected)
        return Response(canonical_json(state), media_type="application/json")

    @app.get(
        "/episodes/{episode_id}/changes",
        response_model=EpisodeChanges,
        tags=["episodes"],
        operation_id="get_episode_changes",
        responses=ADMIN_RESPONSES,
    )
    async def episode_changes(episode_id: str, services: ServicesDep, _: OwnerDep) -> Response:
        """The change log: every row changed, grouped per tool call, in order."""
        return Response(
            canonical_json(await services.episodes.changes(episode_id)),
            media_type="application/json",
        )

    @app.post(
        "/episodes/{episode_id}/snapshots",
        status_code=201,
        response_model=SnapshotOut,
        tags=["episodes"],
        operation_id="create_snapshot",
        responses=ADMIN_RESPONSES,
    )
    async def create_snapshot(
        episode_id: str, body: SnapshotCreate, services: ServicesDep, _: AdminDep
    ) -> dict[str, Any]:
        """Save the episode's tables and change log under a name (admin key)."""
        return await services.episodes.snapshot(episode_id, body.name)

    @app.get(
        "/episodes/{episode_id}/snapshots",
        response_model=SnapshotList,
        tags=["episodes"],
        operation_id="list_snapshots",
        responses=ADMIN_RESPONSES,
    )
    async def list_snapshots(episode_id: str, services: ServicesDep, _: AdminDep) -> dict[str, Any]:
        """The episode's named snapshots (admin key)."""
        return {"snapshots": await services.episodes.snapshots(episode_id)}

    @app.post(
        "/episodes/{episode_id}/snapshots/{name}/restore",
        response_model=EpisodeOut,
        tags=["episodes"],
        operation_id="restore_snapshot",
        responses=ADMIN_RESPONSES,
    )
    async def restore_snapshot(
        episode_id: str, name: str, services: ServicesDep, _: AdminDep
    ) -> dict[str, Any]:
        """Put the episode back to a named snapshot (admin key)."""
        return episode_public(await services.episodes.restore(episode_id, name))

    @app.delete(
        "/episodes/{episode_id}/snapshots/{name}",
        status_code=204,
        tags=["episodes"],
        operation_id="delete_snapshot",
        responses=ADMIN_RESPONSES,
    )
    async def delete_snapshot(
        episode_id: str, name: str, services: ServicesDep, _: AdminDep
    ) -> Response:
        """Delete a named snapshot (admin key)."""
        await services.episodes.delete_snapshot(episode_id, name)
        return Response(status_code=204)


def _add_tool_route(app: FastAPI, registered: Tool) -> None:
    async def call_tool(
        args: Any,
        services: Services,
        credentials: HTTPAuthorizationCredentials | None,
        tool_call_id: str | None,
    ) -> JSONResponse:
        token = _token(credentials)
        if tool_call_id is not None and not _TOOL_CALL_ID.match(tool_call_id):
            raise CrmError(
                ErrorCode.INVALID_REQUEST,
                "X-Tool-Call-Id must be 1-128 printable ASCII characters without spaces.",
                field="X-Tool-Call-Id",
            )
        async with services.engine.begin() as conn:
            write = registered.kind == ToolKind.WRITE
            episode = await services.episodes.authenticate(
                conn,
                token,
                tool=registered.name if write else None,
                tool_call_id=tool_call_id,
            )
            call_id = tool_call_id or f"{episode.episode_id}:{episode.call_seq}"
            context = ToolContext(conn, episode, registered.name, call_id)
            result = await registered.handler(context, args)
        return JSONResponse(result, headers={"X-Tool-Call-Id": call_id})

    async def endpoint(**kwargs: Any) -> JSONResponse:
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
                        alias="X-Tool-Call-Id",
                        description="Your id for this call; recorded in the change log.",
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
