"""`crmbench run` refuses bad input with one clear line, before queuing anything."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from crmbench.cli import app
from tests.agent_runner.conftest import RunServices


@pytest.fixture
def cli_env(run_services: RunServices, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in run_services.env().items():
        monkeypatch.setenv(key, value)


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


@pytest.mark.usefixtures("cli_env")
def test_a_missing_api_key_is_named_and_no_run_is_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    code, output = invoke("run", "--agent", "student", "--limit", "1", "--out", str(tmp_path))
    assert code == 1
    assert "OPENAI_API_KEY" in output and "Traceback" not in output
    assert not (tmp_path / "run.json").exists()


@pytest.mark.usefixtures("cli_env")
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--agent", "robot"], "agent"),
        (["--split", "training"], "split"),
        (["--cases", "CRM-00001,NOPE-1"], "unknown case ids: NOPE-1"),
        (["--trials", "0"], "trials"),
    ],
)
def test_bad_run_options_are_refused(tmp_path: Path, args: list[str], message: str) -> None:
    code, output = invoke("run", "--agent", "oracle", *args, "--out", str(tmp_path / "r"))
    assert code != 0
    assert message in output and "Traceback" not in output
    assert not (tmp_path / "r" / "run.json").exists()


@pytest.mark.usefixtures("cli_env")
def test_a_broken_config_file_is_named(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("agent: oracle\nlimits: {max_steps: -1}\n")
    code, output = invoke("run", "--config", str(config), "--out", str(tmp_path / "r"))
    assert code == 1
    assert str(config) in output and "limits.max_steps" in output


@pytest.mark.usefixtures("cli_env")
def test_run_then_results_on_a_tiny_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    code, output = invoke(
        "run", "--agent", "oracle", "--cases", "CRM-00002,CRM-00003", "--out", str(out), "--quiet"
    )
    assert code == 0, output
    assert "2/2 done" in output and "pass@0.9 100.0%" in output
    code, output = invoke("results", str(out))
    assert code == 0, output
    assert "2 episodes" in output
    # Run again on the same directory: nothing left to do, nothing played twice.
    code, output = invoke("run", "--out", str(out), "--quiet")
    assert code == 0 and "resuming" in output and "2/2 done (0 here)" in output


@pytest.mark.usefixtures("cli_env")
def test_a_heartbeat_longer_than_a_third_of_the_lease_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("agent: oracle\nqueue: {lease_seconds: 20, heartbeat_seconds: 30}\n")
    code, output = invoke("run", "--config", str(config), "--out", str(tmp_path / "r"))
    assert code == 1 and "heartbeat_seconds" in output


@pytest.mark.usefixtures("cli_env")
def test_join_refuses_a_directory_that_holds_another_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    code, output = invoke(
        "run", "--agent", "oracle", "--cases", "CRM-00002", "--out", str(out), "--quiet"
    )
    assert code == 0, output
    code, output = invoke("run", "--join", "run-someone-else", "--out", str(out))
    assert code == 1 and "holds run" in output and "Traceback" not in output
