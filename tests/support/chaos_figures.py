"""Figures the fault scenarios measure, and the table `make chaos` prints.

A `Figure` is one measured number with the target it is judged against (``target`` is text such
as ``"0"`` or ``"<= 2"``; ``met`` is decided by the scenario that measured it, since only it knows
what the number means). Tests assert on the same numbers the table shows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Figure", "Report", "render"]


@dataclass(frozen=True)
class Figure:
    """One measured number of a scenario."""

    name: str
    value: float | int | str
    target: str = ""
    met: bool | None = None  # None: reported, not judged
    note: str = ""


@dataclass
class Report:
    """The figures of one scenario run, with the parameters it ran with."""

    scenario: str
    params: str = ""
    figures: list[Figure] = field(default_factory=list)

    def add(
        self,
        name: str,
        value: float | int | str,
        target: str = "",
        met: bool | None = None,
        note: str = "",
    ) -> Figure:
        """Record one figure and return it."""
        figure = Figure(name, value, target, met, note)
        self.figures.append(figure)
        return figure

    def value(self, name: str) -> float | int | str:
        """The value of the figure called ``name``."""
        for figure in self.figures:
            if figure.name == name:
                return figure.value
        raise KeyError(name)

    def failed(self) -> list[Figure]:
        """Figures judged and not met."""
        return [f for f in self.figures if f.met is False]

    def __str__(self) -> str:
        return render([self])


def _fmt(value: float | int | str) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def render(reports: list[Report]) -> str:
    """A plain-text table of every figure, one row each."""
    rows = [("scenario", "figure", "value", "target", "met", "note")]
    for report in reports:
        for f in report.figures:
            met = "-" if f.met is None else ("yes" if f.met else "NO")
            rows.append((report.scenario, f.name, _fmt(f.value), f.target, met, f.note))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    params = [f"{r.scenario}: {r.params}" for r in reports if r.params]
    return "\n".join([*lines, "", *params]).rstrip() + "\n"
