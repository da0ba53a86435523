"""The episode (admin) routes: thin handlers over `EpisodeManager`; create_app includes them."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import Response

from crm_api.episodes.dependencies import AdminDep, EpisodesDep, OwnerDep
from crm_api.episodes.schemas import (
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
from crm_api.episodes.service import episode_public, select_tables
from crm_api.errors import SERVICE_ERROR_RESPONSES, ErrorResponse
from crm_api.tools import TOOLS
from crmbench_contracts.canonical import canonical_json

ADMIN_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Missing bearer credentials."},
    403: {"model": ErrorResponse, "description": "The credentials may not do this."},
    404: {"model": ErrorResponse, "description": "No such episode or snapshot."},
    409: {
        "model": ErrorResponse,
        "description": "Conflicts with the episode's state (EPISODE_EXPIRED for a reset, "
        "snapshot or restore of an expired episode).",
    },
    422: {"model": ErrorResponse, "description": "The request is not valid."},
    **SERVICE_ERROR_RESPONSES,
}

router = APIRouter(tags=["episodes"], responses=ADMIN_RESPONSES)


@router.post(
    "/episodes",
    status_code=201,
    response_model=EpisodeCreated,
    operation_id="create_episode",
    responses={
        429: {
            "model": ErrorResponse,
            "description": "As many episodes live as the service allows "
            "(TOO_MANY_EPISODES); retry after the Retry-After header's seconds.",
            "headers": {
                "Retry-After": {
                    "description": "Seconds to wait before trying again.",
                    "schema": {"type": "integer"},
                }
            },
        }
    },
)
async def create_episode(body: EpisodeCreate, episodes: EpisodesDep, _: AdminDep) -> dict[str, Any]:
    """Create an isolated episode: the world template plus the seed rows (admin key)."""
    row, token = await episodes.create(body)
    return {**episode_public(row), "token": token, "tools": sorted(TOOLS)}


@router.get("/episodes", response_model=EpisodeList, operation_id="list_episodes")
async def list_episodes(
    episodes: EpisodesDep,
    _: AdminDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> dict[str, Any]:
    """List live episodes (admin key)."""
    total, rows = await episodes.list_episodes(limit, offset)
    return {"episodes": [episode_public(r) for r in rows], "total": total}


@router.get(
    "/episodes/{episode_id}",
    response_model=EpisodeOut,
    # The owner's view leaves case_id out of the dict; this keeps it out of the body too.
    response_model_exclude_unset=True,
    operation_id="get_episode",
)
async def get_episode(episode_id: str, episodes: EpisodesDep, admin: OwnerDep) -> dict[str, Any]:
    """One episode's registry entry (admin key or the episode's token). The episode's own
    token does not see `case_id`: it would tell the agent which golden case it plays."""
    return episode_public(await episodes.get(episode_id), admin=admin)


@router.delete("/episodes/{episode_id}", response_model=Deleted, operation_id="delete_episode")
async def delete_episode(episode_id: str, episodes: EpisodesDep, _: AdminDep) -> dict[str, Any]:
    """Drop an episode, its schema and its snapshots (admin key)."""
    await episodes.delete(episode_id)
    return {"episode_id": episode_id, "deleted": True}


@router.post(
    "/episodes/{episode_id}/reset", response_model=EpisodeOut, operation_id="reset_episode"
)
async def reset_episode(episode_id: str, episodes: EpisodesDep, _: AdminDep) -> dict[str, Any]:
    """Return the episode to its starting state (world + seed, clock at zero)."""
    return episode_public(await episodes.reset(episode_id))


@router.get(
    "/episodes/{episode_id}/state", response_model=EpisodeState, operation_id="get_episode_state"
)
async def episode_state(
    episode_id: str,
    episodes: EpisodesDep,
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
    state = await episodes.state(episode_id, select_tables(tables))
    return Response(canonical_json(state), media_type="application/json")


@router.get(
    "/episodes/{episode_id}/changes",
    response_model=EpisodeChanges,
    operation_id="get_episode_changes",
)
async def episode_changes(episode_id: str, episodes: EpisodesDep, _: OwnerDep) -> Response:
    """The change log: every row changed, grouped per tool call, in order."""
    return Response(
        canonical_json(await episodes.changes(episode_id)), media_type="application/json"
    )


@router.post(
    "/episodes/{episode_id}/snapshots",
    status_code=201,
    response_model=SnapshotOut,
    operation_id="create_snapshot",
)
async def create_snapshot(
    episode_id: str, body: SnapshotCreate, episodes: EpisodesDep, _: AdminDep
) -> dict[str, Any]:
    """Save the episode's tables and change log under a name (admin key)."""
    return await episodes.snapshot(episode_id, body.name)


@router.get(
    "/episodes/{episode_id}/snapshots", response_model=SnapshotList, operation_id="list_snapshots"
)
async def list_snapshots(episode_id: str, episodes: EpisodesDep, _: AdminDep) -> dict[str, Any]:
    """The episode's named snapshots (admin key)."""
    return {"snapshots": await episodes.snapshots(episode_id)}


@router.post(
    "/episodes/{episode_id}/snapshots/{name}/restore",
    response_model=EpisodeOut,
    operation_id="restore_snapshot",
)
async def restore_snapshot(
    episode_id: str, name: str, episodes: EpisodesDep, _: AdminDep
) -> dict[str, Any]:
    """Put the episode back to a named snapshot (admin key)."""
    return episode_public(await episodes.restore(episode_id, name))


@router.delete(
    "/episodes/{episode_id}/snapshots/{name}", status_code=204, operation_id="delete_snapshot"
)
async def delete_snapshot(
    episode_id: str, name: str, episodes: EpisodesDep, _: AdminDep
) -> Response:
    """Delete a named snapshot (admin key)."""
    await episodes.delete_snapshot(episode_id, name)
    return Response(status_code=204)
