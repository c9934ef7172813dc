"""What the benchmarks share: measured figures, the table they print, small helpers."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import socket
import statistics


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
    rows = [("benchmark", "median", "min", "max", "unit", "n")]
    for f in figures:
        if f.values:
            low, high = min(f.values), max(f.values)
            rows.append((f.name, _num(f.median), _num(low), _num(high), f.unit, str(len(f.values))))
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


def _num(value: float) -> str:
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
