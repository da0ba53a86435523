"""A figure with its 95% interval as Markdown text, one formatter per kind of figure, and
Markdown tables: what `crmbench learning-report` and `crmbench report` both print.

Every formatter takes an `Interval` (learning_metrics) or None and returns `-` when there
is no figure. A bound that could not be made shows as `?` below and `∞` above (an
unbounded interval, such as a cost per success when resamples hold no success).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent_runner.reports.learning_metrics import Interval


def _bounds(figure: Interval, show: Callable[[float], str]) -> str:
    if figure.low is None and figure.high is None:
        return ""
    low = show(figure.low) if figure.low is not None else "?"
    high = show(figure.high) if figure.high is not None else "∞"
    return f" [{low}, {high}]"


def _shown(
    figure: Interval | None, show: Callable[[float], str], unit: str = "", tail: str = ""
) -> str:
    """`value unit [low, high] tail`, `tail` formatted with the figure's `count` and
    `total`; `-` without a figure."""
    if figure is None or figure.value is None:
        return "-"
    text = f"{show(figure.value)}{unit}{_bounds(figure, show)}"
    return text + tail.format(count=figure.count, total=figure.total)


def rate(figure: Interval | None) -> str:
    """A rate with its count: `82.5% [74.1%, 88.6%] (66/80)`."""
    return _shown(figure, "{:.1%}".format, tail=" ({count}/{total})")


def points(figure: Interval | None, *, n: bool = False) -> str:
    """A difference of rates (or of mean rewards) in percentage points:
    `+14.0 pts [+8.0, +20.0]`, with ` (n=total)` when `n`."""
    return _shown(figure, lambda v: f"{v * 100:+.1f}", " pts", " (n={total})" if n else "")


def relative(figure: Interval | None, *, n: bool = False) -> str:
    """A relative change: `+41.2% [+20.3%, +66.0%]`, with ` (n=count)` when `n`."""
    return _shown(figure, "{:+.1%}".format, tail=" (n={count})" if n else "")


def score(figure: Interval | None, *, signed: bool = False) -> str:
    """A mean reward in [0, 1] (or, `signed`, a difference of two): `0.853 [0.801, 0.899]`."""
    return _shown(figure, ("{:+.3f}" if signed else "{:.3f}").format)


def money(figure: Interval | None) -> str:
    """US dollars with 4 decimals: `$0.0123 [$0.0100, $0.0150]`."""
    return _shown(figure, "${:,.4f}".format)


def number(figure: Interval | None) -> str:
    """A count or mean count, rounded: `1,234 [1,100, 1,390]`."""
    return _shown(figure, "{:,.0f}".format)


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A Markdown table's lines: the header, the rule (first column left, the others
    right-aligned), a line per row; `|` in a cell escaped, a newline made a space."""

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

    rule = ["---"] + ["---:"] * (len(header) - 1)
    return [line(header), "| " + " | ".join(rule) + " |", *(line(row) for row in rows)]
