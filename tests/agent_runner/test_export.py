"""The Atlas export: field names Atlas's trace loader reads, what lands where, grouping a
sessions.jsonl into episodes, and `crmbench export --dir` as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from agent_runner.reports.atlas import atlas_lines, atlas_session, group_traces, write_atlas_jsonl
from agent_runner.reports.reading import ResultsError
from crmbench.results_cli import register
from crmbench_contracts.rewards import CollateralChange, JudgeScore
from crmbench_contracts.traces import (
    LaneDecision,
    PlaybookRetrieval,
    SessionTrace,
    StateChange,
    StepTrace,
    SupervisionTransition,
)
from tests.agent_runner.trace_factory import make_reward, make_session, make_step, write_run

# The fields of the Atlas SDK's AtlasSessionTrace, AtlasStepTrace, AtlasRewardBreakdown
# and AtlasJudgeBreakdown dataclasses (their `to_dict` keys).
ATLAS_SESSION_FIELDS = {
    "task",
    "final_answer",
    "plan",
    "steps",
    "session_metadata",
    "session_reward",
    "trajectory_events",
    "student_learning",
    "teacher_learning",
    "learning_history",
    "adaptive_summary",
}
ATLAS_STEP_FIELDS = {
    "step_id",
    "description",
    "trace",
    "output",
    "reward",
    "tool",
    "tool_params",
    "context",
    "validation",
    "attempts",
    "guidance",
    "metadata",
    "artifacts",
    "deliverable",
    "runtime",
    "depends_on",
}
ATLAS_REWARD_FIELDS = {"score", "rationale", "judges", "raw"}
ATLAS_JUDGE_FIELDS = {
    "identifier",
    "score",
    "rationale",
    "principles",
    "samples",
    "escalated",
    "escalation_reason",
}


def _episode() -> tuple[SessionTrace, list[StepTrace]]:
    judges = [
        JudgeScore(judge="clarity", score=0.9, uncertainty=0.1, rationale="clear reply"),
        JudgeScore(judge="accuracy", score=0.2, uncertainty=0.4, rationale="wrong amount"),
    ]
    arbiter = JudgeScore(judge="arbiter", score=0.4, uncertainty=0.1, rationale="amount wrong")
    reward = make_reward(
        score=0.5,
        judges=judges,
        arbiter=arbiter,
        collateral=[
            CollateralChange(
                table="note",
                op="INSERT",
                key="note:9",
                tool_call_id="call_2",
                reason="no rule allows a note",
            )
        ],
    )
    session = make_session("CASE-1", score=0.5, reward=reward, steps=2, teacher_tokens=(50, 5))
    steps = [
        make_step(
            session,
            1,
            arguments={"name": "Acme deal", "amount": 500},
            guidance=["amounts are in dollars, not thousands"],
            state_change=[
                StateChange(table="opportunity", op="INSERT", key="opportunity:42", after={})
            ],
        ),
        make_step(
            session,
            2,
            tool="create_note",
            arguments={"body": "x" * 200},
            ok=False,
            status=422,
            error={"code": "BLANK_STRING", "field": "title", "message": "title is blank"},
        ),
    ]
    return session, steps


def test_session_uses_atlas_field_names_all_the_way_down() -> None:
    session, steps = _episode()
    exported = atlas_session(session, steps)
    assert set(exported) == ATLAS_SESSION_FIELDS
    assert all(set(step) == ATLAS_STEP_FIELDS for step in exported["steps"])
    assert all(set(step["reward"]) == ATLAS_REWARD_FIELDS for step in exported["steps"])
    assert set(exported["session_reward"]) == ATLAS_REWARD_FIELDS
    assert all(set(j) == ATLAS_JUDGE_FIELDS for j in exported["session_reward"]["judges"])
    # Atlas looks a step's description and tool up in the plan by id.
    assert [(s["id"], s["tool"]) for s in exported["plan"]["steps"]] == [
        (1, "create_opportunity"),
        (2, "create_note"),
    ]
    json.dumps(exported)  # plain JSON, no datetimes or models left


def test_session_metadata_carries_crm_context_tokens_and_ids() -> None:
    session, steps = _episode()
    meta = atlas_session(session, steps)["session_metadata"]
    assert (meta["run_id"], meta["case_id"], meta["trial"]) == ("run-1", "CASE-1", 0)
    assert (meta["agent"], meta["model"], meta["outcome"]) == ("student", "gpt-4.1", "completed")
    assert meta["crm_context"]["task_category"] == "create_opportunity"
    assert meta["token_usage"]["teacher"]["input_tokens"] == 50
    assert meta["total_tokens"] == 1255 and meta["verdicts"] == {
        "0.7": False,
        "0.8": False,
        "0.9": False,
    }


def test_the_export_says_how_the_reply_was_read() -> None:
    session, steps = _episode()  # judges disagreed, the arbiter decided
    meta = atlas_session(session, steps)["session_metadata"]
    assert meta["verification_mode"] == "judges+arbiter"
    assert meta["crm_context"]["verification_mode"] == "judges+arbiter"
    assert atlas_session(session, steps)["session_reward"]["raw"]["verification_mode"] == (
        "judges+arbiter"
    )
    offline = make_session("B", reward=make_reward("B", 1.0, failed_check=None))
    assert atlas_session(offline, [])["session_metadata"]["verification_mode"] == "offline"
    failed = make_session("C", outcome="harness_error", score=0.0)
    assert atlas_session(failed, [])["session_metadata"]["verification_mode"] is None


def test_an_older_trace_without_the_mode_exports_the_one_it_implies() -> None:
    session, steps = _episode()
    record = session.model_dump(mode="json")
    del record["reward"]["verification_mode"]
    record["crm_context"]["verification_mode"] = "structured+judges"
    older = SessionTrace.model_validate(record)
    meta = atlas_session(older, steps)["session_metadata"]
    assert meta["verification_mode"] == "judges+arbiter"  # from the record's arbiter
    assert meta["crm_context"]["verification_mode"] == "judges"


def test_session_reward_explains_the_score_and_maps_the_judges() -> None:
    session, steps = _episode()
    reward = atlas_session(session, steps)["session_reward"]
    assert reward["score"] == 0.5
    assert "amount: amount is 5000 (found 500)" in reward["rationale"]
    assert "collateral INSERT note note:9: no rule allows a note" in reward["rationale"]
    assert "opportunity_exists" not in reward["rationale"]  # passed checks are not reasons
    assert reward["raw"] == session.reward.model_dump(mode="json")  # type: ignore[union-attr]
    judges = {j["identifier"]: j for j in reward["judges"]}
    assert list(judges) == ["structured", "clarity", "accuracy", "arbiter:arbiter"]
    assert [p["name"] for p in judges["structured"]["principles"]] == [
        "opportunity_exists",
        "amount",
    ]
    assert judges["accuracy"]["samples"][0]["uncertainty"] == 0.4
    assert judges["accuracy"]["escalated"] and "arbiter" in judges["accuracy"]["escalation_reason"]
    assert not judges["arbiter:arbiter"]["escalated"]


def test_no_reward_record_means_no_session_reward() -> None:
    session = make_session(outcome="harness_error", score=0.0, error="verifier down")
    exported = atlas_session(session, [])
    assert exported["session_reward"] is None and exported["steps"] == []
    assert exported["session_metadata"]["error"] == "verifier down"


def test_steps_show_the_call_its_result_and_its_refusal() -> None:
    session, steps = _episode()
    first, second = atlas_session(session, steps)["steps"]
    assert first["description"] == 'create_opportunity(amount=500, name="Acme deal")'
    assert json.loads(first["output"]) == {"opportunity_id": 42}
    assert json.loads(first["trace"])["arguments"] == {"name": "Acme deal", "amount": 500}
    assert first["tool_params"] == {"name": "Acme deal", "amount": 500}
    assert first["validation"] == {"ok": True, "status": 201, "error": None}
    assert first["guidance"] == ["amounts are in dollars, not thousands"]
    assert first["metadata"]["state_change"][0]["key"] == "opportunity:42"
    assert first["metadata"]["tool_call_id"] == "call_1"
    assert first["metadata"]["tokens"]["input_tokens"] == 900
    assert first["reward"]["score"] == 0.5
    # A refusal: the output is what the model saw, status and error code.
    assert json.loads(second["output"]) == {
        "status": 422,
        "error": {"code": "BLANK_STRING", "field": "title", "message": "title is blank"},
    }
    assert second["validation"]["ok"] is False and second["validation"]["status"] == 422
    assert (
        second["description"].startswith('create_note(body="xxx')
        and len(second["description"]) < 80
    )


def test_learning_telemetry_is_typed_and_exported_as_plain_json() -> None:
    session = make_session("A")
    retrieval = PlaybookRetrieval(
        entry_id="pb-3", similarity=0.71, cue_match="both", injected=True, audience="teacher"
    )
    lane = LaneDecision(
        lane="paired", reason="failed twice before", confidence=0.8, source="teacher"
    )
    escalation = SupervisionTransition(
        step=2,
        from_lane="paired",
        to_lane="escalate",
        reason="the retry failed too",
        source="teacher",
        guidance=["the stage list is in the tool's error"],
    )
    context = session.crm_context.model_copy(
        update={
            "playbooks_retrieved": [retrieval],
            "playbooks_adopted": ["pb-3"],
            "supervision_transitions": [SupervisionTransition.of(lane), escalation],
        }
    )
    traced = session.model_copy(update={"crm_context": context})
    # A trace line read back (JSONL or Postgres) gives the same typed records.
    assert SessionTrace.model_validate_json(traced.model_dump_json()) == traced
    exported = atlas_session(traced, [])["session_metadata"]["crm_context"]
    assert exported["playbooks_retrieved"] == [
        {
            "entry_id": "pb-3",
            "similarity": 0.71,
            "cue_match": "both",
            "injected": True,
            "audience": "teacher",
            "level": None,
            "observable": True,
        }
    ]
    first, second = exported["supervision_transitions"]
    assert first == {
        "step": 0,
        "from_lane": None,
        "to_lane": "paired",
        "reason": "failed twice before",
        "confidence": 0.8,
        "source": "teacher",
        "guidance": [],
    }
    assert (second["from_lane"], second["to_lane"], second["step"]) == ("paired", "escalate", 2)
    json.dumps(exported)


def test_the_learning_loop_exports_as_atlas_trajectory_events_and_adaptive_summary() -> None:
    session = make_session("A")
    lane = LaneDecision(lane="coach", reason="new kind of task", confidence=0.2, source="rule")
    retry = SupervisionTransition(
        step=3, from_lane="coach", to_lane="coach", reason="retry", source="teacher"
    )
    guidance = {"kind": "guidance", "step": 1, "text": "search first", "teacher_call_id": "t-1"}
    context = session.crm_context.model_copy(
        update={
            "learning_mode": "on",
            "lane": lane,
            "playbooks_retrieved": [
                PlaybookRetrieval(entry_id="pb-1", similarity=0.6, cue_match="semantic")
            ],
            "injected_digest": "ab" * 32,
            "playbooks_adopted": ["pb-1"],
            "supervision_transitions": [SupervisionTransition.of(lane), retry],
            "trajectory": [guidance],
        }
    )
    exported = atlas_session(session.model_copy(update={"crm_context": context}), [])
    events = [item["event"] for item in exported["trajectory_events"]]
    assert [event["type"] for event in events] == [
        "retrieval",
        "lane_decision",
        "supervision_transition",
        "guidance",
        "adoption",
    ]
    assert events[0]["injected_digest"] == "ab" * 32
    assert events[3] == {
        "type": "guidance",
        "step": 1,
        "text": "search first",
        "teacher_call_id": "t-1",
    }
    summary = exported["adaptive_summary"]
    assert (summary["adaptive_mode"], summary["confidence"], summary["probe_source"]) == (
        "coach",
        0.2,
        "rule",
    )
    assert len(summary["mode_history"]) == 2
    # Without the loop, both stay empty.
    plain = atlas_session(make_session("B"), [])
    assert plain["trajectory_events"] is None and plain["adaptive_summary"] is None


def test_a_trace_without_learning_telemetry_loads_and_exports_empty_lists() -> None:
    record = make_session("A").model_dump(mode="json")
    for name in ("playbooks_retrieved", "playbooks_adopted", "supervision_transitions"):
        del record["crm_context"][name]
    session = SessionTrace.model_validate(record)
    exported = atlas_session(session, [])["session_metadata"]["crm_context"]
    assert exported["playbooks_retrieved"] == exported["supervision_transitions"] == []


def test_a_lane_outside_the_four_lanes_is_refused() -> None:
    with pytest.raises(ValueError, match="lane"):
        LaneDecision(lane="solo", reason="?", source="rule")  # type: ignore[arg-type]


def test_export_does_not_depend_on_key_order() -> None:
    # Postgres (JSONB) returns keys in its own order; both sources must export the same bytes.
    session = make_session("A", steps=1)
    step = make_step(session, 1, arguments={"name": "Acme", "amount": 5}, result={"b": 1, "a": 2})
    shuffled = step.model_copy(
        update={"arguments": {"amount": 5, "name": "Acme"}, "result": {"a": 2, "b": 1}}
    )
    assert list(atlas_lines([(session, [step])])) == list(atlas_lines([(session, [shuffled])]))


def test_group_traces_gives_each_session_its_steps(tmp_path: Path) -> None:
    a = make_session("A", steps=2)
    b = make_session("B", steps=1)
    path = write_run(
        tmp_path, [(a, [make_step(a, 1), make_step(a, 2)]), (b, [make_step(b, 1, tool="x")])]
    )
    pairs = group_traces(path.read_text(encoding="utf-8").splitlines())
    assert [(s.case_id, [st.step_id for st in steps]) for s, steps in pairs] == [
        ("A", [1, 2]),
        ("B", [1]),
    ]
    assert pairs[1][1][0].tool == "x"


def test_group_traces_keeps_the_last_copy_of_a_repeated_session(tmp_path: Path) -> None:
    first = make_session("A", score=0.0, steps=2)
    again = make_session("A", score=1.0, steps=1)
    path = write_run(
        tmp_path,
        [
            (first, [make_step(first, 1), make_step(first, 2)]),
            (again, [make_step(again, 1, tool="retry")]),
        ],
    )
    [(session, steps)] = group_traces(path.read_text(encoding="utf-8").splitlines())
    assert session.score == 1.0 and [s.tool for s in steps] == ["retry"]


def test_group_traces_refuses_a_step_without_its_session() -> None:
    orphan = make_step(make_session("A"), 1)
    with pytest.raises(ResultsError, match="no session line before it") as raised:
        group_traces([orphan.model_dump_json()], "x.jsonl")
    assert raised.value.code == "orphan_step"


def test_write_atlas_jsonl_writes_one_line_per_session(tmp_path: Path) -> None:
    session, steps = _episode()
    other = make_session("CASE-2")
    out = tmp_path / "deep" / "atlas.jsonl"
    assert write_atlas_jsonl([(session, steps), (other, [])], out) == 2
    lines = out.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["session_metadata"]["case_id"] for line in lines] == [
        "CASE-1",
        "CASE-2",
    ]
    assert len(json.loads(lines[0])["steps"]) == 2


# ---------------------------------------------------------------------------- the command


@pytest.fixture
def cli() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    session, steps = _episode()
    other_run = make_session("CASE-9", run_id="run-2")
    write_run(tmp_path / "run", [(session, steps), make_session("CASE-2"), other_run])
    return tmp_path / "run"


def test_export_from_a_run_directory_to_stdout(run_dir: Path, cli: typer.Typer) -> None:
    result = CliRunner().invoke(cli, ["export", "--run", "run-1", "--dir", str(run_dir)])
    assert result.exit_code == 0, result.output
    sessions = [json.loads(line) for line in result.stdout.splitlines()]
    # Only the run asked for, steps nested.
    assert [s["session_metadata"]["case_id"] for s in sessions] == ["CASE-1", "CASE-2"]
    assert [s["session_metadata"]["verification_mode"] for s in sessions] == [
        "judges+arbiter",
        "offline",
    ]
    assert [len(s["steps"]) for s in sessions] == [2, 0]


def test_export_to_a_file(run_dir: Path, tmp_path: Path, cli: typer.Typer) -> None:
    out = tmp_path / "atlas.jsonl"
    result = CliRunner().invoke(
        cli,
        ["export", "--run", "run-2", "--format", "atlas", "--dir", str(run_dir), "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert "wrote 1 session(s) of run run-2" in result.stderr
    assert result.stdout == ""
    assert json.loads(out.read_text(encoding="utf-8"))["session_metadata"]["case_id"] == "CASE-9"


def test_export_warns_about_a_session_cut_short(tmp_path: Path, cli: typer.Typer) -> None:
    session = make_session("A", steps=3)
    write_run(tmp_path, [(session, [make_step(session, 1)])])
    result = CliRunner().invoke(cli, ["export", "--run", "run-1", "--dir", str(tmp_path)])
    assert result.exit_code == 0
    assert "fewer step lines than they made" in result.stderr


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--run", "run-7", "--dir", "{run_dir}"], 1, "no session of run 'run-7'"),
        (["--run", "run-1", "--dir", "{missing}"], 1, "no run directory or trace file"),
        (["--run", "run-1", "--format", "csv", "--dir", "{run_dir}"], 2, "'csv' is not"),
    ],
)
def test_export_fails_clearly(
    run_dir: Path, tmp_path: Path, cli: typer.Typer, args: list[str], code: int, message: str
) -> None:
    filled = [a.format(run_dir=run_dir, missing=tmp_path / "nope") for a in args]
    result = CliRunner().invoke(cli, ["export", *filled])
    assert result.exit_code == code
    assert message in result.stderr
    assert "Traceback" not in result.output
    if code == 1:
        assert "it holds run(s) run-1, run-2" in result.stderr or "nope" in result.stderr
