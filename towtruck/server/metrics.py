"""``GET /metrics``: the node's figures in Prometheus' text format.

The figures are kept as plain numbers where they arise (:mod:`towtruck.figures`, the
runtime's and the catalog's counters) and turned into metric families only when
scraped, by a ``prometheus-client`` custom collector: no Prometheus object is touched
per call. Labels are bounded by the code, never by traffic: methods an actor defines,
error types of towtruck's tree, deactivation reasons, store operations, peers.

Under ``towtruck serve --workers N`` the worker that takes the scrape asks its
siblings for theirs (``/metrics?worker=1``, on their private addresses, with a
deadline) and sums them sample by sample, so one scrape of the public port answers for
the whole process group, and the figures stay additive (rates and histograms of the
sum are those of the group). ``prometheus-client``'s multiprocess mode would have done
it with a file per process and a lock per update, on every call; summing at scrape time
costs nothing between scrapes. The cluster's view (members, peers up) is the answering
worker's own; a sibling that does not answer in time is left out and counted in
``towtruck_workers_missing``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Final

import httpx
import trio
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.parser import text_string_to_metric_families

from .. import __version__
from ..cluster.router import Router
from ..figures import BUCKETS, Histogram

if TYPE_CHECKING:
    from ..runtime import Runtime

__all__ = ["Metrics"]

#: Families whose samples are the answering worker's view, not summed over workers.
_OWN_VIEW: Final = frozenset(
    {"towtruck_members", "towtruck_peer_up", "process_start_time_seconds", "process_max_fds"}
)
#: Families that keep every worker's samples side by side (their labels differ).
_SIDE_BY_SIDE: Final = frozenset({"towtruck_node"})
_BOUNDS: Final = [f"{bound:g}" for bound in BUCKETS] + ["+Inf"]


def _buckets(histogram: Histogram) -> list[tuple[str, float]]:
    cumulative, seen = [], 0
    for bound, count in zip(_BOUNDS, histogram.counts, strict=True):
        seen += count
        cumulative.append((bound, float(seen)))
    return cumulative


class _NodeCollector:
    """The runtime's figures as metric families, read at each scrape."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    def collect(self) -> Iterator[Metric]:
        runtime = self._runtime
        catalog = runtime.catalog
        stats = catalog.statistics()

        info = GaugeMetricFamily(
            "towtruck_node",
            "This node: its address and towtruck's version.",
            labels=["node", "version"],
        )
        info.add_metric([runtime.node_id, __version__], 1)
        yield info

        yield from self._calls()
        yield CounterMetricFamily(
            "towtruck_requests",
            "Calls this node received (from clients, peers and its actors).",
            value=runtime.calls,
        )
        rejected = CounterMetricFamily(
            "towtruck_rejected",
            "Calls refused without running (503), by error type.",
            labels=["type"],
        )
        for kind, count in sorted(runtime.rejected.items()):
            rejected.add_metric([kind], count)
        yield rejected
        yield GaugeMetricFamily(
            "towtruck_in_flight", "Calls under way now.", value=runtime.in_flight
        )
        router = runtime.router if isinstance(runtime.router, Router) else None
        yield CounterMetricFamily(
            "towtruck_forwarded",
            "Calls this node sent on to the node that owns their actor.",
            value=router.forwarded if router is not None else 0,
        )

        yield GaugeMetricFamily("towtruck_actors", "Actors in memory.", value=stats.actors)
        yield GaugeMetricFamily(
            "towtruck_max_actors",
            "The cap on actors in memory (max_actors).",
            value=stats.max_actors,
        )
        yield GaugeMetricFamily(
            "towtruck_busy_actors",
            "Actors running a turn, activating or deactivating.",
            value=stats.busy,
        )
        yield GaugeMetricFamily(
            "towtruck_mailbox_queued", "Calls waiting in mailboxes.", value=stats.queued
        )
        yield CounterMetricFamily(
            "towtruck_activations", "Actors activated.", value=stats.activations
        )
        left = CounterMetricFamily(
            "towtruck_deactivations", "Actors that left memory, by why.", labels=["reason"]
        )
        for reason, count in sorted(catalog.left.items()):
            left.add_metric([reason], count)
        yield left

        yield from self._cluster(router)

        yield GaugeMetricFamily("towtruck_timers", "Timers scheduled.", value=len(catalog.timers))
        yield CounterMetricFamily(
            "towtruck_timer_ticks", "Timer ticks put in mailboxes.", value=catalog.timers.fired
        )
        reminders = runtime.reminders
        yield GaugeMetricFamily(
            "towtruck_reminders_scheduled",
            "Durable reminders this node will deliver (of the buckets it owns).",
            value=reminders.statistics()["scheduled"],
        )
        ticks = CounterMetricFamily(
            "towtruck_reminder_ticks", "Reminder ticks delivered, by outcome.", labels=["outcome"]
        )
        ticks.add_metric(["delivered"], reminders.delivered)
        ticks.add_metric(["failed"], reminders.failed)
        yield ticks
        yield CounterMetricFamily(
            "towtruck_reminder_late_ticks",
            "Reminder ticks delivered over a second after they fell due.",
            value=reminders.late,
        )
        yield from self._store()

    def _calls(self) -> Iterator[Metric]:
        figures = self._runtime.catalog.figures
        calls = CounterMetricFamily(
            "towtruck_calls",
            "Calls answered by this node's actors, by method and outcome (ok, or the"
            " error's type).",
            labels=["method", "outcome"],
        )
        latency = HistogramMetricFamily(
            "towtruck_call_duration_seconds",
            "Time from a call's arrival at its actor's node to its answer, by method.",
            labels=["method"],
        )
        for name, method in sorted((figures.methods if figures else {}).items()):
            for outcome, count in sorted(method.outcomes.items()):
                calls.add_metric([name, outcome], count)
            latency.add_metric([name], _buckets(method.latency), method.latency.sum)
        yield calls
        yield latency

    def _cluster(self, router: Router | None) -> Iterator[Metric]:
        members = GaugeMetricFamily(
            "towtruck_members",
            "Nodes of the cluster as this node sees them, by state.",
            labels=["state"],
        )
        peer_up = GaugeMetricFamily(
            "towtruck_peer_up", "1 if this node sees the peer up, else 0.", labels=["peer"]
        )
        if router is None:
            members.add_metric(["self"], 1)
        else:
            counts: dict[str, int] = {}
            for member in router.gossip.members():
                counts[member["state"]] = counts.get(member["state"], 0) + 1
                if member["state"] != "self":
                    peer_up.add_metric([member["address"]], float(member["state"] == "alive"))
            for state, count in sorted(counts.items()):
                members.add_metric([state], count)
        yield members
        yield peer_up
        if router is not None:
            yield CounterMetricFamily(
                "towtruck_membership_decisions",
                "Changes of membership this node has decided or learnt.",
                value=router.membership.decisions,
            )
            yield CounterMetricFamily(
                "towtruck_membership_messages",
                "Probes and other membership messages this node has sent.",
                value=router.gossip.sent,
            )
            yield CounterMetricFamily(
                "towtruck_filter_fetches",
                "Peers' bloom filters this node has fetched.",
                value=router.directory.fetches,
            )
            yield GaugeMetricFamily(
                "towtruck_detector_multiplier",
                "What the failure detector multiplies its timeouts by while this node's"
                " own timers run late (1: on time).",
                value=router.gossip.health.multiplier,
            )
            yield CounterMetricFamily(
                "towtruck_detector_late_timers",
                "Failure detector timers that fired over a quarter interval late.",
                value=router.gossip.health.late,
            )

    def _store(self) -> Iterator[Metric]:
        store = self._runtime.store.opened
        if store is None:
            return
        figures = store.figures
        latency = HistogramMetricFamily(
            "towtruck_store_duration_seconds",
            "Time the state store took, by operation.",
            labels=["operation"],
        )
        for operation, histogram in sorted(figures.latency.items()):
            latency.add_metric([operation], _buckets(histogram), histogram.sum)
        yield latency
        yield CounterMetricFamily(
            "towtruck_state_conflicts",
            "Writes refused because a newer activation claimed the actor (409).",
            value=figures.conflicts,
        )
        yield CounterMetricFamily(
            "towtruck_store_failures",
            "State store operations that failed or timed out.",
            value=figures.failures,
        )


class _Families:
    """A registry-like holder of metric families already built (for the encoder)."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self._families


class Metrics:
    """What ``GET /metrics`` answers on a node.

    Args:
        runtime: The node's runtime.
        siblings: The private addresses of the other workers of a ``--workers`` group,
            whose figures this node adds to its own.
        headers: Sent to the siblings (the cluster key).
    """

    def __init__(
        self, runtime: Runtime, siblings: Sequence[str] = (), headers: dict[str, str] | None = None
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_NodeCollector(runtime))
        self.registry.register(ProcessCollector(registry=None))
        self.siblings = list(siblings)
        self._headers = headers or {}
        self._timeout = min(runtime.settings.protocol_timeout, 2.0)

    async def render(self, accept: str = "", *, own_only: bool = False) -> tuple[bytes, str]:
        """The exposition (body and content type) for a scrape with ``accept``;
        ``own_only``: this worker's figures alone."""
        encoder, content_type = choose_encoder(accept)
        if own_only or not self.siblings:
            return encoder(self.registry), content_type
        own = list(self.registry.collect())
        theirs = await self._siblings()
        missing = len(self.siblings) - len(theirs)
        merged = _merge(own, theirs)
        gauge = GaugeMetricFamily(
            "towtruck_workers_missing",
            "Workers of this group whose figures this scrape could not get in time.",
            value=missing,
        )
        return encoder(_Families([*merged, gauge])), content_type

    async def _siblings(self) -> list[list[Metric]]:
        found: list[list[Metric]] = []

        async def fetch(client: httpx.AsyncClient, address: str) -> None:
            try:
                response = await client.get(f"http://{address}/metrics?worker=1")
                response.raise_for_status()
                found.append(list(text_string_to_metric_families(response.text)))
            except (httpx.HTTPError, ValueError):
                return

        with trio.move_on_after(self._timeout + 0.5):
            async with (
                httpx.AsyncClient(headers=self._headers, timeout=self._timeout) as client,
                trio.open_nursery() as nursery,
            ):
                for address in self.siblings:
                    nursery.start_soon(fetch, client, address)
        return found


def _merge(own: list[Metric], others: list[list[Metric]]) -> list[Metric]:
    """``own`` families with the samples of ``others`` added: summed where name and
    labels match (the counters, gauges and histograms of a process group add up)."""
    by_name = {family.name: family for family in own}
    for families in others:
        for family in families:
            mine = by_name.get(family.name)
            if mine is None:
                if family.name in _OWN_VIEW:
                    continue
                by_name[family.name] = mine = Metric(family.name, family.documentation, family.type)
                by_name[family.name].samples = []
            if family.name in _OWN_VIEW:
                continue
            if family.name in _SIDE_BY_SIDE:
                mine.samples.extend(family.samples)
                continue
            index = {
                (s.name, tuple(sorted(s.labels.items()))): i for i, s in enumerate(mine.samples)
            }
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                found = index.get(key)
                if found is None:
                    index[key] = len(mine.samples)
                    mine.samples.append(sample)
                else:
                    kept = mine.samples[found]
                    mine.samples[found] = kept._replace(value=kept.value + sample.value)
    return list(by_name.values())
