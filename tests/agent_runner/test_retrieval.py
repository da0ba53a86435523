"""Frozen-mode retrieval and injection against real Postgres (the playbook memory of the
session's database), the real CRM API and the real verifier: what reaches the student's
prompt, the session trace and the memory's counters and events; that `learning: off`
builds and touches nothing; that no part of a case's answer reaches the embedder."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from typer.testing import CliRunner

from agent_runner.agents.base import EpisodeContext, EpisodeLimits
from agent_runner.agents.llm_agent import LLMAgent, SystemPrompt
from agent_runner.learning import loop as retrieval_module
from agent_runner.learning.loop import learning_hooks
from agent_runner.learning.memory import PlaybookStore
from agent_runner.learning.retrieval import (
    GUIDANCE_HEADER,
    PlaybookRetriever,
    RetrievalHooks,
    render_guidance,
    task_text,
)
from agent_runner.reports.rendering import render_report
from agent_runner.reports.statistics import build_report
from agent_runner.run.config import LearningSettings, RunConfig, load_run_config
from agent_runner.run.runner import create_run, select_cases, work_on_run
from agent_runner.run.store import RunStore, asyncpg_dsn
from crmbench.cli import app
from crmbench_clients.crm_api import CrmApiClient
from crmbench_clients.verifier import VerifierClient
from crmbench_contracts.cases import Case
from crmbench_contracts.playbooks import (
    Action,
    Cue,
    PlaybookCandidate,
    PlaybookEntry,
    Provenance,
    RetrievalEvent,
)
from crmbench_contracts.traces import Audience, PlaybookRetrieval, SessionTrace
from crmbench_learning.embeddings import (
    EmbeddingConfig,
    HashingEmbedderForTests,
    make_embedder,
)
from crmbench_llm import ScriptedProvider
from tests.agent_runner.conftest import RunServices, stratified_sample
from tests.agent_runner.test_playbook_memory import EMPTY
from tests.agent_runner.test_runner import read_trace_file
from tests.conftest import ADMIN_KEY

HASHING = EmbeddingConfig(provider="hashing")
EMBEDDER = HashingEmbedderForTests()
# The hashing embedder matches shared words; its similarities run lower than a model's.
FROZEN = LearningSettings(mode="frozen", k=3, threshold=0.3, embeddings=HASHING)

STAGE_CASE = "CRM-00002"  # update Zephyr Annual License: stage Proposal, probability 60%
QUOTE_CASE = "CRM-00003"  # Cancel the quote on Thornbury Support Contract, ...
OTHER_CASE = "CRM-00012"  # Attach meeting_notes.txt to the Redwood Expansion opportunity.


@pytest.fixture
async def memory(run_services: RunServices) -> AsyncIterator[PlaybookStore]:
    """The session database's playbook memory, emptied, for the hashing embedder."""
    conn = await asyncpg.connect(asyncpg_dsn(run_services.database_url))
    try:
        await conn.execute(EMPTY)
    finally:
        await conn.close()
    store = await PlaybookStore.connect(
        run_services.database_url, embedder=EMBEDDER.name, dimension=EMBEDDER.dimensions
    )
    yield store
    await store.close()


def lesson(
    cue: str,
    action: str,
    *,
    patterns: Sequence[str] = (),
    audience: Audience = "student",
    effect: str = "the verifier's checks pass",
) -> PlaybookCandidate:
    return PlaybookCandidate(
        audience=audience,
        level="domain",
        cue=Cue(text=cue, patterns=list(patterns)),
        action=Action(text=action),
        expected_effect=effect,
    )


async def add(store: PlaybookStore, candidate: PlaybookCandidate) -> PlaybookEntry:
    [vector] = EMBEDDER.embed([candidate.cue.text])
    stored = await store.add_or_merge(candidate, vector, near_duplicate_threshold=0.999)
    return stored.entry


class Seeded:
    """The entries the frozen-run test seeds, by role."""

    def __init__(
        self,
        stage: PlaybookEntry,
        quote: PlaybookEntry,
        teacher: PlaybookEntry,
        retired: PlaybookEntry,
    ) -> None:
        self.stage, self.quote, self.teacher, self.retired = stage, quote, teacher, retired


async def seed(store: PlaybookStore) -> Seeded:
    stage_words = "update the opportunity stage Proposal and its probability"
    stage = await add(
        store,
        lesson(stage_words, "Set the stage by its exact name with modify_opportunity."),
    )
    # Matched only by its pattern: its cue shares no word with the quote case.
    quote = await add(
        store,
        lesson(
            "a sales rep withdraws an offer a customer declined",
            "Cancel with cancel_quote, never delete_quote.",
            patterns=[r"\bcancel\b.*\bquote\b"],
        ),
    )
    # Same words as the stage case, but for the teacher's prompt, or retired: never used.
    teacher = await add(
        store, lesson(stage_words + " teacher", "Review the stage.", audience="teacher")
    )
    retired = await add(store, lesson(stage_words + " again", "An outdated stage lesson."))
    await store.retire(retired.entry_id, "superseded", code="manual")
    return Seeded(stage, quote, teacher, retired)


def student_config(case_ids: list[str], learning: LearningSettings) -> RunConfig:
    return RunConfig.model_validate(
        {
            "agent": "student",
            "cases": case_ids,
            "concurrency": 3,
            "providers": {"student": {"provider": "scripted", "model": "scripted"}},
            "learning": learning.model_dump(mode="json"),
        }
    )


async def play(
    services: RunServices, config: RunConfig, agent: Any, out: Path | None, pool: Any = None
) -> tuple[str, list[tuple[SessionTrace, Any]]]:
    """Creates and plays a run with the hooks its learning settings ask for (as `crmbench
    run` does); `pool` replaces the run store's pool given to `learning_hooks`."""
    store = await RunStore.connect(services.database_url, pool_size=4)
    crm = CrmApiClient(services.crm_api_url, ADMIN_KEY)
    verifier = VerifierClient(services.verifier_url, ADMIN_KEY)
    try:
        cases = select_cases(config, list(services.cases.values()))
        run = await create_run(store, config, cases, "test-corpus", str(out) if out else None)
        hooks_pool = store.pool if pool is None else pool
        async with learning_hooks(config.learning, hooks_pool, run_id=run.run_id) as hooks:
            await work_on_run(
                store=store,
                run_id=run.run_id,
                config=config,
                cases=services.cases,
                agent=agent,
                crm=crm,
                verifier=verifier,
                trace_dir=out,
                worker="test-worker",
                hooks=hooks,
            )
        return run.run_id, await store.traces(run.run_id)
    finally:
        await agent.aclose()
        await crm.aclose()
        await verifier.aclose()
        await store.close()


def scripted_student() -> tuple[LLMAgent, ScriptedProvider]:
    provider = ScriptedProvider(model="scripted").when(lambda _: True, "Done.")
    prompt = SystemPrompt("You act for $actor_name. Today is $today.\n$guidance")
    return LLMAgent("student", provider, "scripted", prompt), provider


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


async def test_a_frozen_run_injects_the_retrieved_entries_and_records_them_once(
    run_services: RunServices, memory: PlaybookStore, tmp_path: Path
) -> None:
    seeded = await seed(memory)
    agent, provider = scripted_student()
    config = student_config([STAGE_CASE, QUOTE_CASE, OTHER_CASE], FROZEN)
    run_id, traces = await play(run_services, config, agent, tmp_path)
    cases = run_services.cases

    # The guidance reaches the student's system prompt: the top entries, numbered.
    system_of = {
        next(
            c for c in cases.values() if c.turns[0].content == call.messages[0].content
        ).case_id: call.system or ""
        for call in provider.calls
    }
    stage_text = render_guidance([seeded.stage])
    quote_text = render_guidance([seeded.quote])
    assert system_of[STAGE_CASE].endswith("\n" + stage_text)
    assert "1. Set the stage by its exact name with modify_opportunity." in stage_text
    assert "(Expected effect: the verifier's checks pass)" in stage_text
    assert system_of[QUOTE_CASE].endswith("\n" + quote_text)
    assert GUIDANCE_HEADER not in system_of[OTHER_CASE]
    for text in system_of.values():
        assert "Review the stage." not in text and "outdated" not in text

    # The retrievals and the digest are in the session trace, in Postgres and in JSONL.
    by_case = {session.case_id: session for session, _ in traces}
    stage_ctx = by_case[STAGE_CASE].crm_context
    [stage_hit] = stage_ctx.playbooks_retrieved
    assert (stage_hit.entry_id, stage_hit.cue_match, stage_hit.injected) == (
        seeded.stage.entry_id,
        "semantic",
        True,
    )
    assert stage_hit.similarity is not None and stage_hit.similarity >= FROZEN.threshold
    assert stage_ctx.injected_digest == digest(stage_text)
    assert by_case[QUOTE_CASE].crm_context.playbooks_retrieved == [
        PlaybookRetrieval(
            entry_id=seeded.quote.entry_id,
            similarity=None,
            cue_match="pattern",
            injected=True,
            level="domain",
            observable=False,  # its action names no tool: no trace can show it followed
        )
    ]
    assert by_case[QUOTE_CASE].crm_context.injected_digest == digest(quote_text)
    other = by_case[OTHER_CASE].crm_context
    assert other.playbooks_retrieved == [] and other.injected_digest is None
    assert {s.crm_context.learning_mode for s in by_case.values()} == {"frozen"}
    sessions, _ = read_trace_file(tmp_path / "sessions.jsonl")
    assert {s.session_id: s.crm_context for s in sessions} == {
        s.session_id: s.crm_context for s in by_case.values()
    }

    # Counters: once per episode; the teacher's and the retired entry untouched.
    for entry in (seeded.stage, seeded.quote):
        counters = await memory.counters(entry.entry_id)
        assert (counters.retrieved, counters.injected, counters.followed) == (1, 1, 0)
    for entry in (seeded.teacher, seeded.retired):
        counters = await memory.counters(entry.entry_id)
        assert (counters.retrieved, counters.injected) == (0, 0)
    # One retrieval event per episode, with the same record as the trace.
    events = await memory.events(run_id=run_id)
    assert sorted(e.session_id or "" for e in events) == sorted(
        by_case[c].session_id for c in by_case
    )
    for event in events:
        assert isinstance(event.payload, RetrievalEvent)
        session = next(s for s in by_case.values() if s.session_id == event.session_id)
        assert event.payload.retrieved == session.crm_context.playbooks_retrieved
        assert event.payload.injected_digest == session.crm_context.injected_digest

    # An episode played again (an outage, a resume) retrieves again but counts once.
    retriever = PlaybookRetriever(memory, EMBEDDER, k=FROZEN.k, threshold=FROZEN.threshold)
    hooks = RetrievalHooks(retriever, run_id=run_id)
    guidance = await hooks.before_act(context(by_case[STAGE_CASE].session_id, cases[STAGE_CASE]))
    assert guidance.text == stage_text and guidance.learning_mode == "frozen"
    assert (await memory.counters(seeded.stage.entry_id)).retrieved == 1
    assert len(await memory.events(run_id=run_id)) == 3

    # `crmbench results` reports the cue hit rate: 2 of the 3 episodes retrieved one.
    report = build_report([s for s, _ in traces])
    assert report.cue_hit is not None
    assert (report.cue_hit.passed, report.cue_hit.total) == (2, 3)
    assert "cue hit rate 66.7% (2/3 episodes with >= 1 retrieved playbook entry" in (
        render_report(report)
    )


def context(session_id: str, case: Case) -> EpisodeContext:
    """A context for calling hooks directly: no CRM calls are made by retrieval."""
    return EpisodeContext(
        session_id=session_id,
        case=case,
        trial=0,
        tools=[],
        crm=CrmApiClient("http://127.0.0.1:9", ADMIN_KEY),
        token="unused",
        limits=EpisodeLimits(1, 1),
    )


async def test_pattern_matches_rank_first_and_k_bounds_what_is_injected(
    run_services: RunServices, memory: PlaybookStore
) -> None:
    case = run_services.cases[STAGE_CASE]
    text = task_text(case)
    words = "update the opportunity stage Proposal and its probability"
    semantic = [await add(memory, lesson(f"{words} {n}", f"Semantic lesson {n}.")) for n in "ab"]
    both = await add(
        memory, lesson(words, "Pattern and similarity.", patterns=[r"stage\s+proposal"])
    )
    pattern_only = await add(
        memory, lesson("unrelated words entirely", "Pattern only.", patterns=["ZEPHYR"])
    )
    # A pattern on words only the answer holds (not the task text) matches nothing.
    await add(memory, lesson("unrelated words again", "Never.", patterns=["no such phrase"]))
    retriever = PlaybookRetriever(memory, EMBEDDER, k=2, threshold=0.3)
    found = await retriever.retrieve(text)
    ids = [item.entry.entry_id for item in found.retrieved]
    assert ids[:2] == [both.entry_id, pattern_only.entry_id]
    assert [item.cue_match for item in found.retrieved[:2]] == ["both", "pattern"]
    # The search's top 2 brought one more entry: retrieved, not injected.
    assert len(ids) == 3 and ids[2] in {entry.entry_id for entry in semantic}
    assert found.injected == 2
    assert [r.injected for r in found.records("student")] == [True, True, False]
    assert found.text == render_guidance([both, pattern_only])
    assert found.increments()[ids[2]] == {"retrieved": 1}
    assert found.increments()[both.entry_id] == {"retrieved": 1, "injected": 1}


class ExplodingPool:
    """Stands in for a database pool: any use fails the test."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"learning off touched the database ({name})")


async def test_learning_off_builds_no_embedder_and_touches_no_table(
    run_services: RunServices, memory: PlaybookStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await seed(memory)

    def no_embedder(config: EmbeddingConfig) -> Any:
        raise AssertionError("learning off built an embedder")

    monkeypatch.setattr(retrieval_module, "make_embedder", no_embedder)
    agent, provider = scripted_student()
    config = student_config([STAGE_CASE], LearningSettings())
    assert config.learning.mode == "off"
    run_id, [(session, _)] = await play(run_services, config, agent, None, pool=ExplodingPool())
    assert GUIDANCE_HEADER not in (provider.calls[0].system or "")
    assert session.crm_context.learning_mode is None
    assert session.crm_context.playbooks_retrieved == []
    assert session.crm_context.injected_digest is None
    assert session.crm_context.playbooks_adopted == []
    assert build_report([session]).cue_hit is None
    assert build_report([session]).adoption is None
    rendered = render_report(build_report([session]))
    assert "cue hit rate" not in rendered and "adoption rate" not in rendered
    assert await memory.events(run_id=run_id) == []
    assert [event.kind for event in await memory.events()] == ["retirement"]  # the seeding's
    for entry in await memory.list_entries():
        counters = await memory.counters(entry.entry_id)
        assert (counters.retrieved, counters.followed, counters.episodes_with) == (0, 0, 0)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for item in value.values() for s in _strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    return []


def leaks(case: Case, text: str) -> list[str]:
    """The parts of the case's answer (expected state, reference actions and reply: any
    string of `expected` of 8+ characters that the user's turns and the task category do
    not say) and its id, found in `text`."""
    asked = " ".join([*(turn.content for turn in case.turns), case.task_category]).lower()
    answer = [
        s
        for s in _strings(case.expected.model_dump(mode="json"))
        if len(s.strip()) >= 8 and s.lower() not in asked
    ]
    return [s for s in [case.case_id, *answer] if s.lower() in text.lower()]


class RecordingEmbedder(HashingEmbedderForTests):
    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[str] = []

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        self.inputs.extend(texts)
        return super().embed(texts)


async def test_no_part_of_the_expected_answer_reaches_the_embedder(
    run_services: RunServices, memory: PlaybookStore
) -> None:
    await seed(memory)
    embedder = RecordingEmbedder()
    retriever = PlaybookRetriever(memory, embedder, k=3, threshold=0.3)
    hooks = RetrievalHooks(retriever, run_id="leak-test")
    sample = [run_services.cases[case_id] for case_id in stratified_sample(run_services.cases)]
    for case in sample:
        embedder.inputs.clear()
        await hooks.before_act(context(f"leak-test/{case.case_id}/0", case))
        assert embedder.inputs == [task_text(case)]
        assert leaks(case, embedder.inputs[0]) == [], case.case_id
        assert case.task_category.lower() in embedder.inputs[0]
        assert all(turn.content.strip() in embedder.inputs[0] for turn in case.turns)
    # The check has teeth: the reply or the reference actions appended would be caught.
    caught = [
        case.case_id
        for case in sample
        if leaks(case, task_text(case) + "\n" + case.expected.reference_reply)
        and leaks(case, task_text(case) + "\n" + json.dumps(case.expected.model_dump(mode="json")))
    ]
    assert len(caught) == len(sample)


def test_learning_settings_default_to_off_and_read_yaml_booleans() -> None:
    settings = LearningSettings()
    assert (settings.mode, settings.k, settings.threshold) == ("off", 3, 0.35)
    assert settings.embeddings == EmbeddingConfig()
    # YAML reads an unquoted `mode: off` as false, `mode: on` as true.
    assert LearningSettings.model_validate({"mode": False}).mode == "off"
    assert LearningSettings.model_validate({"mode": True}).mode == "on"
    # A run's stored config (every field dumped) validates again, learning included.
    config = load_run_config(None, {"learning": {"mode": "frozen"}})
    assert config.learning.mode == "frozen" and config.learning.k == 3
    assert RunConfig.model_validate(config.model_dump(mode="json")) == config
    # The model teacher needs its provider; the simulated one does not.
    with pytest.raises(ValueError, match=r"providers\.teacher is required"):
        RunConfig.model_validate({"agent": "oracle", "learning": {"mode": "on"}})
    on = RunConfig.model_validate(
        {"agent": "oracle", "learning": {"mode": "on", "teacher": "simulated"}}
    )
    assert on.learning.mode == "on"
    with pytest.raises(ValueError, match="escalate_below <= paired_at <= auto_at"):
        LearningSettings.model_validate({"triage": {"auto_at": 0.5, "paired_at": 0.6}})


def test_the_learning_flag_overrides_only_the_mode(tmp_path: Path) -> None:
    from crmbench.run_cli import _config_from

    config_file = tmp_path / "run.yaml"
    config_file.write_text("agent: oracle\nlearning:\n  k: 5\n  threshold: 0.4\n")
    config = _config_from(config_file, {"learning": {"mode": "frozen"}})
    assert (config.learning.mode, config.learning.k, config.learning.threshold) == (
        "frozen",
        5,
        0.4,
    )
    result = CliRunner().invoke(
        app, ["run", "--agent", "oracle", "--learning", "sometimes", "--out", str(tmp_path / "r")]
    )
    assert result.exit_code != 0
    assert "sometimes" in result.output
    assert not (tmp_path / "r").exists()


@pytest.fixture
def cli_env(run_services: RunServices, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in run_services.env().items():
        monkeypatch.setenv(key, value)


async def seed_local_memory(database_url: str) -> PlaybookEntry:
    """An emptied memory holding one quote lesson, embedded with the local model."""
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await conn.execute(EMPTY)
    finally:
        await conn.close()
    local = make_embedder(EmbeddingConfig())
    store = await PlaybookStore.connect(
        database_url, embedder=local.name, dimension=local.dimensions
    )
    try:
        candidate = lesson(
            "a customer declined and the quote must be withdrawn",
            "Cancel with cancel_quote.",
            patterns=[r"\bcancel\b.*\bquote\b"],
        )
        [vector] = local.embed([candidate.cue.text])
        stored = await store.add_or_merge(candidate, vector, near_duplicate_threshold=0.99)
        return stored.entry
    finally:
        await store.close()


@pytest.mark.usefixtures("cli_env")
def test_crmbench_run_learning_frozen_with_the_local_model(
    run_services: RunServices, tmp_path: Path
) -> None:
    """The command line end to end: the default (local) embedder, the flag recorded in
    the run's config, and the cue hit rate in `crmbench results`."""
    entry = asyncio.run(seed_local_memory(run_services.database_url))
    out = tmp_path / "run"
    runner = CliRunner()
    args = ["run", "--agent", "oracle", "--cases", f"{QUOTE_CASE},{OTHER_CASE}"]
    result = runner.invoke(app, [*args, "--learning", "frozen", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    recorded = json.loads((out / "run.json").read_text())["config"]["learning"]
    assert recorded["mode"] == "frozen" and recorded["embeddings"]["provider"] == "local"
    sessions, _ = read_trace_file(out / "sessions.jsonl")
    hits = {s.case_id: [r.entry_id for r in s.crm_context.playbooks_retrieved] for s in sessions}
    assert entry.entry_id in hits[QUOTE_CASE]
    result = runner.invoke(app, ["results", str(out)])
    assert result.exit_code == 0, result.output
    assert "cue hit rate" in result.output


async def test_one_lesson_met_twice_is_one_entry_and_universal_ones_have_their_own_slot(
    run_services: RunServices, memory: PlaybookStore
) -> None:
    case = run_services.cases[STAGE_CASE]
    always = "Complete every change the user asked for before you reply."

    def universal(cue: str) -> PlaybookCandidate:
        return PlaybookCandidate(
            audience="student",
            level="universal",
            cue=Cue(text=cue, patterns=["Task category:"]),
            action=Action(text=always),
            expected_effect="every requested write is made",
        )

    first = await add(memory, universal("a request to update a deal's stage and probability"))
    # The same action and level from another episode's situation: the same entry.
    [vector] = EMBEDDER.embed(["a request to add a note to a client"])
    again = await memory.add_or_merge(
        universal("a request to add a note to a client").model_copy(
            update={"provenance": Provenance(episode_ids=["other/CRM-1/0"])}
        ),
        vector,
        near_duplicate_threshold=0.999,
    )
    assert (again.outcome, again.entry.entry_id) == ("duplicate", first.entry_id)
    assert again.entry.cue.text == first.cue.text  # the first cue is kept
    assert "other/CRM-1/0" in again.entry.provenance.episode_ids
    assert len(await memory.list_entries()) == 1

    # Three task lessons that match by pattern, and the universal one.
    lessons = [
        await add(
            memory,
            lesson(
                f"stage lesson {n} for deals",
                f"Rule {n}: set the stage by its name.",
                patterns=["Zephyr"],
            ),
        )
        for n in range(3)
    ]
    retriever = PlaybookRetriever(memory, EMBEDDER, k=2, threshold=0.99, k_universal=1)
    found = await retriever.retrieve(task_text(case))
    injected = found.injected_entries
    assert injected[:2] == lessons[:2] and injected[2].entry_id == first.entry_id
    assert found.not_injected_entries == [lessons[2]]
    records = found.records("student")
    assert [r.level for r in records[:3]] == ["domain", "domain", "universal"]
    # Without a universal slot, the universal entry is retrieved but not injected.
    none = await PlaybookRetriever(memory, EMBEDDER, k=2, threshold=0.99).retrieve(task_text(case))
    assert first.entry_id not in [e.entry_id for e in none.injected_entries]
    # The universal entry is no cue hit: a report counts only the task's own lessons.
    only_universal = [r for r in records if r.level == "universal"]
    from agent_runner.reports.statistics import cue_hit_rate
    from tests.agent_runner.trace_factory import make_session

    trace = make_session("CASE-1")
    trace.crm_context.learning_mode = "frozen"
    trace.crm_context.playbooks_retrieved = only_universal
    rate = cue_hit_rate([trace])
    assert rate is not None and (rate.passed, rate.total) == (0, 1)


async def test_universal_entries_are_ranked_by_their_reward_with_an_optimistic_start(
    run_services: RunServices, memory: PlaybookStore
) -> None:
    from agent_runner.learning.retrieval import UNIVERSAL_PRIOR_EPISODES

    case = run_services.cases[STAGE_CASE]

    def universal(action: str) -> PlaybookCandidate:
        return PlaybookCandidate(
            audience="student",
            level="universal",
            cue=Cue(text=f"any request at all ({action})", patterns=["Task category:"]),
            action=Action(text=action),
            expected_effect="better episodes",
        )

    useless = await add(memory, universal("Be thorough in everything you do."))
    useful = await add(memory, universal("Make every requested change before you reply."))
    retriever = PlaybookRetriever(memory, EMBEDDER, k=3, threshold=0.99, k_universal=1)

    async def first_injected() -> str:
        found = await retriever.retrieve(task_text(case))
        return found.injected_entries[0].entry_id

    def value(episodes: int, reward: float) -> float:
        return (reward + UNIVERSAL_PRIOR_EPISODES) / (episodes + UNIVERSAL_PRIOR_EPISODES)

    # Untried, both start at 1.0: the match order (the older one) decides.
    assert await first_injected() == useless.entry_id
    await memory.bump_many(useless.entry_id, {"episodes_with": 10, "reward_sum_with": 5.0})
    assert value(10, 5.0) < value(0, 0.0)
    assert await first_injected() == useful.entry_id  # the untried one is tried next
    await memory.bump_many(useful.entry_id, {"episodes_with": 10, "reward_sum_with": 9.0})
    assert value(10, 9.0) > value(10, 5.0)
    assert await first_injected() == useful.entry_id
    await memory.bump_many(useful.entry_id, {"episodes_with": 30, "reward_sum_with": 0.0})
    assert value(40, 9.0) < value(10, 5.0)
    assert await first_injected() == useless.entry_id
