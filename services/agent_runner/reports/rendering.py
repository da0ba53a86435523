"""The run report as aligned plain-text tables (rich, no colour), for a terminal or a file."""

from __future__ import annotations

import io
from collections.abc import Sequence

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from agent_runner.reports.statistics import PASS_KEY, THRESHOLD_KEYS, Rate, RunReport


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _interval(rate: Rate) -> str:
    if rate.low is None or rate.high is None:
        return "-"
    return f"[{rate.low:.1%}, {rate.high:.1%}]"


def _number(value: float | None, money: bool = False) -> str:
    if value is None:
        return "-"
    return f"${value:,.4f}" if money else f"{value:,.0f}"


def _table(columns: Sequence[str]) -> Table:
    """A borderless table: first column left-aligned, the figures right-aligned."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="")
    for index, column in enumerate(columns):
        table.add_column(Text(column), justify="left" if index == 0 else "right", no_wrap=True)
    return table


def _row(table: Table, *cells: str) -> None:
    table.add_row(*(Text(cell) for cell in cells))


def _header(report: RunReport) -> list[str]:
    run = report.run
    parts = [f"run {', '.join(report.run_ids) or (run.run_id if run else None) or '?'}"]
    if report.agents:
        parts.append(f"agent {', '.join(report.agents)}")
    if report.models:
        parts.append(f"model {', '.join(report.models)}")
    parts.append(f"{report.trials} trial{'s' if report.trials != 1 else ''} per case")
    lines = ["crm-bench results: " + " | ".join(parts)]
    details = []
    if run is not None and run.corpus_hash:
        details.append(f"corpus {run.corpus_hash[:16]}")
    if run is not None and run.package_version:
        details.append(f"crm-bench {run.package_version}")
    if report.reading.source:
        details.append(f"source {report.reading.source}")
    if details:
        lines.append(" | ".join(details))
    harness = len(report.harness_errors)
    planned = run.total_items if run is not None else None
    of_planned = f" (of {planned} planned)" if planned is not None else ""
    lines += _verification_lines(report)
    lines.append(
        f"{report.episodes} episodes{of_planned} of {report.cases} cases: "
        f"{report.scored_episodes} scored, "
        f"{harness} harness error{'s' if harness != 1 else ''} (never counted in pass rates: "
        "not the agent's fault)"
    )
    return lines


def _verification_lines(report: RunReport) -> list[str]:
    """How the replies were read: one line, or one per run when the traces mix runs."""

    def counts(modes: dict[str, int]) -> str:
        return ", ".join(f"{mode} {count}" for mode, count in modes.items())

    runs = report.verification_modes
    if not runs:
        return ["verification: no scored episode"]
    if len(runs) == 1:
        [modes] = runs.values()
        return [f"verification: {counts(modes)} (scored episodes per mode)"]
    return [
        f"verification of run {run_id}: {counts(modes)} (scored episodes per mode)"
        for run_id, modes in runs.items()
    ]


def render_report(report: RunReport) -> str:
    """The report as aligned plain-text tables (no colour), for a terminal or a file."""
    buffer = io.StringIO()
    # Wide enough that no table folds: each is only as wide as its content.
    console = Console(
        file=buffer,
        width=200,
        color_system=None,
        force_terminal=False,
        highlight=False,
        emoji=False,
        markup=False,
        soft_wrap=True,
    )
    for line in _header(report):
        console.print(line)
    for warning in report.warnings:
        console.print(f"warning: {warning}")
    console.print()

    console.print("Pass rate: share of scored episodes with score >= threshold")
    rates = _table(["score >=", "passed", "scored", "rate", "95% CI (Wilson)"])
    for key, rate in report.pass_rates.items():
        _row(rates, key, str(rate.passed), str(rate.total), _pct(rate.rate), _interval(rate))
    console.print(rates)
    mean = "-" if report.mean_score is None else f"{report.mean_score:.3f}"
    console.print(f"mean score {mean} over {report.scored_episodes} scored episodes")
    if report.cue_hit is not None:
        hit = report.cue_hit
        console.print(
            f"cue hit rate {_pct(hit.rate)} ({hit.passed}/{hit.total} episodes with >= 1 "
            f"retrieved playbook entry; 95% CI {_interval(hit)})"
        )
    if report.adoption is not None:
        adopted = report.adoption
        console.print(
            f"adoption rate {_pct(adopted.rate)} ({adopted.passed}/{adopted.total} retrieved "
            f"playbook entries injected and followed; 95% CI {_interval(adopted)}"
            + (
                f"; {report.unobservable_retrievals} retrievals of entries no trace can show "
                "followed left out)"
                if report.unobservable_retrievals
                else ")"
            )
        )
    if report.lanes:
        mix = ", ".join(f"{lane} {count}" for lane, count in report.lanes.items())
        console.print(
            f"lanes: {mix}; teacher guidance messages {report.guidance_messages}, "
            f"retries ordered {report.teacher_retries}"
        )
    console.print()

    if report.pass_hat_k:
        console.print(
            "pass^k: chance that k trials of a case all pass "
            "(mean over cases of C(passes, k) / C(trials, k))"
        )
        hat = _table(["k", "cases", *(f">= {key}" for key in THRESHOLD_KEYS)])
        for entry in report.pass_hat_k:
            _row(
                hat,
                str(entry.k),
                str(entry.cases),
                *(_pct(entry.values.get(key)) for key in THRESHOLD_KEYS),
            )
        console.print(hat)
        console.print()

    for breakdown in report.breakdowns:
        console.print(f"By {breakdown.dimension}")
        table = _table(
            [
                breakdown.dimension,
                "episodes",
                "scored",
                *(f">= {key}" for key in THRESHOLD_KEYS),
                f"95% CI >= {PASS_KEY}",
                "mean score",
                "harness err",
            ],
        )
        for group in breakdown.groups:
            _row(
                table,
                group.group,
                str(group.episodes),
                str(group.scored),
                *(_pct(group.pass_rates[key].rate) for key in THRESHOLD_KEYS),
                _interval(group.pass_rates[PASS_KEY]),
                "-" if group.mean_score is None else f"{group.mean_score:.3f}",
                str(group.harness_errors),
            )
        console.print(table)
        console.print()

    cost = report.cost
    console.print(
        f"Tokens and cost over {cost.episodes} scored episodes "
        f"({cost.passes} passed at >= {PASS_KEY})"
    )
    usage = _table(["", "total", "per episode", "mean of passing", "total per pass"])
    for label, figure, money in (
        ("student tokens", cost.student_tokens, False),
        ("teacher tokens", cost.teacher_tokens, False),
        ("all tokens", cost.tokens, False),
        ("simulated cost (USD)" if cost.simulated_note else "cost (USD)", cost.cost_usd, True),
    ):
        _row(
            usage,
            label,
            _number(figure.total, money),
            _number(figure.per_episode, money),
            _number(figure.per_passing_episode, money),
            _number(figure.per_pass, money),
        )
    console.print(usage)
    if cost.simulated_note:
        console.print(cost.simulated_note)
    if cost.unpriced_episodes:
        console.print(
            f"cost unknown: {cost.unpriced_episodes} episode(s) used a model with no price "
            "in the price table"
        )
    console.print()

    if report.harness_errors:
        console.print(f"Harness errors ({len(report.harness_errors)}), excluded from pass rates:")
        shown = report.harness_errors[:20]
        for error in shown:
            console.print(
                f"  {error.case_id} trial {error.trial}: {error.error or 'no error recorded'}"
            )
        if len(report.harness_errors) > len(shown):
            console.print(f"  ... and {len(report.harness_errors) - len(shown)} more (--json)")
        console.print()
    for note in report.notes:
        console.print(f"note: {note}")
    return "\n".join(line.rstrip() for line in buffer.getvalue().rstrip().splitlines()) + "\n"
