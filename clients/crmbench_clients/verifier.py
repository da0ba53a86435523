"""The verifier client: score a live episode (POST /verify) or a saved state (/verify/state).

`VerifierRoutes` builds the requests; `VerifierClient` (async) and `SyncVerifierClient`
send them with the verifier key. Every failure, a refusal included, is a
`crmbench_clients.errors.ServiceError`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from crmbench_clients.calls import (
    AsyncServiceClient,
    Reply,
    ServiceCall,
    SyncServiceClient,
    send_async,
    send_sync,
)
from crmbench_contracts.rewards import RewardRecord

SERVICE = "verifier"


def _record(call: ServiceCall[Any], reply: Reply) -> RewardRecord:
    try:
        return RewardRecord.model_validate(call.json_object(reply))
    except ValidationError as exc:
        raise call.invalid(reply, f"a reward record ({exc.error_count()} problem(s))") from None


class VerifierRoutes:
    """Every verifier request, with its auth, and how its answer is read."""

    def __init__(self, key: str | None) -> None:
        self.key = key

    def _auth(self) -> dict[str, str]:
        # Without a key the request goes out bare and the verifier refuses it (401).
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}

    def _scoring(self, path: str, body: dict[str, Any]) -> ServiceCall[RewardRecord]:
        def read(reply: Reply) -> RewardRecord:
            return _record(call, reply)

        call = ServiceCall(SERVICE, "POST", path, read, json=body, headers=self._auth())
        return call

    def health(self) -> ServiceCall[dict[str, Any]]:
        def read(reply: Reply) -> dict[str, Any]:
            return call.json_object(reply)

        call = ServiceCall(SERVICE, "GET", "/health", read)
        return call

    def verify(
        self,
        case_id: str,
        episode_id: str,
        final_reply: str,
        transcript: Sequence[Mapping[str, Any]] | None = None,
    ) -> ServiceCall[RewardRecord]:
        body: dict[str, Any] = {
            "case_id": case_id,
            "episode_id": episode_id,
            "final_reply": final_reply,
        }
        if transcript is not None:
            body["transcript"] = [dict(message) for message in transcript]
        return self._scoring("/verify", body)

    def verify_state(
        self,
        case_id: str,
        state: Mapping[str, Any],
        changes: Mapping[str, Any],
        final_reply: str,
        *,
        episode_id: str | None = None,
        transcript: Sequence[Mapping[str, Any]] | None = None,
    ) -> ServiceCall[RewardRecord]:
        body: dict[str, Any] = {
            "case_id": case_id,
            "state": dict(state),
            "changes": dict(changes),
            "final_reply": final_reply,
        }
        if episode_id is not None:
            body["episode_id"] = episode_id
        if transcript is not None:
            body["transcript"] = [dict(message) for message in transcript]
        return self._scoring("/verify/state", body)


class VerifierClient(AsyncServiceClient):
    """The verifier over one async connection pool; `aclose()` (or `async with`) ends it.

    `key` is the verifier key its scoring routes require (CRMBENCH_VERIFIER_KEY, by
    default the CRM API's admin key); /health needs none.
    """

    def __init__(
        self,
        base_url: str,
        key: str | None,
        *,
        timeout: float = 120.0,
        max_connections: int = 64,
    ) -> None:
        super().__init__(base_url, timeout=timeout, max_connections=max_connections)
        self.routes = VerifierRoutes(key)

    async def health(self) -> dict[str, Any]:
        return await send_async(self.http, self.routes.health())

    async def verify(
        self,
        case_id: str,
        episode_id: str,
        final_reply: str,
        transcript: Sequence[Mapping[str, Any]] | None = None,
    ) -> RewardRecord:
        """Scores a live episode of `case_id` with `final_reply` as the agent's answer."""
        return await send_async(
            self.http, self.routes.verify(case_id, episode_id, final_reply, transcript)
        )

    async def verify_state(
        self,
        case_id: str,
        state: Mapping[str, Any],
        changes: Mapping[str, Any],
        final_reply: str,
        *,
        episode_id: str | None = None,
        transcript: Sequence[Mapping[str, Any]] | None = None,
    ) -> RewardRecord:
        """Scores a saved state and change log (the CRM API's JSON) without the CRM API."""
        return await send_async(
            self.http,
            self.routes.verify_state(
                case_id, state, changes, final_reply, episode_id=episode_id, transcript=transcript
            ),
        )


class SyncVerifierClient(SyncServiceClient):
    """The blocking form of `VerifierClient`, for the Gymnasium env."""

    def __init__(
        self, base_url: str, key: str | None, *, timeout: float = 120.0, max_connections: int = 8
    ) -> None:
        super().__init__(base_url, timeout=timeout, max_connections=max_connections)
        self.routes = VerifierRoutes(key)

    def health(self) -> dict[str, Any]:
        return send_sync(self.http, self.routes.health())

    def verify(
        self,
        case_id: str,
        episode_id: str,
        final_reply: str,
        transcript: Sequence[Mapping[str, Any]] | None = None,
    ) -> RewardRecord:
        return send_sync(
            self.http, self.routes.verify(case_id, episode_id, final_reply, transcript)
        )
