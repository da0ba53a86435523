"""`crmbench playbooks ...` against real Postgres: the committed example imports (once,
however often it is run), lists, shows, retires, exports and imports into another memory
with the same content hashes; a bad file is refused whole with an error naming it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from agent_runner.learning.memory import PlaybookStore
from crmbench.cli import app
from crmbench_contracts.playbooks import CONTENT_FIELDS, PlaybookContent, entry_id_for
from crmbench_learning.embeddings import HashingEmbedderForTests
from tests.conftest import REPO_ROOT, scratch_database

EXAMPLE = REPO_ROOT / "config" / "playbooks" / "example.json"
HASHING = ["--embedder", "hashing"]


@pytest.fixture
def other_database_url(database_url: str) -> Iterator[str]:
    """A second empty database on the session's server (the memory to import into)."""
    with scratch_database(database_url) as url:
        yield url


@pytest.fixture
def runner(fresh_database_url: str, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("DATABASE_URL", fresh_database_url)
    return CliRunner()


def invoke(runner: CliRunner, *args: str, code: int = 0) -> Any:
    result = runner.invoke(app, ["playbooks", *args])
    assert result.exit_code == code, result.output
    return result


def example_ids() -> list[str]:
    document = json.loads(EXAMPLE.read_text(encoding="utf-8"))
    return [item["entry"]["entry_id"] for item in document["entries"]]


def export(runner: CliRunner) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(invoke(runner, "export").stdout)
    return document


def hashes(document: dict[str, Any]) -> dict[str, list[str]]:
    return {
        item["entry"]["entry_id"]: [version["content_hash"] for version in item["versions"]]
        for item in document["entries"]
    }


def without_time(document: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in document.items() if key != "exported_at"}


def test_example_imports_lists_shows_and_round_trips(
    runner: CliRunner, other_database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ids = example_ids()
    assert 3 <= len(ids) <= 5
    imported = invoke(runner, "import", str(EXAMPLE), *HASHING)
    assert "entries: 5 added, 0 skipped" in imported.output
    assert "5 vectors computed with hashing-for-tests:256" in imported.output

    listed = invoke(runner, "list").output
    assert all(entry_id in listed for entry_id in ids) and "5 entries (5 active" in listed
    rows = json.loads(invoke(runner, "list", "--audience", "teacher", "--json").stdout)
    assert [row["entry"]["audience"] for row in rows] == ["teacher"]
    assert rows[0]["counters"]["retrieved"] == 0

    shown = invoke(runner, "show", ids[0]).output
    assert "currency sign" in shown and "create_new_opportunity.amount" in shown
    assert "versions (1):" in shown and "counters: retrieved 0" in shown
    detail = json.loads(invoke(runner, "show", ids[0], "--json").stdout)
    assert [v["version"] for v in detail["versions"]] == [1] and detail["retirement"] is None

    retired = invoke(runner, "retire", ids[1], "--reason", "stage names are in the prompt now")
    assert f"retired {ids[1]}" in retired.output
    first = export(runner)
    out = tmp_path / "memory.json"
    assert "wrote 5 entries" in invoke(runner, "export", "--out", str(out)).output
    assert without_time(json.loads(out.read_text(encoding="utf-8"))) == without_time(first)
    assert hashes(first) == hashes(json.loads(EXAMPLE.read_text(encoding="utf-8")))

    # Into another memory: the same entries, content hashes, vectors and retirement.
    monkeypatch.setenv("DATABASE_URL", other_database_url)
    again = invoke(runner, "import", str(out), *HASHING)
    assert "entries: 5 added" in again.output and "0 vectors computed" in again.output
    second = export(runner)
    assert hashes(second) == hashes(first)
    assert without_time(second) == without_time(first)
    assert "retired" in invoke(runner, "list", "--status", "retired").output

    # The computed vectors make the imported entries searchable by that embedder.
    embedder = HashingEmbedderForTests()
    query = embedder.embed(["the user wrote $45,000 with a currency sign"])[0]

    async def search() -> list[str]:
        store = await PlaybookStore.connect(
            other_database_url, embedder=embedder.name, dimension=embedder.dimensions
        )
        try:
            return [m.entry.entry_id for m in await store.search(query, k=2, threshold=0.1)]
        finally:
            await store.close()

    assert asyncio.run(search())[0] == ids[0]


def test_import_twice_adds_nothing(runner: CliRunner) -> None:
    first = invoke(runner, "import", str(EXAMPLE))  # the default, local, embedder
    assert "entries: 5 added" in first.output and "local:all-MiniLM-L6-v2-int8" in first.output
    before = export(runner)
    second = invoke(runner, "import", str(EXAMPLE))
    assert (
        "entries: 0 added, 5 skipped; versions: 0 added, 5 skipped; "
        "embeddings: 0 added, 5 skipped" in second.output
    )
    assert without_time(export(runner)) == without_time(before)


def test_embedding_config_file(runner: CliRunner, tmp_path: Path) -> None:
    config = tmp_path / "learning.yaml"
    config.write_text("embeddings:\n  provider: hashing\n  dimensions: 64\n", encoding="utf-8")
    with_config = ["import", str(EXAMPLE), "--embedding-config", str(config)]
    done = invoke(runner, *with_config)
    assert "computed with hashing-for-tests:64" in done.output
    assert "disagrees" in invoke(runner, *with_config, "--embedder", "local", code=1).output
    config.write_text("embeddings:\n  provider: nope\n", encoding="utf-8")
    assert "embeddings: provider" in invoke(runner, *with_config, code=1).output
    openai = invoke(runner, "import", str(EXAMPLE), "--embedder", "openai", code=1)
    assert "--embedding-config" in openai.output


def _write(path: Path, document: Any) -> str:
    path.write_text(json.dumps(document), encoding="utf-8")
    return str(path)


def test_bad_files_are_refused_whole(runner: CliRunner, tmp_path: Path) -> None:
    invoke(runner, "import", str(EXAMPLE), *HASHING)
    before = export(runner)
    example = json.loads(EXAMPLE.read_text(encoding="utf-8"))
    not_json = tmp_path / "broken.json"
    not_json.write_text('{"format": ', encoding="utf-8")
    edited = json.loads(json.dumps(example))
    edited["entries"][0]["versions"][0]["cue"]["text"] = "edited without a new hash"
    twice = {**example, "entries": [example["entries"][0], example["entries"][0]]}
    stray = json.loads(json.dumps(example))
    stray["entries"][0]["embeddings"] = {"hashing-for-tests:256": {"5": [1.0] * 256}}
    # A new, valid entry beside one whose content is already here under another id.
    fresh = json.loads(json.dumps(example["entries"][2]))
    fresh_text = "The user asks to mark a deal as won."
    for part in (fresh["entry"], fresh["versions"][0]):
        part["cue"]["text"] = fresh_text
    content = {key: fresh["entry"][key] for key in CONTENT_FIELDS}
    digest = PlaybookContent.model_validate(content).digest()
    fresh["entry"]["content_hash"] = fresh["versions"][0]["content_hash"] = digest
    fresh["entry"]["entry_id"] = fresh["counters"]["entry_id"] = entry_id_for(digest)
    moved = json.loads(json.dumps(example["entries"][3]))
    moved["entry"]["entry_id"] = moved["counters"]["entry_id"] = "pb-elsewhere"
    conflict = {**example, "entries": [fresh, moved]}

    cases = {
        "is not JSON": str(not_json),
        "is not a playbook export": _write(tmp_path / "list.json", [example]),
        "entries: Field required": _write(tmp_path / "shape.json", {"format": example["format"]}),
        "does not match the content": _write(tmp_path / "edited.json", edited),
        "appears twice": _write(tmp_path / "twice.json", twice),
        "vectors of versions [5]": _write(tmp_path / "stray.json", stray),
        "disagrees with this memory": _write(tmp_path / "conflict.json", conflict),
        "no file": str(tmp_path / "missing.json"),
    }
    for message, path in cases.items():
        refused = invoke(runner, "import", path, *HASHING, code=1)
        assert message in refused.output, (message, refused.output)
        assert "Traceback" not in refused.output
    assert without_time(export(runner)) == without_time(before)
    assert hashes(before) == hashes(example)  # the new entry of the conflicting file is absent


def test_retire(runner: CliRunner) -> None:
    invoke(runner, "import", str(EXAMPLE), *HASHING)
    entry_id = example_ids()[3]
    invoke(runner, "retire", entry_id, "--reason", "closed deals are in the system prompt")
    active = invoke(runner, "list", "--status", "active").output
    assert entry_id not in active and "4 entries (4 active, 0 retired)" in active
    shown = invoke(runner, "show", entry_id).output
    assert "retired" in shown and "(manual): closed deals are in the system prompt" in shown
    again = invoke(runner, "retire", entry_id, "--reason", "another reason")
    assert "retired already (closed deals are in the system prompt)" in again.output
    detail = json.loads(invoke(runner, "show", entry_id, "--json").stdout)
    assert detail["retirement"]["reason"] == "closed deals are in the system prompt"
    assert detail["entry"]["status"] == "retired"

    unknown = invoke(runner, "retire", "pb-0000000000000000", "--reason", "x", code=1)
    assert "no playbook entry 'pb-0000000000000000'" in unknown.output
    assert "no playbook entry" in invoke(runner, "show", "pb-nope", code=1).output
    assert "--reason is empty" in invoke(runner, "retire", entry_id, "--reason", " ", code=1).output
    assert invoke(runner, "retire", entry_id, code=2).exit_code == 2  # --reason is required
