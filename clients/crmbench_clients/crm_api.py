"""The CRM API client: tool definitions, episodes (admin key), tool calls (episode token),
an episode's state, change log and snapshots.

`CrmApiRoutes` builds every request once; `CrmApiClient` (async) and `SyncCrmApiClient`
send them. Failures are `crmbench_clients.errors.ServiceError`s, except a tool call the
CRM API refuses (4xx): that is a `ToolOutcome` the agent sees.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, Literal
from urllib.parse import quote

from crmbench_clients.calls import (
    AsyncServiceClient,
    Reply,
    ServiceCall,
    SyncServiceClient,
    send_async,
    send_sync,
)
from crmbench_clients.errors import ServiceError, error_fields, error_for_status
from crmbench_contracts.traces import StateChange

SERVICE = "crm_api"
ToolFormat = Literal["openai", "anthropic"]


@dataclass(frozen=True)
class ToolDefinition:
    """One tool as an agent is offered it (from GET /tools?format=openai)."""

    name: str
    description: str
    parameters: dict[str, Any]
    """JSON schema of the arguments object."""


@dataclass(frozen=True)
class OpenedEpisode:
    """A new episode and the bearer token of its tool calls (shown once)."""

    episode_id: str
    token: str
    body: dict[str, Any]
    """The whole answer: today, actor, case_id, expires_at, tools, ..."""


@dataclass(frozen=True)
class ToolOutcome:
    """The answer to one tool call: a result (2xx) or a refusal (4xx) the agent sees."""

    status: int
    body: Any
    """The JSON answer, or its text when it was not JSON (`is_json` False)."""
    latency_ms: float
    is_json: bool = True

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def error(self) -> dict[str, Any] | None:
        """The refusal's `{code, field, message, allowed}`; None for a result."""
        if self.ok:
            return None
        found = error_fields(self.body)
        if found is not None:
            return found
        return {"code": "HTTP_ERROR", "message": str(self.body)[:500]}

    def as_error(self) -> ServiceError:
        """This refusal as a typed error, for callers that cannot go on after it."""
        return error_for_status(SERVICE, self.status, self.body)


def _path_part(value: str) -> str:
    return quote(value, safe="")


def _tool_definitions(call: ServiceCall[Any], reply: Reply) -> list[dict[str, Any]]:
    if not reply.is_json or not isinstance(reply.body, list):
        raise call.invalid(reply, "a list of tool definitions")
    return [dict(entry) for entry in reply.body]


def _tools(call: ServiceCall[Any], reply: Reply) -> list[ToolDefinition]:
    tools = []
    for entry in _tool_definitions(call, reply):
        function = entry.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise call.invalid(reply, "OpenAI function definitions")
        tools.append(
            ToolDefinition(
                name=function["name"],
                description=function.get("description", ""),
                parameters=function.get("parameters") or {"type": "object", "properties": {}},
            )
        )
    return tools


def _opened(call: ServiceCall[Any], reply: Reply) -> OpenedEpisode:
    body = call.json_object(reply)
    if not isinstance(body.get("episode_id"), str) or not isinstance(body.get("token"), str):
        raise call.invalid(reply, "an episode with its id and token")
    return OpenedEpisode(body["episode_id"], body["token"], body)


def _by_tool_call(call: ServiceCall[Any], reply: Reply) -> dict[str, list[StateChange]]:
    grouped: dict[str, list[StateChange]] = {}
    for entry in call.json_object(reply).get("tool_calls", []):
        key = entry.get("tool_call_id") or ""
        grouped.setdefault(key, []).extend(
            StateChange.model_validate(change) for change in entry.get("changes", [])
        )
    return grouped


class CrmApiRoutes:
    """Every CRM API request, with its auth and how its answer is read."""

    def __init__(self, admin_key: str | None) -> None:
        self.admin_key = admin_key

    def _admin(self) -> dict[str, str]:
        # Without a key the request goes out bare and the CRM API refuses it (401).
        return {"Authorization": f"Bearer {self.admin_key}"} if self.admin_key else {}

    def _object(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        admin: bool = True,
    ) -> ServiceCall[dict[str, Any]]:
        def read(reply: Reply) -> dict[str, Any]:
            return call.json_object(reply)

        call = ServiceCall(
            SERVICE,
            method,
            path,
            read,
            json=json,
            params=params,
            headers=self._admin() if admin else {},
        )
        return call

    def health(self) -> ServiceCall[dict[str, Any]]:
        return self._object("GET", "/health", admin=False)

    def openapi(self) -> ServiceCall[dict[str, Any]]:
        return self._object("GET", "/openapi.json", admin=False)

    def tool_definitions(self, format: ToolFormat = "openai") -> ServiceCall[list[dict[str, Any]]]:
        def read(reply: Reply) -> list[dict[str, Any]]:
            return _tool_definitions(call, reply)

        call = ServiceCall(SERVICE, "GET", "/tools", read, params={"format": format})
        return call

    def tools(self) -> ServiceCall[list[ToolDefinition]]:
        def read(reply: Reply) -> list[ToolDefinition]:
            return _tools(call, reply)

        call = ServiceCall(SERVICE, "GET", "/tools", read, params={"format": "openai"})
        return call

    def open_episode(
        self,
        case_id: str | None = None,
        *,
        ttl_seconds: int | None = None,
        today: date | str | None = None,
        actor: Mapping[str, Any] | None = None,
        seed: Mapping[str, Any] | None = None,
    ) -> ServiceCall[OpenedEpisode]:
        body: dict[str, Any] = {}
        if case_id is not None:
            body["case_id"] = case_id
        if today is not None:
            body["today"] = today.isoformat() if isinstance(today, date) else today
        if actor is not None:
            body["actor"] = dict(actor)
        if seed is not None:
            body["seed"] = dict(seed)
        if ttl_seconds is not None:
            body["ttl_seconds"] = ttl_seconds

        def read(reply: Reply) -> OpenedEpisode:
            return _opened(call, reply)

        call = ServiceCall(SERVICE, "POST", "/episodes", read, json=body, headers=self._admin())
        return call

    def list_episodes(self, limit: int = 100, offset: int = 0) -> ServiceCall[dict[str, Any]]:
        return self._object("GET", "/episodes", params={"limit": str(limit), "offset": str(offset)})

    def episode(self, episode_id: str) -> ServiceCall[dict[str, Any]]:
        return self._object("GET", f"/episodes/{_path_part(episode_id)}")

    def close_episode(self, episode_id: str) -> ServiceCall[bool]:
        """True when dropped now, False when it was already gone (404: closed or reaped)."""

        def read(reply: Reply) -> bool:
            return reply.status != 404

        return ServiceCall(
            SERVICE,
            "DELETE",
            f"/episodes/{_path_part(episode_id)}",
            read,
            headers=self._admin(),
            accepts=lambda status: 200 <= status < 300 or status == 404,
        )

    def reset_episode(self, episode_id: str) -> ServiceCall[dict[str, Any]]:
        return self._object("POST", f"/episodes/{_path_part(episode_id)}/reset")

    def episode_state(
        self, episode_id: str, tables: Sequence[str] | None = None
    ) -> ServiceCall[dict[str, Any]]:
        params = {"tables": ",".join(sorted(tables))} if tables else None
        return self._object("GET", f"/episodes/{_path_part(episode_id)}/state", params=params)

    def episode_changes(self, episode_id: str) -> ServiceCall[dict[str, Any]]:
        return self._object("GET", f"/episodes/{_path_part(episode_id)}/changes")

    def changes_by_tool_call(self, episode_id: str) -> ServiceCall[dict[str, list[StateChange]]]:
        def read(reply: Reply) -> dict[str, list[StateChange]]:
            return _by_tool_call(call, reply)

        call = ServiceCall(
            SERVICE,
            "GET",
            f"/episodes/{_path_part(episode_id)}/changes",
            read,
            headers=self._admin(),
        )
        return call

    def create_snapshot(self, episode_id: str, name: str) -> ServiceCall[dict[str, Any]]:
        return self._object(
            "POST", f"/episodes/{_path_part(episode_id)}/snapshots", json={"name": name}
        )

    def snapshots(self, episode_id: str) -> ServiceCall[dict[str, Any]]:
        return self._object("GET", f"/episodes/{_path_part(episode_id)}/snapshots")

    def restore_snapshot(self, episode_id: str, name: str) -> ServiceCall[dict[str, Any]]:
        return self._object(
            "POST", f"/episodes/{_path_part(episode_id)}/snapshots/{_path_part(name)}/restore"
        )

    def delete_snapshot(self, episode_id: str, name: str) -> ServiceCall[None]:
        return ServiceCall(
            SERVICE,
            "DELETE",
            f"/episodes/{_path_part(episode_id)}/snapshots/{_path_part(name)}",
            lambda reply: None,
            headers=self._admin(),
        )

    def call_tool(
        self,
        token: str,
        name: str,
        arguments: Mapping[str, Any],
        *,
        tool_call_id: str | None = None,
    ) -> ServiceCall[ToolOutcome]:
        headers = {"Authorization": f"Bearer {token}"}
        if tool_call_id is not None:
            headers["X-Tool-Call-Id"] = tool_call_id
        return ServiceCall(
            SERVICE,
            "POST",
            f"/tools/{_path_part(name)}",
            lambda reply: ToolOutcome(reply.status, reply.body, reply.latency_ms, reply.is_json),
            json=dict(arguments),
            headers=headers,
            # A refusal is the agent's to read; a server error or no answer is the harness's.
            accepts=lambda status: status < 500,
        )


class CrmApiClient(AsyncServiceClient):
    """The CRM API over one async connection pool; `aclose()` (or `async with`) ends it.

    `admin_key` is needed for episodes, their state and change log; tool calls use the
    episode's token instead.
    """

    def __init__(
        self,
        base_url: str,
        admin_key: str | None = None,
        *,
        timeout: float = 30.0,
        max_connections: int = 128,
    ) -> None:
        super().__init__(base_url, timeout=timeout, max_connections=max_connections)
        self.routes = CrmApiRoutes(admin_key)

    async def health(self) -> dict[str, Any]:
        return await send_async(self.http, self.routes.health())

    async def openapi(self) -> dict[str, Any]:
        """The CRM API's OpenAPI document (its tools' request and response schemas)."""
        return await send_async(self.http, self.routes.openapi())

    async def tool_definitions(self, format: ToolFormat = "openai") -> list[dict[str, Any]]:
        """GET /tools: every tool's definition in an agent framework's dialect."""
        return await send_async(self.http, self.routes.tool_definitions(format))

    async def tools(self) -> list[ToolDefinition]:
        """The tools as name, description and arguments schema, in the CRM API's order."""
        return await send_async(self.http, self.routes.tools())

    async def open_episode(
        self,
        case_id: str | None = None,
        *,
        ttl_seconds: int | None = None,
        today: date | str | None = None,
        actor: Mapping[str, Any] | None = None,
        seed: Mapping[str, Any] | None = None,
    ) -> OpenedEpisode:
        """POST /episodes: of a golden case, or of the world plus `seed` (admin key)."""
        return await send_async(
            self.http,
            self.routes.open_episode(
                case_id, ttl_seconds=ttl_seconds, today=today, actor=actor, seed=seed
            ),
        )

    async def list_episodes(self, limit: int = 100, offset: int = 0) -> dict[str, Any]:
        """`{"episodes": [...], "total": n}` of the live episodes."""
        return await send_async(self.http, self.routes.list_episodes(limit, offset))

    async def episode(self, episode_id: str) -> dict[str, Any]:
        return await send_async(self.http, self.routes.episode(episode_id))

    async def close_episode(self, episode_id: str) -> bool:
        """Drops the episode; False when it was gone already (closed or expired)."""
        return await send_async(self.http, self.routes.close_episode(episode_id))

    async def reset_episode(self, episode_id: str) -> dict[str, Any]:
        return await send_async(self.http, self.routes.reset_episode(episode_id))

    async def episode_state(
        self, episode_id: str, tables: Sequence[str] | None = None
    ) -> dict[str, Any]:
        """`{"today", "actor", "tables": {table: [rows]}}`, limited to `tables` if given."""
        return await send_async(self.http, self.routes.episode_state(episode_id, tables))

    async def episode_changes(self, episode_id: str) -> dict[str, Any]:
        """`{"episode_id", "tool_calls": [{tool_call_id, tool, changes}], "total_changes"}`."""
        return await send_async(self.http, self.routes.episode_changes(episode_id))

    async def changes_by_tool_call(self, episode_id: str) -> dict[str, list[StateChange]]:
        """The change log per X-Tool-Call-Id ("" for calls sent without one)."""
        return await send_async(self.http, self.routes.changes_by_tool_call(episode_id))

    async def create_snapshot(self, episode_id: str, name: str) -> dict[str, Any]:
        return await send_async(self.http, self.routes.create_snapshot(episode_id, name))

    async def snapshots(self, episode_id: str) -> dict[str, Any]:
        return await send_async(self.http, self.routes.snapshots(episode_id))

    async def restore_snapshot(self, episode_id: str, name: str) -> dict[str, Any]:
        return await send_async(self.http, self.routes.restore_snapshot(episode_id, name))

    async def delete_snapshot(self, episode_id: str, name: str) -> None:
        await send_async(self.http, self.routes.delete_snapshot(episode_id, name))

    async def call_tool(
        self,
        token: str,
        name: str,
        arguments: Mapping[str, Any],
        *,
        tool_call_id: str | None = None,
    ) -> ToolOutcome:
        """POST /tools/{name} with the episode's token. A refusal (4xx) is an outcome, not
        an error; a server error (5xx) or no answer raises ServiceError."""
        return await send_async(
            self.http, self.routes.call_tool(token, name, arguments, tool_call_id=tool_call_id)
        )


class SyncCrmApiClient(SyncServiceClient):
    """The blocking form of `CrmApiClient` (same routes, errors and answers), for code
    without an event loop such as the Gymnasium env; `close()` (or `with`) ends it."""

    def __init__(
        self,
        base_url: str,
        admin_key: str | None = None,
        *,
        timeout: float = 30.0,
        max_connections: int = 8,
    ) -> None:
        super().__init__(base_url, timeout=timeout, max_connections=max_connections)
        self.routes = CrmApiRoutes(admin_key)

    def health(self) -> dict[str, Any]:
        return send_sync(self.http, self.routes.health())

    def tool_definitions(self, format: ToolFormat = "openai") -> list[dict[str, Any]]:
        return send_sync(self.http, self.routes.tool_definitions(format))

    def tools(self) -> list[ToolDefinition]:
        return send_sync(self.http, self.routes.tools())

    def open_episode(
        self,
        case_id: str | None = None,
        *,
        ttl_seconds: int | None = None,
        today: date | str | None = None,
        actor: Mapping[str, Any] | None = None,
        seed: Mapping[str, Any] | None = None,
    ) -> OpenedEpisode:
        return send_sync(
            self.http,
            self.routes.open_episode(
                case_id, ttl_seconds=ttl_seconds, today=today, actor=actor, seed=seed
            ),
        )

    def close_episode(self, episode_id: str) -> bool:
        return send_sync(self.http, self.routes.close_episode(episode_id))

    def episode_state(self, episode_id: str, tables: Sequence[str] | None = None) -> dict[str, Any]:
        return send_sync(self.http, self.routes.episode_state(episode_id, tables))

    def episode_changes(self, episode_id: str) -> dict[str, Any]:
        return send_sync(self.http, self.routes.episode_changes(episode_id))

    def call_tool(
        self,
        token: str,
        name: str,
        arguments: Mapping[str, Any],
        *,
        tool_call_id: str | None = None,
    ) -> ToolOutcome:
        return send_sync(
            self.http, self.routes.call_tool(token, name, arguments, tool_call_id=tool_call_id)
        )
