"""The printed table: measurement, value, baseline (measured in the same run), ratio."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Row:
    name: str
    value: float | None
    unit: str
    baseline: float | None
    baseline_name: str

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.baseline:
            return None
        return self.value / self.baseline

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": None if self.value is None else round(self.value, 2),
            "unit": self.unit,
            "baseline": None if self.baseline is None else round(self.baseline, 2),
            "baseline_name": self.baseline_name,
            "ratio": None if self.ratio is None else round(self.ratio, 3),
        }


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}"


def render_table(
    rows: list[Row], goals: list[tuple[str, str]], machine: dict[str, Any], notes: list[str]
) -> str:
    header = ("measurement", "value", "unit", "baseline", "baseline is", "ratio")
    body = [
        (
            r.name,
            _num(r.value),
            r.unit,
            _num(r.baseline),
            r.baseline_name,
            "-" if r.ratio is None else f"{r.ratio:.2f}",
        )
        for r in rows
    ]
    widths = [max(len(str(line[i])) for line in [header, *body]) for i in range(len(header))]
    right = {1, 3, 5}

    def fmt(line: tuple[str, ...]) -> str:
        cells = [
            str(cell).rjust(widths[i]) if i in right else str(cell).ljust(widths[i])
            for i, cell in enumerate(line)
        ]
        return "  ".join(cells).rstrip()

    out = [fmt(header), "  ".join("-" * w for w in widths)]
    out += [fmt(line) for line in body]
    out.append("")
    out.append("goals (informative, not a gate):")
    out += [f"  [{status}] {goal}" for goal, status in goals]
    out.append("")
    out.append(
        f"machine: {machine.get('cpu')} x{machine.get('cores')}, {machine.get('memory_gib')} GiB, "
        f"Linux {machine.get('kernel')}, Python {machine.get('python')}, "
        f"{machine.get('nginx')}, {machine.get('postgres')}, {machine.get('wrk')}"
    )
    for note in notes:
        out.append(f"note: {note}")
    return "\n".join(out)
