"""What a node counts about its calls, cheaply enough to count every one.

A call that reaches an actor adds one to its method's outcome count and one to a
bucket of its method's latency histogram: a dictionary lookup, a ``bisect`` and three
additions, about a quarter of a microsecond. Nothing is labelled by actor id or by a
name a client made up: only methods the actor's class (or mapping) defines get figures,
so a scrape's size is bounded by the code, not by the traffic. The figures are plain
numbers read when someone asks (``/metrics``, ``/dashboard``); no Prometheus object is
touched per call (see :mod:`towtruck.server.metrics`).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from typing import Final

from .errors import StateConflict, TowtruckError

__all__ = ["BUCKETS", "CallFigures", "Histogram", "MethodFigures", "StoreFigures"]

#: Upper bounds of the latency buckets, in seconds: from 100 µs (a local call takes
#: about 10) to 30 s (the default call timeout); the last bucket is everything above.
BUCKETS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


class Histogram:
    """Counts of durations by bucket (see :data:`BUCKETS`), and their sum."""

    __slots__ = ("counts", "sum")

    def __init__(self, counts: Sequence[int] | None = None, total: float = 0.0) -> None:
        self.counts = list(counts) if counts is not None else [0] * (len(BUCKETS) + 1)
        self.sum = total

    def observe(self, seconds: float) -> None:
        """Count one duration."""
        self.counts[bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    def add(self, other: Histogram) -> None:
        """Add ``other``'s counts to these."""
        for index, count in enumerate(other.counts):
            self.counts[index] += count
        self.sum += other.sum

    def since(self, earlier: Histogram) -> Histogram:
        """What was counted after ``earlier`` (a copy of this one, taken before)."""
        return Histogram(
            [a - b for a, b in zip(self.counts, earlier.counts, strict=True)],
            self.sum - earlier.sum,
        )

    def copy(self) -> Histogram:
        return Histogram(self.counts, self.sum)

    def quantile(self, q: float) -> float | None:
        """The ``q``-quantile (0 to 1), interpolated within its bucket as Prometheus'
        ``histogram_quantile`` does; None if nothing was counted. Past the last bound it
        answers that bound."""
        total = self.count
        if not total:
            return None
        rank = q * total
        seen = 0
        for index, count in enumerate(self.counts):
            if count and seen + count >= rank:
                if index == len(BUCKETS):
                    return BUCKETS[-1]
                lower = BUCKETS[index - 1] if index else 0.0
                return lower + (BUCKETS[index] - lower) * (rank - seen) / count
            seen += count
        return BUCKETS[-1]

    def to_payload(self) -> dict[str, object]:
        return {"counts": self.counts, "sum": self.sum}

    @classmethod
    def from_payload(cls, payload: dict[str, object]) -> Histogram:
        counts, total = payload["counts"], payload["sum"]
        if (
            not isinstance(counts, list)
            or len(counts) != len(BUCKETS) + 1
            or not all(isinstance(c, int) for c in counts)
            or not isinstance(total, (int, float))
        ):
            raise ValueError("not a histogram")
        return cls(counts, float(total))


class MethodFigures:
    """One method's calls on this node: outcomes (``"ok"`` or the error's type) and
    latency, from the call's arrival at the actor's node to its answer (its wait in
    the mailbox and the actor's activation included)."""

    __slots__ = ("failures", "latency", "ok")

    def __init__(self) -> None:
        self.latency = Histogram()
        self.ok = 0
        #: The calls that failed, by the error's type.
        self.failures: dict[str, int] = {}

    @property
    def outcomes(self) -> dict[str, int]:
        """Calls by outcome: ``"ok"`` and each error type."""
        return {"ok": self.ok, **self.failures} if self.ok else dict(self.failures)

    @property
    def calls(self) -> int:
        return self.ok + self.errors

    @property
    def errors(self) -> int:
        return sum(self.failures.values())


class CallFigures:
    """The figures of every method called on this node, by name."""

    __slots__ = ("methods",)

    def __init__(self) -> None:
        self.methods: dict[str, MethodFigures] = {}

    def add(self, method: str) -> MethodFigures:
        """The figures of ``method``, new."""
        figures = self.methods[method] = MethodFigures()
        return figures

    def done(self, method: str, seconds: float) -> None:
        """A call to ``method`` answered after ``seconds`` (``Catalog.invoke`` does
        this inline)."""
        figures = self.methods.get(method) or self.add(method)
        figures.latency.observe(seconds)
        figures.ok += 1

    def failed(self, method: str, seconds: float, error: BaseException) -> None:
        """A call to ``method`` failed after ``seconds`` with ``error``."""
        figures = self.methods.get(method) or self.add(method)
        figures.latency.observe(seconds)
        outcome = type(error).__name__
        figures.failures[outcome] = figures.failures.get(outcome, 0) + 1

    def latency(self, methods: Iterable[str] | None = None) -> Histogram:
        """The latency of every call (or of ``methods``'), in one histogram."""
        total = Histogram()
        for name, figures in self.methods.items():
            if methods is None or name in methods:
                total.add(figures.latency)
        return total


class StoreFigures:
    """A state store's operations as this node saw them: latency by operation
    (``claim``, ``read``, ``write``, ``clear``), writes refused by fencing, failures."""

    __slots__ = ("conflicts", "failures", "latency")

    def __init__(self) -> None:
        self.latency: dict[str, Histogram] = {}
        self.conflicts = 0
        self.failures = 0

    def timing(self, operation: str, clock: Callable[[], float]) -> _Timing:
        """A context manager counting one ``operation``: its time, and its failure if it
        raises (a :class:`~towtruck.errors.StateConflict` counts as a conflict)."""
        return _Timing(self, operation, clock)


class _Timing:
    __slots__ = ("_clock", "_figures", "_operation", "_started")

    def __init__(self, figures: StoreFigures, operation: str, clock: Callable[[], float]) -> None:
        self._figures, self._operation, self._clock = figures, operation, clock
        self._started = 0.0

    def __enter__(self) -> None:
        self._started = self._clock()

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        figures = self._figures
        histogram = figures.latency.get(self._operation)
        if histogram is None:
            histogram = figures.latency[self._operation] = Histogram()
        histogram.observe(self._clock() - self._started)
        if kind is None:
            return
        if issubclass(kind, StateConflict):
            figures.conflicts += 1
        elif issubclass(kind, TowtruckError):  # (not a cancellation)
            figures.failures += 1
