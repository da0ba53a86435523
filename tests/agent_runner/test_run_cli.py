"""`crmbench run` refuses bad input with one clear line, before queuing anything."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from crmbench.cli import app
from crmbench_llm import base
from tests.agent_runner.conftest import ApiUnderTest, RunServices

ORIGINAL_PAIRING = Path(__file__).resolve().parents[2] / "config" / "run.original-pairing.yaml"


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
@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"CRMBENCH_VERIFIER_KEY": "short"}, "CRMBENCH_VERIFIER_KEY is too short"),
        # The verifier key defaults to the admin key: a weak one is named as what was set.
        ({"CRMBENCH_ADMIN_KEY": "change-me"}, "CRMBENCH_ADMIN_KEY is a well-known placeholder"),
    ],
)
def test_a_weak_key_is_refused_before_a_run_is_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], problem: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "r"
    code, output = invoke("run", "--agent", "oracle", "--limit", "1", "--out", str(out))
    assert code == 1, output
    assert output.startswith(f"error: {problem}"), output
    assert "started run" not in output and "Traceback" not in output
    assert not out.exists()


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


@pytest.mark.usefixtures("cli_env")
@pytest.mark.parametrize("status", [401, 403, 404])
def test_a_refused_key_or_model_stops_the_run_with_a_clear_error(
    tmp_path: Path, openai_api: ApiUnderTest, status: int
) -> None:
    """Through the real OpenAI SDK: the run stops at once, exits non-zero, names the
    status, and scores nothing; the episodes stay queued for a resume."""
    openai_api.fake.script(*(openai_api.error(status) for _ in range(4)))
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "agent": "student",
                "concurrency": 2,
                "providers": {"student": openai_api.config().model_dump(mode="json")},
            }
        )
    )
    out = tmp_path / "run"
    code, output = invoke(
        "run", "--config", str(config), "--cases", "CRM-00001,CRM-00002", "--out", str(out)
    )
    assert code == 1, output
    assert f"openai http_error {status}" in output and "Traceback" not in output
    assert "No episode was scored" in output and f"crmbench run --out {out}" in output
    assert "pass@0.9" not in output  # no report of a run that did not happen
    # Each in-flight episode asked once; none was retried or scored.
    assert len(openai_api.fake.received) <= 2
    traces = out / "sessions.jsonl"
    assert not traces.exists() or traces.read_text() == ""
    assert (out / "run.json").exists()  # the run is there to resume


@pytest.mark.usefixtures("cli_env")
def test_the_original_pairing_is_a_config_run_accepts(tmp_path: Path) -> None:
    code, output = invoke(
        "run",
        "--config",
        str(ORIGINAL_PAIRING),
        "--agent",
        "oracle",
        "--cases",
        "CRM-00002",
        "--out",
        str(tmp_path / "r"),
        "--quiet",
    )
    assert code == 0, output
    stored = json.loads((tmp_path / "r" / "run.json").read_text())["config"]
    assert stored["providers"]["teacher"]["model"] == "claude-sonnet-4-5"


@pytest.mark.usefixtures("cli_env")
def test_the_original_teacher_is_announced_as_deprecated_once_per_run(
    tmp_path: Path,
    anthropic_api: ApiUnderTest,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`crmbench run` builds the agent twice (to check it, then to run) and calls it
    several times; the deprecation is said once, with its date."""
    monkeypatch.setattr(base, "_NOTICES_SHOWN", set())
    caplog.set_level(logging.WARNING, logger="crmbench_llm.base")
    anthropic_api.fake.script(*(anthropic_api.ok("Done.") for _ in range(2)))
    config = yaml.safe_load(ORIGINAL_PAIRING.read_text())
    config["providers"]["teacher"]["base_url"] = anthropic_api.base_url
    config["providers"]["teacher"]["backoff_base_seconds"] = 0.01
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    code, output = invoke(
        "run",
        "--config",
        str(path),
        "--agent",
        "teacher",
        "--cases",
        "CRM-00002,CRM-00003",
        "--out",
        str(tmp_path / "r"),
        "--quiet",
    )
    assert code == 0, output
    notices = [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]
    assert len(notices) == 1 and "claude-sonnet-4-5" in notices[0], notices
    assert "November 30th, 2026" in notices[0]
    assert len(anthropic_api.fake.received) == 2 and anthropic_api.fake.violations == []


@pytest.mark.usefixtures("cli_env")
def test_harness_errors_are_reported_when_the_run_ends(
    tmp_path: Path, openai_api: ApiUnderTest
) -> None:
    """A provider that stays down: the episode is retried, then ends as a harness error,
    out of the pass rate and said so, never scored as the model's failure."""
    openai_api.fake.script(*(openai_api.error(503) for _ in range(3)))
    student = openai_api.config(max_retries=0).model_dump(mode="json")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"agent": "student", "providers": {"student": student}}))
    out = tmp_path / "r"
    code, output = invoke(
        "run", "--config", str(config), "--cases", "CRM-00001", "--out", str(out), "--quiet"
    )
    assert code == 0, output
    assert "harness errors 1" in output and "pass@0.9 -" in output
    assert "warning: 1 episodes ended in harness errors" in output
