"""The comparative report's figures, one function per figure, each drawn from the
`ComparativeReport` that report.md's tables are written from (so a plot and a table never
disagree).

Figures are matplotlib `Figure` objects on the Agg canvas (no pyplot, no global backend:
safe in a server, a test or a notebook). `draw_figures` writes every figure of `FIGURES`
as a PNG; the notebook docs/report.ipynb calls the same functions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from agent_runner.reports.learning_metrics import EntryEffect, Interval, RunMetrics
from agent_runner.reports.report_model import (
    BASELINE_ROLES,
    ComparativeReport,
    FigureFile,
    Role,
)
from agent_runner.reports.statistics import PASS_KEY, THRESHOLD_KEYS

DPI = 110
"""PNG resolution: legible on a slide, a few tens of kB per figure."""
LANES = ("auto", "paired", "coach", "escalate")
"""Supervision lanes in the order of the stacked bars (contracts' Lane)."""
ROLE_COLOURS: dict[Role, str] = {
    "baseline": "#7f7f7f",
    "holdout-baseline": "#bdbdbd",
    "learning": "#1f77b4",
    "retrieval": "#2ca02c",
    "control": "#ff7f0e",
    "transfer": "#9467bd",
    "seed": "#17becf",
    "run": "#8c564b",
}
LANE_COLOURS = {"auto": "#2ca02c", "paired": "#1f77b4", "coach": "#ff7f0e", "escalate": "#d62728"}
OTHER_COLOURS = ("#e377c2", "#bcbd22", "#8c564b", "#17becf", "#7f7f7f")


# ---------------------------------------------------------------------------- helpers


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _colour(report: ComparativeReport, name: str, position: int = 0) -> str:
    """The run's colour: its role's, or a distinct one when two runs share a role."""
    role = report.roles.get(name, "run")
    same = [r.name for r in report.ordered() if report.roles.get(r.name, "run") == role]
    index = same.index(name) if name in same else position
    return ROLE_COLOURS[role] if index == 0 else OTHER_COLOURS[(index - 1) % len(OTHER_COLOURS)]


def _label(report: ComparativeReport, run: RunMetrics) -> str:
    role = report.roles.get(run.name, "run")
    return run.name if role in (run.name, "run") else f"{run.name} ({role})"


def _dashed(report: ComparativeReport, name: str) -> bool:
    """Baselines are drawn dashed with square markers, so a run that equals its baseline
    still shows both lines."""
    return report.roles.get(name) in BASELINE_ROLES


def _legend_below(figure: Figure, axes: Axes) -> None:
    """One legend under the plot, out of the data's way."""
    handles, labels = axes.get_legend_handles_labels()
    if handles:
        figure.legend(
            handles, labels, loc="outside lower center", ncols=min(len(labels), 4), fontsize="small"
        )


def _value(figure: Interval | None) -> float:
    if figure is None or figure.value is None:
        return math.nan
    return figure.value


def _errors(figures: Sequence[Interval | None]) -> list[list[float]]:
    """matplotlib's yerr: distances below and above each value (0 where a bound is missing)."""
    below, above = [], []
    for figure in figures:
        value = _value(figure)
        low = figure.low if figure is not None and figure.low is not None else value
        high = figure.high if figure is not None and figure.high is not None else value
        below.append(0.0 if math.isnan(value) else max(value - low, 0.0))
        above.append(0.0 if math.isnan(value) else max(high - value, 0.0))
    return [below, above]


def _empty(axes: Axes, message: str) -> None:
    axes.text(0.5, 0.5, message, ha="center", va="center", transform=axes.transAxes, wrap=True)
    axes.set_xticks([])
    axes.set_yticks([])


def _percent_axis(axes: Axes) -> None:
    axes.set_ylim(0, 1.05)
    axes.yaxis.set_major_formatter(lambda value, _: f"{value:.0%}")


def _band(
    axes: Axes,
    report: ComparativeReport,
    run: RunMetrics,
    figures: Sequence[Interval],
    colour: str,
) -> None:
    """One run's line over its phases, with its interval as a band (error caps instead for
    a one-phase run, whose band would be invisible)."""
    x = [(phase.first_episode + phase.last_episode) / 2 for phase in run.phases]
    y = [_value(figure) for figure in figures]
    low = [f.low if f.low is not None else _value(f) for f in figures]
    high = [f.high if f.high is not None else _value(f) for f in figures]
    axes.fill_between(x, low, high, color=colour, alpha=0.15, linewidth=0)
    axes.errorbar(
        x,
        y,
        yerr=_errors(figures) if len(x) == 1 else None,
        color=colour,
        capsize=3,
        label=_label(report, run),
        linestyle="--" if _dashed(report, run.name) else "-",
        marker="s" if _dashed(report, run.name) else "o",
    )


def learning_runs(report: ComparativeReport) -> list[RunMetrics]:
    """The runs the 'baseline beside learning' figures show: the baselines and the learning
    (or retrieval) runs compared with them; every run when no role says which."""
    learners = report.with_role("learning") or report.with_role("retrieval")
    if not learners:
        return report.ordered()
    shown = {report.baselines[r.name] for r in learners if r.name in report.baselines}
    shown |= {r.name for r in learners}
    return [run for run in report.ordered() if run.name in shown]


def entries_run(report: ComparativeReport) -> RunMetrics | None:
    """The run whose playbook entries the report shows: the learning run, else the
    retrieval or transfer run, else any run whose traces retrieved entries."""
    for role in ("learning", "retrieval", "transfer", "seed", "control", "run"):
        for run in report.with_role(role):  # type: ignore[arg-type]
            if run.top_entries:
                return run
    return None


def moved_entries(report: ComparativeReport) -> list[EntryEffect]:
    """The entries of `entries_run` with a reward delta (with vs without), largest |delta|
    first: the bars of `top_entries`."""
    run = entries_run(report)
    if run is None:
        return []
    return [e for e in run.top_entries if e.delta is not None]


# ---------------------------------------------------------------------------- figures


def learning_curves(report: ComparativeReport) -> Figure:
    """Reliability@0.9 and mean reward per phase, one line per run, 95% bands."""
    figure = _figure(11, 4.2)
    left, right = figure.subplots(1, 2)
    for position, run in enumerate(report.ordered()):
        colour = _colour(report, run.name, position)
        _band(left, report, run, [phase.reliability for phase in run.phases], colour)
        _band(right, report, run, [phase.mean_reward for phase in run.phases], colour)
    left.set_title(f"Reliability@{PASS_KEY} by phase")
    right.set_title("Mean reward by phase")
    for axes in (left, right):
        _percent_axis(axes)
        axes.set_xlabel("episode (phase midpoint)")
        axes.grid(alpha=0.3)
    right.yaxis.set_major_formatter(lambda value, _: f"{value:.2f}")
    _legend_below(figure, left)
    return figure


def tokens_by_phase(report: ComparativeReport) -> Figure:
    """Mean tokens (student and teacher, input and output) per episode, by phase."""
    figure = _figure(8, 4.2)
    axes = figure.subplots()
    for position, run in enumerate(report.ordered()):
        colour = _colour(report, run.name, position)
        _band(axes, report, run, [phase.mean_tokens for phase in run.phases], colour)
    axes.set_title("Tokens per episode by phase")
    axes.set_xlabel("episode (phase midpoint)")
    axes.set_ylabel("tokens per episode")
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    _legend_below(figure, axes)
    return figure


def _grouped_bars(
    report: ComparativeReport,
    runs: Sequence[RunMetrics],
    groups: Callable[[RunMetrics], dict[str, Interval]],
    title: str,
) -> Figure:
    names = sorted({group for run in runs for group in groups(run)})
    figure = _figure(9, max(3.0, 0.45 * len(names) * max(len(runs), 1) + 1.2))
    axes = figure.subplots()
    if not names:
        _empty(axes, "no scored episode")
        axes.set_title(title)
        return figure
    height = 0.8 / max(len(runs), 1)
    for position, run in enumerate(runs):
        figures = [groups(run).get(name) for name in names]
        y = [index + (position - (len(runs) - 1) / 2) * height for index in range(len(names))]
        axes.barh(
            y,
            [_value(f) for f in figures],
            height=height,
            xerr=_errors(figures),
            capsize=2,
            color=_colour(report, run.name, position),
            label=_label(report, run),
        )
    axes.set_yticks(range(len(names)), names)
    axes.invert_yaxis()
    axes.set_xlim(0, 1.05)
    axes.xaxis.set_major_formatter(lambda value, _: f"{value:.0%}")
    axes.set_xlabel(f"reliability@{PASS_KEY} (95% Wilson)")
    axes.set_title(title)
    axes.grid(axis="x", alpha=0.3)
    _legend_below(figure, axes)
    return figure


def pass_rate_by_category(report: ComparativeReport) -> Figure:
    """Reliability@0.9 per task category, the baseline beside the learning run."""
    return _grouped_bars(
        report, learning_runs(report), lambda r: r.by_category, "Pass rate by task category"
    )


def pass_rate_by_family(report: ComparativeReport) -> Figure:
    """Reliability@0.9 per failure family, the baseline beside the learning run."""
    return _grouped_bars(
        report, learning_runs(report), lambda r: r.by_family, "Pass rate by failure family"
    )


def _run_bars(
    report: ComparativeReport,
    figures: Sequence[tuple[RunMetrics, Interval | None]],
    title: str,
    ylabel: str,
    show: Callable[[float], str],
) -> tuple[Figure, Axes]:
    figure = _figure(max(6.0, 1.5 * len(figures) + 2), 4.4)
    axes = figure.subplots()
    x = list(range(len(figures)))
    values = [_value(f) for _, f in figures]
    axes.bar(
        x,
        values,
        yerr=_errors([f for _, f in figures]),
        capsize=4,
        color=[_colour(report, run.name, i) for i, (run, _) in enumerate(figures)],
    )
    for position, value in zip(x, values, strict=True):
        if not math.isnan(value):
            axes.annotate(
                show(value),
                (position, value),
                textcoords="offset points",
                xytext=(8, 3),
                fontsize="small",
            )
    axes.set_xticks(x, [_tick(report, run) for run, _ in figures])
    axes.set_title(title)
    axes.set_ylabel(ylabel)
    axes.grid(axis="y", alpha=0.3)
    return figure, axes


def _tick(report: ComparativeReport, run: RunMetrics) -> str:
    role = report.roles.get(run.name, "run")
    details = [part for part in (role, run.split) if part and part not in (run.name, "run")]
    return f"{run.name}\n{', '.join(details)}" if details else run.name


def conditions(report: ComparativeReport) -> Figure:
    """Reliability@0.9 of every run (baseline, learning, retrieval, control, holdout
    baseline, frozen transfer), with 95% Wilson intervals."""
    figure, axes = _run_bars(
        report,
        [(run, run.reliability.get(PASS_KEY)) for run in report.ordered()],
        "Baseline vs learning vs control vs frozen transfer",
        f"reliability@{PASS_KEY} (95% Wilson)",
        lambda v: f"{v:.1%}",
    )
    _percent_axis(axes)
    return figure


def cost_per_success(report: ComparativeReport) -> Figure:
    """Cost per episode passed at 0.9, with its bootstrap interval, per run."""
    costed = [(run, run.cost_per_success) for run in report.ordered()]
    figure, axes = _run_bars(
        report,
        costed,
        "Cost per successful episode",
        "USD per passed episode (95% bootstrap)",
        lambda v: f"${v:.4f}",
    )
    if all(math.isnan(_value(f)) for _, f in costed):
        _empty(axes, "no cost per success: no priced model or no passed episode")
    else:
        axes.set_ylim(bottom=0)
    return figure


def threshold_sensitivity(report: ComparativeReport) -> Figure:
    """Reliability at each reported threshold (0.7, 0.8, 0.9) per run, 95% Wilson."""
    figure = _figure(8, 4.2)
    axes = figure.subplots()
    runs = report.ordered()
    for position, run in enumerate(runs):
        offset = (position - (len(runs) - 1) / 2) * 0.04
        figures = [run.reliability.get(key) for key in THRESHOLD_KEYS]
        axes.errorbar(
            [float(key) + offset for key in THRESHOLD_KEYS],
            [_value(f) for f in figures],
            yerr=_errors(figures),
            capsize=3,
            color=_colour(report, run.name, position),
            label=_label(report, run),
            linestyle="--" if _dashed(report, run.name) else "-",
            marker="s" if _dashed(report, run.name) else "o",
        )
    axes.set_xticks([float(key) for key in THRESHOLD_KEYS], [f"≥ {key}" for key in THRESHOLD_KEYS])
    axes.set_xlabel("pass threshold on the episode's score")
    axes.set_ylabel("reliability (95% Wilson)")
    axes.set_title("Threshold sensitivity")
    _percent_axis(axes)
    axes.grid(alpha=0.3)
    _legend_below(figure, axes)
    return figure


def entry_label(effect: EntryEffect) -> str:
    """An entry as the plot names it: short id, level and episodes with / without it."""
    return (
        f"{effect.entry_id[:10]} ({effect.level or '?'}) "
        f"n={effect.episodes_with}/{effect.episodes_without}"
    )


def top_entries(report: ComparativeReport) -> Figure:
    """The playbook entries that moved reward the most: mean reward of the episodes that
    injected each minus those that retrieved it without injecting it. When no entry has
    both sides, the mean reward of the episodes that injected each (no delta to show)."""
    run = entries_run(report)
    effects = moved_entries(report)
    with_only = not effects and run is not None
    if with_only and run is not None:
        effects = [e for e in run.top_entries if e.reward_with is not None]
    figure = _figure(9, max(3.0, 0.42 * len(effects) + 1.6))
    axes = figure.subplots()
    axes.set_title("Playbook entries that moved reward" + (f" ({run.name})" if run else ""))
    if not effects:
        _empty(axes, "no scored episode injected a playbook entry")
        return figure
    if with_only:
        values = [e.reward_with or 0.0 for e in effects]
        colours = ["#1f77b4"] * len(values)
        axes.set_xlabel(
            "mean reward of the episodes that injected it (none retrieved it without "
            "injecting it: no delta)"
        )
        axes.set_xlim(0, 1.05)
    else:
        values = [e.delta or 0.0 for e in effects]
        colours = ["#2ca02c" if value >= 0 else "#d62728" for value in values]
        axes.axvline(0, color="black", linewidth=0.8)
        axes.set_xlabel("reward with - reward without (n = episodes with / without)")
    axes.barh(range(len(effects)), values, color=colours)
    axes.set_yticks(range(len(effects)), [entry_label(e) for e in effects], fontsize="small")
    axes.invert_yaxis()
    axes.grid(axis="x", alpha=0.3)
    return figure


def _panels(count: int, width: float, height: float) -> tuple[Figure, list[Axes]]:
    figure = _figure(width, height * max(count, 1))
    grid = figure.subplots(max(count, 1), 1, squeeze=False)
    return figure, [row[0] for row in grid]


def lane_mix(report: ComparativeReport) -> Figure:
    """Episodes per supervision lane in each phase, stacked, per run that had a triage."""
    runs = [run for run in report.ordered() if run.lanes]
    figure, panels = _panels(len(runs), 9, 3.0)
    if not runs:
        _empty(panels[0], "no run had a triage (learning on): no lanes")
        panels[0].set_title("Lane mix over time")
        return figure
    for axes, run in zip(panels, runs, strict=True):
        x = [phase.index for phase in run.phases]
        bottom = [0.0] * len(x)
        lanes = [lane for lane in LANES if any(p.lanes.get(lane) for p in run.phases)]
        lanes += sorted({lane for p in run.phases for lane in p.lanes} - set(LANES))
        for lane in lanes:
            counts = [float(phase.lanes.get(lane, 0)) for phase in run.phases]
            axes.bar(x, counts, bottom=bottom, color=LANE_COLOURS.get(lane), label=lane)
            bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
        axes.set_xticks(x, [f"{p.first_episode}-{p.last_episode}" for p in run.phases])
        axes.set_ylabel("episodes")
        axes.set_title(f"Lane mix over time: {_label(report, run)}")
        axes.legend(fontsize="small", loc="upper right")
    panels[-1].set_xlabel("phase (episodes)")
    return figure


def teacher_activity(report: ComparativeReport) -> Figure:
    """The teacher's guidance messages and retries (lane changes it ordered) per phase,
    per run that had a teacher."""
    names = [run.name for run in report.ordered() if run.name in report.teacher]
    figure, panels = _panels(len(names), 9, 3.0)
    if not names:
        _empty(panels[0], "no run had a teacher (learning on): no interventions")
        panels[0].set_title("What the teacher did")
        return figure
    for axes, name in zip(panels, names, strict=True):
        phases = report.teacher[name]
        x = [phase.index for phase in phases]
        axes.bar([i - 0.2 for i in x], [p.guidance_messages for p in phases], 0.4, label="guidance")
        axes.bar([i + 0.2 for i in x], [p.retries for p in phases], 0.4, label="retries")
        axes.plot(x, [p.supervised for p in phases], "k.--", label="supervised episodes")
        axes.set_xticks(x, [str(i) for i in x])
        axes.set_ylabel("per phase")
        axes.set_title(f"What the teacher did: {name}")
        axes.legend(fontsize="small", loc="upper right")
    panels[-1].set_xlabel(f"phase ({report.phase_size} episodes each)")
    return figure


# ---------------------------------------------------------------------------- the set


@dataclass(frozen=True)
class FigureSpec:
    """One figure of the report: its file stem, title, drawing and one-line caption."""

    stem: str
    title: str
    draw: Callable[[ComparativeReport], Figure]
    caption: Callable[[ComparativeReport], str]


FIGURES: tuple[FigureSpec, ...] = (
    FigureSpec(
        "learning_curves",
        "Learning curves",
        learning_curves,
        lambda r: (
            f"Reliability@{PASS_KEY} (Wilson) and mean reward (bootstrap over cases) in "
            f"{r.phase_size}-episode phases, 95% bands, one line per run."
        ),
    ),
    FigureSpec(
        "tokens_by_phase",
        "Tokens by phase",
        tokens_by_phase,
        lambda r: (
            f"Mean tokens per scored episode (student and teacher) in {r.phase_size}-"
            "episode phases, 95% bootstrap bands."
        ),
    ),
    FigureSpec(
        "pass_rate_by_category",
        "Pass rate by task category",
        pass_rate_by_category,
        lambda r: (
            f"Reliability@{PASS_KEY} per task category, the baseline beside the learning "
            "run, 95% Wilson intervals."
        ),
    ),
    FigureSpec(
        "pass_rate_by_family",
        "Pass rate by failure family",
        pass_rate_by_family,
        lambda r: (
            f"Reliability@{PASS_KEY} per failure family (success-path cases apart), the "
            "baseline beside the learning run, 95% Wilson intervals."
        ),
    ),
    FigureSpec(
        "conditions",
        "Baseline vs learning vs control vs frozen transfer",
        conditions,
        lambda r: (
            f"Reliability@{PASS_KEY} of every run with its 95% Wilson interval; the "
            "transfer run is on the holdout split, beside its own baseline."
        ),
    ),
    FigureSpec(
        "cost_per_success",
        "Cost per successful episode",
        cost_per_success,
        lambda r: (
            f"Total cost / episodes passed at {PASS_KEY}, 95% bootstrap over cases"
            + (" (simulated runs: what gpt-4.1 would have cost)." if r.simulated else ".")
        ),
    ),
    FigureSpec(
        "threshold_sensitivity",
        "Threshold sensitivity",
        threshold_sensitivity,
        lambda r: (
            "Reliability at the pass thresholds "
            f"{', '.join(THRESHOLD_KEYS)} per run, 95% Wilson intervals."
        ),
    ),
    FigureSpec(
        "top_entries",
        "Playbook entries that moved reward",
        top_entries,
        lambda r: (
            "Mean reward of the episodes that injected an entry minus those that "
            "retrieved it without injecting it (largest moves first); texts in the table below."
        ),
    ),
    FigureSpec(
        "lane_mix",
        "Lane mix over time",
        lane_mix,
        lambda r: (
            f"Episodes per supervision lane (triage) in each {r.phase_size}-episode "
            "phase, stacked, per run with learning on."
        ),
    ),
    FigureSpec(
        "teacher_activity",
        "What the teacher did",
        teacher_activity,
        lambda r: (
            "Guidance messages, retries the teacher ordered, and supervised episodes "
            f"per {r.phase_size}-episode phase."
        ),
    ),
)


def draw_figures(report: ComparativeReport, out: Path) -> list[FigureFile]:
    """Draws every figure of FIGURES into `out` as `<stem>.png` (the folder is created);
    returns what was written, in order. The report's `figures` is not changed."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for spec in FIGURES:
        figure = spec.draw(report)
        figure.savefig(out / f"{spec.stem}.png", dpi=DPI)
        written.append(
            FigureFile(file=f"{spec.stem}.png", title=spec.title, caption=spec.caption(report))
        )
    return written
