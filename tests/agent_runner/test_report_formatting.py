"""The one set of figure formatters both reports print with: each shows the value, its
interval and (where asked) its count, and `-` for a missing figure."""

from __future__ import annotations

import pytest

from agent_runner.reports import formatting as fmt
from agent_runner.reports.learning_metrics import Interval


def figure(value: float | None, low: float | None, high: float | None) -> Interval:
    return Interval(value=value, low=low, high=high, count=33, total=40, method="wilson")


def test_each_kind_shows_value_interval_and_counts() -> None:
    f = figure(0.825, 0.741, 0.886)
    assert fmt.rate(f) == "82.5% [74.1%, 88.6%] (33/40)"
    assert fmt.points(f) == "+82.5 pts [+74.1, +88.6]"
    assert fmt.points(f, n=True) == "+82.5 pts [+74.1, +88.6] (n=40)"
    assert fmt.relative(f, n=True) == "+82.5% [+74.1%, +88.6%] (n=33)"
    assert fmt.score(f) == "0.825 [0.741, 0.886]"
    assert fmt.score(figure(-0.05, -0.1, 0.0), signed=True) == "-0.050 [-0.100, +0.000]"
    assert fmt.money(figure(1234.5, 0.01, None)) == "$1,234.5000 [$0.0100, ∞]"
    assert fmt.number(figure(1234.4, None, 1390.0)) == "1,234 [?, 1,390]"
    assert fmt.number(figure(12.0, None, None)) == "12"


@pytest.mark.parametrize(
    "formatter", [fmt.rate, fmt.points, fmt.relative, fmt.score, fmt.money, fmt.number]
)
def test_no_figure_is_a_dash(formatter: object) -> None:
    assert callable(formatter)
    assert formatter(None) == "-"
    assert formatter(figure(None, None, None)) == "-"


def test_table_escapes_pipes_and_newlines_and_aligns_numbers_right() -> None:
    lines = fmt.table(["run", "rate"], [["a|b", "1\n2"]])
    assert lines == ["| run | rate |", "| --- | ---: |", "| a\\|b | 1 2 |"]
