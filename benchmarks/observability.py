"""What metrics and tracing cost: local calls and HTTP ``/invoke``, each on and off.

Three configurations of a node, measured side by side:

- ``metrics off``: ``metrics=False`` (``--no-metrics``): only the node's totals kept;
- ``metrics on``: the default: every call's outcome and latency counted by method;
- ``tracing on``: metrics on, and an OpenTelemetry SDK ``TracerProvider`` with a
  ``BatchSpanProcessor`` (its defaults) and an exporter that counts spans and drops
  them (``_traced_greeter.py``), so every call the node receives is a span.

The cost of metrics is ``metrics on / metrics off``; the cost of a span per call is
``tracing on / metrics on`` (the same node but for the tracer).

Local calls (as ``local_invoke.py``: the greeter, 100 caller tasks, no HTTP) on one hot
actor and on 1,000 actors: calls/s and the process's CPU time per call (user and
system, every thread, the span processor's among them, from ``/proc/self/stat``). The
tracer is set on ``runtime.tracer`` before the runtime serves, so the process's global
provider stays unset. A new runtime per measurement.

HTTP (as ``http_invoke.py``: ``wrk -t1 -c50``, a hot actor and a random actor of 10,000
per request): one server process per configuration, all started at once, each
``python -m towtruck serve examples.greeter:create_actor`` (``--no-metrics`` for
``metrics off``; ``python benchmarks/_traced_greeter.py serve ...`` for ``tracing on``,
which configures the global provider first): requests/s, p99, and the server's CPU time
per request. The traced server reports how many spans it exported, checked against the
requests it answered.

Within each repetition the three configurations run one after the other on each load,
their order reversed every other repetition, so a ratio compares the same stretch of a
noisy machine; figures are medians over the repetitions.

Run it alone with ``python benchmarks/observability.py [--quick] [--generator python]``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import trio
from _common import Figure, Figures, common_arguments, cpu_seconds, free_ports, table
from _traced_greeter import EXPORTED, dropping_provider
from http_invoke import (
    CONNECTIONS,
    RANDOM_IDS,
    Case,
    generator_argument,
    get_json,
    load_options,
    measured,
    python_loadgen,
    server,
    wrk,
)
from local_invoke import CALLERS, SPREAD, create_actor, rate

import towtruck

HERE = Path(__file__).resolve().parent
OFF, ON, TRACED = "metrics off", "metrics on", "tracing on"
CONFIGURATIONS = (OFF, ON, TRACED)
#: The ratios reported: (name, numerator, denominator).
RATIOS = (("metrics on / off", ON, OFF), ("tracing on / off", TRACED, ON))
LOCAL_HOT = f"local invoke, 1 actor, {CALLERS} callers"
LOCAL_SPREAD = f"local invoke, {SPREAD:,} actors, {CALLERS} callers"
HTTP_HOT = "hot actor /invoke/1/hello"
HTTP_RANDOM = f"random actor of {RANDOM_IDS:,}"


@asynccontextmanager
async def open_node(
    max_actors: int, *, metrics: bool, tracer: Any
) -> AsyncIterator[towtruck.Runtime]:
    """``local_invoke.open_runtime`` with ``metrics`` set, and ``tracer`` (None: no
    provider) set on the runtime before it serves."""
    settings = towtruck.Settings.load(max_actors=max_actors, metrics=metrics)
    runtime = towtruck.Runtime(create_actor, settings)
    runtime.tracer = tracer
    async with trio.open_nursery() as nursery:
        await nursery.start(runtime.serve)
        try:
            yield runtime
        finally:
            await runtime.stop()


async def local_calls(
    duration: float, spread: int, *, metrics: bool, tracer: Any
) -> tuple[float, float, int]:
    """Calls/s to ``hello`` on ``spread`` actors (activated beforehand), the process's
    CPU time per call in µs, and the calls the node received (activations included)."""
    ids = [str(i) for i in range(spread)]
    pick = random.Random(0).randrange
    async with open_node(10 * spread, metrics=metrics, tracer=tracer) as runtime:
        invoke = runtime.client.invoke
        for actor_id in ids:
            await invoke(actor_id, "hello")
        calls, cpu = runtime.calls, cpu_seconds([os.getpid()])
        if spread == 1:
            result = await rate(lambda i, n: invoke("1", "hello"), duration)
        else:
            result = await rate(lambda i, n: invoke(ids[pick(spread)], "hello"), duration)
        cpu = cpu_seconds([os.getpid()]) - cpu
        return result, 1e6 * cpu / max(runtime.calls - calls, 1), runtime.calls


async def run_local(*, duration: float, repeat: int) -> list[Figure]:
    """Local calls in the three configurations, alternating within each repetition."""
    provider, exporter = dropping_provider()
    tracer = provider.get_tracer("towtruck", towtruck.__version__)
    settings = {OFF: (False, None), ON: (True, None), TRACED: (True, tracer)}
    figures = Figures()
    traced_calls = 0
    try:
        for repetition in range(repeat):
            for load, spread in ((LOCAL_HOT, 1), (LOCAL_SPREAD, SPREAD)):
                order = CONFIGURATIONS if repetition % 2 == 0 else CONFIGURATIONS[::-1]
                rates, cpu = {}, {}
                for name in order:
                    metrics, tracer_or_none = settings[name]
                    rates[name], cpu[name], calls = await local_calls(
                        duration, spread, metrics=metrics, tracer=tracer_or_none
                    )
                    traced_calls += calls if name == TRACED else 0
                for name in CONFIGURATIONS:
                    figures.add(f"{load}, {name}", "calls/s", rates[name])
                    figures.add(f"{load}, {name}, CPU per call", "µs", cpu[name])
                for ratio, over, under in RATIOS:
                    figures.add(f"{load}, {ratio}", "x", rates[over] / rates[under])
                    figures.add(f"{load}, {ratio}, CPU per call", "x", cpu[over] / cpu[under])
    finally:
        provider.shutdown()  # flushes the queue, stops the processor's thread
    figures.add(
        "local, tracing on: spans exported / calls", "x", exporter.spans / max(traced_calls, 1)
    )
    return list(figures.values())


@contextlib.contextmanager
def servers(ports: list[int], log: Path) -> Iterator[dict[str, Any]]:
    """The three nodes, by configuration; the traced one's output goes to ``log``."""
    flags = ["--host", "127.0.0.1", "--max-actors", str(2 * RANDOM_IDS), "--log-level", "warning"]
    node = ["-m", "towtruck", "serve", "examples.greeter:create_actor"]
    traced = [str(HERE / "_traced_greeter.py"), "serve", "examples.greeter:create_actor"]
    commands = {
        OFF: [sys.executable, *node, *flags, "--no-metrics"],
        ON: [sys.executable, *node, *flags],
        TRACED: [sys.executable, *traced, *flags],
    }
    with contextlib.ExitStack() as stack:
        nodes = {}
        for (name, command), port in zip(commands.items(), ports, strict=True):
            url = f"http://127.0.0.1:{port}"
            nodes[name] = stack.enter_context(
                server(
                    f"node, {name}",
                    [*command, "--port", str(port)],
                    url,
                    cwd=HERE.parent,
                    log_path=log if name == TRACED else None,
                )
            )
        yield nodes


def run_http(*, duration: int, repeat: int, generator: str) -> list[Figure]:
    """HTTP ``/invoke`` in the three configurations, alternating within each repetition."""
    load = wrk if generator == "wrk" else python_loadgen
    tag = f"observability http {generator} -c{CONNECTIONS}"
    figures = Figures()
    traced_requests = 0
    with tempfile.TemporaryDirectory() as directory:
        log = Path(directory) / "traced.log"
        with servers(free_ports(3), log) as nodes:
            for name, node in nodes.items():
                answer = get_json(f"{node.url}/invoke/1/hello")
                if answer != {"hello": "from actor 1"}:
                    raise RuntimeError(f"unexpected answer from the node, {name}: {answer!r}")
            traced_requests += 1
            loads = {
                HTTP_HOT: {
                    name: Case(node, f"{node.url}/invoke/1/hello") for name, node in nodes.items()
                },
                HTTP_RANDOM: {
                    name: Case(node, node.url, RANDOM_IDS) for name, node in nodes.items()
                },
            }
            for cases in loads.values() if duration >= 3 else ():
                for name, case in cases.items():  # warm-up, not reported
                    warm = load(case.url, duration // 3, random_ids=case.ids)
                    traced_requests += warm.requests if name == TRACED else 0
            failed = 0
            for repetition in range(repeat):
                for what, cases in loads.items():
                    order = CONFIGURATIONS if repetition % 2 == 0 else CONFIGURATIONS[::-1]
                    results, cpu = {}, {}
                    for name in order:
                        case = cases[name]
                        run_load = partial(
                            load, case.url, duration, random_ids=case.ids, seed=repetition
                        )
                        results[name], cpu[name] = measured(case.server, run_load)
                    traced_requests += results[TRACED].requests
                    for name in CONFIGURATIONS:
                        figures.add(f"{tag} {what}, {name}", "requests/s", results[name].rps)
                        figures.add(f"{tag} {what}, {name}, p99", "ms", results[name].p99_ms)
                        figures.add(
                            f"{tag} {what}, {name}, server CPU per request", "µs", cpu[name]
                        )
                        failed += results[name].failed
                    for ratio, over, under in RATIOS:
                        figures.add(
                            f"{tag} {what}, {ratio}", "x", results[over].rps / results[under].rps
                        )
                        figures.add(
                            f"{tag} {what}, {ratio}, CPU per request", "x", cpu[over] / cpu[under]
                        )
            figures.add(f"{tag} failed requests, all runs", "requests", failed)
        # The traced node has stopped: it printed how many spans it exported.
        match = re.search(rf"{EXPORTED} (\d+)", log.read_text())
        if match is None:
            raise RuntimeError(
                f"the traced node did not say how many spans it exported:\n{log.read_text()[-3000:]}"
            )
        figures.add(
            f"{tag} tracing on: spans exported / requests answered",
            "x",
            int(match[1]) / max(traced_requests, 1),
        )
    return list(figures.values())


def run(
    *, local_duration: float, local_repeat: int, duration: int, repeat: int, generator: str
) -> list[Figure]:
    """Local calls, then HTTP."""
    figures = trio.run(partial(run_local, duration=local_duration, repeat=local_repeat))
    return figures + run_http(duration=duration, repeat=repeat, generator=generator)


def arguments(parser: argparse.ArgumentParser) -> None:
    """This benchmark's own options."""
    generator_argument(parser)


def options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of :func:`run` from the command line, ``--quick`` applied:
    ``--duration`` and ``--repeat`` apply to local calls and HTTP alike; by default
    2 s x 5 for local calls and 5 s x 4 for HTTP (0.5 s and 1 s, once, with ``--quick``)."""
    http = load_options(args)
    return {
        "local_duration": args.duration or (0.5 if args.quick else 2.0),
        "local_repeat": args.repeat or (1 if args.quick else 5),
        "duration": max(1, round(args.duration or (1 if args.quick else 5))),
        "repeat": args.repeat or (1 if args.quick else 4),
        "generator": http["generator"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_arguments(parser)
    arguments(parser)
    print(table(run(**options(parser.parse_args()))))


if __name__ == "__main__":
    main()
