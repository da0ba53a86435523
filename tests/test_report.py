"""`crmbench report` on small real runs, and the notebook that rebuilds its figures.

Three runs of `crmbench run --agent simulated` (subprocesses, real services) laid out as an
experiment's stage folders: a baseline (learning off), a learning run (the simulated
teacher, hashing embeddings) and a shuffled-guidance control (frozen, on the memory the
learning run wrote). The report's summary table must carry metrics.json's numbers, every
figure must be a PNG, and docs/report.ipynb, executed in a python3 kernel of this venv,
must draw every figure from the same traces.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml
from typer.testing import CliRunner

from agent_runner.reports.learning_metrics import LearningReport, RunMetrics
from agent_runner.reports.plots import FIGURES
from agent_runner.reports.report_builder import (
    SIMULATED_SENTENCE,
    SUMMARY_HEADER,
    resolve_inputs,
)
from agent_runner.reports.report_model import build_comparative_report, infer_role, pick_baselines
from agent_runner.run.store import asyncpg_dsn
from crmbench.cli import app
from crmbench_contracts.rewards import PASS_THRESHOLD
from tests.agent_runner.conftest import (  # noqa: F401  (fixtures this module uses)
    RunServices,
    corpus_index,
    run_services,
    verifier_url,
)
from tests.agent_runner.test_learning_loop import learning_cases
from tests.agent_runner.test_playbook_memory import EMPTY
from tests.agent_runner.test_run_processes import start_run
from tests.conftest import REPO_ROOT

NOTEBOOK = REPO_ROOT / "docs" / "report.ipynb"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PHASE = 4
"""Episodes per phase: two phases in a run of 8 episodes."""


def _config(path: Path, learning: dict[str, Any]) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "agent": "simulated",
                "concurrency": 1,
                "learning": {
                    **learning,
                    "embeddings": {"provider": "hashing"},
                    # The hashing embedder matches words, not meanings (docs/learning.md).
                    "threshold": 0.3,
                },
            }
        )
    )
    return path


def _finish(process: subprocess.Popen[bytes], what: str) -> None:
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, f"{what} failed:\n{output.decode(errors='replace')}"


async def _empty_memory(services: RunServices) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(services.database_url))
    try:
        await conn.execute(EMPTY)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def experiment(
    run_services: RunServices,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Path]:
    """An experiment directory with baseline/, learn/ and control/ stage folders (8 cases
    each) and the memory's playbooks.json."""
    import asyncio

    asyncio.run(_empty_memory(run_services))
    root = tmp_path_factory.mktemp("experiment")
    (root / "experiment.json").write_text(json.dumps({"name": "small"}))
    cases = ",".join(learning_cases(run_services.cases, per_category=2, categories=2))
    configs = root / "configs"
    configs.mkdir()
    off = _config(configs / "off.yaml", {"mode": "off"})
    on = _config(configs / "on.yaml", {"mode": "on", "teacher": "simulated"})
    control = _config(configs / "control.yaml", {"mode": "frozen", "control": "shuffled"})
    baseline = start_run(run_services, root / "baseline", "--config", str(off), "--cases", cases)
    learn = start_run(run_services, root / "learn", "--config", str(on), "--cases", cases)
    _finish(baseline, "the baseline run")
    _finish(learn, "the learning run")
    shuffled = start_run(run_services, root / "control", "--config", str(control), "--cases", cases)
    _finish(shuffled, "the control run")
    exported = CliRunner().invoke(
        app,
        ["playbooks", "export", "--out", str(root / "playbooks.json")],
        env=run_services.env(),
    )
    assert exported.exit_code == 0, exported.output
    yield root


@pytest.fixture(scope="module")
def report_dir(experiment: Path) -> Path:
    """`crmbench report EXPERIMENT_DIR --out DIR` (built once for the module's tests)."""
    out = experiment / "report"
    result = CliRunner().invoke(
        app, ["report", str(experiment), "--out", str(out), "--phase", str(PHASE)]
    )
    assert result.exit_code == 0, result.output
    return out


def _numbers(cell: str) -> list[float]:
    """The numbers of a table cell, in order ('52.5% [41.0%, 63.7%] (21/40)' -> 52.5, 41.0,
    63.7, 21, 40)."""
    return [float(n) for n in re.findall(r"[-+]?\d[\d,]*\.?\d*", cell.replace(",", ""))]


def _table(markdown: str, header: tuple[str, ...]) -> list[dict[str, str]]:
    """The rows of the Markdown table whose header row is `header`."""
    lines = markdown.splitlines()
    head = "| " + " | ".join(header) + " |"
    start = lines.index(head)
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split(" | ")]
        rows.append(dict(zip(header, cells, strict=True)))
    return rows


def _expected(figure: dict[str, Any] | None, scale: float, counts: bool) -> list[float]:
    """What a cell shows of an Interval from metrics.json: value, low, high (scaled), and
    for a rate its count and total."""
    if figure is None or figure["value"] is None:
        return []
    shown = [figure[key] * scale for key in ("value", "low", "high") if figure[key] is not None]
    return shown + ([figure["count"], figure["total"]] if counts else [])


def _assert_cell(cell: str, expected: list[float], decimals: int) -> None:
    if not expected:
        assert cell == "-", cell
        return
    got = _numbers(cell)
    assert len(got) == len(expected), (cell, expected)
    for shown, value in zip(got, expected, strict=True):
        assert math.isclose(shown, round(value, decimals), abs_tol=0.6 * 10**-decimals), (
            cell,
            expected,
        )


def _is_png(path: Path) -> bool:
    data = path.read_bytes()
    return (
        data.startswith(PNG_SIGNATURE) and b"IHDR" in data[:32] and data.endswith(b"IEND\xaeB`\x82")
    )


def test_report_of_an_experiment_matches_its_metrics_and_draws_every_figure(
    report_dir: Path,
) -> None:
    out = report_dir

    metrics = json.loads((out / "metrics.json").read_text())
    LearningReport.model_validate(metrics)  # the learning metrics' own shape, plus extras
    assert metrics["roles"] == {"baseline": "baseline", "learn": "learning", "control": "control"}
    assert metrics["baselines"] == {"learn": "baseline", "control": "baseline"}
    runs = {run["name"]: run for run in metrics["runs"]}
    comparisons = {c["run"]: c for c in metrics["comparisons"]}
    pass_key = f"{PASS_THRESHOLD:g}"
    for run in runs.values():
        assert run["episodes"] == 8
        assert [p["episodes"] for p in run["phases"]] == [PHASE] * (8 // PHASE)

    markdown = (out / "report.md").read_text()
    assert markdown.index("## Summary") < markdown.index("## Notes") < markdown.index("## Figures")
    rows = _table(markdown, SUMMARY_HEADER)
    assert [row["run"] for row in rows] == ["baseline", "learn", "control"]
    for row in rows:
        run = runs[row["run"]]
        comparison = comparisons.get(row["run"])
        base = runs[metrics["baselines"][row["run"]]] if comparison else None
        rate = lambda f: _expected(f, 100, counts=True)  # noqa: E731
        _assert_cell(row[f"reliability@{pass_key}"], rate(run["reliability"][pass_key]), 1)
        _assert_cell(
            row[f"baseline reliability@{pass_key}"],
            rate(base["reliability"][pass_key]) if base else [],
            1,
        )
        _assert_cell(row["cue hit"], rate(run["cue_hit"]), 1)
        _assert_cell(row["adoption"], rate(run["adoption"]), 1)
        _assert_cell(row["cost per success"], _expected(run["cost_per_success"], 1, False), 4)
        for column, key, scale, decimals in (
            ("reliability delta", "reliability_delta", 100, 1),
            ("reward delta", "reward_delta", 1, 3),
            ("token delta (saved)", "token_delta", 100, 1),
            ("transfer (relative)", "transfer", 100, 1),
        ):
            figure = comparison[key] if comparison else None
            _assert_cell(row[column], _expected(figure, scale, counts=False), decimals)

    # The notes: the control beside retrieval, computed; the simulated student named.
    control = metrics["control"]
    assert control["retrieval"] == "learn" and control["control"] == "control"
    margin = control["margin"]["reliability_delta"]
    note = next(line for line in markdown.splitlines() if line.startswith("- Retrieval (learn)"))
    _assert_cell(
        note.split(" of reliability")[0].split("control)")[-1], _expected(margin, 100, False), 1
    )
    credible = margin["low"] is not None and margin["low"] > 0
    assert ("beats the shuffled control (control) by" in note) == credible, note
    uplift = control["control_uplift"]
    assert f"the control's uplift is {uplift['value'] * 100:+.1f} pts" in note
    assert metrics["simulated"] == ["baseline", "learn", "control"]
    assert SIMULATED_SENTENCE in markdown

    # Every figure: a PNG on disk, named in metrics.json and shown in report.md.
    stems = [spec.stem for spec in FIGURES]
    assert [f["file"] for f in metrics["figures"]] == [f"{stem}.png" for stem in stems]
    for figure in metrics["figures"]:
        assert _is_png(out / figure["file"]), figure["file"]
        assert f"]({figure['file']})" in markdown and figure["caption"] in markdown

    # The teacher's activity per phase adds up to the run's own counts.
    teacher = metrics["teacher"]["learn"]
    assert sum(p["guidance_messages"] for p in teacher) == runs["learn"]["guidance_messages"]
    assert sum(p["episodes"] for p in teacher) == 8


def test_run_folders_with_names_an_explicit_baseline_and_playbooks(experiment: Path) -> None:
    # What `crmbench report learn control --baseline baseline --names ... --playbooks ...`
    # computes (the figures are drawn as above, from the same object).
    inputs = resolve_inputs(
        [experiment / "learn", experiment / "control"],
        baseline=experiment / "baseline",
        names=["with lessons", "shuffled"],
        playbooks=experiment / "playbooks.json",
    )
    report = build_comparative_report(
        inputs.runs, baseline=inputs.baseline, stages=inputs.stages, playbooks=inputs.playbooks
    )
    metrics = json.loads(report.model_dump_json())
    assert [run["name"] for run in metrics["runs"]] == ["baseline", "with lessons", "shuffled"]
    assert metrics["baselines"] == {"with lessons": "baseline", "shuffled": "baseline"}
    # Stage folders keep their roles under other names.
    assert metrics["roles"]["with lessons"] == "learning"
    assert metrics["roles"]["shuffled"] == "control"
    exported = {
        item["entry"]["entry_id"]: item["entry"]
        for item in json.loads((experiment / "playbooks.json").read_text())["entries"]
    }
    for run in metrics["runs"]:
        for effect in run["top_entries"]:
            if effect["entry_id"] in exported:
                assert effect["text"] == exported[effect["entry_id"]]["action"]["text"]


def test_report_refuses_a_names_list_of_the_wrong_length(experiment: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["report", str(experiment / "learn"), "--names", "a,b", "--out", str(tmp_path)]
    )
    assert result.exit_code == 1
    assert "--names gives 2 name(s) for 1 run(s)" in result.output


@pytest.fixture
def kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A kernel spec running this interpreter's ipykernel (first on JUPYTER_PATH), so the
    notebook runs in this venv whatever kernels the machine has."""
    name = "crmbench-report-test"
    spec = tmp_path / "jupyter" / "kernels" / name
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "crm-bench (test)",
                "language": "python",
            }
        )
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    # Connection files and IPython's profile in the test's folder too: nothing in $HOME.
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter" / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    return name


def test_the_notebook_rebuilds_every_figure_from_the_traces(
    experiment: Path,
    report_dir: Path,
    tmp_path: Path,
    kernel: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import nbformat
    from nbclient import NotebookClient

    out = tmp_path / "notebook"
    monkeypatch.setenv("CRMBENCH_REPORT_DIR", str(experiment))
    monkeypatch.setenv("CRMBENCH_REPORT_OUT", str(out))
    monkeypatch.setenv("CRMBENCH_REPORT_PHASE", str(PHASE))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        notebook, kernel_name=kernel, timeout=120, resources={"metadata": {"path": str(tmp_path)}}
    ).execute()

    for spec in FIGURES:
        assert _is_png(out / f"{spec.stem}.png"), spec.stem
    rebuilt = json.loads((out / "metrics.json").read_text())
    # The notebook's numbers are the command's: same runs, same functions.
    built = json.loads((report_dir / "metrics.json").read_text())
    for key in ("runs", "comparisons", "roles", "baselines", "control", "teacher"):
        assert rebuilt[key] == built[key], key
    assert (out / "report.md").exists()


def _metrics(name: str, split: str, mode: str, control: str | None = None) -> RunMetrics:
    # Role inference and baseline pairing read only these fields.
    return RunMetrics.model_construct(name=name, split=split, learning_mode=mode, control=control)


def test_roles_and_baselines_of_an_experiments_runs_without_stage_folders() -> None:
    runs = [
        _metrics("a", "eval", "off"),
        _metrics("b", "seed", "on"),
        _metrics("c", "eval", "on"),
        _metrics("d", "eval", "frozen", "shuffled"),
        _metrics("e", "eval", "frozen", "retrieval"),
        _metrics("f", "holdout", "off"),
        _metrics("g", "holdout", "frozen", "retrieval"),
    ]
    roles = {run.name: infer_role(run) for run in runs}
    assert roles == {
        "a": "baseline",
        "b": "seed",
        "c": "learning",
        "d": "control",
        "e": "retrieval",
        "f": "holdout-baseline",
        "g": "transfer",
    }
    # Each run against the learning-off run of its split; seeding has none.
    assert pick_baselines(runs, roles) == {"c": "a", "d": "a", "e": "a", "g": "f"}
    # A stage folder's name decides over the settings.
    assert infer_role(runs[0], "transfer") == "transfer"
    # An explicit baseline of another split serves the runs whose split has none.
    assert pick_baselines(runs, roles, explicit="a")["b"] == "a"
