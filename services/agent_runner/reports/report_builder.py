"""`crmbench report`: the comparative report of several runs (or of an experiment
directory) as report.md, metrics.json and PNG plots.

`resolve_inputs` reads the runs (learning_metrics.load_run), `build_comparative_report`
(report_model) computes every figure, `render_markdown` writes the tables from that object
and `write_report` draws the plots (plots.FIGURES) from the same object.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agent_runner.reports import formatting as fmt
from agent_runner.reports.learning_metrics import (
    RunData,
    RunMetrics,
    entry_effects_table,
    load_run,
)
from agent_runner.reports.plots import FIGURES, draw_figures, entries_run, learning_runs
from agent_runner.reports.reading import ResultsError
from agent_runner.reports.report_model import (
    STAGE_ORDER,
    STAGE_ROLES,
    ComparativeReport,
    build_comparative_report,
)
from agent_runner.reports.statistics import PASS_KEY, SIMULATED_COST_NOTE, THRESHOLD_KEYS
from agent_runner.run.trace_log import TRACE_FILE
from crmbench_contracts.playbooks import PlaybookExport

EXPERIMENT_FILE = "experiment.json"
PLAYBOOKS_FILE = "playbooks.json"
REPORT_FILE = "report.md"
METRICS_FILE = "metrics.json"
SIMULATED_SENTENCE = (
    "The simulated student is a calibrated stand-in, not a model result: the simulated LLM "
    "makes the corpus's mistakes at configured rates and fewer of them when its prompt holds "
    "guidance that addresses them, so these figures test the loop and the metrics, not a model."
)


@dataclass
class ReportInputs:
    """The runs of a report and what else it needs to know about them."""

    runs: list[RunData]
    stages: dict[str, str] = field(default_factory=dict)
    """Run name -> experiment stage folder name, for runs whose folder is one."""
    baseline: str | None = None
    playbooks: PlaybookExport | None = None
    playbooks_source: Path | None = None
    title: str = "Comparative report"
    experiment: Path | None = None


def is_experiment(path: Path) -> bool:
    """Whether `path` is an experiment directory: it holds experiment.json, or stage folders
    (docs/experiment.md) and no trace file of its own."""
    if not path.is_dir() or (path / TRACE_FILE).exists():
        return False
    return (path / EXPERIMENT_FILE).exists() or any(
        (path / stage / TRACE_FILE).exists() for stage in STAGE_ORDER
    )


def experiment_stages(directory: Path) -> list[Path]:
    """The stage folders of an experiment that hold traces, in the experiment's order."""
    return [directory / stage for stage in STAGE_ORDER if (directory / stage / TRACE_FILE).exists()]


def _experiment_name(directory: Path) -> str:
    try:
        record = json.loads((directory / EXPERIMENT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return directory.resolve().name
    name = record.get("name") if isinstance(record, dict) else None
    return str(name) if name else directory.resolve().name


def _names(paths: Sequence[Path]) -> list[str]:
    """Folder names, prefixed with their parent's where two would be equal."""
    plain = [path.resolve().name for path in paths]
    return [
        f"{path.resolve().parent.name}/{name}" if plain.count(name) > 1 else name
        for path, name in zip(paths, plain, strict=True)
    ]


def load_playbooks(path: Path) -> PlaybookExport:
    """A playbook export (`crmbench playbooks export`, an experiment's playbooks.json).
    Raises ResultsError (`not_found`, `invalid_record`) when it cannot be read."""
    try:
        return PlaybookExport.model_validate_json(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ResultsError(f"cannot read {path}: {exc}", code="not_found") from None
    except ValueError as exc:
        first = str(exc).splitlines()[0]
        raise ResultsError(
            f"{path} is not a playbook export: {first}", code="invalid_record"
        ) from None


def resolve_inputs(
    paths: Sequence[Path],
    *,
    baseline: Path | None = None,
    names: Sequence[str] | None = None,
    playbooks: Path | None = None,
) -> ReportInputs:
    """Reads the runs of a report: run folders (or stage folders, or .jsonl files), or one
    experiment directory (its stage folders that hold traces, its playbooks.json and its
    name). `baseline` is one of `paths` or another run (read too); `names` renames the
    runs given, in order. Without `playbooks`, an experiment's playbooks.json is used (also
    when the runs are the stage folders of one experiment).

    Raises ResultsError from reading (learning_metrics.load_run), and ValueError when no
    run is given, `names` does not have one name per run, or two runs share a name.
    """
    experiment: Path | None = None
    folders = list(paths)
    if len(folders) == 1 and is_experiment(folders[0]):
        experiment = folders[0]
        folders = experiment_stages(experiment)
        if not folders:
            raise ValueError(f"the experiment {experiment} has no stage with traces yet")
    if not folders:
        raise ValueError("no run to report")
    labels = _names(folders)
    if names:
        if len(names) != len(folders):
            raise ValueError(
                f"--names gives {len(names)} name(s) for {len(folders)} run(s): "
                + ", ".join(str(f) for f in folders)
            )
        labels = list(names)
    runs = [load_run(path, label) for path, label in zip(folders, labels, strict=True)]
    stages = {
        label: path.resolve().name
        for path, label in zip(folders, labels, strict=True)
        if path.is_dir() and path.resolve().name in STAGE_ROLES
    }
    baseline_name: str | None = None
    if baseline is not None:
        known = {path.resolve(): label for path, label in zip(folders, labels, strict=True)}
        baseline_name = known.get(baseline.resolve())
        if baseline_name is None:
            extra = load_run(baseline)
            if extra.name in labels:
                extra.name = f"{extra.name} (baseline)"
            runs.insert(0, extra)
            baseline_name = extra.name
    if experiment is None:
        parents = {path.resolve().parent for path in folders if path.is_dir()}
        if len(parents) == 1 and len(stages) == len(folders):
            parent = parents.pop()
            if (parent / EXPERIMENT_FILE).exists():
                experiment = parent
    source = playbooks
    if source is None and experiment is not None and (experiment / PLAYBOOKS_FILE).exists():
        source = experiment / PLAYBOOKS_FILE
    return ReportInputs(
        runs=runs,
        stages=stages,
        baseline=baseline_name,
        playbooks=load_playbooks(source) if source is not None else None,
        playbooks_source=source,
        title=(
            f"Comparative report: experiment {_experiment_name(experiment)}"
            if experiment is not None
            else "Comparative report: " + ", ".join(run.name for run in runs)
        ),
        experiment=experiment,
    )


SUMMARY_HEADER = (
    "run",
    "role",
    "baseline",
    f"baseline reliability@{PASS_KEY}",
    f"reliability@{PASS_KEY}",
    "reliability delta",
    "reward delta",
    "token delta (saved)",
    "cue hit",
    "adoption",
    "transfer (relative)",
    "cost per success",
)
"""The summary table's columns (tests read the table by these names)."""


def summary_rows(report: ComparativeReport) -> list[list[str]]:
    """The summary table: one row per run (each split's baseline first), its comparison
    with its baseline paired by case, its cue hit, adoption and cost per success."""
    rows = []
    for run in report.ordered():
        base_name = report.baselines.get(run.name)
        base = report.run(base_name) if base_name else None
        comparison = report.comparison(run.name)
        rows.append(
            [
                run.name,
                report.roles.get(run.name, "run"),
                base_name or "-",
                fmt.rate(base.reliability.get(PASS_KEY)) if base else "-",
                fmt.rate(run.reliability.get(PASS_KEY)),
                fmt.points(comparison.reliability_delta) if comparison else "-",
                fmt.score(comparison.reward_delta, signed=True) if comparison else "-",
                fmt.relative(comparison.token_delta) if comparison else "-",
                fmt.rate(run.cue_hit),
                fmt.rate(run.adoption),
                fmt.relative(comparison.transfer) if comparison else "-",
                fmt.money(run.cost_per_success),
            ]
        )
    return rows


def _learning(run: RunMetrics) -> str:
    if run.learning_mode in (None, "off"):
        return run.learning_mode or "-"
    return f"{run.learning_mode} ({run.control or 'retrieval'})"


def control_sentence(report: ComparativeReport) -> str | None:
    """'Retrieval beats the shuffled control by X points [CI]', from the paired comparison
    of the two runs; worded by where the interval lies (above zero: credibly; across
    zero: not credibly at this size; at or below: it does not)."""
    note = report.control
    if note is None:
        return None
    margin = note.margin.reliability_delta
    if margin.value is None:
        return (
            f"Retrieval ({note.retrieval}) and the shuffled control ({note.control}) have no "
            "case in common: no paired comparison."
        )
    shown = (
        f"{fmt.points(margin)} of reliability@{PASS_KEY} (paired over {note.margin.cases} cases)"
    )
    if margin.low is not None and margin.low > 0:
        verdict = f"Retrieval ({note.retrieval}) beats the shuffled control ({note.control}) by"
        verdict = f"{verdict} {shown}: the interval is above zero."
    elif margin.value > 0:
        verdict = (
            f"Retrieval ({note.retrieval}) is ahead of the shuffled control ({note.control}) "
            f"by {shown}, but the interval includes zero: not a credible difference at this size."
        )
    else:
        verdict = (
            f"Retrieval ({note.retrieval}) does not beat the shuffled control "
            f"({note.control}): {shown}."
        )
    uplift = (
        f" Against the baseline ({note.baseline or '-'}): the control's uplift is "
        f"{fmt.points(note.control_uplift)}, "
        f"the retrieval run's {fmt.points(note.retrieval_uplift)}; "
        f"reward: retrieval - control = {fmt.score(note.margin.reward_delta, signed=True)}."
    )
    return verdict + uplift


def _notes(report: ComparativeReport) -> list[str]:
    notes = []
    sentence = control_sentence(report)
    if sentence:
        notes.append(sentence)
    if report.simulated:
        notes.append(
            f"Runs on the simulated LLM (model simulated-llm): {', '.join(report.simulated)}. "
            + SIMULATED_SENTENCE
        )
        notes.append(SIMULATED_COST_NOTE[0].upper() + SIMULATED_COST_NOTE[1:] + ".")
    notes.append(
        "Intervals are 95%: Wilson for rates; bootstrap over cases (BCa) for means and cost per "
        "success; paired bootstrap over the cases both runs scored for deltas and transfer. "
        "Token delta is the share of the baseline's tokens saved (positive: fewer tokens). "
        "Harness errors are left out of every figure."
    )
    notes += report.notes
    return notes


def _figure_tables(report: ComparativeReport, stem: str) -> list[str]:
    """The table printed under a figure: the figure's own numbers."""
    if stem == "learning_curves":
        rows = [
            [
                run.name,
                f"{phase.index} ({phase.first_episode}-{phase.last_episode})",
                fmt.rate(phase.reliability),
                fmt.score(phase.mean_reward),
                fmt.number(phase.mean_tokens),
                fmt.rate(phase.cue_hit),
            ]
            for run in learning_runs(report)
            for phase in run.phases
        ]
        header = ["run", "phase", f"reliability@{PASS_KEY}", "mean reward", "tokens", "cue hit"]
        return fmt.table(header, rows)
    if stem == "threshold_sensitivity":
        return fmt.table(
            ["run", *(f"reliability@{key}" for key in THRESHOLD_KEYS)],
            [
                [run.name, *(fmt.rate(run.reliability.get(key)) for key in THRESHOLD_KEYS)]
                for run in report.ordered()
            ],
        )
    if stem == "top_entries":
        run = entries_run(report)
        if run is None:
            return ["No run retrieved a playbook entry."]
        return entry_effects_table(run.top_entries)
    if stem == "teacher_activity" and report.teacher:
        return fmt.table(
            ["run", "phase", "episodes", "guidance", "retries", "supervised"],
            [
                [
                    name,
                    str(p.index),
                    str(p.episodes),
                    str(p.guidance_messages),
                    str(p.retries),
                    str(p.supervised),
                ]
                for name, phases in report.teacher.items()
                for p in phases
            ],
        )
    return []


def render_markdown(report: ComparativeReport) -> str:
    """report.md: the summary table first, then the notes (the control beside retrieval,
    the simulated student), the runs, and each figure with its caption and its numbers."""
    out = [f"# {report.title}", "", "## Summary", ""]
    out += fmt.table(SUMMARY_HEADER, summary_rows(report))
    out += ["", "## Notes", ""]
    out += [f"- {note}" for note in _notes(report)]
    out += ["", "## Runs", ""]
    out += fmt.table(
        ["run", "role", "run id", "split", "learning", "model", "episodes", "scored", "cases"],
        [
            [
                run.name,
                report.roles.get(run.name, "run"),
                run.run_id,
                run.split or "-",
                _learning(run),
                ", ".join(report.models.get(run.name, [])) or "-",
                str(run.episodes),
                str(run.scored),
                str(run.cases),
            ]
            for run in report.ordered()
        ],
    )
    out += ["", "## Figures"]
    for figure in report.figures:
        stem = figure.file.removesuffix(".png")
        out += ["", f"### {figure.title}", "", f"![{figure.title}]({figure.file})", ""]
        out += [f"*{figure.caption}*"]
        table = _figure_tables(report, stem)
        if table:
            out += ["", *table]
    return "\n".join(out) + "\n"


def write_report(report: ComparativeReport, out: Path) -> list[Path]:
    """Draws the figures into `out`, then writes metrics.json (the report, figures
    included) and report.md; every file is written whole (temporary file, then rename).
    Returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    report.figures = draw_figures(report, out)
    files = [out / figure.file for figure in report.figures]
    for name, text in (
        (METRICS_FILE, report.model_dump_json(indent=2) + "\n"),
        (REPORT_FILE, render_markdown(report)),
    ):
        temporary = out / f".{name}.{os.getpid()}.tmp"
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, out / name)
        files.append(out / name)
    return files


def build_report(
    paths: Sequence[Path],
    out: Path,
    *,
    baseline: Path | None = None,
    names: Sequence[str] | None = None,
    playbooks: Path | None = None,
    phase_size: int = 25,
) -> tuple[ComparativeReport, list[Path]]:
    """`crmbench report`: reads the runs (`resolve_inputs`), builds the comparative report
    and writes it into `out` (`write_report`). Raises ResultsError and ValueError as those
    do."""
    inputs = resolve_inputs(paths, baseline=baseline, names=names, playbooks=playbooks)
    report = build_comparative_report(
        inputs.runs,
        baseline=inputs.baseline,
        stages=inputs.stages,
        phase_size=phase_size,
        playbooks=inputs.playbooks,
        title=inputs.title,
    )
    return report, write_report(report, out)


__all__ = [
    "FIGURES",
    "ReportInputs",
    "build_report",
    "experiment_stages",
    "render_markdown",
    "resolve_inputs",
    "write_report",
]
