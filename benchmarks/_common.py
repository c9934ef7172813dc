"""What the benchmarks share: measured figures, the table they print, small helpers."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import socket
import statistics
from pathlib import Path


@dataclasses.dataclass
class Figure:
    """One measured quantity, with a value per repetition.

    Attributes:
        name: What was measured, e.g. ``local invoke, 1 actor``.
        unit: e.g. ``calls/s``, ``ms``, ``bytes``, ``x`` (a ratio).
        values: One value per repetition.
    """

    name: str
    unit: str
    values: list[float] = dataclasses.field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")


class Figures(dict[str, Figure]):
    """Figures by name, in the order they were first recorded."""

    def add(self, name: str, unit: str, value: float) -> None:
        """Record one repetition's value of ``name``."""
        self.setdefault(name, Figure(name, unit)).values.append(value)


def table(figures: list[Figure]) -> str:
    """Format figures as a plain-text table: median, min and max over repetitions."""
    rows = _rows(figures)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(row[1:4], widths[1:4], strict=True)]
        cells += [row[4].ljust(widths[4]), row[5].rjust(widths[5])]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("-" * len(lines[0]))
    return "\n".join(lines)


def markdown_table(figures: list[Figure]) -> str:
    """The same table in Markdown."""
    rows = _rows(figures)
    lines = ["| " + " | ".join(row) + " |" for row in rows]
    lines.insert(1, "|---|--:|--:|--:|---|--:|")
    return "\n".join(lines)


def _rows(figures: list[Figure]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = [("benchmark", "median", "min", "max", "unit", "n")]
    for f in figures:
        if f.values:
            low, high = min(f.values), max(f.values)
            rows.append((f.name, num(f.median), num(low), num(high), f.unit, str(len(f.values))))
    return rows


def num(value: float) -> str:
    """A figure's value as the tables print it: three significant digits or more."""
    if value != value:  # NaN
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"


def common_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every benchmark accepts."""
    parser.add_argument("--quick", action="store_true", help="short runs, for smoke tests in CI")
    parser.add_argument("--duration", type=float, help="seconds per measurement")
    parser.add_argument("--repeat", type=int, help="repetitions of each measurement")


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on 127.0.0.1 that were free a moment ago."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


def rss_bytes() -> int:
    """This process's resident set size, from ``/proc/self/status``."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status (not Linux?)")


def descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (children, their children...), from ``/proc``: they
    may have left its process group and session, as ``towtruck serve --workers`` does."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))):
            parents.setdefault(int(stat[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def cpu_seconds(pids: list[int]) -> float:
    """CPU seconds (user and system) these processes have used, each with its children
    that have ended and been waited for; processes already gone count 0."""
    ticks = sum(sum(map(int, stat[11:15])) for pid in pids if (stat := _stat(pid)))
    return ticks / os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first), or []."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone
        return []
    return text.rpartition(")")[2].split()
