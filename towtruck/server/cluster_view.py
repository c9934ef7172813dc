"""The dashboard's view of the cluster, made from its nodes' snapshots: pure, no I/O,
no clock (see :mod:`towtruck.server.dashboard` for how the figures are counted)."""

from __future__ import annotations

import collections
from typing import Any, Final

from ..figures import Histogram

__all__ = ["Snapshot", "cluster_view"]

#: A node's ``/cluster/snapshot``.
Snapshot = dict[str, Any]

#: Methods listed, busiest first.
_TOP_METHODS: Final = 12


def cluster_view(
    me: str, snapshots: dict[str, Snapshot], previous: dict[str, Snapshot], interval: float
) -> dict[str, Any]:
    """The dashboard's view of the cluster from the snapshots of its nodes (by address),
    for a page that refreshes every ``interval`` seconds, with rates against
    ``previous`` ones (none: rates are None). The nodes listed are
    this node's members (``me`` first) and any other that answered; latencies are in
    seconds. Pure: no I/O, no clock."""
    own = snapshots.get(me, {})
    listed = {m["address"]: m["state"] for m in own.get("members", ())}
    listed.setdefault(me, "self")
    for address in snapshots:
        listed.setdefault(address, "unknown")
    nodes, methods = [], _Methods()
    latency = Histogram()
    calls = errors = forwarded = 0.0
    rated = False
    reminders: collections.Counter[str] = collections.Counter()
    for address, state in listed.items():
        row: dict[str, Any] = {"address": address, "state": state, "answered": False}
        snapshot = snapshots.get(address)
        try:
            figures = _node_figures(snapshot, previous.get(address), methods) if snapshot else None
        except (KeyError, TypeError, ValueError):  # not a snapshot this version reads
            figures = None
        if figures is not None:
            since = figures.pop("_latency", None)
            reminders.update(figures.pop("_reminders"))
            row.update(figures, answered=True)
            if since is not None:
                rated = True
                calls += figures["calls_per_s"]
                errors += figures["errors_per_s"]
                forwarded += figures["forwarded_per_s"]
                latency.add(since)
        nodes.append(row)
    answered = [row for row in nodes if row["answered"]]
    max_actors = [row["max_actors"] for row in answered]
    return {
        "node": me,
        "time": own.get("time"),
        "interval": interval,
        "totals": {
            "nodes": len(nodes),
            "answered": len(answered),
            "actors": sum(row["actors"] for row in answered),
            "max_actors": sum(max_actors) if None not in max_actors else None,
            "busy": sum(row["busy"] for row in answered),
            "queued": sum(row["queued"] for row in answered),
            "in_flight": sum(row["in_flight"] for row in answered),
            "calls_per_s": calls if rated else None,
            "errors_per_s": errors if rated else None,
            "forwarded_share": (forwarded / calls if calls else 0.0) if rated else None,
            "p50": latency.quantile(0.5),
            "p99": latency.quantile(0.99),
        },
        "nodes": nodes,
        "methods": methods.busiest(_TOP_METHODS),
        "reminders": dict(reminders),
        "timers": sum(row["timers"] for row in answered),
    }


def _node_figures(now: Snapshot, before: Snapshot | None, methods: _Methods) -> dict[str, Any]:
    """A node's row: its figures now, and its rates since ``before`` (None if there is
    none, or the node restarted since). Adds its methods to ``methods``. Raises
    ``KeyError``, ``TypeError`` or ``ValueError`` on a snapshot it cannot read."""
    latency = Histogram.from_payload(now["latency"])
    row: dict[str, Any] = {
        key: now[key]
        for key in ("actors", "max_actors", "busy", "queued", "in_flight", "uptime", "timers")
    }
    row.update(
        requests=int(now["requests"]),
        failed=int(now["failed"]),
        forwarded=int(now["forwarded"]),
        window=None,
        calls_per_s=None,
        errors_per_s=None,
        forwarded_per_s=None,
        p50=None,
        p99=None,
        _reminders={k: int(v) for k, v in now["reminders"].items()},
    )
    window = float(now["uptime"]) - float(before["uptime"]) if before is not None else 0.0
    if before is None or window <= 0 or int(before["requests"]) > row["requests"]:
        methods.add(now["methods"], None, None)
        return row
    since = latency.since(Histogram.from_payload(before["latency"]))
    ran, failed = methods.add(now["methods"], before["methods"], window)
    rejected = sum(now["rejected"].values()) - sum(before["rejected"].values())
    row.update(
        window=window,
        calls_per_s=(ran + rejected) / window,
        errors_per_s=(failed + rejected) / window,
        forwarded_per_s=(row["forwarded"] - int(before["forwarded"])) / window,
        p50=since.quantile(0.5),
        p99=since.quantile(0.99),
        _latency=since,
    )
    return row


class _Methods:
    """The methods' figures, summed over the nodes."""

    def __init__(self) -> None:
        self._calls: collections.Counter[str] = collections.Counter()
        self._errors: collections.Counter[str] = collections.Counter()
        self._calls_per_s: dict[str, float] = {}
        self._errors_per_s: dict[str, float] = {}
        self._latency: dict[str, Histogram] = {}

    def add(
        self, now: dict[str, Any], before: dict[str, Any] | None, window: float | None
    ) -> tuple[int, int]:
        """Add one node's methods (rates over ``window``, if ``before``); returns the
        calls and the errors since ``before``."""
        new_calls = new_errors = 0
        for name, method in now.items():
            self._calls[name] += int(method["calls"])
            self._errors[name] += int(method["errors"])
            if before is None or window is None:
                continue
            was = before.get(name, {"calls": 0, "errors": 0, "latency": None})
            calls, errors = method["calls"] - was["calls"], method["errors"] - was["errors"]
            new_calls += calls
            new_errors += errors
            self._calls_per_s[name] = self._calls_per_s.get(name, 0.0) + calls / window
            self._errors_per_s[name] = self._errors_per_s.get(name, 0.0) + errors / window
            latency = Histogram.from_payload(method["latency"])
            if was["latency"] is not None:
                latency = latency.since(Histogram.from_payload(was["latency"]))
            self._latency.setdefault(name, Histogram()).add(latency)
        return new_calls, new_errors

    def busiest(self, most: int) -> list[dict[str, Any]]:
        """The ``most`` busiest methods now (by calls per second, then by calls)."""
        names = sorted(
            self._calls, key=lambda n: (-self._calls_per_s.get(n, 0.0), -self._calls[n], n)
        )
        return [
            {
                "name": name,
                "calls": self._calls[name],
                "errors": self._errors[name],
                "calls_per_s": self._calls_per_s.get(name),
                "errors_per_s": self._errors_per_s.get(name),
                "p50": (latency := self._latency.get(name, Histogram())).quantile(0.5),
                "p99": latency.quantile(0.99),
            }
            for name in names[:most]
        ]
