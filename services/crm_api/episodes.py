"""Episodes: one Postgres schema per live episode, cloned from the world template.

The manager creates episodes (from a pool of pre-built schemas when one is ready),
authenticates tool calls by token, resets, snapshots, restores, renders canonical state
and the change log, drops episodes, and reaps idle ones. All of its state is in Postgres,
so a restart of the service loses nothing and several replicas can share one database.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from crm_api.context import EpisodeRef
from crm_api.domain import ENTITY_TABLES, PRIMARY_KEYS, WORLD_DATE, ActorRole
from crm_api.episode_schemas import Actor, EpisodeCreate, SeedRows
from crm_api.errors import CrmError, ErrorCode
from crm_api.models import WORLD_SCHEMA

log = logging.getLogger("crm_api.episodes")

_SNAPSHOT_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_EPISODE_ID = re.compile(r"^ep_[0-9a-f]{16}$")


def json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def canonical_json(value: Any) -> str:
    """The one serialisation used for states and snapshots: sorted keys, no spaces."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=json_default
    )


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def quote_ident(name: str) -> str:
    """Quotes a generated identifier (schema names never come from input)."""
    return '"' + name.replace('"', '""') + '"'


async def suppress_log(conn: AsyncConnection, on: bool) -> None:
    """Turns the change-log triggers off (on=True) or back on for this transaction."""
    await conn.execute(
        sa.text("SELECT set_config('crm.suppress_log', :v, true)"), {"v": "on" if on else "off"}
    )


async def insert_rows(
    conn: AsyncConnection, schema: str, table: str, rows: Sequence[dict[str, Any]]
) -> None:
    """Bulk insert of JSON-able rows; Postgres converts each value to its column's type."""
    if not rows:
        return
    target = f"{quote_ident(schema)}.{quote_ident(table)}"
    await conn.execute(
        sa.text(
            f"INSERT INTO {target} SELECT * FROM jsonb_populate_recordset(NULL::{target}, "
            "CAST(:rows AS jsonb))"
        ),
        {"rows": json.dumps(list(rows), default=json_default)},
    )


async def render_tables(
    conn: AsyncConnection, schema: str, tables: Sequence[str] | None = None
) -> dict[str, list[dict[str, Any]]]:
    """The entity tables of `schema` (all by default) as JSON rows ordered by primary key."""
    parts = []
    for table in ENTITY_TABLES:
        if tables is not None and table not in tables:
            continue
        pk = PRIMARY_KEYS[table]
        parts.append(
            f"'{table}', (SELECT coalesce(jsonb_agg(to_jsonb(t) ORDER BY t.{pk} COLLATE \"C\"),"
            f" '[]'::jsonb) FROM {quote_ident(schema)}.{quote_ident(table)} t)"
        )
    stmt = sa.text(f"SELECT jsonb_build_object({', '.join(parts)})::text")
    text_value = (await conn.execute(stmt)).scalar_one()
    rendered: dict[str, list[dict[str, Any]]] = json.loads(text_value)
    return rendered


async def change_log_rows(conn: AsyncConnection, schema: str) -> list[dict[str, Any]]:
    stmt = sa.text(
        "SELECT coalesce(jsonb_agg(to_jsonb(c) ORDER BY c.seq), '[]'::jsonb)::text "
        f"FROM {quote_ident(schema)}.change_log c"
    )
    rows: list[dict[str, Any]] = json.loads((await conn.execute(stmt)).scalar_one())
    return rows


async def truncate_episode_tables(conn: AsyncConnection, schema: str) -> None:
    tables = ", ".join(
        f"{quote_ident(schema)}.{quote_ident(t)}" for t in (*ENTITY_TABLES, "change_log")
    )
    await conn.execute(sa.text(f"TRUNCATE {tables} RESTART IDENTITY"))


async def copy_tables(conn: AsyncConnection, source: str, target: str, with_log: bool) -> None:
    """Copies every row of `source`'s tables into `target`'s (which must be empty)."""
    await suppress_log(conn, True)
    for table in ENTITY_TABLES:
        into, source_table = quote_ident(target), quote_ident(source)
        await conn.execute(
            sa.text(
                f"INSERT INTO {into}.{quote_ident(table)}"
                f" SELECT * FROM {source_table}.{quote_ident(table)}"
            )
        )
    if with_log:
        await conn.execute(
            sa.text(
                f"INSERT INTO {quote_ident(target)}.change_log"
                f" SELECT * FROM {quote_ident(source)}.change_log"
            )
        )
        await sync_change_log_sequence(conn, target)
    await suppress_log(conn, False)


async def sync_change_log_sequence(conn: AsyncConnection, schema: str) -> None:
    """After rows were copied into a change log, new entries continue after the last one."""
    log = f"{quote_ident(schema)}.change_log"
    await conn.execute(
        sa.text(
            f"SELECT setval(pg_get_serial_sequence('{log}', 'seq'),"
            f" coalesce((SELECT max(seq) FROM {log}), 0) + 1, false)"
        )
    )


async def reset_to_world(conn: AsyncConnection, schema: str) -> None:
    """Empties an episode schema (change log included) and refills it with the world."""
    await truncate_episode_tables(conn, schema)
    await copy_tables(conn, WORLD_SCHEMA, schema, with_log=False)


class EpisodeManager:
    """Creates, finds, resets, snapshots and drops episodes; keeps the schema pool filled."""

    def __init__(self, engine: AsyncEngine, *, default_ttl: int, pool_size: int) -> None:
        self.engine = engine
        self.default_ttl = default_ttl
        self.pool_size = pool_size

    # ------------------------------------------------------------------ creation

    async def world_version(self, conn: AsyncConnection) -> str:
        version = (
            await conn.execute(sa.text("SELECT version FROM crm_meta.world_info WHERE id = 1"))
        ).scalar_one_or_none()
        if version is None:
            raise CrmError(
                ErrorCode.CONFLICT,
                "The world data set is not loaded; run `crmbench db migrate`.",
                status_code=409,
            )
        return str(version)

    async def _claim_pooled_schema(self, conn: AsyncConnection, version: str) -> str | None:
        """A pool schema at the world's starting state: a ready one, else a recycled one
        reset here (cheaper than a new clone), else None."""
        claimed = (
            (
                await conn.execute(
                    sa.text(
                        "DELETE FROM crm_meta.episode_pool WHERE schema_name = ("
                        " SELECT schema_name FROM crm_meta.episode_pool WHERE world_version = :v"
                        " ORDER BY ready DESC, created_at, schema_name LIMIT 1"
                        " FOR UPDATE SKIP LOCKED) RETURNING schema_name, ready"
                    ),
                    {"v": version},
                )
            )
            .mappings()
            .first()
        )
        if claimed is None:
            return None
        schema = str(claimed["schema_name"])
        if not claimed["ready"]:
            await reset_to_world(conn, schema)
        return schema

    async def _apply_seed(self, conn: AsyncConnection, schema: str, seed: SeedRows) -> None:
        await suppress_log(conn, True)
        try:
            await conn.execute(sa.text("SAVEPOINT seed"))
            for table in ENTITY_TABLES:
                rows = [row.model_dump(mode="json") for row in getattr(seed, table)]
                await insert_rows(conn, schema, table, rows)
            await conn.execute(sa.text("RELEASE SAVEPOINT seed"))
        except IntegrityError as exc:
            await conn.execute(sa.text("ROLLBACK TO SAVEPOINT seed"))
            raise CrmError(
                ErrorCode.INVALID_REQUEST,
                f"The seed rows break a constraint of the CRM schema: {_db_reason(exc)}",
                field="seed",
            ) from None
        await suppress_log(conn, False)

    async def _from_case(self, conn: AsyncConnection, request: EpisodeCreate) -> EpisodeCreate:
        """The request with the case's seed, today and actor filled in."""
        explicit = request.model_fields_set & {"today", "actor", "seed"}
        if explicit:
            raise CrmError(
                ErrorCode.INVALID_REQUEST,
                f"Give case_id or {', '.join(sorted(explicit))}, not both: a case brings its "
                "own seed, today and actor.",
                field="case_id",
            )
        body = (
            await conn.execute(
                sa.text("SELECT body FROM crm_meta.golden_case WHERE case_id = :id"),
                {"id": request.case_id},
            )
        ).scalar_one_or_none()
        if body is None:
            raise CrmError(
                ErrorCode.NOT_FOUND,
                f"No golden case {request.case_id!r} is loaded: check the case id (ids look "
                "like CRM-00001, one per line of corpus/cases/cases.jsonl). Only if no case "
                "was ever loaded into this database, load the corpus with `crmbench cases load`.",
                field="case_id",
                status_code=404,
            )
        return EpisodeCreate.model_validate(
            {
                "case_id": request.case_id,
                "today": body["today"],
                "actor": body["actor"],
                "seed": body.get("seed") or {},
                "ttl_seconds": request.ttl_seconds,
            }
        )

    async def create(self, request: EpisodeCreate) -> tuple[dict[str, Any], str]:
        """Creates an episode; returns its registry row and its bearer token."""
        episode_id = "ep_" + secrets.token_hex(8)
        token = secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        ttl = request.ttl_seconds or self.default_ttl
        async with self.engine.begin() as conn:
            if request.case_id is not None:
                request = await self._from_case(conn, request)
            version = await self.world_version(conn)
            pooled = await self._claim_pooled_schema(conn, version)
            if pooled is not None:
                await conn.execute(
                    sa.text(
                        f"ALTER SCHEMA {quote_ident(pooled)} RENAME TO {quote_ident(episode_id)}"
                    )
                )
            else:
                await conn.execute(
                    sa.text("SELECT crm_meta.clone_schema(:src, :dst, true)"),
                    {"src": WORLD_SCHEMA, "dst": episode_id},
                )
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
            await conn.execute(
                sa.text(
                    "INSERT INTO crm_meta.episode (episode_id, schema_name, token_hash, case_id,"
                    " today, actor_name, actor_role, seed, world_version, call_seq, created_at,"
                    " last_used_at, ttl_seconds) VALUES (:episode_id, :schema_name, :token_hash,"
                    " :case_id, :today, :actor_name, :actor_role, CAST(:seed AS jsonb),"
                    " :world_version, :call_seq, :created_at, :last_used_at, :ttl_seconds)"
                ),
                {**row, "seed": json.dumps(row["seed"])},
            )
        return row, token

    # ------------------------------------------------------------------ lookup

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
        row = (
            (
                await conn.execute(
                    sa.text(
                        "UPDATE crm_meta.episode SET call_seq = call_seq + 1, last_used_at = now()"
                        " WHERE token_hash = :h RETURNING episode_id, schema_name, today,"
                        " actor_name, actor_role, call_seq,"
                        " set_config('search_path', quote_ident(schema_name), true) AS bound,"
                        " CASE WHEN CAST(:tool AS text) IS NULL THEN NULL ELSE"
                        "  set_config('crm.tool_call_id', coalesce(CAST(:call AS text),"
                        "   episode_id || ':' || call_seq), true) END AS call_id,"
                        " CASE WHEN CAST(:tool AS text) IS NULL THEN NULL ELSE"
                        "  set_config('crm.tool', CAST(:tool AS text), true) END AS tool"
                    ),
                    {"h": hash_token(token), "tool": tool, "call": tool_call_id},
                )
            )
            .mappings()
            .first()
        )
        if row is None:
            raise CrmError(
                ErrorCode.UNAUTHORIZED,
                "Unknown or expired episode token. Create an episode with POST /episodes.",
                status_code=401,
            )
        return EpisodeRef(
            episode_id=row["episode_id"],
            schema_name=row["schema_name"],
            today=row["today"],
            actor_name=row["actor_name"],
            actor_role=ActorRole(row["actor_role"]),
            call_seq=int(row["call_seq"]),
        )

    async def episode_for_token(self, token: str) -> str | None:
        async with self.engine.connect() as conn:
            found = (
                await conn.execute(
                    sa.text("SELECT episode_id FROM crm_meta.episode WHERE token_hash = :h"),
                    {"h": hash_token(token)},
                )
            ).scalar_one_or_none()
        return None if found is None else str(found)

    async def _get_row(self, conn: AsyncConnection, episode_id: str, lock: bool = False) -> Any:
        if not _EPISODE_ID.match(episode_id):
            raise _episode_not_found(episode_id)
        suffix = " FOR UPDATE" if lock else ""
        row = (
            (
                await conn.execute(
                    sa.text(f"SELECT * FROM crm_meta.episode WHERE episode_id = :id{suffix}"),
                    {"id": episode_id},
                )
            )
            .mappings()
            .first()
        )
        if row is None:
            raise _episode_not_found(episode_id)
        return row

    async def get(self, episode_id: str) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            return dict(await self._get_row(conn, episode_id))

    async def list_episodes(self, limit: int, offset: int) -> tuple[int, list[dict[str, Any]]]:
        async with self.engine.connect() as conn:
            total = (
                await conn.execute(sa.text("SELECT count(*) FROM crm_meta.episode"))
            ).scalar_one()
            rows = (
                await conn.execute(
                    sa.text(
                        "SELECT * FROM crm_meta.episode ORDER BY created_at, episode_id"
                        " LIMIT :l OFFSET :o"
                    ),
                    {"l": limit, "o": offset},
                )
            ).mappings()
            return int(total), [dict(r) for r in rows]

    # ------------------------------------------------------------------ state

    async def state(self, episode_id: str, tables: Sequence[str] | None = None) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            row = await self._get_row(conn, episode_id)
            rendered = await render_tables(conn, row["schema_name"], tables)
        return {
            "today": row["today"],
            "actor": {"name": row["actor_name"], "role": row["actor_role"]},
            "tables": rendered,
        }

    async def changes(self, episode_id: str) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            row = await self._get_row(conn, episode_id)
            entries = await change_log_rows(conn, row["schema_name"])
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
        """Back to the starting state: the world plus the episode's seed, clock at zero."""
        async with self.engine.begin() as conn:
            row = await self._get_row(conn, episode_id, lock=True)
            schema = row["schema_name"]
            await reset_to_world(conn, schema)
            await self._apply_seed(conn, schema, SeedRows.model_validate(row["seed"]))
            await conn.execute(
                sa.text(
                    "UPDATE crm_meta.episode SET call_seq = 0, last_used_at = now()"
                    " WHERE episode_id = :id"
                ),
                {"id": episode_id},
            )
            return dict(await self._get_row(conn, episode_id))

    async def snapshot(self, episode_id: str, name: str) -> dict[str, Any]:
        _check_snapshot_name(name)
        async with self.engine.begin() as conn:
            row = await self._get_row(conn, episode_id, lock=True)
            exists = (
                await conn.execute(
                    sa.text(
                        "SELECT 1 FROM crm_meta.episode_snapshot"
                        " WHERE episode_id = :id AND name = :n"
                    ),
                    {"id": episode_id, "n": name},
                )
            ).first()
            if exists:
                raise CrmError(
                    ErrorCode.CONFLICT,
                    f"Snapshot {name!r} already exists; delete it first or pick another name.",
                    field="name",
                    status_code=409,
                )
            snapshot_schema = "snap_" + secrets.token_hex(8)
            await conn.execute(
                sa.text("SELECT crm_meta.clone_schema(:src, :dst, false)"),
                {"src": row["schema_name"], "dst": snapshot_schema},
            )
            created = datetime.now(UTC)
            await conn.execute(
                sa.text("INSERT INTO crm_meta.episode_snapshot VALUES (:id, :n, :s, :c, :t)"),
                {
                    "id": episode_id,
                    "n": name,
                    "s": snapshot_schema,
                    "c": row["call_seq"],
                    "t": created,
                },
            )
        return {"name": name, "call_seq": row["call_seq"], "created_at": created}

    async def snapshots(self, episode_id: str) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            await self._get_row(conn, episode_id)
            rows = (
                await conn.execute(
                    sa.text(
                        "SELECT name, call_seq, created_at FROM crm_meta.episode_snapshot"
                        " WHERE episode_id = :id ORDER BY created_at, name"
                    ),
                    {"id": episode_id},
                )
            ).mappings()
            return [dict(r) for r in rows]

    async def _snapshot_schema(self, conn: AsyncConnection, episode_id: str, name: str) -> Any:
        found = (
            (
                await conn.execute(
                    sa.text(
                        "SELECT schema_name, call_seq FROM crm_meta.episode_snapshot"
                        " WHERE episode_id = :id AND name = :n"
                    ),
                    {"id": episode_id, "n": name},
                )
            )
            .mappings()
            .first()
        )
        if found is None:
            raise CrmError(
                ErrorCode.SNAPSHOT_NOT_FOUND,
                f"Episode {episode_id} has no snapshot named {name!r}.",
                field="name",
                status_code=404,
            )
        return found

    async def restore(self, episode_id: str, name: str) -> dict[str, Any]:
        async with self.engine.begin() as conn:
            row = await self._get_row(conn, episode_id, lock=True)
            snap = await self._snapshot_schema(conn, episode_id, name)
            await truncate_episode_tables(conn, row["schema_name"])
            await copy_tables(conn, snap["schema_name"], row["schema_name"], with_log=True)
            await conn.execute(
                sa.text(
                    "UPDATE crm_meta.episode SET call_seq = :c, last_used_at = now()"
                    " WHERE episode_id = :id"
                ),
                {"c": snap["call_seq"], "id": episode_id},
            )
            return dict(await self._get_row(conn, episode_id))

    async def delete_snapshot(self, episode_id: str, name: str) -> None:
        async with self.engine.begin() as conn:
            await self._get_row(conn, episode_id, lock=True)
            snap = await self._snapshot_schema(conn, episode_id, name)
            await conn.execute(
                sa.text(f"DROP SCHEMA IF EXISTS {quote_ident(snap['schema_name'])} CASCADE")
            )
            await conn.execute(
                sa.text(
                    "DELETE FROM crm_meta.episode_snapshot WHERE episode_id = :id AND name = :n"
                ),
                {"id": episode_id, "n": name},
            )

    # ------------------------------------------------------------------ dropping

    async def _drop(self, conn: AsyncConnection, episode_id: str, schema: str) -> None:
        """Removes an episode: snapshots dropped, its schema recycled into the pool or dropped.

        Recycling (a rename now, a reset to the world later in the background) costs
        Postgres far less than dropping the schema and cloning the world anew.
        """
        snaps = (
            await conn.execute(
                sa.text("SELECT schema_name FROM crm_meta.episode_snapshot WHERE episode_id = :id"),
                {"id": episode_id},
            )
        ).scalars()
        for snapshot_schema in list(snaps):
            await conn.execute(
                sa.text(f"DROP SCHEMA IF EXISTS {quote_ident(snapshot_schema)} CASCADE")
            )
        recyclable = (
            await conn.execute(
                sa.text(
                    "SELECT e.world_version FROM crm_meta.episode e JOIN crm_meta.world_info w"
                    " ON w.version = e.world_version WHERE e.episode_id = :id AND"
                    " (SELECT count(*) FROM crm_meta.episode_pool) < :cap"
                ),
                {"id": episode_id, "cap": self.pool_size * 4},
            )
        ).scalar_one_or_none()
        exists = (
            await conn.execute(
                sa.text("SELECT 1 FROM pg_namespace WHERE nspname = :s"), {"s": schema}
            )
        ).first()
        if recyclable is not None and exists:
            recycled = "pool_" + secrets.token_hex(8)
            await conn.execute(
                sa.text(f"ALTER SCHEMA {quote_ident(schema)} RENAME TO {quote_ident(recycled)}")
            )
            await conn.execute(
                sa.text("INSERT INTO crm_meta.episode_pool VALUES (:s, :v, now(), false)"),
                {"s": recycled, "v": recyclable},
            )
        else:
            await conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE"))
        await conn.execute(
            sa.text("DELETE FROM crm_meta.episode WHERE episode_id = :id"), {"id": episode_id}
        )

    async def delete(self, episode_id: str) -> None:
        async with self.engine.begin() as conn:
            row = await self._get_row(conn, episode_id, lock=True)
            await self._drop(conn, episode_id, row["schema_name"])

    async def reap_expired(self) -> list[str]:
        """Drops episodes idle for longer than their TTL; safe with several replicas."""
        reaped: list[str] = []
        while True:
            async with self.engine.begin() as conn:
                row = (
                    (
                        await conn.execute(
                            sa.text(
                                "SELECT episode_id, schema_name FROM crm_meta.episode"
                                " WHERE last_used_at + make_interval(secs => ttl_seconds) < now()"
                                " ORDER BY last_used_at LIMIT 1 FOR UPDATE SKIP LOCKED"
                            )
                        )
                    )
                    .mappings()
                    .first()
                )
                if row is None:
                    return reaped
                await self._drop(conn, row["episode_id"], row["schema_name"])
            log.info("reaped idle episode %s", row["episode_id"])
            reaped.append(row["episode_id"])

    # ------------------------------------------------------------------ the pool

    async def refill_pool(self) -> int:
        """Builds schemas until `pool_size` are ready for the current world; drops stale ones."""
        built = 0
        async with self.engine.begin() as conn:
            version = await self.world_version(conn)
            stale = (
                await conn.execute(
                    sa.text(
                        "DELETE FROM crm_meta.episode_pool WHERE world_version <> :v"
                        " RETURNING schema_name"
                    ),
                    {"v": version},
                )
            ).scalars()
            for schema in list(stale):
                await conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE"))
        while await self._recycle_one(version):
            built += 1
        while True:
            async with self.engine.begin() as conn:
                ready = (
                    await conn.execute(
                        sa.text(
                            "SELECT count(*) FROM crm_meta.episode_pool WHERE world_version = :v"
                        ),
                        {"v": version},
                    )
                ).scalar_one()
                if ready >= self.pool_size:
                    return built
                schema = "pool_" + secrets.token_hex(8)
                await conn.execute(
                    sa.text("SELECT crm_meta.clone_schema(:src, :dst, true)"),
                    {"src": WORLD_SCHEMA, "dst": schema},
                )
                await conn.execute(
                    sa.text("INSERT INTO crm_meta.episode_pool VALUES (:s, :v, now(), true)"),
                    {"s": schema, "v": version},
                )
                built += 1

    async def _recycle_one(self, version: str) -> bool:
        """Resets one recycled schema to the world and marks it ready; False if none waits."""
        async with self.engine.begin() as conn:
            schema = (
                await conn.execute(
                    sa.text(
                        "SELECT schema_name FROM crm_meta.episode_pool WHERE NOT ready"
                        " AND world_version = :v ORDER BY created_at, schema_name LIMIT 1"
                        " FOR UPDATE SKIP LOCKED"
                    ),
                    {"v": version},
                )
            ).scalar_one_or_none()
            if schema is None:
                return False
            await reset_to_world(conn, schema)
            await conn.execute(
                sa.text("UPDATE crm_meta.episode_pool SET ready = true WHERE schema_name = :s"),
                {"s": schema},
            )
        return True


def expires_at(row: Any) -> datetime:
    last: datetime = row["last_used_at"]
    return last + timedelta(seconds=int(row["ttl_seconds"]))


def episode_public(row: Any) -> dict[str, Any]:
    return {
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


def _episode_not_found(episode_id: str) -> CrmError:
    return CrmError(
        ErrorCode.EPISODE_NOT_FOUND,
        f"No live episode {episode_id!r} (it may have expired or been deleted).",
        field="episode_id",
        status_code=404,
    )


def _check_snapshot_name(name: str) -> None:
    if not _SNAPSHOT_NAME.match(name):
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
