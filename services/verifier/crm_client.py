"""Reads an episode's final state and change log from the CRM API over HTTP (admin key)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import httpx

from verifier.errors import VerifierError, VerifierErrorCode


class CrmEpisodeReader:
    """GET /episodes/{id}/state and /changes, with CRM API failures as VerifierErrors."""

    def __init__(self, http: httpx.AsyncClient, admin_key: str | None) -> None:
        self.http = http
        self.admin_key = admin_key

    async def read(
        self, episode_id: str, tables: Sequence[str] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """(state, changes) of one episode, fetched concurrently; state limited to `tables`."""
        if not self.admin_key:
            raise VerifierError(
                VerifierErrorCode.NOT_CONFIGURED,
                "The verifier has no admin key for the CRM API; set CRMBENCH_ADMIN_KEY to "
                "the CRM API's admin key.",
                status_code=503,
            )
        params = {"tables": ",".join(sorted(tables))} if tables else None
        state, changes = await asyncio.gather(
            self._get(episode_id, "state", params), self._get(episode_id, "changes")
        )
        return state, changes

    async def _get(
        self, episode_id: str, part: str, params: dict[str, str] | None = None
    ) -> dict[str, Any]:
        path = f"/episodes/{quote(episode_id, safe='')}/{part}"
        try:
            response = await self.http.get(
                path, params=params, headers={"Authorization": f"Bearer {self.admin_key}"}
            )
        except httpx.TransportError as exc:
            raise VerifierError(
                VerifierErrorCode.CRM_API_UNAVAILABLE,
                f"The CRM API at {self.http.base_url} did not answer GET {path} "
                f"({type(exc).__name__}: {exc or 'no detail'}); is it running?",
                status_code=502,
            ) from exc
        if response.status_code == 404:
            raise VerifierError(
                VerifierErrorCode.EPISODE_NOT_FOUND,
                f"The CRM API has no live episode {episode_id!r} (closed, expired or never "
                "created).",
                field="episode_id",
                status_code=404,
            )
        if response.status_code in (401, 403):
            raise VerifierError(
                VerifierErrorCode.CRM_API_ERROR,
                f"The CRM API refused the verifier's admin key ({response.status_code}); set "
                "CRMBENCH_ADMIN_KEY to the CRM API's admin key.",
                status_code=502,
            )
        if response.status_code != 200:
            raise VerifierError(
                VerifierErrorCode.CRM_API_ERROR,
                f"The CRM API answered GET {path} with {response.status_code}: "
                f"{response.text[:300]}",
                status_code=502,
            )
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise VerifierError(
                VerifierErrorCode.CRM_API_ERROR,
                f"The CRM API answered GET {path} with something other than a JSON object.",
                status_code=502,
            )
        return body
