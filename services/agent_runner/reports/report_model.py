"""The comparative report's data: the learning metrics of several runs, which run plays which
part of the experiment, what each is compared with, and the figures the report adds.

A pure function of the runs' traces (`build_comparative_report`); the tables of report.md
and every plot of plots.py read this one object, so a number in a table is the number the
plot drew.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

from pydantic import BaseModel, Field

from agent_runner.agents.factory import SIMULATED_MODEL
from agent_runner.reports.learning_metrics import (
    Comparison,
    Interval,
    LearningReport,
    RunData,
    RunMetrics,
    compare,
    phase_windows,
    run_metrics,
)
from agent_runner.reports.statistics import HARNESS_ERROR, lane_mix
from crmbench_contracts.playbooks import PlaybookExport
from crmbench_contracts.traces import SessionTrace

Role = Literal[
    "baseline", "seed", "learning", "control", "retrieval", "holdout-baseline", "transfer", "run"
]
"""The part a run plays in the customer's flow (docs/experiment.md); `run` when it cannot be
told (a run with no learning settings in its run.json nor in its traces)."""

STAGE_ROLES: dict[str, Role] = {
    "baseline": "baseline",
    "seed": "seed",
    "learn": "learning",
    "control": "control",
    "retrieval": "retrieval",
    "holdout-baseline": "holdout-baseline",
    "transfer": "transfer",
}
"""An experiment's stage folder names (docs/experiment.md) and the role each plays."""
STAGE_ORDER = tuple(STAGE_ROLES)
"""The stages in the order the experiment runs them (and the report shows them)."""
BASELINE_ROLES: frozenset[Role] = frozenset({"baseline", "holdout-baseline"})
ROLE_ORDER: tuple[Role, ...] = (
    "baseline",
    "learning",
    "retrieval",
    "control",
    "holdout-baseline",
    "transfer",
    "seed",
    "run",
)
"""How the bar charts order runs: each split's baseline first, then what is compared with
it."""


class TeacherPhase(BaseModel):
    """What the teacher did in one phase of a run: from the same windows as the run's
    `phases` (episodes in start order, `phase_size` each)."""

    index: int
    episodes: int
    guidance_messages: int
    """Guidance messages the teacher gave (trajectory events of kind `guidance`)."""
    retries: int
    """Changes of lane the teacher ordered after an episode had started (statistics.lane_mix:
    a paired review sending the reply back, a coach taking over)."""
    supervised: int
    """Episodes the triage put in a lane other than `auto` (the teacher watched them)."""


class ControlNote(BaseModel):
    """The shuffled-guidance control beside retrieval, each against the baseline and then
    against each other, paired by case."""

    control: str
    retrieval: str
    """The run whose guidance was retrieved by cue: the `retrieval` stage (frozen, same
    memory as the control) when there is one, else the learning run."""
    baseline: str | None
    control_uplift: Interval | None
    """The control's reliability delta over the baseline (paired bootstrap)."""
    retrieval_uplift: Interval | None
    """The retrieval run's reliability delta over the baseline (paired bootstrap)."""
    margin: Comparison
    """The retrieval run against the control: `reliability_delta` is by how much retrieval
    beats the control (points of reliability@0.9), `reward_delta` the same for reward."""


class FigureFile(BaseModel):
    """One PNG of the report."""

    file: str
    title: str
    caption: str


class ComparativeReport(LearningReport):
    """`crmbench report`'s metrics.json: the learning report of every run (the base class's
    fields, so `LearningReport.model_validate` reads this file) plus the parts runs play,
    their baselines, the control note, the teacher's activity and the figures drawn."""

    title: str
    roles: dict[str, Role]
    """Run name -> its role in the experiment."""
    baselines: dict[str, str]
    """Run name -> the name of the baseline it is compared with (runs without one absent)."""
    models: dict[str, list[str]]
    """Run name -> the models its sessions ran on."""
    simulated: list[str]
    """Names of the runs whose student is the simulated LLM."""
    control: ControlNote | None = None
    teacher: dict[str, list[TeacherPhase]] = Field(default_factory=dict)
    """Run name -> the teacher's activity per phase (runs whose traces show a lane)."""
    figures: list[FigureFile] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)

    def run(self, name: str) -> RunMetrics:
        """The metrics of the run named `name`; KeyError when there is none."""
        for run in self.runs:
            if run.name == name:
                return run
        raise KeyError(name)

    def comparison(self, name: str) -> Comparison | None:
        """The comparison of run `name` with its baseline, if it has one."""
        return next((c for c in self.comparisons if c.run == name), None)

    def with_role(self, *roles: Role) -> list[RunMetrics]:
        """The runs playing any of `roles`, in report order."""
        return [run for run in self.runs if self.roles.get(run.name) in roles]

    def ordered(self) -> list[RunMetrics]:
        """The runs in ROLE_ORDER (each split's baseline before what it is compared with)."""
        return sorted(self.runs, key=lambda r: ROLE_ORDER.index(self.roles.get(r.name, "run")))


def infer_role(metrics: RunMetrics, stage: str | None = None) -> Role:
    """The role of a run: its experiment stage's when `stage` names one, else from its
    learning settings and split (off: a baseline; shuffled control; on: learning, or
    seeding on the seed split; frozen: transfer on the holdout split, else retrieval)."""
    if stage in STAGE_ROLES:
        return STAGE_ROLES[stage]
    mode = metrics.learning_mode
    split = metrics.split or ""
    if mode is None:
        return "run"
    if mode == "off":
        return "holdout-baseline" if split == "holdout" else "baseline"
    if metrics.control == "shuffled":
        return "control"
    if mode == "on":
        return "seed" if split == "seed" else "learning"
    return "transfer" if split == "holdout" else "retrieval"


def pick_baselines(
    runs: Sequence[RunMetrics], roles: Mapping[str, Role], explicit: str | None = None
) -> dict[str, str]:
    """Run name -> its baseline's name: a baseline-role run on the same split (the explicit
    `--baseline` first, then the holdout baseline for the transfer run and the baseline
    for the others), else the explicit baseline whatever its split; none for baselines
    themselves and for runs with neither (e.g. seeding, whose split has no baseline)."""
    candidates = [r for r in runs if roles.get(r.name) in BASELINE_ROLES or r.name == explicit]
    chosen: dict[str, str] = {}
    for run in runs:
        if run.name == explicit or roles.get(run.name) in BASELINE_ROLES:
            continue
        # The holdout's own baseline for the transfer run, the eval baseline for the others.
        wanted = "holdout-baseline" if roles.get(run.name) == "transfer" else "baseline"
        same_split = sorted(
            (b for b in candidates if b.split == run.split),
            key=lambda b: (b.name != explicit, roles.get(b.name) != wanted),
        )
        if same_split:
            chosen[run.name] = same_split[0].name
        elif explicit is not None:
            chosen[run.name] = explicit
    return chosen


def teacher_by_phase(sessions: Sequence[SessionTrace], phase_size: int) -> list[TeacherPhase]:
    """The teacher's guidance, retries and supervised episodes per phase of `phase_size`
    episodes (`learning_metrics.phase_windows`). Raises ValueError when `phase_size` < 1."""
    phases = []
    for index, _, window in phase_windows(sessions, phase_size):
        lanes, guidance, retries = lane_mix(window)
        phases.append(
            TeacherPhase(
                index=index,
                episodes=len(window),
                guidance_messages=guidance,
                retries=retries,
                supervised=sum(n for lane, n in lanes.items() if lane != "auto"),
            )
        )
    return phases


def _models(sessions: Sequence[SessionTrace]) -> list[str]:
    return sorted({s.model for s in sessions if s.model and s.outcome != HARNESS_ERROR})


def _control_note(
    report_runs: Sequence[RunMetrics],
    roles: Mapping[str, Role],
    baselines: Mapping[str, str],
    comparisons: Sequence[Comparison],
    data: Mapping[str, RunData],
) -> ControlNote | None:
    controls = [r for r in report_runs if roles.get(r.name) == "control"]
    if not controls:
        return None
    control = controls[0]
    retrieval = next(
        (r for role in ("retrieval", "learning") for r in report_runs if roles.get(r.name) == role),
        None,
    )
    if retrieval is None:
        return None
    by_run = {c.run: c for c in comparisons}
    control_cmp = by_run.get(control.name)
    retrieval_cmp = by_run.get(retrieval.name)
    return ControlNote(
        control=control.name,
        retrieval=retrieval.name,
        baseline=baselines.get(control.name),
        control_uplift=control_cmp.reliability_delta if control_cmp else None,
        retrieval_uplift=retrieval_cmp.reliability_delta if retrieval_cmp else None,
        margin=compare(data[retrieval.name], data[control.name]),
    )


def build_comparative_report(
    runs: Sequence[RunData],
    *,
    baseline: str | None = None,
    stages: Mapping[str, str] | None = None,
    phase_size: int = 25,
    playbooks: PlaybookExport | None = None,
    title: str = "Comparative report",
) -> ComparativeReport:
    """The learning metrics of `runs` (learning_metrics.run_metrics; the playbook entries'
    texts and levels from `playbooks` when given), each non-baseline run
    compared with its baseline (learning_metrics.compare; `pick_baselines`), the control
    note and the teacher's activity per phase.

    `baseline` names one of `runs` (the `--baseline`); `stages` maps run names to their
    experiment stage folder names (for their roles; else `infer_role`). Run names must be
    distinct. Raises ValueError on duplicate names, an unknown `baseline`, or
    `phase_size` < 1.
    """
    names = [run.name for run in runs]
    if len(set(names)) != len(names):
        raise ValueError(f"run names must be distinct (got {', '.join(names)}); use --names")
    if baseline is not None and baseline not in names:
        raise ValueError(f"the baseline {baseline!r} is not one of the runs")
    data = {run.name: run for run in runs}
    metrics = [run_metrics(run, phase_size, playbooks) for run in runs]
    roles = {m.name: infer_role(m, (stages or {}).get(m.name)) for m in metrics}
    if baseline is not None and roles[baseline] not in BASELINE_ROLES:
        roles[baseline] = "baseline"
    baselines = pick_baselines(metrics, roles, baseline)
    # A run with a baseline measures its entries' effect against the baseline's reward on
    # the same cases (paired), not against the tasks an entry was retrieved for but not
    # injected into (those fit it less).
    metrics = [
        run_metrics(data[m.name], phase_size, playbooks, data[baselines[m.name]])
        if m.name in baselines
        else m
        for m in metrics
    ]
    comparisons = [compare(data[name], data[base]) for name, base in baselines.items()]
    report = ComparativeReport(
        runs=metrics,
        comparisons=comparisons,
        phase_size=phase_size,
        title=title,
        roles=roles,
        baselines=baselines,
        models={run.name: _models(run.sessions) for run in runs},
        simulated=[
            run.name for run in runs if SIMULATED_MODEL in _models(run.sessions) or _info_model(run)
        ],
        teacher={
            run.name: teacher_by_phase(run.sessions, phase_size)
            for run in runs
            if any(s.crm_context.lane is not None for s in run.sessions)
        },
    )
    report.control = _control_note(metrics, roles, baselines, comparisons, data)
    report.notes = [f"{run.name}: {warning}" for run in metrics for warning in run.warnings]
    return report


def _info_model(run: RunData) -> bool:
    return run.info is not None and run.info.model == SIMULATED_MODEL
