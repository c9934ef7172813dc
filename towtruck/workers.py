"""``towtruck serve --workers N``: N node processes behind one address and port.

Python runs one thread of Python at a time, so one node process uses one core. With
``--workers N`` the ``towtruck serve`` process becomes a supervisor: it opens the
listening sockets, starts N worker processes (each an ordinary node), hands each its
sockets, and stops them all gracefully on SIGINT or SIGTERM. The workers form a local
cluster, so an actor still lives in exactly one of them:

- **The public port** is shared: each worker listens on its own socket bound to it
  with ``SO_REUSEPORT``, and the kernel spreads new connections evenly over them. (One
  socket shared by all workers would have them race for each connection, unevenly.)
- **A private port per worker** (on ``host``, or on loopback when ``host`` is a
  wildcard) is the worker's address in the cluster: calls it does not own reach their
  owner there, on a lane. Worker 0 starts first; the others join it with ``--peer``.

Settings reach the workers as ``TOWTRUCK_*`` variables, so each worker is configured
exactly as ``towtruck serve`` would be without ``--workers``. A worker that dies is
logged and not restarted; the others go on serving (the cluster takes the dead one
out, its connections and actors with it). Workers stop gracefully when the supervisor
does, and also when it dies without a word (SIGKILL): each holds the read end of a
pipe whose write end only the supervisor has.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from typing import Final

import httpx
import trio

from .address import Address
from .settings import ENV_PREFIX, Settings

__all__ = ["supervise"]

logger = logging.getLogger("towtruck")

#: How long a worker may take to start serving.
START_SECONDS: Final = 30.0
_BACKLOG: Final = 1024


async def supervise(factory: str, settings: Settings, log_level: str) -> int:
    """Run ``settings.workers`` workers serving ``factory`` until SIGINT or SIGTERM.

    Returns the exit status: 0 if every worker stopped cleanly.
    """
    count = settings.workers
    wildcard = settings.host in ("0.0.0.0", "::")
    private_host = "127.0.0.1" if wildcard else settings.host
    publics = _public_sockets(settings.host, settings.port, count)
    port = publics[0].getsockname()[1]
    privates = [_listening(private_host, 0) for _ in range(count)]
    addresses = [str(Address(private_host, s.getsockname()[1])) for s in privates]
    # The workers watch this pipe: it closes when the supervisor dies, however it dies.
    parent_read, parent_write = os.pipe()
    processes: list[trio.Process] = []
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        try:
            for index in range(count):
                peers = [*settings.peers, *([addresses[0]] if index else [])]
                worker = settings.replace(
                    port=port, advertise=addresses[index], peers=tuple(peers), workers=1
                )
                fds = (publics[index].fileno(), privates[index].fileno())
                processes.append(await _start(factory, worker, fds, parent_read, log_level))
                if index == 0:  # the others join it: it must be up first
                    await _wait_serving(addresses[0], processes[0])
            for address, process in zip(addresses, processes, strict=True):
                await _wait_serving(address, process)
        finally:
            for sock in publics + privates:
                sock.close()  # the workers hold them now
            os.close(parent_read)
        logger.info("towtruck: %d workers serving on http://%s:%d", count, settings.host, port)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signal, signals, processes)
            for process in processes:
                nursery.start_soon(_watch, process)
            for process in processes:
                await process.wait()
            nursery.cancel_scope.cancel()
    os.close(parent_write)
    return max((abs(p.returncode or 0) for p in processes), default=0)


def _public_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """``count`` sockets listening on one port (picked by the first if ``port`` is 0),
    each with ``SO_REUSEPORT``."""
    sockets: list[socket.socket] = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(_BACKLOG)
        sock.set_inheritable(True)
        port = sock.getsockname()[1]
        sockets.append(sock)
    return sockets


def _listening(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(_BACKLOG)
    sock.set_inheritable(True)
    return sock


async def _start(
    factory: str, settings: Settings, fds: tuple[int, int], parent_fd: int, log_level: str
) -> trio.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    for name, value in dataclasses.asdict(settings).items():
        if value is None:
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, tuple):
            text = ",".join(value)
        else:
            text = str(value)
        env[ENV_PREFIX + name.upper()] = text
    command = [
        sys.executable,
        "-m",
        "towtruck",
        "serve",
        factory,
        "--listen-fds",
        ",".join(map(str, fds)),
        "--parent-fd",
        str(parent_fd),
        "--log-level",
        log_level,
    ]
    # A session of its own: Ctrl-C in a terminal reaches the supervisor only, which
    # passes it on once; the worker would take a second signal for "stop at once".
    return await trio.lowlevel.open_process(
        command, env=env, pass_fds=(*fds, parent_fd), start_new_session=True
    )


async def _wait_serving(address: str, process: trio.Process) -> None:
    """Wait until the worker at ``address`` answers ``/ping``."""
    with trio.fail_after(START_SECONDS):
        async with httpx.AsyncClient(timeout=1.0, trust_env=False) as client:
            while process.returncode is None:
                try:
                    if (await client.get(f"http://{address}/ping")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await trio.sleep(0.05)
    raise RuntimeError(f"worker 0 exited with status {process.returncode} before serving")


async def _watch(process: trio.Process) -> None:
    status = await process.wait()
    if status != 0:
        logger.error("worker %d exited with status %d", process.pid, status)


async def _stop_on_signal(signals: AsyncIterator[int], processes: list[trio.Process]) -> None:
    """First signal: stop every worker gracefully (SIGTERM). Second: kill them."""
    graceful = True
    async for signum in signals:
        name = signal.Signals(signum).name
        if graceful:
            logger.info("%s: stopping the workers gracefully (again to kill them)", name)
        else:
            logger.warning("%s again: killing the workers", name)
        for process in processes:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
        graceful = False
