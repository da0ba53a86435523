"""`crmbench experiment`: its config refuses bad settings by name, and a simulated
experiment runs every stage as a resumable run in its own database, through the command
as a subprocess against the real services, interrupted (SIGTERM) and killed (SIGKILL) on
the way and continued by the same command."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml
from sqlalchemy.engine import make_url

from agent_runner.run.store import asyncpg_dsn
from crmbench.experiment import (
    DATABASE_PREFIX,
    EXPERIMENT_FILE,
    ExperimentConfigError,
    base_run_config,
    load_experiment_config,
    stage_plan,
    stage_run_config,
)
from crmbench_contracts.paths import CONFIG_DIR, REPO_ROOT
from crmbench_corpus.store import load_manifest
from tests.agent_runner.conftest import (  # the fixtures of the runs' real services
    RunServices,
    corpus_index,  # noqa: F401
    run_services,  # noqa: F401
    verifier_url,  # noqa: F401
)
from tests.agent_runner.test_run_processes import CRMBENCH, assert_exactly_once, done_count

LIMIT = 4
STAGE_FILES = ("run.json", "sessions.jsonl")


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------- the config


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"learning": {"k": 0}}, "learning.k"),
        ({"learning": {"mode": "on"}}, "learning"),
        ({"learning": {"control": "shuffled"}}, "learning"),
        ({"stagez": True}, "stagez"),
        ({"agent": "robot"}, "agent"),
        ({"concurrency": 0}, "concurrency"),
        ({"limit": 0}, "limit"),
        ({"run": "config/no-such-run.yaml"}, "run"),
        ({"judges": "config/no-such-judges.yaml"}, "judges"),
        ({"name": "../escape"}, "name"),
    ],
)
def test_a_bad_setting_is_refused_naming_its_field(
    tmp_path: Path, settings: dict[str, Any], field: str
) -> None:
    path = write_yaml(tmp_path / "experiment.yaml", {"name": "t", **settings})
    with pytest.raises(ExperimentConfigError) as caught:
        load_experiment_config(path)
    assert f"{path}: {field}" in str(caught.value)


def test_a_missing_name_is_refused(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "experiment.yaml", {"agent": "simulated"})
    with pytest.raises(ExperimentConfigError, match=r": name: Field required"):
        load_experiment_config(path)


def test_the_cli_names_the_bad_field_in_one_line_and_makes_nothing(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "experiment.yaml", {"name": "t", "learning": {"k": 0}})
    out = tmp_path / "out"
    done = subprocess.run(
        [CRMBENCH, "experiment", "--config", str(path), "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
        env={k: v for k, v in os.environ.items() if k != "DATABASE_URL"},
    )
    assert done.returncode == 1
    assert done.stderr.startswith(f"error: {path}: learning.k:"), done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert not out.exists()


def test_a_missing_api_key_is_named_before_anything_is_made(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "OPENAI_API_KEY")}
    done = subprocess.run(
        [
            CRMBENCH,
            "experiment",
            "--config",
            str(CONFIG_DIR / "experiment.customer.yaml"),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=False,
        env={**env, "ANTHROPIC_API_KEY": "sk-dummy-anthropic"},
    )
    assert done.returncode == 1
    assert done.stderr.startswith("error: ") and "OPENAI_API_KEY" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert not out.exists()


def test_stages_follow_the_plan_with_the_experiment_settings_on_the_run_config(
    tmp_path: Path,
) -> None:
    run = yaml.safe_load((CONFIG_DIR / "run.yaml").read_text())
    run["learning"]["triage"] = {"min_episodes": 5}
    run_file = write_yaml(tmp_path / "run.yaml", run)
    experiment = {
        "name": "plan",
        "run": str(run_file),
        "agent": "simulated",
        "concurrency": 2,
        "limit": 7,
        "control": True,
        "learning": {
            "teacher": "simulated",
            "threshold": 0.3,
            "triage": {"auto_at": 0.8},
            "embeddings": {"provider": "hashing"},
        },
    }
    config = load_experiment_config(write_yaml(tmp_path / "e.yaml", experiment), limit=3)
    base = base_run_config(config)
    plans = stage_plan(config.control)
    assert [p.name for p in plans] == [
        "baseline",
        "seed",
        "learn",
        "control",
        "retrieval",
        "holdout-baseline",
        "transfer",
    ]
    assert [p.name for p in stage_plan(False)] == [
        "baseline",
        "seed",
        "learn",
        "holdout-baseline",
        "transfer",
    ]
    for plan in plans:
        stage = stage_run_config(base, plan)
        assert (stage.split, stage.learning.mode, stage.learning.control) == (
            plan.split,
            plan.mode,
            plan.control,
        )
        assert (stage.agent, stage.concurrency, stage.limit) == ("simulated", 2, 3)
        # The experiment's keys on top of the run config's, section by section.
        assert stage.learning.triage.min_episodes == 5
        assert stage.learning.triage.auto_at == 0.8
        assert stage.learning.threshold == 0.3
        assert stage.learning.embeddings.provider == "hashing"
        assert stage.providers == base.providers


@pytest.mark.parametrize(
    "name",
    ["experiment.simulated.yaml", "experiment.simulated-tools.yaml", "experiment.customer.yaml"],
)
def test_the_shipped_configs_load(name: str) -> None:
    config = load_experiment_config(CONFIG_DIR / name)
    base = base_run_config(config)
    tools = name == "experiment.simulated-tools.yaml"
    for plan in stage_plan(config.control):
        # On every stage; it acts in the learning hooks, so the baselines (learning off)
        # still offer every tool.
        assert stage_run_config(base, plan).learning.tool_subset is tools
    if name == "experiment.customer.yaml":
        assert base.providers["student"].provider == "openai"
        assert base.providers["teacher"].provider == "anthropic"
        assert base.learning.teacher == "model"
    else:
        assert base.agent == "simulated" and base.learning.teacher == "simulated"


def test_the_tools_variant_differs_from_the_simulated_experiment_only_in_tool_subset() -> None:
    plain = yaml.safe_load((CONFIG_DIR / "experiment.simulated.yaml").read_text())
    tools = yaml.safe_load((CONFIG_DIR / "experiment.simulated-tools.yaml").read_text())
    assert (plain.pop("name"), tools.pop("name")) == ("simulated", "simulated-tools")
    assert (plain["learning"].pop("tool_subset"), tools["learning"].pop("tool_subset")) == (
        False,
        True,
    )
    assert plain == tools


# ---------------------------------------------------------------------------- end to end


def experiment_files(tmp_path: Path) -> Path:
    """A simulated experiment with the hashing embedder (fast; the tests' threshold) and a
    simulated LLM slow enough that a stage can be interrupted in its middle."""
    simulated = yaml.safe_load((CONFIG_DIR / "simulated_llm.yaml").read_text())
    simulated["latency_ms"] = 80
    run = yaml.safe_load((CONFIG_DIR / "run.yaml").read_text())
    run["simulated"]["config"] = str(write_yaml(tmp_path / "simulated_llm.yaml", simulated))
    # A teacher whose every lesson is one the gates accept: the memory's only source here
    # is a single failed seed episode, and a restated or useless lesson drawn for it (the
    # draw hashes the session id, new each run) would leave it empty one run in ~7.
    teacher = yaml.safe_load((CONFIG_DIR / "simulated_teacher.yaml").read_text())
    teacher.update(restate_rate=0.0, wrong_rate=0.0, useless_rate=0.0)
    teacher["plan_review"]["catch_rate"] = 0.0
    run["learning"]["simulated_teacher"] = str(
        write_yaml(tmp_path / "simulated_teacher.yaml", teacher)
    )
    experiment = {
        "name": "e2e",
        "run": str(write_yaml(tmp_path / "run.yaml", run)),
        "agent": "simulated",
        "concurrency": 1,
        "control": True,
        "learning": {
            "teacher": "simulated",
            "threshold": 0.3,
            "embeddings": {"provider": "hashing"},
            # Every episode distilled: the memory gets lessons even from 2 x 4 episodes.
            "synthesis": {"episodes": "all"},
        },
    }
    return write_yaml(tmp_path / "experiment.yaml", experiment)


def start(services: RunServices, config: Path, out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            CRMBENCH,
            "experiment",
            "--config",
            str(config),
            "--out",
            str(out),
            "--limit",
            str(LIMIT),
            "--quiet",
        ],
        env={**os.environ, **services.env()},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def read_record(out: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads((out / EXPERIMENT_FILE).read_text())
        return data
    except (OSError, ValueError):
        return None


async def wait_for(
    process: subprocess.Popen[bytes], what: str, check: Callable[[], Any], seconds: float = 180
) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        found = check()
        if asyncio.iscoroutine(found):
            found = await found
        if found:
            return found
        if process.poll() is not None:
            output = process.stdout.read().decode() if process.stdout else ""
            raise AssertionError(f"the experiment ended before {what}:\n{output}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def running_stage(out: Path, name: str) -> str | None:
    """The run id of stage `name` once it is running."""
    record = read_record(out)
    if record is None:
        return None
    stage = next(s for s in record["stages"] if s["name"] == name)
    return stage["run_id"] if stage["status"] == "running" else None


async def sql(url: str, statement: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        rows: list[asyncpg.Record] = await conn.fetch(statement, *args)
        return rows
    finally:
        await conn.close()


async def test_a_simulated_experiment_runs_every_stage_and_continues_after_a_kill(
    run_services: RunServices,  # noqa: F811
    tmp_path: Path,
) -> None:
    config = experiment_files(tmp_path)
    out = tmp_path / "experiment"
    plans = stage_plan(control=True)
    database: str | None = None
    try:
        # 0. SIGTERM while it starts (its record written, its services starting): the same
        # clean stop and the same hint.
        starting = start(run_services, config, out)
        await wait_for(starting, "the record", lambda: read_record(out))
        starting.send_signal(signal.SIGTERM)
        output = starting.communicate(timeout=60)[0].decode()
        assert starting.returncode == 130, output
        assert "interrupted; continue with: crmbench experiment" in output

        # 1. SIGTERM during the baseline: a clean stop (exit 130) that says how to continue.
        first = start(run_services, config, out)
        await wait_for(first, "the baseline", lambda: running_stage(out, "baseline"))
        record = read_record(out)
        assert record is not None
        database = record["database"]["name"]
        assert database.startswith(DATABASE_PREFIX)
        experiment_url = (
            make_url(run_services.database_url)
            .set(database=database)
            .render_as_string(hide_password=False)
        )
        first.send_signal(signal.SIGTERM)
        output = first.communicate(timeout=60)[0].decode()
        assert first.returncode == 130, output
        assert "interrupted; continue with: crmbench experiment" in output

        # 2. Continued, then killed with SIGKILL in the middle of `learn`.
        second = start(run_services, config, out)
        learn_run = await wait_for(second, "learn", lambda: running_stage(out, "learn"))
        experiment_services = replace(run_services, database_url=experiment_url)

        async def learn_started() -> bool:
            return await done_count(experiment_services, learn_run) >= 1

        await wait_for(second, "learn's first episode", learn_started)
        second.send_signal(signal.SIGKILL)
        second.wait()
        assert second.returncode == -signal.SIGKILL
        at_kill = read_record(out)
        assert at_kill is not None
        done_before = {s["name"]: s["run_id"] for s in at_kill["stages"] if s["status"] == "done"}
        assert list(done_before) == ["baseline", "seed"]
        assert await done_count(experiment_services, learn_run) < LIMIT

        # 3. The same command again: finishes, without redoing a stage done.
        third = start(run_services, config, out)
        output = third.communicate(timeout=600)[0].decode()
        assert third.returncode == 0, output
        for index, name in enumerate(done_before):
            assert f"stage {index + 1}/{len(plans)} {name}: done" in output
        assert f"resuming run {learn_run}" in output

        final = read_record(out)
        assert final is not None
        assert final["status"] == "done"
        assert [s["name"] for s in final["stages"]] == [p.name for p in plans]
        stages = {s["name"]: s for s in final["stages"]}
        for name, run_id in done_before.items():
            assert stages[name]["run_id"] == run_id, f"stage {name} was run again"
        assert stages["learn"]["run_id"] == learn_run
        manifest = load_manifest(REPO_ROOT / "corpus" / "cases")
        assert final["corpus_hash"] == manifest["content_hash"]
        assert final["config"]["limit"] == LIMIT
        assert final["package_version"] and final["versions"]["python"]
        for plan in plans:
            stage = stages[plan.name]
            assert stage["status"] == "done" and stage["run_id"]
            assert (stage["episodes"], stage["split"], stage["learning"]["mode"]) == (
                LIMIT,
                plan.split.value,
                plan.mode,
            )
            folder = out / plan.name
            assert all((folder / name).is_file() for name in STAGE_FILES), plan.name
            run_file = json.loads((folder / "run.json").read_text())
            assert run_file["run_id"] == stage["run_id"]
            assert run_file["config"]["split"] == plan.split.value
            assert run_file["config"]["learning"]["mode"] == plan.mode
            assert run_file["config"]["learning"]["control"] == plan.control
            await assert_exactly_once(experiment_services, stage["run_id"], folder, LIMIT)

        # The runs and the memory live in the experiment's own database, not the other.
        run_ids = [s["run_id"] for s in final["stages"]]
        here = await sql(experiment_url, "SELECT run_id FROM runner.runs")
        assert sorted(r["run_id"] for r in here) == sorted(run_ids)
        elsewhere = await sql(
            run_services.database_url,
            "SELECT run_id FROM runner.runs WHERE run_id = ANY($1::text[])",
            run_ids,
        )
        assert elsewhere == []
        entries = await sql(experiment_url, "SELECT entry_id FROM runner.playbook_entry")
        exported = json.loads((out / "playbooks.json").read_text())
        assert sorted(e["entry"]["entry_id"] for e in exported["entries"]) == sorted(
            r["entry_id"] for r in entries
        )
        assert final["playbooks"]["entries"] == len(entries)
        assert entries, "the seed and learn stages stored no playbook entry"
        # The memory started empty: every lesson comes from this experiment's learning runs.
        learning_runs = {stages["seed"]["run_id"], stages["learn"]["run_id"]}
        for entry in exported["entries"]:
            assert set(entry["entry"]["provenance"]["run_ids"]) <= learning_runs
        assert final["report"]["status"] in ("built", "skipped")
    finally:
        if database is not None:
            await sql(
                run_services.database_url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'
            )
