"""Playbook contracts: what the content hash covers, what an entry or export may claim, and
the trajectory events' JSON."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import TypeAdapter, ValidationError

from crmbench_contracts.playbooks import (
    Action,
    ArgumentRule,
    Cue,
    EscalationEvent,
    ExportedEntry,
    PlaybookCandidate,
    PlaybookContent,
    PlaybookCounters,
    PlaybookEntry,
    PlaybookExport,
    PlaybookVersion,
    Provenance,
    RetrievalEvent,
    TrajectoryEvent,
    TrajectoryPayload,
    entry_id_for,
)
from crmbench_contracts.traces import PlaybookRetrieval, SupervisionTransition

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def lesson(**changes: object) -> PlaybookCandidate:
    fields: dict[str, object] = {
        "audience": "student",
        "level": "workflow",
        "cue": Cue(text="the user asks to close a won deal", patterns=[r"\bclose(d)? won\b"]),
        "action": Action(
            text="Set the stage to Closed Won and the probability to 100",
            tools=["update_opportunity"],
            argument_rules=[
                ArgumentRule(
                    tool="update_opportunity", argument="probability", rule="100", pattern="100"
                )
            ],
        ),
        "expected_effect": "the stage check passes",
        "provenance": Provenance(episode_ids=["run/case/0"]),
    }
    fields.update(changes)
    return PlaybookCandidate.model_validate(fields)


def test_the_hash_covers_content_only() -> None:
    base = lesson()
    assert base.digest() == lesson(provenance=Provenance(run_ids=["other"])).digest()
    # Surrounding whitespace is not content; a different word is.
    assert base.digest() == lesson(expected_effect="  the stage check passes\n").digest()
    assert base.digest() != lesson(expected_effect="the stage check fails").digest()
    assert base.digest() != lesson(audience="teacher").digest()
    assert len(base.digest()) == 64 and entry_id_for(base.digest()) == "pb-" + base.digest()[:16]


def test_regexes_must_compile() -> None:
    with pytest.raises(ValidationError, match="not a regular expression"):
        Cue(text="x", patterns=["(unclosed"])
    with pytest.raises(ValidationError, match="not a regular expression"):
        ArgumentRule(tool="t", argument="a", rule="r", pattern="[")


def _entry(**changes: object) -> PlaybookEntry:
    base = lesson()
    fields = {
        **base.content().model_dump(),
        "entry_id": entry_id_for(base.digest()),
        "version": 1,
        "content_hash": base.digest(),
        "created_at": NOW,
        "updated_at": NOW,
        **changes,
    }
    return PlaybookEntry.model_validate(fields)


def test_an_entry_cannot_claim_another_hash_or_a_reasonless_retirement() -> None:
    assert _entry().content().digest() == lesson().digest()
    with pytest.raises(ValidationError, match="does not match the content"):
        _entry(content_hash="0" * 64)
    with pytest.raises(ValidationError, match="retired_reason"):
        _entry(status="retired")
    with pytest.raises(ValidationError, match="retired_reason"):
        _entry(retired_reason="why")
    assert _entry(status="retired", retired_reason="harmful").status == "retired"


def test_an_exported_entry_has_all_its_versions() -> None:
    entry = _entry()
    version = PlaybookVersion.model_validate(
        {**lesson().content().model_dump(), "version": 1, "content_hash": entry.content_hash}
        | {"created_at": NOW}
    )
    counters = PlaybookCounters(entry_id=entry.entry_id)
    assert ExportedEntry(entry=entry, versions=[version], counters=counters).entry == entry
    with pytest.raises(ValidationError, match="versions must run"):
        ExportedEntry(
            entry=entry.model_copy(update={"version": 2}), versions=[version], counters=counters
        )
    with pytest.raises(ValidationError, match="counters of another entry"):
        ExportedEntry(entry=entry, versions=[version], counters=PlaybookCounters(entry_id="x"))
    with pytest.raises(ValidationError, match=r"vectors of versions \[2\]"):
        ExportedEntry(
            entry=entry, versions=[version], counters=counters, embeddings={"e": {2: [1.0]}}
        )


def test_an_export_holds_each_entry_and_each_content_hash_once() -> None:
    entry = _entry()
    version = PlaybookVersion.model_validate(
        {**lesson().content().model_dump(), "version": 1, "content_hash": entry.content_hash}
        | {"created_at": NOW}
    )
    item = ExportedEntry(
        entry=entry, versions=[version], counters=PlaybookCounters(entry_id=entry.entry_id)
    )
    assert PlaybookExport(exported_at=NOW, entries=[item]).entries == [item]
    with pytest.raises(ValidationError, match="appears twice"):
        PlaybookExport(exported_at=NOW, entries=[item, item])
    elsewhere = item.model_copy(
        update={
            "entry": entry.model_copy(update={"entry_id": "pb-elsewhere"}),
            "counters": PlaybookCounters(entry_id="pb-elsewhere"),
        }
    )
    with pytest.raises(ValidationError, match="is both"):
        PlaybookExport(exported_at=NOW, entries=[item, elsewhere])


def test_trajectory_events_parse_by_kind_and_name_their_entries() -> None:
    event = TrajectoryEvent(
        run_id="r",
        payload=RetrievalEvent(
            retrieved=[
                PlaybookRetrieval(entry_id="pb-1", similarity=0.8, cue_match="semantic"),
                PlaybookRetrieval(entry_id="pb-2", cue_match="pattern"),
            ]
        ),
    )
    again = TrajectoryEvent.model_validate_json(event.model_dump_json())
    assert again == event and again.kind == "retrieval" and again.entry_ids == ["pb-1", "pb-2"]
    payload = TypeAdapter(TrajectoryPayload).validate_python(
        {"kind": "guidance", "step": 0, "text": "check the stage first"}
    )
    assert payload.kind == "guidance"
    with pytest.raises(ValidationError):
        TypeAdapter(TrajectoryPayload).validate_python({"kind": "gossip"})
    with pytest.raises(ValidationError, match="escalate lane"):
        EscalationEvent(
            transition=SupervisionTransition(step=1, to_lane="coach", reason="r", source="rule")
        )


def test_a_new_exported_entry_is_version_one_of_its_content() -> None:
    content = PlaybookContent.model_validate(lesson().model_dump(exclude={"provenance"}))
    item = ExportedEntry.new(content, NOW, {"e": {1: [1.0, 0.0]}})
    assert item.entry.content_hash == content.digest() == item.versions[0].content_hash
    assert item.entry.entry_id == entry_id_for(content.digest())
    assert (item.entry.version, item.entry.created_at, item.counters.retrieved) == (1, NOW, 0)
    assert item.embeddings == {"e": {1: [1.0, 0.0]}}
