"""Episodes: one Postgres schema per live episode, cloned from the world template.

The manager creates episodes (from a pool of pre-built schemas when one is ready),
authenticates tool calls by token, resets, snapshots, restores, renders canonical state
and the change log, drops episodes, and reaps idle ones. All of its state is in Postgres,
so a restart of the service loses nothing and several replicas can share one database.
Its rules live here; its SQL lives in `repository`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from crm_api.context import EpisodeRef
from crm_api.domain import ENTITY_TABLES, WORLD_DATE, ActorRole
from crm_api.episodes import repository
from crm_api.episodes.schemas import Actor, EpisodeCreate
from crm_api.errors import CrmError, is_database_unavailable
from crmbench_contracts.api_errors import ErrorCode
from crmbench_contracts.seeds import SeedRows

log = logging.getLogger("crm_api.episodes")

_SNAPSHOT_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_EPISODE_ID = re.compile(r"^ep_[0-9a-f]{16}$")

# The pool loop wakes at least this often even when no episode asked for a schema.
_POOL_IDLE_SECONDS = 10


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class EpisodeManager:
    """Creates, finds, resets, snapshots and drops episodes; keeps the schema pool filled.

    Stateless apart from `pool_wanted`, the signal that wakes the pool loop.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        default_ttl: int,
        pool_size: int,
        admin_key: str,
        max_live: int,
        retry_after_seconds: int,
    ) -> None:
        self.engine = engine
        self.default_ttl = default_ttl
        self.pool_size = pool_size
        self.admin_key = admin_key
        self.max_live = max_live
        """Live (unexpired) episodes allowed at once; `create` refuses one more (429)."""
        self.retry_after_seconds = retry_after_seconds
        """The Retry-After of that refusal: about when the reaper next frees expired ones."""
        self.pool_wanted = asyncio.Event()

    # ------------------------------------------------------------------ auth

    def is_admin(self, token: str) -> bool:
        """Whether `token` is the admin key (compared in constant time)."""
        return secrets.compare_digest(token.encode(), self.admin_key.encode())

    def check_admin(self, token: str) -> None:
        """Raises FORBIDDEN (403) unless `token` is the admin key."""
        if not self.is_admin(token):
            raise CrmError(
                ErrorCode.FORBIDDEN,
                "This route needs the admin key; episode tokens only reach their own episode.",
                status_code=403,
            )

    async def check_admin_or_owner(self, token: str, episode_id: str) -> bool:
        """The admin key (True), or the episode's own token (False): an unknown token is
        UNAUTHORIZED (401), an expired episode's token EPISODE_EXPIRED (401), another
        episode's token gets EPISODE_NOT_FOUND (404)."""
        if self.is_admin(token):
            return True
        owner = await self.episode_for_token(token)
        if owner != episode_id:
            raise CrmError(
                ErrorCode.EPISODE_NOT_FOUND,
                f"No live episode {episode_id!r} for this token.",
                field="episode_id",
                status_code=404,
            )
        return False

    async def authenticate(
        self,
        conn: AsyncConnection,
        token: str,
        *,
        tool: str | None = None,
        tool_call_id: str | None = None,
    ) -> EpisodeRef:
        """Finds the episode of a token inside the caller's transaction and binds to it.

        One statement advances the episode clock and, for the rest of the transaction,
        points `search_path` at the episode's schema (so every SQL text is the same for all
        episodes and prepared statements are reused) and, for writes (`tool` given), tags
        the change log with the call's id. The registry row stays locked until the
        transaction ends, so the calls of one episode run one after another while
        different episodes never wait on each other.
        """
        row = await repository.bind_episode_call(conn, hash_token(token), tool, tool_call_id)
        if row is None:
            await self._token_owner(conn, token)  # raises UNAUTHORIZED or EPISODE_EXPIRED
            raise _unknown_token()  # the episode was dropped in between
        return EpisodeRef(
            episode_id=row["episode_id"],
            schema_name=row["schema_name"],
            today=row["today"],
            actor_name=row["actor_name"],
            actor_role=ActorRole(row["actor_role"]),
            call_seq=int(row["call_seq"]),
        )

    async def _token_owner(self, conn: AsyncConnection, token: str) -> str:
        """The live episode of an episode token. Raises UNAUTHORIZED (401) for an unknown
        token and EPISODE_EXPIRED (401) once the episode has been idle past its TTL, even
        before the reaper drops it; the check never extends the episode."""
        found = await repository.episode_for_token_hash(conn, hash_token(token))
        if found is None:
            raise _unknown_token()
        if found["expired"]:
            raise CrmError(
                ErrorCode.EPISODE_EXPIRED,
                f"Episode {found['episode_id']} has expired: it was idle for longer than its "
                "ttl_seconds. Its token no longer works; create a new episode with "
                "POST /episodes.",
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        return str(found["episode_id"])

    async def episode_for_token(self, token: str) -> str:
        """The live episode of an episode token (see `_token_owner` for the refusals)."""
        async with self.engine.connect() as conn:
            return await self._token_owner(conn, token)

    # ------------------------------------------------------------------ creation

    async def world_version(self, conn: AsyncConnection) -> str:
        version = await repository.loaded_world_version(conn)
        if version is None:
            raise CrmError(
                ErrorCode.CONFLICT,
                "The world data set is not loaded; run `crmbench db migrate`.",
                status_code=409,
            )
        return version

    async def _claim_pooled_schema(self, conn: AsyncConnection, version: str) -> str | None:
        """A pool schema at the world's starting state: a ready one, else a recycled one
        reset here (cheaper than a new clone), else None."""
        claimed = await repository.claim_pooled_schema(conn, version)
        if claimed is None:
            return None
        schema = str(claimed["schema_name"])
        if not claimed["ready"]:
            await repository.reset_to_world(conn, schema)
        return schema

    async def _apply_seed(self, conn: AsyncConnection, schema: str, seed: SeedRows) -> None:
        rows = {
            table: [row.model_dump(mode="json") for row in getattr(seed, table)]
            for table in ENTITY_TABLES
        }
        try:
            await repository.insert_seed_rows(conn, schema, rows)
        except IntegrityError as exc:
            raise CrmError(
                ErrorCode.INVALID_REQUEST,
                f"The seed rows break a constraint of the CRM schema: {_db_reason(exc)}",
                field="seed",
            ) from None

    async def _from_case(
        self, conn: AsyncConnection, case_id: str, request: EpisodeCreate
    ) -> EpisodeCreate:
        """The request with the seed, today and actor of case `case_id` filled in."""
        explicit = request.model_fields_set & {"today", "actor", "seed"}
        if explicit:
            raise CrmError(
                ErrorCode.INVALID_REQUEST,
                f"Give case_id or {', '.join(sorted(explicit))}, not both: a case brings its "
                "own seed, today and actor.",
                field="case_id",
            )
        body = await repository.golden_case_body(conn, case_id)
        if body is None:
            raise CrmError(
                ErrorCode.NOT_FOUND,
                f"No golden case {case_id!r} is loaded: check the case id (ids look "
                "like CRM-00001, one per line of corpus/cases/cases.jsonl). Only if no case "
                "was ever loaded into this database, load the corpus with `crmbench cases load`.",
                field="case_id",
                status_code=404,
            )
        return EpisodeCreate.model_validate(
            {
                "case_id": case_id,
                "today": body["today"],
                "actor": body["actor"],
                "seed": body.get("seed") or {},
                "ttl_seconds": request.ttl_seconds,
            }
        )

    async def create(self, request: EpisodeCreate) -> tuple[dict[str, Any], str]:
        """Creates an episode; returns its registry row and its bearer token, and wakes the
        pool loop to replace the schema it took."""
        episode_id = "ep_" + secrets.token_hex(8)
        token = secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        ttl = request.ttl_seconds or self.default_ttl
        async with self.engine.begin() as conn:
            # A cheap early refusal at the cap, before any schema work; the check that
            # counts is the locked one below.
            await self._check_cap(conn)
            if request.case_id is not None:
                request = await self._from_case(conn, request.case_id, request)
            version = await self.world_version(conn)
            pooled = await self._claim_pooled_schema(conn, version)
            if pooled is not None:
                await repository.rename_schema(conn, pooled, episode_id)
            else:
                await repository.clone_world(conn, episode_id)
            await self._apply_seed(conn, episode_id, request.seed)
            row = {
                "episode_id": episode_id,
                "schema_name": episode_id,
                "token_hash": hash_token(token),
                "case_id": request.case_id,
                "today": request.today or WORLD_DATE,
                "actor_name": request.actor.name,
                "actor_role": request.actor.role.value,
                "seed": request.seed.model_dump(mode="json"),
                "world_version": version,
                "call_seq": 0,
                "created_at": now,
                "last_used_at": now,
                "ttl_seconds": ttl,
            }
            # Creations count and insert one at a time (the lock is held until commit),
            # so concurrent ones never overshoot the cap.
            await repository.lock_episode_creation(conn)
            await self._check_cap(conn)
            await repository.insert_episode(conn, row)
        self.pool_wanted.set()
        return row, token

    async def _check_cap(self, conn: AsyncConnection) -> None:
        """Raises TOO_MANY_EPISODES (429, with Retry-After) when `max_live` episodes live."""
        live = await repository.count_live_episodes(conn)
        if live >= self.max_live:
            raise CrmError(
                ErrorCode.TOO_MANY_EPISODES,
                f"{live} episodes are live, the most this service allows "
                f"(CRMBENCH_MAX_LIVE_EPISODES={self.max_live}). Close finished episodes "
                "with DELETE /episodes/{episode_id}, or retry after Retry-After seconds, "
                "when idle ones may have expired.",
                status_code=429,
                headers={"Retry-After": str(self.retry_after_seconds)},
            )

    # ------------------------------------------------------------------ lookup

    async def _get_row(self, conn: AsyncConnection, episode_id: str, lock: bool = False) -> Any:
        if not _EPISODE_ID.match(episode_id):
            raise _episode_not_found(episode_id)
        row = await repository.get_episode(conn, episode_id, lock=lock)
        if row is None:
            raise _episode_not_found(episode_id)
        return row

    async def _get_live_row(self, conn: AsyncConnection, episode_id: str) -> Any:
        """The registry row, locked, of an episode that has not expired. An expired one
        (not yet reaped) is refused with EPISODE_EXPIRED (409): resetting, restoring or
        snapshotting it would mark it used and so bring it back to life, around both its
        TTL and the live-episode cap."""
        row = await self._get_row(conn, episode_id, lock=True)
        if row["expired"]:
            raise CrmError(
                ErrorCode.EPISODE_EXPIRED,
                f"Episode {episode_id} has expired (idle for longer than its ttl_seconds) "
                "and can no longer be reset, snapshotted or restored; it stays readable "
                "until the reaper drops it. Create a new episode with POST /episodes.",
                field="episode_id",
                status_code=409,
            )
        return row

    async def get(self, episode_id: str) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            return dict(await self._get_row(conn, episode_id))

    async def list_episodes(self, limit: int, offset: int) -> tuple[int, list[dict[str, Any]]]:
        async with self.engine.connect() as conn:
            total = await repository.count_episodes(conn)
            return total, await repository.list_episodes(conn, limit, offset)

    # ------------------------------------------------------------------ state

    async def state(self, episode_id: str, tables: Sequence[str] | None = None) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            row = await self._get_row(conn, episode_id)
            rendered = await repository.render_tables(conn, row["schema_name"], tables)
        return {
            "today": row["today"],
            "actor": {"name": row["actor_name"], "role": row["actor_role"]},
            "tables": rendered,
        }

    async def changes(self, episode_id: str) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            row = await self._get_row(conn, episode_id)
            entries = await repository.change_log_rows(conn, row["schema_name"])
        calls: list[dict[str, Any]] = []
        for entry in entries:
            if not calls or calls[-1]["tool_call_id"] != entry["tool_call_id"]:
                calls.append(
                    {"tool_call_id": entry["tool_call_id"], "tool": entry["tool"], "changes": []}
                )
            calls[-1]["changes"].append(
                {
                    "seq": entry["seq"],
                    "table": entry["table_name"],
                    "op": entry["op"],
                    "key": entry["row_key"],
                    "before": entry["before"],
                    "after": entry["after"],
                }
            )
        return {"episode_id": episode_id, "tool_calls": calls, "total_changes": len(entries)}

    # ------------------------------------------------------------------ reset, snapshots

    async def reset(self, episode_id: str) -> dict[str, Any]:
        """Back to the starting state: the world plus the episode's seed, clock at zero.
        Raises EPISODE_EXPIRED (409) for an expired episode."""
        async with self.engine.begin() as conn:
            row = await self._get_live_row(conn, episode_id)
            schema = row["schema_name"]
            await repository.reset_to_world(conn, schema)
            await self._apply_seed(conn, schema, SeedRows.model_validate(row["seed"]))
            await repository.set_call_seq(conn, episode_id, 0)
            return dict(await self._get_row(conn, episode_id))

    async def snapshot(self, episode_id: str, name: str) -> dict[str, Any]:
        """Saves the episode's tables and change log as `name`. Raises EPISODE_EXPIRED (409)
        for an expired episode, CONFLICT (409) for a name already taken."""
        _check_snapshot_name(name)
        async with self.engine.begin() as conn:
            row = await self._get_live_row(conn, episode_id)
            if await repository.snapshot_exists(conn, episode_id, name):
                raise CrmError(
                    ErrorCode.CONFLICT,
                    f"Snapshot {name!r} already exists; delete it first or pick another name.",
                    field="name",
                    status_code=409,
                )
            snapshot_schema = "snap_" + secrets.token_hex(8)
            await repository.clone_for_snapshot(conn, row["schema_name"], snapshot_schema)
            created = datetime.now(UTC)
            await repository.insert_snapshot(
                conn, episode_id, name, snapshot_schema, row["call_seq"], created
            )
        return {"name": name, "call_seq": row["call_seq"], "created_at": created}

    async def snapshots(self, episode_id: str) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            await self._get_row(conn, episode_id)
            return await repository.list_snapshots(conn, episode_id)

    async def _snapshot_schema(self, conn: AsyncConnection, episode_id: str, name: str) -> Any:
        _check_snapshot_name(name)  # a name from the path, checked before any SQL
        found = await repository.get_snapshot(conn, episode_id, name)
        if found is None:
            raise CrmError(
                ErrorCode.SNAPSHOT_NOT_FOUND,
                f"Episode {episode_id} has no snapshot named {name!r}.",
                field="name",
                status_code=404,
            )
        return found

    async def restore(self, episode_id: str, name: str) -> dict[str, Any]:
        """Puts the episode back to snapshot `name`. Raises EPISODE_EXPIRED (409) for an
        expired episode, SNAPSHOT_NOT_FOUND (404) for an unknown name."""
        async with self.engine.begin() as conn:
            row = await self._get_live_row(conn, episode_id)
            snap = await self._snapshot_schema(conn, episode_id, name)
            await repository.truncate_episode_tables(conn, row["schema_name"])
            await repository.copy_tables(
                conn, snap["schema_name"], row["schema_name"], with_log=True
            )
            await repository.set_call_seq(conn, episode_id, snap["call_seq"])
            return dict(await self._get_row(conn, episode_id))

    async def delete_snapshot(self, episode_id: str, name: str) -> None:
        async with self.engine.begin() as conn:
            await self._get_row(conn, episode_id, lock=True)
            snap = await self._snapshot_schema(conn, episode_id, name)
            await repository.drop_schema(conn, snap["schema_name"])
            await repository.delete_snapshot(conn, episode_id, name)

    # ------------------------------------------------------------------ dropping

    async def _drop(self, conn: AsyncConnection, episode_id: str, schema: str) -> None:
        """Removes an episode: snapshots dropped, its schema recycled into the pool or dropped.

        Recycling (a rename now, a reset to the world later in the background) costs
        Postgres far less than dropping the schema and cloning the world anew.
        """
        for snapshot_schema in await repository.snapshot_schemas(conn, episode_id):
            await repository.drop_schema(conn, snapshot_schema)
        recyclable = await repository.recyclable_world_version(conn, episode_id, self.pool_size * 4)
        exists = await repository.schema_exists(conn, schema)
        if recyclable is not None and exists:
            recycled = "pool_" + secrets.token_hex(8)
            await repository.rename_schema(conn, schema, recycled)
            await repository.add_to_pool(conn, recycled, recyclable, ready=False)
        else:
            await repository.drop_schema(conn, schema)
        await repository.delete_episode(conn, episode_id)

    async def delete(self, episode_id: str) -> None:
        """Drops an episode and wakes the pool loop, as its schema waits to be recycled."""
        async with self.engine.begin() as conn:
            row = await self._get_row(conn, episode_id, lock=True)
            await self._drop(conn, episode_id, row["schema_name"])
        self.pool_wanted.set()

    async def reap_expired(self) -> list[str]:
        """Drops episodes idle for longer than their TTL; safe with several replicas."""
        reaped: list[str] = []
        while True:
            async with self.engine.begin() as conn:
                row = await repository.lock_one_expired(conn)
                if row is None:
                    return reaped
                await self._drop(conn, row["episode_id"], row["schema_name"])
            log.info("reaped idle episode %s", row["episode_id"])
            reaped.append(row["episode_id"])

    async def run_reaper(self, interval_seconds: float) -> None:
        """Reaps idle episodes every `interval_seconds`, until cancelled."""
        while True:
            await asyncio.sleep(interval_seconds)
            try:
                await self.reap_expired()
            except Exception as exc:
                _log_loop_failure("episode reaper failed", exc)

    # ------------------------------------------------------------------ the pool

    async def refill_pool(self) -> int:
        """Builds schemas until `pool_size` are ready for the current world; drops stale ones."""
        built = 0
        async with self.engine.begin() as conn:
            version = await self.world_version(conn)
            for schema in await repository.remove_stale_pool(conn, version):
                await repository.drop_schema(conn, schema)
        while await self._recycle_one(version):
            built += 1
        while True:
            async with self.engine.begin() as conn:
                ready = await repository.count_pool(conn, version)
                if ready >= self.pool_size:
                    return built
                schema = "pool_" + secrets.token_hex(8)
                await repository.clone_world(conn, schema)
                await repository.add_to_pool(conn, schema, version, ready=True)
                built += 1

    async def _recycle_one(self, version: str) -> bool:
        """Resets one recycled schema to the world and marks it ready; False if none waits."""
        async with self.engine.begin() as conn:
            schema = await repository.lock_one_unready(conn, version)
            if schema is None:
                return False
            await repository.reset_to_world(conn, schema)
            await repository.mark_ready(conn, schema)
        return True

    async def run_pool(self) -> None:
        """Keeps the pool filled, until cancelled: refills whenever `pool_wanted` is set, and
        at least every few seconds."""
        while True:
            try:
                built = await self.refill_pool()
                if built:
                    log.info("episode pool: built %d schema(s)", built)
            except CrmError as exc:
                log.warning("episode pool not refilled: %s", exc.message)
            except Exception as exc:
                _log_loop_failure("episode pool refill failed", exc)
            self.pool_wanted.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.pool_wanted.wait(), timeout=_POOL_IDLE_SECONDS)


def select_tables(spec: str | None) -> list[str] | None:
    """The entity tables named in a comma-separated list (None: all of them).

    Raises INVALID_ENUM when a name is not an entity table or the list is empty.
    """
    if spec is None:
        return None
    selected = [t.strip() for t in spec.split(",") if t.strip()]
    unknown = [t for t in selected if t not in ENTITY_TABLES]
    if unknown or not selected:
        raise CrmError(
            ErrorCode.INVALID_ENUM,
            f"Unknown tables {unknown}; choose from the entity tables.",
            field="tables",
            allowed=list(ENTITY_TABLES),
        )
    return selected


def expires_at(row: Any) -> datetime:
    last: datetime = row["last_used_at"]
    return last + timedelta(seconds=int(row["ttl_seconds"]))


def episode_public(row: Any, *, admin: bool = True) -> dict[str, Any]:
    """A registry row as the API shows it (`EpisodeOut`): no token hash, no schema name.

    `admin=False` is the episode owner's view: it leaves out `case_id` (the key is absent,
    not null), since the case id maps to the case's committed expected state. Nothing
    else in the row is derived from the case beyond what the agent sees through its tools
    (the seed rows, the episode's `today` and `actor`).
    """
    public = {
        "episode_id": row["episode_id"],
        "case_id": row["case_id"],
        "today": row["today"],
        "actor": Actor(name=row["actor_name"], role=ActorRole(row["actor_role"])),
        "call_seq": int(row["call_seq"]),
        "created_at": row["created_at"],
        "last_used_at": row["last_used_at"],
        "expires_at": expires_at(row),
        "ttl_seconds": int(row["ttl_seconds"]),
        "world_version": row["world_version"],
    }
    if not admin:
        del public["case_id"]
    return public


def _unknown_token() -> CrmError:
    return CrmError(
        ErrorCode.UNAUTHORIZED,
        "Unknown episode token (the episode was deleted or never existed). Create an "
        "episode with POST /episodes.",
        status_code=401,
    )


def _episode_not_found(episode_id: str) -> CrmError:
    return CrmError(
        ErrorCode.EPISODE_NOT_FOUND,
        f"No live episode {episode_id!r} (it may have expired or been deleted).",
        field="episode_id",
        status_code=404,
    )


def _log_loop_failure(what: str, exc: Exception) -> None:
    """One line while the database cannot be reached (the loop retries), else a traceback."""
    if is_database_unavailable(exc):
        reason = (str(exc) or type(exc).__name__).splitlines()[0]
        log.warning("%s: the database cannot be reached (%s)", what, reason)
    else:
        log.exception(what)


def _check_snapshot_name(name: str) -> None:
    if not _SNAPSHOT_NAME.fullmatch(name):
        raise CrmError(
            ErrorCode.INVALID_REQUEST,
            "Snapshot names use 1-64 letters, digits, '_', '.' or '-'.",
            field="name",
        )


def _db_reason(exc: DBAPIError) -> str:
    orig = getattr(exc, "orig", None)
    detail = getattr(orig, "detail", None) or ""
    message = str(orig).splitlines()[0] if orig is not None else str(exc)
    return f"{message} {detail}".strip()
