"""The table a benchmark prints: one row per measure, with its goal and whether it was met."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field


@dataclass
class Row:
    name: str
    value: str
    goal: str = ""
    ok: bool | None = None


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)

    def add(self, name: str, value: str, goal: str = "", ok: bool | None = None) -> None:
        self.rows.append(Row(name, value, goal, ok))
        print(f"  {name}: {value}", file=sys.stderr, flush=True)

    def section(self, title: str) -> None:
        self.rows.append(Row(f"-- {title}", ""))
        print(f"-- {title}", file=sys.stderr, flush=True)

    def print(self) -> None:
        width = max(len(r.name) for r in self.rows)
        vwidth = max(len(r.value) for r in self.rows)
        gwidth = max(len(r.goal) for r in self.rows)
        print(f"{'measure':<{width}}  {'value':>{vwidth}}  {'goal':<{gwidth}}  pass")
        print("-" * (width + vwidth + gwidth + 10))
        for r in self.rows:
            mark = "" if r.ok is None else ("yes" if r.ok else "NO")
            print(f"{r.name:<{width}}  {r.value:>{vwidth}}  {r.goal:<{gwidth}}  {mark}")
