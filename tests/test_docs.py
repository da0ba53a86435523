"""The README and docs as a newcomer uses them: links stay inside the repository, the
documented commands exist, the hand-made tool call works against the real CRM API, the
documented request fields match the served contract, and the setup scripts install once.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from crmbench.cli import app
from tests.conftest import ADMIN_KEY, REPO_ROOT, start_server

SKIPPED_DIRS = {
    ".venv",
    ".git",
    "runs",
    "experiments",
    "node_modules",
    ".mypy_cache",
    ".ruff_cache",
}


def markdown_files() -> list[Path]:
    return sorted(
        path
        for path in REPO_ROOT.rglob("*.md")
        if not SKIPPED_DIRS.intersection(path.relative_to(REPO_ROOT).parts)
    )


def _inside_repo(path: Path) -> bool:
    return path.resolve().is_relative_to(REPO_ROOT.resolve())


def test_no_doc_links_outside_the_repository() -> None:
    problems = []
    for doc in markdown_files():
        text = doc.read_text(encoding="utf-8")
        name = doc.relative_to(REPO_ROOT)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # a URL or an anchor
            resolved = doc.parent / target.split("#")[0]
            if not _inside_repo(resolved) or not resolved.exists():
                problems.append(f"{name}: link to {target}")
        for relative in re.findall(r"(?<![\w.])((?:\.\./)+[\w./-]*)", text):
            resolved = doc.parent / relative
            if not _inside_repo(resolved) or not resolved.exists():
                problems.append(f"{name}: refers to {relative}")
        for absolute in re.findall(r"(?<![\w.:/])(/(?:work|home|Users|tmp)/[\w./-]+)", text):
            problems.append(f"{name}: refers to the absolute path {absolute}")
    assert markdown_files(), "no markdown file found"
    assert not problems, "docs must stand alone:\n" + "\n".join(problems)


def _section(title: str) -> str:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index(f"## {title}\n")
    end = readme.find("\n## ", start + 1)
    return readme[start : end if end != -1 else len(readme)]


def _bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def test_readme_commands_exist_as_written() -> None:
    block = _bash_blocks(_section("Using it"))[0]
    lines = [line for line in block.splitlines() if line.strip()]
    # The scripts make .venv; the command is on PATH only once it is activated.
    assert lines[0].strip() == "source .venv/bin/activate"
    assert "-m venv .venv" in (REPO_ROOT / "scripts" / "venv.sh").read_text()
    top = {command.name for command in app.registered_commands}
    groups = {group.name: group.typer_instance for group in app.registered_groups}
    runner = CliRunner()
    checked = []
    for line in lines[1:]:
        words = line.split()
        if words[0] != "crmbench":
            continue  # a continuation line of the previous command
        name = words[1]
        if name in top:
            paths = [[name]]
        else:
            assert name in groups, f"README names an unknown command: {line}"
            assert groups[name] is not None
            subcommands = {c.name for c in groups[name].registered_commands}
            paths = [[name, word] for word in words[2:] if word in subcommands]
            assert paths, f"README names no known `crmbench {name}` command: {line}"
        for path in paths:
            shown = runner.invoke(app, [*path, "--help"])
            assert shown.exit_code == 0, f"crmbench {' '.join(path)}: {shown.output}"
            checked.append(" ".join(path))
    assert {"run", "results", "export", "db status", "db stop", "serve crm-api"} <= set(checked)


def _curl_calls(block: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(path, bearer variable, JSON body) of every `curl -X POST` of a bash block."""
    joined = block.replace("\\\n", " ")
    calls = []
    for line in joined.splitlines():
        if not line.strip().startswith("curl "):
            continue
        words = shlex.split(line, comments=True)
        url = next(w for w in words if w.startswith("localhost:"))
        auth = next(w for w in words if w.startswith("Authorization: Bearer "))
        body = json.loads(words[words.index("-d") + 1])
        calls.append((url.split(":8000", 1)[1], auth.rsplit("$", 1)[1], body))
    return calls


async def _play(base_url: str, admin_key: str, calls: list[tuple[str, str, dict[str, Any]]]) -> Any:
    tokens = {"KEY": admin_key}
    answer: Any = None
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        for path, variable, body in calls:
            response = await client.post(
                path, json=body, headers={"Authorization": f"Bearer {tokens[variable]}"}
            )
            assert response.status_code in (200, 201), f"{path}: {response.text}"
            answer = response.json()
            if "token" in answer:
                tokens["TOKEN"] = answer["token"]
    return answer


def test_readme_tool_call_example_works_against_the_real_api(fresh_database_url: str) -> None:
    from crm_api.migrate import migrate
    from crm_api.settings import CrmApiSettings
    from crmbench.cases_cli import load_corpus_into

    block = next(b for b in _bash_blocks(_section("Using it")) if "curl" in b)
    calls = _curl_calls(block)
    assert [path for path, _, _ in calls] == ["/episodes", "/tools/client_search"]
    assert "--load-corpus" in block  # what makes `case_id` work
    migrate(fresh_database_url, CrmApiSettings().world_seed)
    load_corpus_into(fresh_database_url, None)
    server = start_server(fresh_database_url, pool_size=0)
    try:
        answer = asyncio.run(_play(server.base_url, ADMIN_KEY, calls))
    finally:
        server.stop()
    searched = calls[-1][2]["criteria"]["name"]
    names = [item["name"] for item in answer["items"]]
    assert searched in names, f"the README searches for {searched!r}; the world has {names}"


def test_crm_api_doc_lists_every_field_of_post_episodes() -> None:
    contract = json.loads((REPO_ROOT / "docs" / "openapi.json").read_text(encoding="utf-8"))
    schema = contract["paths"]["/episodes"]["post"]["requestBody"]["content"]["application/json"]
    name = schema["schema"]["$ref"].rsplit("/", 1)[1]
    fields = set(contract["components"]["schemas"][name]["properties"])
    doc = (REPO_ROOT / "docs" / "crm_api.md").read_text(encoding="utf-8")
    row = next(line for line in doc.splitlines() if line.startswith("| `POST /episodes` |"))
    missing = sorted(f for f in fields if not re.search(rf"\b{f}\b", row))
    assert not missing, f"docs/crm_api.md does not document {missing} of POST /episodes"


# ---------------------------------------------------------------------------- setup scripts


@pytest.fixture
def fake_checkout(tmp_path: Path) -> Path:
    """A checkout with scripts/venv.sh, a pyproject.toml and a .venv whose python logs
    every pip call (with PYTHONWARNINGS) instead of installing anything."""
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "venv.sh").write_text(
        (REPO_ROOT / "scripts" / "venv.sh").read_text(encoding="utf-8")
    )
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    python = bin_dir / "python"
    python.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then\n'
        '    echo "pip $* | PYTHONWARNINGS=${PYTHONWARNINGS:-}" >> "$PIP_LOG"; exit 0\n'
        "fi\n"
        f'exec {sys.executable} "$@"\n'
    )
    python.chmod(0o755)
    return tmp_path


def _ensure(checkout: Path, extras: str) -> list[str]:
    log = checkout / "pip.log"
    log.unlink(missing_ok=True)
    subprocess.run(
        ["bash", "-c", f". scripts/venv.sh && ensure_venv {extras}"],
        cwd=checkout,
        env={**os.environ, "PIP_LOG": str(log)},
        check=True,
        capture_output=True,
        text=True,
    )
    return log.read_text().splitlines() if log.exists() else []


def test_setup_installs_only_when_pyproject_changes(fake_checkout: Path) -> None:
    first = _ensure(fake_checkout, "")
    assert any("install" in line and "-e ." in line for line in first), first
    # setuptools' editable-install warning box is silenced
    assert all("PYTHONWARNINGS=ignore:Editable installation" in line for line in first[-1:])
    assert _ensure(fake_checkout, "") == []  # rerun: nothing installed
    dev = _ensure(fake_checkout, "dev")  # the test extras are not in yet
    assert any("-e .[dev]" in line for line in dev), dev
    assert _ensure(fake_checkout, "dev") == []
    assert _ensure(fake_checkout, "") == []  # the dev install holds the base one
    (fake_checkout / "pyproject.toml").write_text('[project]\nname = "x"\nversion = "2"\n')
    assert any("-e ." in line for line in _ensure(fake_checkout, "")), "changed: reinstall"
