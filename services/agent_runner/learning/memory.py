"""Playbook memory in Postgres (migration 0006): entries with every version, their
embeddings, counters, retirements, and the learning loop's trajectory events.

Several runner processes share one memory safely:
- `add_or_merge` holds a transaction-level advisory lock per audience, so its
  near-duplicate check and the insert after it see every other process's entries; a
  content hash is also unique across entries in the schema, so one lesson is one entry.
- counters change by single `UPDATE ... SET x = x + n` statements (no read-modify-write).
- `apply_episode` applies an episode's bookkeeping once per key: a resumed run cannot
  count an episode twice, and it can join the caller's transaction.

Search is exact, with the same results on every server. A coarse pass ranks the active
entries: pgvector's `<=>` (float32 arithmetic) where the embedding table has its vector
column, otherwise numpy over a per-process cache of the stored float arrays (their rows
never change) and of the list of searchable entries, kept until the memory's generation
(a number every change to that list increments in its transaction) moves. Every entry
within 2 * COARSE_SLACK of the k-th best or of the threshold is a candidate, and the
candidates' similarities are computed from the stored float64 arrays by one exactly
rounded function (`exact_cosine`); ties are broken by entry id.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple

import asyncpg
import numpy as np
import numpy.typing as npt

from agent_runner.run.store import asyncpg_dsn
from crmbench_contracts.canonical import canonical_json
from crmbench_contracts.playbooks import (
    COUNTER_FIELDS,
    FLOAT_COUNTERS,
    CounterField,
    EntryStatus,
    ExportedEntry,
    PlaybookCandidate,
    PlaybookContent,
    PlaybookCounters,
    PlaybookEntry,
    PlaybookExport,
    PlaybookRetirement,
    PlaybookVersion,
    Provenance,
    RetirementCode,
    RetirementEvent,
    TrajectoryEvent,
    entry_id_for,
)
from crmbench_contracts.traces import Audience

COARSE_SLACK = 1e-3
"""Largest error of the coarse pass in cosine similarity. pgvector sums float32 products:
for unit-scale vectors of d dimensions its error is about d * 6e-8 (1e-4 at d = 1536);
the slack leaves a tenfold margin, at the price of a few more exact computations."""

SearchBackend = Literal["pgvector", "arrays"]
AddOutcome = Literal["created", "revised", "duplicate"]
"""What `add_or_merge` did: a new entry; a new version of a near-duplicate entry; or
nothing but provenance, because some version of some entry has the same content."""


class PlaybookError(Exception):
    """A refused memory operation; `code` is machine-readable."""

    code = "PLAYBOOK_ERROR"


class EntryNotFound(PlaybookError, LookupError):
    code = "ENTRY_NOT_FOUND"

    def __init__(self, entry_id: str) -> None:
        super().__init__(f"no playbook entry {entry_id!r} in this memory")
        self.entry_id = entry_id


class InvalidVector(PlaybookError, ValueError):
    """A vector of the wrong dimension, with a non-finite value, or all zeros."""

    code = "INVALID_VECTOR"


class EmbedderMismatch(PlaybookError):
    """The memory holds vectors of this embedder with another dimension."""

    code = "EMBEDDER_MISMATCH"


class ImportConflict(PlaybookError):
    """An export disagrees with this memory (a content hash under another entry or
    version); nothing was imported."""

    code = "IMPORT_CONFLICT"


class InvalidCounter(PlaybookError, ValueError):
    code = "INVALID_COUNTER"


@dataclass(frozen=True)
class StoredEntry:
    """What `add_or_merge` stored or found."""

    entry: PlaybookEntry
    outcome: AddOutcome
    similarity: float | None = None
    """The candidate's similarity to the near-duplicate it revised (`revised` only)."""


class PlaybookMatch(NamedTuple):
    entry: PlaybookEntry
    similarity: float
    """Cosine similarity of the query to the entry's current version, in [-1, 1]."""


@dataclass(frozen=True)
class ImportSummary:
    entries_added: int
    versions_added: int
    embeddings_added: int


def exact_cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """Cosine similarity with exactly rounded sums (math.fsum): the same value for the
    same two vectors whatever computes it, so every search path ranks identically."""
    dot = math.fsum(x * y for x, y in zip(a, b, strict=True))
    norms = math.fsum(x * x for x in a) * math.fsum(y * y for y in b)
    return dot / math.sqrt(norms)


async def _touch(conn: asyncpg.Connection) -> None:
    """Moves the memory's generation: the searchable set changes in this transaction, so
    every process's listing of it is stale from its commit on."""
    await conn.execute("UPDATE runner.playbook_memory SET generation = generation + 1")


def _lock_key(audience: Audience) -> int:
    digest = hashlib.sha256(f"crmbench.playbook.add:{audience}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class _VectorCache:
    """Unit-normalised float64 rows of one embedder's embeddings, by (entry_id, version),
    and the searchable entries as of one memory generation."""

    def __init__(self, dimension: int) -> None:
        self.rows: dict[tuple[str, int], int] = {}
        self.matrix: npt.NDArray[np.float64] = np.zeros((64, dimension))
        self.generation: int | None = None
        self.keys: list[tuple[str, int]] = []
        self.audiences: npt.NDArray[np.str_] = np.array([], dtype=str)
        self.positions: npt.NDArray[np.intp] = np.array([], dtype=np.intp)

    def missing(self, keys: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
        return [key for key in keys if key not in self.rows]

    def add(self, key: tuple[str, int], vector: Sequence[float]) -> None:
        if key in self.rows:
            return
        row = len(self.rows)
        if row == len(self.matrix):
            self.matrix = np.vstack([self.matrix, np.zeros_like(self.matrix)])
        values = np.asarray(vector, dtype=np.float64)
        self.matrix[row] = values / np.linalg.norm(values)
        self.rows[key] = row

    def relist(self, generation: int, keys: list[tuple[str, int]], audiences: list[str]) -> None:
        """The searchable entries at `generation` (their vectors must be cached)."""
        self.generation = generation
        self.keys = keys
        self.audiences = np.array(audiences, dtype=str)
        self.positions = np.fromiter((self.rows[key] for key in keys), dtype=np.intp)

    def candidates(
        self, query: Sequence[float], k: int, threshold: float, audience: Audience | None
    ) -> list[tuple[str, int]]:
        """The listed entries whose coarse similarity may put them in the exact top k."""
        unit = np.asarray(query, dtype=np.float64)
        unit /= np.linalg.norm(unit)
        similarities = (self.matrix[: len(self.rows)] @ unit)[self.positions]
        chosen = np.arange(len(self.keys))
        if audience is not None:
            chosen = chosen[self.audiences == audience]
            similarities = similarities[chosen]
        if len(similarities) == 0:
            return []
        kth = -np.partition(-similarities, k - 1)[k - 1] if len(similarities) >= k else -np.inf
        floor = max(threshold, float(kth)) - 2 * COARSE_SLACK
        return [self.keys[i] for i in chosen[similarities >= floor]]


ENTRY_COLUMNS = """
    e.entry_id, e.version, e.status, e.retired_reason, e.provenance, e.created_at,
    e.updated_at, v.content_hash, v.content
"""
ENTRY_FROM = (
    "runner.playbook_entry AS e"
    " JOIN runner.playbook_entry_version AS v ON v.entry_id = e.entry_id"
    " AND v.version = e.version"
)


def _entry(row: Mapping[str, Any]) -> PlaybookEntry:
    return PlaybookEntry.model_validate(
        {
            **json.loads(row["content"]),
            "entry_id": row["entry_id"],
            "version": row["version"],
            "content_hash": row["content_hash"],
            "provenance": json.loads(row["provenance"]),
            "created_at": row["created_at"],
            "updated_at": row["updated_at"],
            "status": row["status"],
            "retired_reason": row["retired_reason"],
        }
    )


def _version(row: Mapping[str, Any]) -> PlaybookVersion:
    return PlaybookVersion.model_validate(
        {
            **json.loads(row["content"]),
            "version": row["version"],
            "content_hash": row["content_hash"],
            "provenance": json.loads(row["provenance"]),
            "created_at": row["created_at"],
        }
    )


def _counters(row: Mapping[str, Any]) -> PlaybookCounters:
    return PlaybookCounters.model_validate(dict(row))


def _content_json(content: PlaybookContent) -> str:
    return content.content().model_dump_json()


class PlaybookStore:
    """One process's access to the shared playbook memory, for one embedder.

    `embedder` names the embedding model (and its version); vectors of different
    embedders are never compared. `dimension` is that model's vector length.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        embedder: str,
        dimension: int,
        backend: SearchBackend,
        owns_pool: bool = False,
    ) -> None:
        self.pool = pool
        self.embedder = embedder
        self.dimension = dimension
        self.backend: SearchBackend = backend
        self._owns_pool = owns_pool
        self._cache = _VectorCache(dimension)
        self._patterned: tuple[int, list[PlaybookEntry]] | None = None

    @classmethod
    async def open(
        cls,
        pool: asyncpg.Pool,
        *,
        embedder: str,
        dimension: int,
        backend: SearchBackend | None = None,
        owns_pool: bool = False,
    ) -> PlaybookStore:
        """A store over an existing pool. `backend` None picks pgvector when the schema
        has the vector column (migration 0006 on a server with pgvector), else arrays;
        "pgvector" on a schema without it raises PlaybookError. Raises EmbedderMismatch
        when the memory holds this embedder's vectors with another dimension."""
        if dimension < 1:
            raise InvalidVector(f"dimension must be at least 1, not {dimension}")
        has_vector = await pool.fetchval(
            """
            SELECT EXISTS (SELECT 1 FROM information_schema.columns
                           WHERE table_schema = 'runner' AND table_name = 'playbook_embedding'
                             AND column_name = 'embedding')
            """
        )
        if backend == "pgvector" and not has_vector:
            raise PlaybookError("this database's playbook memory has no pgvector column")
        dims = await pool.fetch(
            "SELECT DISTINCT dim FROM runner.playbook_embedding WHERE embedder = $1", embedder
        )
        others = sorted(row["dim"] for row in dims if row["dim"] != dimension)
        if others:
            raise EmbedderMismatch(
                f"the memory holds {embedder!r} vectors of dimension {others}, not {dimension}"
            )
        chosen: SearchBackend = backend or ("pgvector" if has_vector else "arrays")
        return cls(
            pool, embedder=embedder, dimension=dimension, backend=chosen, owns_pool=owns_pool
        )

    @classmethod
    async def connect(
        cls,
        database_url: str,
        *,
        embedder: str,
        dimension: int,
        backend: SearchBackend | None = None,
        pool_size: int = 4,
    ) -> PlaybookStore:
        """A store with its own connection pool (closed by `close`)."""
        pool = await asyncpg.create_pool(asyncpg_dsn(database_url), min_size=1, max_size=pool_size)
        try:
            return await cls.open(
                pool, embedder=embedder, dimension=dimension, backend=backend, owns_pool=True
            )
        except BaseException:
            await pool.close()
            raise

    async def close(self) -> None:
        if self._owns_pool:
            await self.pool.close()

    @asynccontextmanager
    async def _transaction(
        self, conn: asyncpg.Connection | None
    ) -> AsyncIterator[asyncpg.Connection]:
        if conn is not None:
            async with conn.transaction():  # a savepoint inside the caller's transaction
                yield conn
            return
        async with self.pool.acquire() as own, own.transaction():
            yield own

    def _vector(self, vector: Sequence[float]) -> list[float]:
        values = [float(value) for value in vector]
        if len(values) != self.dimension:
            raise InvalidVector(
                f"{self.embedder!r} vectors have {self.dimension} dimensions, not {len(values)}"
            )
        if not all(math.isfinite(value) for value in values):
            raise InvalidVector("the vector has a non-finite value")
        if not any(values):
            raise InvalidVector("the zero vector has no direction (cosine is undefined)")
        return values

    # ------------------------------------------------------------------ entries

    async def add_or_merge(
        self,
        candidate: PlaybookCandidate,
        vector: Sequence[float],
        *,
        near_duplicate_threshold: float,
        conn: asyncpg.Connection | None = None,
    ) -> StoredEntry:
        """Stores a candidate, or merges it into the entry it duplicates.

        - Same content as some version of an entry (active or retired): that entry gets
          the candidate's provenance and nothing else changes (`duplicate`; a retired
          lesson stays retired, and an older wording does not become current again).
        - Otherwise, when the most similar active entry of the same audience has cosine
          >= `near_duplicate_threshold`: that entry gets a new version with the
          candidate's content and vector (the newest wording wins), and its provenance
          becomes the union of both (`revised`). Its id, counters and history stay.
        - Otherwise, the same action (text, tools, argument rules) and level as an
          active entry of the same audience: the same lesson met in another situation;
          that entry gets the candidate's provenance and keeps its cue (`duplicate`), so
          one lesson never fills several of an episode's k slots.
        - Otherwise a new entry, version 1, id `entry_id_for(content hash)` (`created`).

        `vector` embeds the candidate's cue text with this store's embedder. With `conn`,
        runs inside the caller's transaction (a savepoint). Raises InvalidVector for a
        vector of the wrong dimension, non-finite or zero.
        """
        values = self._vector(vector)
        content_hash = candidate.digest()
        async with self._transaction(conn) as conn:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _lock_key(candidate.audience))
            same = await conn.fetchrow(
                "SELECT entry_id, version FROM runner.playbook_entry_version"
                " WHERE content_hash = $1",
                content_hash,
            )
            if same is not None:
                await self._merge_provenance(conn, same["entry_id"], candidate.provenance)
                if await self._insert_embedding(conn, same["entry_id"], same["version"], values):
                    await _touch(conn)
                return StoredEntry(await self._get(conn, same["entry_id"]), "duplicate")
            nearest = await self._search(
                conn, values, k=1, threshold=near_duplicate_threshold, audience=candidate.audience
            )
            if nearest:
                existing, similarity = nearest[0]
                version = existing.version + 1
                await self._insert_version(
                    conn, existing.entry_id, version, candidate, content_hash, values
                )
                await conn.execute(
                    """
                    UPDATE runner.playbook_entry
                    SET version = $2, provenance = $3::jsonb, updated_at = now()
                    WHERE entry_id = $1
                    """,
                    existing.entry_id,
                    version,
                    existing.provenance.merged(candidate.provenance).model_dump_json(),
                )
                await _touch(conn)
                return StoredEntry(await self._get(conn, existing.entry_id), "revised", similarity)
            lesson = await conn.fetchrow(
                """
                SELECT e.entry_id, e.version FROM runner.playbook_entry AS e
                JOIN runner.playbook_entry_version AS v
                  ON v.entry_id = e.entry_id AND v.version = e.version
                WHERE e.status = 'active' AND e.audience = $1
                  AND v.content -> 'action' = $2::jsonb AND v.content ->> 'level' = $3
                ORDER BY e.created_at, e.entry_id
                LIMIT 1
                """,
                candidate.audience,
                canonical_json(candidate.action.model_dump(mode="json")),
                candidate.level,
            )
            if lesson is not None:
                # The same lesson (action and level) met in another situation: one entry.
                await self._merge_provenance(conn, lesson["entry_id"], candidate.provenance)
                await _touch(conn)
                return StoredEntry(await self._get(conn, lesson["entry_id"]), "duplicate")
            entry_id = entry_id_for(content_hash)
            await conn.execute(
                """
                INSERT INTO runner.playbook_entry (entry_id, audience, version, provenance)
                VALUES ($1, $2, 1, $3::jsonb)
                """,
                entry_id,
                candidate.audience,
                candidate.provenance.model_dump_json(),
            )
            await self._insert_version(conn, entry_id, 1, candidate, content_hash, values)
            await conn.execute(
                "INSERT INTO runner.playbook_counter (entry_id) VALUES ($1)", entry_id
            )
            await _touch(conn)
            return StoredEntry(await self._get(conn, entry_id), "created")

    async def _merge_provenance(
        self, conn: asyncpg.Connection, entry_id: str, provenance: Provenance
    ) -> None:
        # Read-modify-write is safe: provenance only changes under the audience's lock.
        current = await conn.fetchval(
            "SELECT provenance FROM runner.playbook_entry WHERE entry_id = $1", entry_id
        )
        merged = Provenance.model_validate_json(current).merged(provenance)
        if merged != Provenance.model_validate_json(current):
            await conn.execute(
                "UPDATE runner.playbook_entry SET provenance = $2::jsonb, updated_at = now()"
                " WHERE entry_id = $1",
                entry_id,
                merged.model_dump_json(),
            )

    async def _insert_version(
        self,
        conn: asyncpg.Connection,
        entry_id: str,
        version: int,
        candidate: PlaybookCandidate,
        content_hash: str,
        values: list[float],
    ) -> None:
        await conn.execute(
            """
            INSERT INTO runner.playbook_entry_version
                (entry_id, version, content_hash, content, provenance)
            VALUES ($1, $2, $3, $4::jsonb, $5::jsonb)
            """,
            entry_id,
            version,
            content_hash,
            _content_json(candidate),
            candidate.provenance.model_dump_json(),
        )
        await self._insert_embedding(conn, entry_id, version, values)

    async def _insert_embedding(
        self,
        conn: asyncpg.Connection,
        entry_id: str,
        version: int,
        values: list[float],
        embedder: str | None = None,
    ) -> bool:
        inserted = await conn.fetchval(
            """
            INSERT INTO runner.playbook_embedding (entry_id, version, embedder, dim, vec)
            VALUES ($1, $2, $3, $4, $5::float8[])
            ON CONFLICT DO NOTHING RETURNING true
            """,
            entry_id,
            version,
            embedder or self.embedder,
            len(values),
            values,
        )
        return bool(inserted)

    async def _get(self, conn: asyncpg.Connection | asyncpg.Pool, entry_id: str) -> PlaybookEntry:
        row = await conn.fetchrow(
            f"SELECT {ENTRY_COLUMNS} FROM {ENTRY_FROM} WHERE e.entry_id = $1", entry_id
        )
        if row is None:
            raise EntryNotFound(entry_id)
        return _entry(row)

    async def get(self, entry_id: str) -> PlaybookEntry:
        """The entry at its current version; EntryNotFound when there is none."""
        return await self._get(self.pool, entry_id)

    async def list_entries(
        self, *, status: EntryStatus | None = None, audience: Audience | None = None
    ) -> list[PlaybookEntry]:
        """Entries at their current versions, oldest first (all when no filter is given)."""
        rows = await self.pool.fetch(
            f"""
            SELECT {ENTRY_COLUMNS} FROM {ENTRY_FROM}
            WHERE ($1::text IS NULL OR e.status = $1) AND ($2::text IS NULL OR e.audience = $2)
            ORDER BY e.created_at, e.entry_id
            """,
            status,
            audience,
        )
        return [_entry(row) for row in rows]

    async def patterned_entries(self, audience: Audience | None = None) -> list[PlaybookEntry]:
        """The active entries (of `audience`, or both) whose current version's cue has at
        least one pattern, oldest first: the ones a task can match exactly, whatever its
        similarity (and whether or not they have a vector of this store's embedder).

        Kept in this process until the memory's generation moves (any entry, version or
        retirement moves it), so a search costs one small query while nothing changed."""
        generation = await self.pool.fetchval("SELECT generation FROM runner.playbook_memory")
        if self._patterned is None or self._patterned[0] != generation:
            async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
                # The generation and the list in one snapshot.
                generation = await conn.fetchval("SELECT generation FROM runner.playbook_memory")
                rows = await conn.fetch(
                    f"""
                    SELECT {ENTRY_COLUMNS} FROM {ENTRY_FROM}
                    WHERE e.status = 'active'
                      AND jsonb_array_length(v.content -> 'cue' -> 'patterns') > 0
                    ORDER BY e.created_at, e.entry_id
                    """
                )
            self._patterned = (generation, [_entry(row) for row in rows])
        entries = self._patterned[1]
        return [entry for entry in entries if audience is None or entry.audience == audience]

    async def versions(self, entry_id: str) -> list[PlaybookVersion]:
        """Every version of the entry, oldest first; EntryNotFound when there is none."""
        rows = await self.pool.fetch(
            "SELECT * FROM runner.playbook_entry_version WHERE entry_id = $1 ORDER BY version",
            entry_id,
        )
        if not rows:
            raise EntryNotFound(entry_id)
        return [_version(row) for row in rows]

    # ------------------------------------------------------------------ search

    async def search(
        self,
        vector: Sequence[float],
        *,
        k: int,
        threshold: float,
        audience: Audience | None = None,
    ) -> list[PlaybookMatch]:
        """The at most `k` active entries (of `audience`, or both) whose current version's
        embedding has cosine similarity >= `threshold` to `vector`, most similar first
        (ties by entry id). Entries without an embedding of this store's embedder are not
        searched. Raises InvalidVector for a bad query vector, ValueError for k < 1."""
        if k < 1:
            raise ValueError(f"k must be at least 1, not {k}")
        values = self._vector(vector)
        async with self.pool.acquire() as conn:
            return await self._search(conn, values, k=k, threshold=threshold, audience=audience)

    async def _search(
        self,
        conn: asyncpg.Connection,
        values: list[float],
        *,
        k: int,
        threshold: float,
        audience: Audience | None,
    ) -> list[PlaybookMatch]:
        if self.backend == "pgvector":
            keys = await self._pgvector_candidates(conn, values, k, threshold, audience)
        else:
            keys = await self._array_candidates(conn, values, k, threshold, audience)
        if not keys:
            return []
        rows = await conn.fetch(
            f"""
            SELECT {ENTRY_COLUMNS}, b.vec FROM {ENTRY_FROM}
            JOIN runner.playbook_embedding AS b
              ON b.entry_id = e.entry_id AND b.version = e.version AND b.embedder = $3
            JOIN unnest($1::text[], $2::int[]) AS c(entry_id, version)
              ON c.entry_id = e.entry_id AND c.version = e.version
            WHERE e.status = 'active'
            """,
            [key[0] for key in keys],
            [key[1] for key in keys],
            self.embedder,
        )
        scored = [PlaybookMatch(_entry(row), exact_cosine(values, row["vec"])) for row in rows]
        kept = [match for match in scored if match.similarity >= threshold]
        kept.sort(key=lambda match: (-match.similarity, match.entry.entry_id))
        return kept[:k]

    async def _pgvector_candidates(
        self,
        conn: asyncpg.Connection,
        values: list[float],
        k: int,
        threshold: float,
        audience: Audience | None,
    ) -> list[tuple[str, int]]:
        # The floor of _VectorCache.candidates, in cosine distance (1 - similarity).
        rows = await conn.fetch(
            """
            WITH pool AS MATERIALIZED (
                SELECT e.entry_id, e.version, b.embedding <=> $2::float8[]::vector AS distance
                FROM runner.playbook_entry AS e
                JOIN runner.playbook_embedding AS b
                  ON b.entry_id = e.entry_id AND b.version = e.version AND b.embedder = $1
                WHERE e.status = 'active' AND ($3::text IS NULL OR e.audience = $3)
            ), kth AS (
                SELECT CASE WHEN count(*) = $4 THEN max(distance)
                            ELSE 'Infinity'::float8 END AS distance
                FROM (SELECT distance FROM pool ORDER BY distance LIMIT $4) AS top
            )
            SELECT p.entry_id, p.version FROM pool AS p, kth
            WHERE p.distance <= LEAST(1 - $5::float8, kth.distance) + $6::float8
            """,
            self.embedder,
            values,
            audience,
            k,
            threshold,
            2 * COARSE_SLACK,
        )
        return [(row["entry_id"], row["version"]) for row in rows]

    async def _array_candidates(
        self,
        conn: asyncpg.Connection,
        values: list[float],
        k: int,
        threshold: float,
        audience: Audience | None,
    ) -> list[tuple[str, int]]:
        cache = self._cache
        generation = await conn.fetchval("SELECT generation FROM runner.playbook_memory")
        if generation != cache.generation:
            # The generation and the list in one statement, so one snapshot.
            listing = await conn.fetchrow(
                """
                SELECT (SELECT generation FROM runner.playbook_memory) AS generation,
                       coalesce(array_agg(e.entry_id), '{}') AS entry_ids,
                       coalesce(array_agg(e.version), '{}') AS versions,
                       coalesce(array_agg(e.audience), '{}') AS audiences
                FROM runner.playbook_entry AS e
                JOIN runner.playbook_embedding AS b
                  ON b.entry_id = e.entry_id AND b.version = e.version AND b.embedder = $1
                WHERE e.status = 'active'
                """,
                self.embedder,
            )
            keys = list(zip(listing["entry_ids"], listing["versions"], strict=True))
            missing = cache.missing(keys)
            if missing:
                fetched = await conn.fetch(
                    """
                    SELECT b.entry_id, b.version, b.vec FROM runner.playbook_embedding AS b
                    JOIN unnest($1::text[], $2::int[]) AS c(entry_id, version)
                      ON c.entry_id = b.entry_id AND c.version = b.version
                    WHERE b.embedder = $3
                    """,
                    [key[0] for key in missing],
                    [key[1] for key in missing],
                    self.embedder,
                )
                for row in fetched:
                    cache.add((row["entry_id"], row["version"]), row["vec"])
            cache.relist(listing["generation"], keys, listing["audiences"])
        return cache.candidates(values, k, threshold, audience)

    # ------------------------------------------------------------------ counters

    async def counters(self, entry_id: str) -> PlaybookCounters:
        row = await self.pool.fetchrow(
            "SELECT * FROM runner.playbook_counter WHERE entry_id = $1", entry_id
        )
        if row is None:
            raise EntryNotFound(entry_id)
        return _counters(row)

    async def counters_of(self, entry_ids: Sequence[str]) -> dict[str, PlaybookCounters]:
        """The counters of several entries in one query, by entry id (unknown ids are
        absent from the result)."""
        rows = await self.pool.fetch(
            "SELECT * FROM runner.playbook_counter WHERE entry_id = ANY($1::text[])",
            list(entry_ids),
        )
        return {row["entry_id"]: _counters(row) for row in rows}

    async def bump(self, entry_id: str, field: CounterField, by: float = 1) -> PlaybookCounters:
        """Adds `by` to one counter of the entry atomically; returns the counters after."""
        return await self.bump_many(entry_id, {field: by})

    async def bump_many(
        self,
        entry_id: str,
        increments: Mapping[CounterField, float],
        *,
        conn: asyncpg.Connection | None = None,
    ) -> PlaybookCounters:
        """Adds to several counters of one entry in one UPDATE (no lost update whatever
        runs concurrently); returns the counters after. Integer counters take ints
        (InvalidCounter otherwise, as for an unknown counter); EntryNotFound."""
        if not increments:
            raise InvalidCounter("no counter to bump")
        for name, by in increments.items():
            if name not in COUNTER_FIELDS:
                raise InvalidCounter(f"no counter {name!r}; counters: {', '.join(COUNTER_FIELDS)}")
            integral = isinstance(by, int) and not isinstance(by, bool)
            if name not in FLOAT_COUNTERS and not integral:
                raise InvalidCounter(f"counter {name!r} counts; it takes an int, not {by!r}")
            if not math.isfinite(by):
                raise InvalidCounter(f"counter {name!r} cannot take {by!r}")
        names = list(increments)
        # Names are checked against COUNTER_FIELDS above, so formatting them in is safe.
        assignments = ", ".join(f"{name} = {name} + ${i}" for i, name in enumerate(names, 2))
        statement = (
            f"UPDATE runner.playbook_counter SET {assignments} WHERE entry_id = $1 RETURNING *"
        )
        target = conn if conn is not None else self.pool
        row = await target.fetchrow(statement, entry_id, *[increments[name] for name in names])
        if row is None:
            raise EntryNotFound(entry_id)
        return _counters(row)

    async def apply_episode(
        self,
        key: str,
        increments: Mapping[str, Mapping[CounterField, float]],
        events: Sequence[TrajectoryEvent] = (),
        *,
        conn: asyncpg.Connection | None = None,
    ) -> bool:
        """An episode's bookkeeping, all or nothing and at most once per `key` (use the
        session id): counter increments per entry id, and its trajectory events.

        Returns False, changing nothing, when `key` was applied before (a resumed run
        replaying an episode). With `conn`, runs inside the caller's transaction (a
        savepoint), e.g. the one that records the episode's result."""
        async with self._transaction(conn) as tx:
            fresh = await tx.fetchval(
                "INSERT INTO runner.playbook_bookkeeping (key) VALUES ($1)"
                " ON CONFLICT DO NOTHING RETURNING true",
                key,
            )
            if not fresh:
                return False
            # One order for every process: two episodes bumping the same entries never
            # wait on each other's row locks in opposite orders.
            for entry_id in sorted(increments):
                await self.bump_many(entry_id, increments[entry_id], conn=tx)
            for event in events:
                await self._record_event(tx, event)
        return True

    # ------------------------------------------------------------------ retirement

    async def retire(
        self,
        entry_id: str,
        reason: str,
        *,
        code: RetirementCode = "manual",
        run_id: str | None = None,
    ) -> PlaybookEntry:
        """Retires the entry: searches skip it from now on, and its retirement (with its
        counters at this moment) and a `retirement` trajectory event are recorded in the
        same transaction. Retiring a retired entry changes nothing (the first reason is
        kept). EntryNotFound; ValueError for an empty reason."""
        if not reason.strip():
            raise ValueError("a retirement needs a reason")
        async with self.pool.acquire() as conn, conn.transaction():
            version = await conn.fetchval(
                """
                UPDATE runner.playbook_entry
                SET status = 'retired', retired_reason = $2, updated_at = now()
                WHERE entry_id = $1 AND status = 'active'
                RETURNING version
                """,
                entry_id,
                reason,
            )
            if version is not None:
                counters = _counters(
                    await conn.fetchrow(
                        "SELECT * FROM runner.playbook_counter WHERE entry_id = $1", entry_id
                    )
                )
                await conn.execute(
                    """
                    INSERT INTO runner.playbook_retirement
                        (entry_id, version, code, reason, counters, run_id)
                    VALUES ($1, $2, $3, $4, $5::jsonb, $6)
                    """,
                    entry_id,
                    version,
                    code,
                    reason,
                    counters.model_dump_json(),
                    run_id,
                )
                event = TrajectoryEvent(
                    run_id=run_id,
                    payload=RetirementEvent(entry_id=entry_id, code=code, reason=reason),
                )
                await self._record_event(conn, event)
                await _touch(conn)
            return await self._get(conn, entry_id)

    async def retirement(self, entry_id: str) -> PlaybookRetirement | None:
        """The entry's retirement, or None while it is active."""
        row = await self.pool.fetchrow(
            "SELECT * FROM runner.playbook_retirement WHERE entry_id = $1", entry_id
        )
        return _retirement(row) if row is not None else None

    # ------------------------------------------------------------------ events

    async def record_event(
        self, event: TrajectoryEvent, *, conn: asyncpg.Connection | None = None
    ) -> int:
        """Writes one trajectory event (with `conn`, in the caller's transaction); returns
        its event id (increasing)."""
        if conn is not None:
            return await self._record_event(conn, event)
        async with self.pool.acquire() as own:
            return await self._record_event(own, event)

    async def _record_event(self, conn: asyncpg.Connection, event: TrajectoryEvent) -> int:
        event_id: int = await conn.fetchval(
            """
            INSERT INTO runner.trajectory_event
                (run_id, session_id, episode_id, kind, entry_ids, payload)
            VALUES ($1, $2, $3, $4, $5::text[], $6::jsonb)
            RETURNING event_id
            """,
            event.run_id,
            event.session_id,
            event.episode_id,
            event.kind,
            event.entry_ids,
            event.payload.model_dump_json(),
        )
        return event_id

    async def events(
        self,
        *,
        run_id: str | None = None,
        session_id: str | None = None,
        entry_id: str | None = None,
    ) -> list[TrajectoryEvent]:
        """Trajectory events in the order they were written, filtered by each given id."""
        rows = await self.pool.fetch(
            """
            SELECT run_id, session_id, episode_id, payload, recorded_at
            FROM runner.trajectory_event
            WHERE ($1::text IS NULL OR run_id = $1) AND ($2::text IS NULL OR session_id = $2)
              AND ($3::text IS NULL OR entry_ids @> ARRAY[$3::text])
            ORDER BY event_id
            """,
            run_id,
            session_id,
            entry_id,
        )
        return [
            TrajectoryEvent.model_validate({**dict(row), "payload": json.loads(row["payload"])})
            for row in rows
        ]

    # ------------------------------------------------------------------ export / import

    async def export(self) -> PlaybookExport:
        """The whole memory: every entry with its versions, embeddings of every embedder,
        counters and retirement (trajectory events are run telemetry, not memory)."""
        async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
            entries = await conn.fetch(
                f"SELECT {ENTRY_COLUMNS} FROM {ENTRY_FROM} ORDER BY e.created_at, e.entry_id"
            )
            versions = await conn.fetch(
                "SELECT * FROM runner.playbook_entry_version ORDER BY entry_id, version"
            )
            embeddings = await conn.fetch(
                "SELECT entry_id, version, embedder, vec FROM runner.playbook_embedding"
                " ORDER BY entry_id, embedder, version"
            )
            counters = await conn.fetch("SELECT * FROM runner.playbook_counter")
            retirements = await conn.fetch("SELECT * FROM runner.playbook_retirement")
        by_entry: dict[str, list[PlaybookVersion]] = {}
        for row in versions:
            by_entry.setdefault(row["entry_id"], []).append(_version(row))
        vectors: dict[str, dict[str, dict[int, list[float]]]] = {}
        for row in embeddings:
            per_entry = vectors.setdefault(row["entry_id"], {})
            per_entry.setdefault(row["embedder"], {})[row["version"]] = list(row["vec"])
        counted = {row["entry_id"]: _counters(row) for row in counters}
        retired = {row["entry_id"]: _retirement(row) for row in retirements}
        return PlaybookExport(
            exported_at=datetime.now(UTC),
            entries=[
                ExportedEntry(
                    entry=_entry(row),
                    versions=by_entry[row["entry_id"]],
                    embeddings=vectors.get(row["entry_id"], {}),
                    counters=counted[row["entry_id"]],
                    retirement=retired.get(row["entry_id"]),
                )
                for row in entries
            ],
        )

    async def import_entries(self, document: PlaybookExport) -> ImportSummary:
        """Adds what the memory lacks from an export, in one transaction.

        New entries come with their versions, embeddings, counters and retirement.
        Entries the memory has get their missing versions and embeddings; when the export
        has a later version, it becomes current and the provenances are merged. Existing
        versions, counters and retirements are never changed, so importing the same
        export again adds nothing. Raises ImportConflict (importing nothing) when a
        content hash belongs to another entry or version here, and InvalidVector /
        EmbedderMismatch for a vector this memory cannot hold."""
        expected: dict[str, tuple[str, int]] = {}
        for item in document.entries:
            for version in item.versions:
                expected[version.content_hash] = (item.entry.entry_id, version.version)
            for embedder, per_version in item.embeddings.items():
                for vector in per_version.values():
                    if embedder == self.embedder:
                        self._vector(vector)
                    elif not vector or not all(math.isfinite(value) for value in vector):
                        raise InvalidVector(f"{item.entry.entry_id}: a bad {embedder!r} vector")
        added = [0, 0, 0]
        async with self.pool.acquire() as conn, conn.transaction():
            for audience in ("student", "teacher"):
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _lock_key(audience))
            await self._check_import(conn, expected)
            for item in document.entries:
                await self._import_entry(conn, item, added)
            await _touch(conn)
        return ImportSummary(*added)

    async def _check_import(
        self, conn: asyncpg.Connection, expected: Mapping[str, tuple[str, int]]
    ) -> None:
        rows = await conn.fetch(
            """
            SELECT v.content_hash, v.entry_id, v.version FROM runner.playbook_entry_version AS v
            WHERE v.content_hash = ANY($1::text[])
               OR (v.entry_id, v.version) IN (
                   SELECT * FROM unnest($2::text[], $3::int[]))
            """,
            list(expected),
            [place[0] for place in expected.values()],
            [place[1] for place in expected.values()],
        )
        conflicts = [
            f"{row['entry_id']} v{row['version']} ({row['content_hash'][:12]})"
            for row in rows
            if expected.get(row["content_hash"]) != (row["entry_id"], row["version"])
        ]
        if conflicts:
            raise ImportConflict(
                "the export disagrees with this memory on: " + ", ".join(sorted(conflicts))
            )
        dims = await conn.fetch(
            "SELECT DISTINCT dim FROM runner.playbook_embedding WHERE embedder = $1",
            self.embedder,
        )
        if any(row["dim"] != self.dimension for row in dims):
            raise EmbedderMismatch(f"the memory holds {self.embedder!r} vectors of another size")

    async def _import_entry(
        self, conn: asyncpg.Connection, item: ExportedEntry, added: list[int]
    ) -> None:
        entry = item.entry
        current = await conn.fetchrow(
            "SELECT version, provenance FROM runner.playbook_entry WHERE entry_id = $1",
            entry.entry_id,
        )
        if current is None:
            await conn.execute(
                """
                INSERT INTO runner.playbook_entry (entry_id, audience, version, status,
                    retired_reason, provenance, created_at, updated_at)
                VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8)
                """,
                entry.entry_id,
                entry.audience,
                entry.version,
                entry.status,
                entry.retired_reason,
                entry.provenance.model_dump_json(),
                entry.created_at,
                entry.updated_at,
            )
            counters = item.counters.model_dump(exclude={"entry_id"})
            await conn.execute(
                f"""
                INSERT INTO runner.playbook_counter (entry_id, {", ".join(counters)})
                VALUES ($1, {", ".join(f"${i}" for i in range(2, len(counters) + 2))})
                """,
                entry.entry_id,
                *counters.values(),
            )
            if item.retirement is not None:
                retirement = item.retirement
                await conn.execute(
                    """
                    INSERT INTO runner.playbook_retirement
                        (entry_id, version, code, reason, counters, run_id, retired_at)
                    VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7)
                    """,
                    entry.entry_id,
                    retirement.version,
                    retirement.code,
                    retirement.reason,
                    retirement.counters.model_dump_json(),
                    retirement.run_id,
                    retirement.retired_at,
                )
            added[0] += 1
        elif entry.version > current["version"]:
            merged = Provenance.model_validate_json(current["provenance"]).merged(entry.provenance)
            await conn.execute(
                """
                UPDATE runner.playbook_entry SET version = $2, provenance = $3::jsonb,
                    updated_at = greatest(updated_at, $4)
                WHERE entry_id = $1
                """,
                entry.entry_id,
                entry.version,
                merged.model_dump_json(),
                entry.updated_at,
            )
        for version in item.versions:
            inserted = await conn.fetchval(
                """
                INSERT INTO runner.playbook_entry_version
                    (entry_id, version, content_hash, content, provenance, created_at)
                VALUES ($1, $2, $3, $4::jsonb, $5::jsonb, $6)
                ON CONFLICT DO NOTHING RETURNING true
                """,
                entry.entry_id,
                version.version,
                version.content_hash,
                _content_json(version),
                version.provenance.model_dump_json(),
                version.created_at,
            )
            added[1] += bool(inserted)
        for embedder, per_version in item.embeddings.items():
            for number, vector in per_version.items():
                values = [float(value) for value in vector]
                added[2] += await self._insert_embedding(
                    conn, entry.entry_id, number, values, embedder
                )


def _retirement(row: Mapping[str, Any]) -> PlaybookRetirement:
    return PlaybookRetirement.model_validate({**dict(row), "counters": json.loads(row["counters"])})
