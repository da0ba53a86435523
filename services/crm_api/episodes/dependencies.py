"""FastAPI dependencies of the episode routes: bearer credentials, the manager, who may call."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from crm_api.episodes.service import EpisodeManager
from crm_api.errors import CrmError
from crmbench_contracts.api_errors import ErrorCode

bearer_scheme = HTTPBearer(auto_error=False, description="Admin key or episode token")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]


def bearer_token(credentials: HTTPAuthorizationCredentials | None) -> str:
    """The token of an `Authorization: Bearer` header; UNAUTHORIZED (401) when there is none."""
    if credentials is None or not credentials.credentials:
        raise CrmError(
            ErrorCode.UNAUTHORIZED,
            "Send 'Authorization: Bearer <token>' (an episode token, or the admin key).",
            status_code=401,
        )
    return credentials.credentials


def get_episode_manager(request: Request) -> EpisodeManager:
    """The process-wide manager, which the app's lifespan puts in `app.state.services`."""
    manager: EpisodeManager = request.app.state.services.episodes
    return manager


EpisodesDep = Annotated[EpisodeManager, Depends(get_episode_manager)]


def require_admin(episodes: EpisodesDep, credentials: Credentials) -> None:
    episodes.check_admin(bearer_token(credentials))


AdminDep = Annotated[None, Depends(require_admin)]


async def require_admin_or_owner(
    episode_id: str, episodes: EpisodesDep, credentials: Credentials
) -> bool:
    """The admin key (True) or the episode's own token (False); another episode's token
    gets a 404. Routes use the flag to keep case-derived fields from the owner."""
    return await episodes.check_admin_or_owner(bearer_token(credentials), episode_id)


OwnerDep = Annotated[bool, Depends(require_admin_or_owner)]
"""True for the admin key, False for the episode's own token."""
