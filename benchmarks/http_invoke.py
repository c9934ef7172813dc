"""HTTP benchmark: a towtruck node in one process, driven by a load generator in another.

The node is ``python -m towtruck serve examples.greeter:create_actor --max-actors 20000``;
the load is ``wrk -t1 -c50 --latency`` on (a) one hot actor, ``/invoke/1/hello``, and
(b) a random actor among 10,000 per request (``random_ids.lua``). The yardstick, in the
same rounds, is issue 10's minimal HTTP/1.1 server on raw trio sockets
(``limit_server.py``: a dict of plain objects, a JSON hello) under the same two loads;
a raw ASGI app (``hello_asgi.py``) on stock Hypercorn's trio worker is a second
reference. The cases alternate within each repetition (each towtruck case next to the
yardstick's, the order reversed every other repetition), so ratios compare the same
stretch of a noisy machine. Each case also reports its server's CPU time per answered
request (user and system, from ``/proc/PID/stat``, the server's processes only).
Without ``wrk`` on the PATH the load comes from ``loadgen.py`` (trio, raw sockets, also
a separate process); the figures' names say which generator ran.

Run it alone with ``python benchmarks/http_invoke.py [--quick] [--generator python]
[--yardstick PATH]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from _common import Figure, Figures, common_arguments, cpu_seconds, descendants, free_ports, table

HERE = Path(__file__).resolve().parent
CONNECTIONS = 50
RANDOM_IDS = 10_000
#: Issue 10's yardstick (a copy of ``../shared/bench/limit_server.py``).
YARDSTICK = HERE / "limit_server.py"
HOT = "hot actor /invoke/1/hello"
RANDOM = f"random actor of {RANDOM_IDS:,}"
#: Each towtruck case's yardstick case, measured next to it.
YARDSTICK_CASES = {
    HOT: "yardstick: raw trio, /invoke/1/hello",
    RANDOM: f"yardstick: raw trio, random id of {RANDOM_IDS:,}",
}
HYPERCORN = "reference: raw ASGI, hypercorn trio"


@dataclass
class Load:
    """What one load-generator run measured."""

    rps: float
    p50_ms: float
    p99_ms: float
    failed: int  # non-2xx answers and socket errors
    requests: int  # answered, failed or not


def wrk(
    url: str,
    duration: int,
    *,
    random_ids: int = 0,
    ids_file: Path | None = None,
    new_ids: str = "",
    connections: int = CONNECTIONS,
    seed: int = 0,
) -> Load:
    """Run ``wrk -t1 --latency`` (50 connections unless told) on ``url``; parse its report.

    Args:
        url: Every request's URL, or the base URL when ids are generated.
        duration: Seconds.
        random_ids: Call hello on a random actor among 1..``random_ids`` per request.
        ids_file: Call hello on a random actor among this file's lines instead.
        new_ids: Call hello on a new actor per request instead: ``new_ids`` followed by
            1, 2, 3... (``new_ids.lua``), so the prefix must not have been used before.
        connections: Connections, all on one thread.
        seed: Varies the random ids between loads started in the same second.
    """
    command = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", url]
    env = {**os.environ, "RANDOM_IDS": str(random_ids), "SEED": str(seed), "PREFIX": new_ids}
    if ids_file is not None:
        env["IDS_FILE"] = str(ids_file)
    if new_ids:
        command[-1:-1] = ["-s", str(HERE / "new_ids.lua")]
    elif random_ids or ids_file:
        command[-1:-1] = ["-s", str(HERE / "random_ids.lua")]
    out = _output(command, duration, env=env)
    failed = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    failed += int(m[1]) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    return Load(
        rps=float(_field(r"Requests/sec:\s+([\d.]+)", out)),
        p50_ms=_milliseconds(_field(r"\s50%\s+(\S+)", out)),
        p99_ms=_milliseconds(_field(r"\s99%\s+(\S+)", out)),
        failed=failed,
        requests=int(_field(r"(\d+) requests in", out)),
    )


def python_loadgen(
    url: str,
    duration: int,
    *,
    random_ids: int = 0,
    ids_file: Path | None = None,
    new_ids: str = "",
    connections: int = CONNECTIONS,
    seed: int = 0,
) -> Load:
    """The same load as :func:`wrk`, from ``loadgen.py`` in a child process (which seeds
    itself: ``seed`` is unused)."""
    command = [sys.executable, str(HERE / "loadgen.py"), url, f"-c{connections}", f"-d{duration}"]
    command += [f"--random-ids={random_ids}"]
    if ids_file is not None:
        command += [f"--ids-file={ids_file}"]
    if new_ids:
        command += [f"--new-ids={new_ids}"]
    result = json.loads(_output(command, duration))
    return Load(
        result["rps"], result["p50_ms"], result["p99_ms"], result["failed"], result["requests"]
    )


def _output(command: list[str], duration: int, env: dict[str, str] | None = None) -> str:
    """Run a load generator to the end; its standard output."""
    run = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60, env=env)
    if run.returncode:
        raise RuntimeError(f"{command[0]} failed ({run.returncode}):\n{run.stdout}{run.stderr}")
    return run.stdout


def _field(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    if match is None:
        raise RuntimeError(f"no {pattern!r} in wrk's output:\n{text}")
    return match[1]


def _milliseconds(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


@dataclass
class Server:
    """A server started by :func:`server`: its URL, and the process it runs in."""

    url: str
    pid: int

    def pids(self) -> list[int]:
        """Its process and those below it now (``--workers``' workers)."""
        return [self.pid, *descendants(self.pid)]


def measured(node: Server, load: Callable[[], Load]) -> tuple[Load, float]:
    """Run ``load`` on ``node``: what it measured, and the server's CPU time per
    answered request over the run, in µs (its processes' user and system time)."""
    pids = node.pids()
    before = cpu_seconds(pids)
    result = load()
    return result, 1e6 * (cpu_seconds(pids) - before) / max(result.requests, 1)


@contextlib.contextmanager
def server(
    name: str,
    command: list[str],
    url: str,
    *,
    cwd: Path,
    log_path: Path | None = None,
    probe: str | None = "/ping",
) -> Iterator[Server]:
    """Run a server in its own process group until the block ends, even on error (with
    the processes it started, in that group or not); yield it once ``url`` + ``probe``
    answers, or, if ``probe`` is None, once its port takes connections. Its output goes
    to ``log_path`` if given."""
    with open(log_path, "w+") if log_path else tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(
            command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            if not _ready(process, url, probe):
                log.seek(0)
                waited = f"answer {url}{probe}" if probe else f"listen at {url}"
                raise RuntimeError(
                    f"{name} did not {waited} (exit code {process.poll()});"
                    f" its output:\n{log.read()[-3000:]}"
                )
            yield Server(url, process.pid)
        finally:
            _kill(process)


def _ready(
    process: subprocess.Popen[bytes], url: str, probe: str | None, timeout: float = 30
) -> bool:
    """Whether the server answers ``probe`` (or takes connections) within ``timeout``
    seconds, while its process runs."""
    parts = urlsplit(url)
    address = (parts.hostname or "127.0.0.1", parts.port or 80)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if probe is None:
                socket.create_connection(address, timeout=1).close()
                return True
            with urllib.request.urlopen(f"{url}{probe}", timeout=1):
                return True  # urlopen raises on anything but 2xx
        except OSError:
            time.sleep(0.05)
    return False


def _kill(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group; SIGKILL whatever is left of it 5 seconds later, and
    of the processes below it that left the group (``towtruck serve --workers``)."""
    below = descendants(process.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # also hypercorn's worker process, if any
    process.wait()
    for pid in below:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


@dataclass
class Case:
    """One load on one server: ``url``, with random ids among 1..``ids`` if not 0."""

    server: Server
    url: str
    ids: int = 0


def run(*, duration: int, repeat: int, generator: str, yardstick: Path) -> list[Figure]:
    """Start the servers, warm them up, then measure each case ``repeat`` times."""
    load = wrk if generator == "wrk" else python_loadgen
    tag = f"http {generator} -c{CONNECTIONS}"
    node_port, yardstick_port, hypercorn_port = free_ports(3)
    node_command = [sys.executable, "-m", "towtruck", "serve", "examples.greeter:create_actor"]
    node_command += f"--host 127.0.0.1 --port {node_port} --max-actors {2 * RANDOM_IDS}".split()
    node_command += ["--log-level", "warning"]
    yardstick_command = [sys.executable, str(yardstick), str(yardstick_port)]
    hypercorn_command = [sys.executable, "-m", "hypercorn", "--worker-class", "trio"]
    hypercorn_command += ["--bind", f"127.0.0.1:{hypercorn_port}", "hello_asgi.py:app"]
    urls = [f"http://127.0.0.1:{port}" for port in (node_port, yardstick_port, hypercorn_port)]
    figures = Figures()
    with contextlib.ExitStack() as stack:
        node = stack.enter_context(server("towtruck node", node_command, urls[0], cwd=HERE.parent))
        limit = stack.enter_context(
            server("yardstick", yardstick_command, urls[1], cwd=HERE, probe=None)
        )
        hypercorn = stack.enter_context(
            server("hypercorn reference", hypercorn_command, urls[2], cwd=HERE)
        )
        for name, url in (("node", node.url), ("yardstick", limit.url)):
            answer = get_json(f"{url}/invoke/1/hello")
            if answer != {"hello": "from actor 1"}:
                raise RuntimeError(f"unexpected answer from the {name}: {answer!r}")
        cases = {  # each towtruck case next to its yardstick case
            HOT: Case(node, f"{node.url}/invoke/1/hello"),
            YARDSTICK_CASES[HOT]: Case(limit, f"{limit.url}/invoke/1/hello"),
            RANDOM: Case(node, node.url, RANDOM_IDS),
            YARDSTICK_CASES[RANDOM]: Case(limit, limit.url, RANDOM_IDS),
            HYPERCORN: Case(hypercorn, f"{hypercorn.url}/"),
        }
        for case in cases.values() if duration >= 3 else ():
            load(case.url, duration // 3, random_ids=case.ids)  # warm-up, not reported
        failed = 0
        for repetition in range(repeat):
            order = list(cases.items())
            loads, cpu = {}, {}
            for name, case in order if repetition % 2 == 0 else reversed(order):
                run_load = partial(load, case.url, duration, random_ids=case.ids, seed=repetition)
                loads[name], cpu[name] = measured(case.server, run_load)
            for name in cases:
                figures.add(f"{tag} {name}", "requests/s", loads[name].rps)
                figures.add(f"{tag} {name}, p50", "ms", loads[name].p50_ms)
                figures.add(f"{tag} {name}, p99", "ms", loads[name].p99_ms)
                figures.add(f"{tag} {name}, server CPU per request", "µs", cpu[name])
                failed += loads[name].failed
            for name, limit_name in YARDSTICK_CASES.items():
                ours, theirs = loads[name], loads[limit_name]
                figures.add(f"{tag} {name} / yardstick", "x", ours.rps / theirs.rps)
                figures.add(f"{tag} {name}, p99 / yardstick's", "x", ours.p99_ms / theirs.p99_ms)
                figures.add(
                    f"{tag} {name}, CPU per request / yardstick's", "x", cpu[name] / cpu[limit_name]
                )
                figures.add(f"{tag} {name} / hypercorn", "x", ours.rps / loads[HYPERCORN].rps)
        figures.add(f"{tag} failed requests, all runs", "requests", failed)
        health = get_json(f"{node.url}/health")
        figures.add(f"{tag} node's actors at the end", "actors", health["actors"])
    return list(figures.values())


def generator_argument(parser: argparse.ArgumentParser) -> None:
    """The option of every benchmark that runs a load generator."""
    parser.add_argument(
        "--generator",
        choices=["wrk", "python"],
        help="load generator (default: wrk if installed, else benchmarks/loadgen.py)",
    )


def arguments(parser: argparse.ArgumentParser) -> None:
    """This benchmark's own options."""
    generator_argument(parser)
    parser.add_argument(
        "--yardstick",
        type=Path,
        default=YARDSTICK,
        help="the raw-trio server to compare with, run as: python PATH PORT"
        " (default: benchmarks/limit_server.py)",
    )


def load_options(args: argparse.Namespace) -> dict[str, Any]:
    """Duration, repetitions and load generator from the command line, ``--quick``
    applied: the keyword arguments every HTTP benchmark's ``run`` takes."""
    return {
        "duration": max(1, round(args.duration or (1 if args.quick else 10))),
        "repeat": args.repeat or (1 if args.quick else 3),
        "generator": args.generator or ("wrk" if shutil.which("wrk") else "python"),
    }


def options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of :func:`run` from the command line, ``--quick`` applied."""
    return {**load_options(args), "yardstick": args.yardstick.resolve()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_arguments(parser)
    arguments(parser)
    print(table(run(**options(parser.parse_args()))))


if __name__ == "__main__":
    main()
