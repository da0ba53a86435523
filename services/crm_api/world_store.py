"""Loads the world template into Postgres and dumps or restores the whole CRM database."""

from __future__ import annotations

import json
import secrets
from datetime import UTC, date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from crm_api.domain import ENTITY_TABLES
from crm_api.episodes.repository import (
    change_log_rows,
    insert_episode,
    insert_rows,
    quote_ident,
    render_tables,
    suppress_log,
    sync_change_log_sequence,
    tool_call_rows,
    truncate_episode_tables,
)
from crm_api.models import WORLD_SCHEMA
from crm_api.world import build_world, world_version

DUMP_FORMAT = "crm-bench-db-dump/1"


async def current_world(conn: AsyncConnection) -> dict[str, Any] | None:
    row = (
        (await conn.execute(sa.text("SELECT * FROM crm_meta.world_info WHERE id = 1")))
        .mappings()
        .first()
    )
    return dict(row) if row else None


async def _write_world(
    conn: AsyncConnection, tables: dict[str, list[dict[str, Any]]], version: str, seed: int
) -> dict[str, int]:
    await conn.execute(
        sa.text("TRUNCATE " + ", ".join(f"{WORLD_SCHEMA}.{t}" for t in ENTITY_TABLES))
    )
    for table in ENTITY_TABLES:
        await insert_rows(conn, WORLD_SCHEMA, table, tables.get(table, []))
    counts = {t: len(tables.get(t, [])) for t in ENTITY_TABLES}
    await conn.execute(
        sa.text(
            "INSERT INTO crm_meta.world_info (id, version, seed, row_counts, loaded_at)"
            " VALUES (1, :v, :s, CAST(:c AS jsonb), :t) ON CONFLICT (id) DO UPDATE SET"
            " version = EXCLUDED.version, seed = EXCLUDED.seed,"
            " row_counts = EXCLUDED.row_counts, loaded_at = EXCLUDED.loaded_at"
        ),
        {"v": version, "s": seed, "c": json.dumps(counts), "t": datetime.now(UTC)},
    )
    return counts


async def ensure_world(engine: AsyncEngine, seed: int) -> tuple[bool, str]:
    """Loads the world for `seed` unless that exact version is loaded; (loaded?, version)."""
    version = world_version(seed)
    async with engine.begin() as conn:
        await conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('crmbench.world'))"))
        info = await current_world(conn)
        if info is not None and info["version"] == version:
            return False, version
        await _write_world(conn, build_world(seed), version, seed)
    return True, version


# Dropping a schema locks each of its tables, indexes, sequences and triggers (about 145
# objects for an episode) until the transaction ends, and the server's lock table holds
# about max_locks_per_transaction * max_connections locks for all sessions together (6400
# by default): one transaction dropping every schema runs out of shared memory past 50 to
# 90 episodes. Schemas are dropped in batches, each in its own transaction, sized to use at
# most a quarter of that table.
LOCKS_PER_SCHEMA = 200
"""An upper bound of the locks one dropped episode schema takes (measured: 145)."""
LOCK_TABLE_SHARE = 4
"""A batch uses at most 1/LOCK_TABLE_SHARE of the server's lock table."""

_REGISTERED_SCHEMAS = (
    "SELECT schema_name FROM crm_meta.episode UNION"
    " SELECT schema_name FROM crm_meta.episode_snapshot UNION"
    " SELECT schema_name FROM crm_meta.episode_pool"
)


async def drop_batch_size(conn: AsyncConnection) -> int:
    """How many schemas one transaction may drop on this server (at least 1)."""
    row = (
        await conn.execute(
            sa.text(
                "SELECT current_setting('max_locks_per_transaction')::int,"
                " current_setting('max_connections')::int"
            )
        )
    ).one()
    lock_table = int(row[0]) * int(row[1])
    return max(1, lock_table // (LOCK_TABLE_SHARE * LOCKS_PER_SCHEMA))


async def _drop_schemas(conn: AsyncConnection, schemas: list[str]) -> None:
    for schema in schemas:
        await conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE"))


async def _drop_one_batch(engine: AsyncEngine, size: int) -> tuple[int, int]:
    """Drops up to `size` schemas with their registry rows in one transaction: episodes
    with their snapshots, then pool schemas. Returns (schemas dropped, episodes dropped)."""
    async with engine.begin() as conn:
        episodes = (
            (
                await conn.execute(
                    sa.text(
                        "SELECT episode_id, schema_name FROM crm_meta.episode"
                        " ORDER BY episode_id LIMIT :n FOR UPDATE SKIP LOCKED"
                    ),
                    {"n": size},
                )
            )
            .mappings()
            .all()
        )
        snapshots: dict[str, list[str]] = {}
        for row in (
            await conn.execute(
                sa.text(
                    "SELECT episode_id, schema_name FROM crm_meta.episode_snapshot"
                    " WHERE episode_id = ANY(:ids)"
                ),
                {"ids": [row["episode_id"] for row in episodes]},
            )
        ).mappings():
            snapshots.setdefault(row["episode_id"], []).append(row["schema_name"])
        schemas: list[str] = []
        taken: list[str] = []
        for row in episodes:
            episode_schemas = [row["schema_name"], *snapshots.get(row["episode_id"], [])]
            if taken and len(schemas) + len(episode_schemas) > size:
                break
            schemas.extend(episode_schemas)
            taken.append(row["episode_id"])
        await _drop_schemas(conn, schemas)
        await conn.execute(
            sa.text(
                "DELETE FROM crm_meta.episode WHERE episode_id = ANY(:ids)"
            ),  # snapshots cascade
            {"ids": taken},
        )
        room = size - len(schemas)
        pooled: list[str] = []
        if room > 0:
            pooled = [
                str(name)
                for name in (
                    await conn.execute(
                        sa.text(
                            "DELETE FROM crm_meta.episode_pool WHERE schema_name IN ("
                            " SELECT schema_name FROM crm_meta.episode_pool ORDER BY schema_name"
                            " LIMIT :n FOR UPDATE SKIP LOCKED) RETURNING schema_name"
                        ),
                        {"n": room},
                    )
                ).scalars()
            ]
            await _drop_schemas(conn, pooled)
    return len(schemas) + len(pooled), len(taken)


async def drop_all_episodes(engine: AsyncEngine) -> int:
    """Drops every episode, snapshot and pool schema with its registry row, in batches of
    `drop_batch_size` schemas (one transaction each); returns the number of episodes."""
    async with engine.connect() as conn:
        size = await drop_batch_size(conn)
    dropped_episodes = 0
    while True:
        dropped, episodes = await _drop_one_batch(engine, size)
        dropped_episodes += episodes
        if dropped == 0:
            return dropped_episodes


async def _drop_stragglers(conn: AsyncConnection) -> int:
    """Inside the world's lock: drops what was created while the batches ran (normally
    nothing). Returns the number of episodes dropped."""
    schemas = [str(s) for s in (await conn.execute(sa.text(_REGISTERED_SCHEMAS))).scalars()]
    await _drop_schemas(conn, schemas)
    count = (await conn.execute(sa.text("SELECT count(*) FROM crm_meta.episode"))).scalar_one()
    await conn.execute(sa.text("DELETE FROM crm_meta.episode_pool"))
    await conn.execute(sa.text("DELETE FROM crm_meta.episode"))  # snapshots cascade
    return int(count)


async def reset_database(engine: AsyncEngine, seed: int) -> tuple[int, str]:
    """Drops every episode, snapshot and pooled schema (in batches) and reloads the world."""
    version = world_version(seed)
    dropped = await drop_all_episodes(engine)
    async with engine.begin() as conn:
        await conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('crmbench.world'))"))
        dropped += await _drop_stragglers(conn)
        await _write_world(conn, build_world(seed), version, seed)
    return dropped, version


async def dump_database(engine: AsyncEngine) -> dict[str, Any]:
    """The whole CRM state (world, live episodes with change logs and snapshots) as JSON data."""
    async with engine.begin() as conn:
        await conn.execute(sa.text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
        info = await current_world(conn)
        if info is None:
            raise RuntimeError("the world is not loaded; run `crmbench db migrate` first")
        episodes = []
        rows = (
            await conn.execute(sa.text("SELECT * FROM crm_meta.episode ORDER BY episode_id"))
        ).mappings()
        for row in [dict(r) for r in rows]:
            schema = row["schema_name"]
            snapshots = []
            snaps = (
                await conn.execute(
                    sa.text(
                        "SELECT * FROM crm_meta.episode_snapshot WHERE episode_id = :id"
                        " ORDER BY name"
                    ),
                    {"id": row["episode_id"]},
                )
            ).mappings()
            for snap in [dict(s) for s in snaps]:
                snapshots.append(
                    {
                        "name": snap["name"],
                        "call_seq": snap["call_seq"],
                        "created_at": snap["created_at"],
                        "tables": await render_tables(conn, snap["schema_name"]),
                        "change_log": await change_log_rows(conn, snap["schema_name"]),
                        "tool_calls": await tool_call_rows(conn, snap["schema_name"]),
                    }
                )
            episodes.append(
                {
                    "registry": {k: v for k, v in row.items() if k != "schema_name"},
                    "tables": await render_tables(conn, schema),
                    "change_log": await change_log_rows(conn, schema),
                    "tool_calls": await tool_call_rows(conn, schema),
                    "snapshots": snapshots,
                }
            )
        return {
            "format": DUMP_FORMAT,
            "world": {
                "version": info["version"],
                "seed": info["seed"],
                "tables": await render_tables(conn, WORLD_SCHEMA),
            },
            "episodes": episodes,
        }


async def _fill_schema(
    conn: AsyncConnection,
    schema: str,
    tables: dict[str, Any],
    change_log: list[Any],
    tool_calls: list[Any],
) -> None:
    await conn.execute(
        sa.text("SELECT crm_meta.clone_schema(:src, :dst, true)"),
        {"src": WORLD_SCHEMA, "dst": schema},
    )
    await truncate_episode_tables(conn, schema)
    await suppress_log(conn, True)
    for table in ENTITY_TABLES:
        await insert_rows(conn, schema, table, tables.get(table, []))
    await suppress_log(conn, False)
    await insert_rows(conn, schema, "change_log", change_log)
    await sync_change_log_sequence(conn, schema)
    await insert_rows(conn, schema, "tool_call", tool_calls)


async def restore_database(engine: AsyncEngine, dump: dict[str, Any]) -> int:
    """Replaces the whole CRM state with a dump; returns the number of episodes restored."""
    if dump.get("format") != DUMP_FORMAT:
        raise ValueError(f"not a crm-bench database dump (expected format {DUMP_FORMAT!r})")

    await drop_all_episodes(engine)
    async with engine.begin() as conn:
        await conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('crmbench.world'))"))
        await _drop_stragglers(conn)
        world = dump["world"]
        await _write_world(conn, world["tables"], world["version"], int(world["seed"]))
        for episode in dump["episodes"]:
            registry = dict(episode["registry"])
            schema = registry["episode_id"]
            await _fill_schema(
                conn,
                schema,
                episode["tables"],
                episode["change_log"],
                episode.get("tool_calls", []),
            )
            registry["schema_name"] = schema
            registry["today"] = date.fromisoformat(registry["today"])
            for key in ("created_at", "last_used_at"):
                registry[key] = datetime.fromisoformat(registry[key])
            await insert_episode(conn, registry)
            for snap in episode["snapshots"]:
                snapshot_schema = "snap_" + secrets.token_hex(8)
                await _fill_schema(
                    conn,
                    snapshot_schema,
                    snap["tables"],
                    snap["change_log"],
                    snap.get("tool_calls", []),
                )
                await conn.execute(
                    sa.text("INSERT INTO crm_meta.episode_snapshot VALUES (:id, :n, :s, :c, :t)"),
                    {
                        "id": schema,
                        "n": snap["name"],
                        "s": snapshot_schema,
                        "c": snap["call_seq"],
                        "t": datetime.fromisoformat(snap["created_at"]),
                    },
                )
    return len(dump["episodes"])


async def load_golden_cases(
    engine: AsyncEngine, cases: list[tuple[str, dict[str, Any]]], corpus_hash: str
) -> int:
    """Replaces the loaded golden cases with `cases` ((case_id, case JSON) pairs)."""
    loaded_at = datetime.now(UTC)
    async with engine.begin() as conn:
        await conn.execute(sa.text("DELETE FROM crm_meta.golden_case"))
        for start in range(0, len(cases), 500):
            batch = cases[start : start + 500]
            await conn.execute(
                sa.text(
                    "INSERT INTO crm_meta.golden_case (case_id, corpus_hash, body, loaded_at)"
                    " VALUES (:id, :h, CAST(:b AS jsonb), :t)"
                ),
                [
                    {"id": case_id, "h": corpus_hash, "b": json.dumps(body), "t": loaded_at}
                    for case_id, body in batch
                ],
            )
    return len(cases)
