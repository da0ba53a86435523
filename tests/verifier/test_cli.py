"""`crmbench verify` scores a saved state offline; `crmbench serve verifier` is registered."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from crmbench.cli import app
from crmbench_corpus.store import case_line
from tests.verifier.factories import (
    allow,
    assertion,
    change_log,
    client,
    insert,
    make_case,
    mentions,
    note,
    state_of,
    update,
)

ACME = client("c-acme", "Acme Corp")
NOTE = note("n-1", "c-acme", "Called about the renewal")
CASE = make_case(
    case_id="cli-note",
    state=[
        assertion(
            "row_exists", "note", {"entity_id": "c-acme", "content": {"$icontains": "renewal"}}
        )
    ],
    allowed=[allow("note", ["INSERT"], {"entity_id": "c-acme"}, max_rows=1)],
    communicate=[mentions("note")],
)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "cases.jsonl").write_text(case_line(CASE) + "\n", encoding="utf-8")
    return folder


def write(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def verify(corpus: Path, *args: str) -> Any:
    return CliRunner().invoke(
        app, ["verify", "--case", CASE.case_id, "--corpus-dir", str(corpus), *args]
    )


def test_verify_prints_a_table_and_a_passing_score(corpus: Path, tmp_path: Path) -> None:
    state = write(tmp_path / "state.json", state_of(client=[ACME], note=[NOTE]))
    changes = write(tmp_path / "changes.json", change_log([insert("note", NOTE)]))
    result = verify(
        corpus, "--state", str(state), "--changes", str(changes), "--reply", "I added a note."
    )
    assert result.exit_code == 0, result.output
    for text in ("state[0]", "collateral", "communicate[0]", "score 1.000", "PASS"):
        assert text in result.stdout


def test_verify_json_gives_the_reward_record(corpus: Path, tmp_path: Path) -> None:
    state = write(tmp_path / "state.json", state_of(client=[ACME], note=[NOTE]))
    changes = write(
        tmp_path / "changes.json",
        change_log([insert("note", NOTE)], [update("client", ACME, phone="1")]),
    )
    reply = tmp_path / "reply.txt"
    reply.write_text("Noted.", encoding="utf-8")
    result = verify(
        corpus,
        "--state",
        str(state),
        "--changes",
        str(changes),
        "--reply-file",
        str(reply),
        "--json",
    )
    assert result.exit_code == 0, result.output  # a failed case is not a failed command
    record = json.loads(result.stdout)
    assert record["case_id"] == CASE.case_id and record["score"] == 0.0
    assert record["passed"] is False
    assert [c["key"] for c in record["collateral"]] == ["c-acme"]


def test_verify_without_changes_assumes_an_empty_log(corpus: Path, tmp_path: Path) -> None:
    state = write(tmp_path / "state.json", state_of(client=[ACME]))
    result = verify(corpus, "--state", str(state), "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    # an empty log: nothing changed, so the (empty) reply's implicit "done" fails the gate
    gate = next(c for c in record["checks"] if c["check_id"] == "outcome")
    assert "changed nothing" in gate["rationale"] and record["score"] == 0.0
    assert "FAIL" not in result.stdout


def test_verify_shows_collateral_in_the_table(corpus: Path, tmp_path: Path) -> None:
    state = write(tmp_path / "state.json", state_of(client=[ACME], note=[NOTE]))
    changes = write(
        tmp_path / "changes.json",
        change_log([insert("note", NOTE)], [update("client", ACME, phone="1")]),
    )
    result = verify(corpus, "--state", str(state), "--changes", str(changes), "--reply", "note")
    assert result.exit_code == 0, result.output
    assert "collateral UPDATE client c-acme" in result.stdout
    assert "FAIL" in result.stdout and "score 0.000" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--case", "nope", "--state", "{state}"], "no case 'nope' in the corpus (1 cases)"),
        (["--case", CASE.case_id, "--state", "{missing}"], "cannot read the state file"),
        (["--case", CASE.case_id, "--state", "{garbage}"], "is not JSON"),
        (
            ["--case", CASE.case_id, "--state", "{state}", "--changes", "{garbage}"],
            "the changes file",
        ),
        (["--case", CASE.case_id, "--state", "{garbage_shape}"], "state at tables"),
        (
            [
                "--case",
                CASE.case_id,
                "--state",
                "{state}",
                "--reply",
                "x",
                "--reply-file",
                "{state}",
            ],
            "not both",
        ),
        (
            ["--case", CASE.case_id, "--state", "{state}", "--reply-file", "{missing}"],
            "cannot read the reply file",
        ),
    ],
)
def test_verify_bad_input_is_a_one_line_error(
    corpus: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    files = {
        "state": write(tmp_path / "state.json", state_of()),
        "missing": tmp_path / "missing.json",
        "garbage": tmp_path / "garbage.json",
        "garbage_shape": write(tmp_path / "shape.json", {"today": "2025-11-12"}),
    }
    files["garbage"].write_text("{not json", encoding="utf-8")
    argv = ["verify", "--corpus-dir", str(corpus)] + [a.format(**files) for a in args]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 1, result.output
    assert message in result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.output


def test_verify_without_a_corpus_is_a_one_line_error(tmp_path: Path) -> None:
    state = write(tmp_path / "state.json", state_of())
    result = CliRunner().invoke(
        app, ["verify", "--case", "x", "--state", str(state), "--corpus-dir", str(tmp_path)]
    )
    assert result.exit_code == 1
    assert "no corpus at" in result.stderr and result.stderr.count("\n") == 1


def test_serve_verifier_is_a_command() -> None:
    result = CliRunner().invoke(app, ["serve", "verifier", "--help"])
    assert result.exit_code == 0
    assert "--crm-api-url" in result.stdout and "8001" in result.stdout
