"""``towtruck serve --workers N``: N node processes behind one address and port.

Python runs one thread of Python at a time, so one node process uses one core. With
``--workers N`` the ``towtruck serve`` process becomes a supervisor: it opens the
listening sockets, starts N worker processes (each an ordinary node), hands each its
sockets, and stops them all gracefully on SIGINT or SIGTERM. The workers form a local
cluster, so an actor still lives in exactly one of them:

- **The public port** is shared: each worker listens on its own socket bound to it
  with ``SO_REUSEPORT``, and the kernel spreads new connections evenly over them. (One
  socket shared by all workers would have them race for each connection, unevenly.)
- **A private port per worker** is the worker's address in the cluster. Worker 0
  starts first; the others join it (and the ``--peer`` addresses, as it does).
  Without ``--advertise``, a free port on ``host`` (on loopback when ``host`` is a
  wildcard: a local cluster only). With ``--advertise HOST:PORT``, the N ports from
  ``PORT`` on (from ``PORT + 1`` when it is the public port), bound on ``host``
  (wildcard or not), each worker advertising ``HOST:its port``: peers on other hosts
  reach every worker directly, on ports known in advance (see :func:`worker_ports`).
- **A Unix domain socket per worker** (in Linux's abstract namespace, so nothing is
  left behind whatever happens; elsewhere in a directory of the supervisor's): calls a
  worker does not own reach their owner there, on a lane, at about half the kernel's
  cost of TCP loopback (each worker is told the others' sockets: ``--local-lanes``).

Settings reach the workers as ``TOWTRUCK_*`` variables, so each worker is configured
exactly as ``towtruck serve`` would be without ``--workers`` (other variables, the
deployment's own ``TOWTRUCK_*`` ones included, pass through unchanged). A worker that
refuses to start with a one-line error (status 2) stops the supervisor with that
status, adding nothing to the worker's line. A worker that dies is
logged and restarted, on the same private address, after a pause that grows while
restarts keep dying young; meanwhile the others go on serving (the cluster takes the
dead one out, its connections and actors with it, and places its ids again once it is
back). Workers stop gracefully when the supervisor does, and also when it dies without
a word (SIGKILL): each holds the read end of a pipe whose write end only the
supervisor has.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator
from typing import Final

import httpx
import trio

from .errors import SettingsError
from .ids import Address
from .settings import ENV_PREFIX, Settings, bind_error

__all__ = ["WorkerExited", "supervise", "worker_ports"]

logger = logging.getLogger("towtruck")

#: How long a worker may take to start serving.
START_SECONDS: Final = 30.0
#: The pause before a dead worker is restarted; it doubles, up to the maximum, while
#: restarted workers die within the window of starting.
_RESTART_PAUSE: Final = 0.5
_RESTART_MAX_PAUSE: Final = 30.0
_RESTART_WINDOW: Final = 10.0
_BACKLOG: Final = 1024
#: The status of a ``towtruck serve`` that refused its settings at start.
_REFUSED: Final = 2
_WILDCARDS: Final = ("0.0.0.0", "::")


class WorkerExited(RuntimeError):
    """A worker exited before it served.

    Attributes:
        status: Its exit status (negative: the signal that killed it).
    """

    def __init__(self, index: int, status: int) -> None:
        super().__init__(f"worker {index} exited with status {status} before serving")
        self.status = status


async def supervise(factory: str, settings: Settings) -> int:
    """Run ``settings.workers`` workers serving ``factory`` until SIGINT or SIGTERM,
    restarting any that dies meanwhile.

    Returns the exit status: 0 if every worker stopped cleanly; a worker's own status
    if it refused to start with a settings error (2), which it has printed.

    Raises:
        SettingsError: ``host`` and ``port`` cannot be listened on, or the workers'
            ports that ``advertise`` gives (see :func:`worker_ports`) cannot be.
    """
    count = settings.workers
    ports = worker_ports(settings)
    try:
        publics = _public_sockets(settings.host, settings.port, count)
        port = publics[0].getsockname()[1]
    except OSError as exc:  # a port in use, a host not of this machine...
        raise bind_error(settings, exc) from exc
    try:
        privates = _private_sockets(settings, ports)
    except BaseException:
        for sock in publics:
            sock.close()
        raise
    binds = [Address(_private_host(settings), s.getsockname()[1]) for s in privates]
    advertised = Address.parse(settings.advertise).host if settings.advertise else None
    addresses = [Address(advertised or b.host, b.port) for b in binds]
    workers = _Workers(binds, addresses, fixed=ports is not None)
    if sys.platform == "linux":
        lanes = f"@towtruck-{os.getpid()}-{secrets.token_hex(4)}"  # abstract: no file
        return await _supervise(factory, settings, port, publics, privates, workers, lanes)
    lanes = tempfile.mkdtemp(prefix="towtruck-lanes-")
    try:
        return await _supervise(factory, settings, port, publics, privates, workers, lanes)
    finally:
        shutil.rmtree(lanes, ignore_errors=True)


# Where the workers are reached. Without --advertise, as ever: free ports on host, on
# loopback for a wildcard host, so a node in a pod (binding 0.0.0.0) keeps its workers
# to itself. With --advertise HOST:PORT, each worker binds PORT + i on host itself
# (the wildcard included) and advertises HOST:PORT + i. Alternatives that lost: free
# ports advertised under HOST (reachable, but a NetworkPolicy or firewall cannot be
# written for them, and a restarted worker could come back on another); ports from
# the public port + 1 always (the user could not move them off a port in use, and
# --port 0 would make them random again); a separate setting for the first port (one
# more flag, when --advertise already names a port that would otherwise mean
# nothing). The advertised port equal to the public port, as a single node would
# write it, means the ports after it: the public port is shared by the workers and so
# is nobody's address in the cluster.


def worker_ports(settings: Settings) -> list[int] | None:
    """The fixed private ports of the workers (``--advertise``), or None: free ones.
    Pure: nothing is bound.

    Raises:
        SettingsError: the ports run past 65535 or include the public port.
    """
    if settings.advertise is None:
        return None
    first = Address.parse(settings.advertise).port
    if first == settings.port:
        first += 1
    ports = list(range(first, first + settings.workers))
    if ports[-1] > 65535:
        reason = f"the {settings.workers} worker ports from {first} run past 65535"
    elif settings.port in ports:
        reason = (
            f"the worker ports {first}-{ports[-1]} include the public port {settings.port};"
            f" give {settings.port} (the workers then take the ports after it) or a port"
            " outside"
        )
    else:
        return ports
    raise SettingsError(
        f"advertise {settings.advertise}: {reason}",
        setting="advertise",
        value=settings.advertise,
        reason=reason,
    )


def _private_host(settings: Settings) -> str:
    """Where the workers bind their private ports (see above)."""
    if settings.advertise is None and settings.host in _WILDCARDS:
        return "127.0.0.1"
    return settings.host


def _private_sockets(settings: Settings, ports: list[int] | None) -> list[socket.socket]:
    """The workers' private sockets, on ``ports`` (None: free ones).

    Raises:
        SettingsError: one cannot be bound, naming the setting at fault.
    """
    host = _private_host(settings)
    sockets: list[socket.socket] = []
    try:
        for index in range(settings.workers):
            port = 0 if ports is None else ports[index]
            try:
                sockets.append(_listening(host, port))
            except OSError as exc:
                error = bind_error(settings, exc)
                if ports is None:
                    raise error from exc
                reason = f"worker {index}'s port {port}: {error.details['reason']}"
                raise SettingsError(
                    f"advertise {settings.advertise}: {reason}",
                    setting="advertise",
                    value=settings.advertise,
                    reason=reason,
                ) from exc
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


@dataclasses.dataclass
class _Workers:
    """Where each worker is: the address its private socket is bound to (the supervisor
    asks it ``/ping`` there; a wildcard is asked on loopback) and the address it
    advertises (its name in the cluster); ``fixed``: their ports were given."""

    binds: list[Address]
    addresses: list[Address]
    fixed: bool

    def local(self, index: int) -> Address:
        """Where the supervisor reaches worker ``index`` from this host."""
        bind = self.binds[index]
        if bind.host in _WILDCARDS:
            return Address("::1" if ":" in bind.host else "127.0.0.1", bind.port)
        return bind


async def _supervise(
    factory: str,
    settings: Settings,
    port: int,
    publics: list[socket.socket],
    privates: list[socket.socket],
    workers: _Workers,
    lanes: str,
) -> int:
    count = settings.workers
    paths = [f"{lanes}/worker-{index}.sock" for index in range(count)]
    locals_ = [_unix_listening(path) for path in paths]
    # The workers watch this pipe: it closes when the supervisor dies, however it dies.
    parent_read, parent_write = os.pipe()
    pool = _Pool(factory, settings.replace(port=port), workers, paths, parent_read)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        try:
            for index in range(count):
                # Worker 0 starts alone; the others join it, so it must be up first.
                peers = [str(workers.addresses[0])] if index else []
                sockets = (publics[index], privates[index], locals_[index])
                await pool.start(index, sockets, peers)
                if index == 0:
                    await pool.wait_serving(0)
            for index in range(count):
                await pool.wait_serving(index)
        except WorkerExited as exc:
            pool.kill_all()
            os.close(parent_read)
            os.close(parent_write)
            if exc.status == _REFUSED:  # it said why, in one line
                return exc.status
            raise
        except BaseException:
            pool.kill_all()
            os.close(parent_read)
            raise
        finally:
            for sock in publics + privates + locals_:
                sock.close()  # the workers hold them now
        logger.info(
            "towtruck: %d workers serving on http://%s:%d (in the cluster: %s)",
            count,
            settings.host,
            port,
            ", ".join(map(str, workers.addresses)),
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signal, signals, pool)
            async with trio.open_nursery() as keepers:
                for index in range(count):
                    keepers.start_soon(pool.keep, index)
            nursery.cancel_scope.cancel()
    os.close(parent_read)
    os.close(parent_write)
    return max((abs(p.returncode or 0) for p in pool.processes), default=0)


class _Pool:
    """The workers, each started, watched, and restarted if it dies unbidden."""

    def __init__(
        self,
        factory: str,
        settings: Settings,
        workers: _Workers,
        paths: list[str],
        parent_fd: int,
    ) -> None:
        self._factory = factory
        self._settings = settings
        self._workers = workers
        self._paths = paths
        self._parent_fd = parent_fd
        self.processes: list[trio.Process] = []
        #: Set once the supervisor was told to stop: workers that exit stay down.
        self.stopped = trio.Event()

    @property
    def stopping(self) -> bool:
        """Whether the supervisor was told to stop."""
        return self.stopped.is_set()

    async def start(
        self,
        index: int,
        sockets: tuple[socket.socket, socket.socket, socket.socket],
        peers: list[str],
    ) -> None:
        """Start worker ``index`` on ``sockets`` (public, private, Unix domain),
        joining ``peers``."""
        worker = self._settings.replace(
            advertise=str(self._workers.addresses[index]),
            peers=(*self._settings.peers, *peers),
            workers=1,
        )
        fds = tuple(sock.fileno() for sock in sockets)
        local_lanes = ",".join(
            f"{address}={path}"
            for address, path in zip(self._workers.addresses, self._paths, strict=True)
        )
        process = await _start(self._factory, worker, fds, self._parent_fd, local_lanes)
        if index < len(self.processes):
            self.processes[index] = process
        else:
            self.processes.append(process)
        if self.stopping:  # told to stop while it started: it missed the signal
            process.send_signal(signal.SIGTERM)

    async def wait_serving(self, index: int) -> None:
        """Wait until worker ``index`` answers ``/ping``.

        Raises:
            WorkerExited: it exited first.
            trio.TooSlowError: not within ``START_SECONDS``.
        """
        process = self.processes[index]
        with trio.fail_after(START_SECONDS):
            async with httpx.AsyncClient(timeout=1.0, trust_env=False) as client:
                while process.returncode is None:
                    try:
                        url = f"http://{self._workers.local(index)}/ping"
                        response = await client.get(url)
                        if response.status_code == 200:
                            return
                    except httpx.TransportError:
                        pass
                    await trio.sleep(0.05)
        raise WorkerExited(index, process.returncode)

    async def keep(self, index: int) -> None:
        """Watch worker ``index`` until the supervisor stops; restart it whenever it
        exits before that. One that keeps dying soon after starting is restarted
        after a longer and longer pause (up to ``_RESTART_MAX_PAUSE``)."""
        pause = _RESTART_PAUSE
        while True:
            process = self.processes[index]
            started = trio.current_time()
            status = await process.wait()
            if self.stopping:
                if status != 0:
                    logger.error("worker %d exited with status %d", process.pid, status)
                return
            if trio.current_time() - started > _RESTART_WINDOW:
                pause = _RESTART_PAUSE
            logger.error(
                "worker %d (process %d) exited with status %d; restarting it in %.1f s",
                index,
                process.pid,
                status,
                pause,
            )
            with trio.move_on_after(pause):
                await self.stopped.wait()
            pause = min(2 * pause, _RESTART_MAX_PAUSE)
            if self.stopping:
                return
            try:
                await self._restart(index)
            except (OSError, RuntimeError, trio.TooSlowError) as exc:
                logger.error("could not restart worker %d: %s", index, exc)
                continue  # its old process has exited: wait() returns at once, pause grows

    async def _restart(self, index: int) -> None:
        """Start worker ``index`` again on fresh sockets bound to the same ports: the
        public one (the kernel spreads connections over live sockets only) and its
        private one, so the cluster knows it again by its address."""
        public = _public_sockets(self._settings.host, self._settings.port, 1)[0]
        workers = self._workers
        try:
            bind, address = workers.binds[index], workers.addresses[index]
            try:
                private = _listening(bind.host, bind.port)
            except OSError as exc:  # taken meanwhile (an outgoing connection's port)
                if workers.fixed:  # given ports stay: the firewall knows them
                    raise
                private = _listening(bind.host, 0)
                moved = private.getsockname()[1]
                workers.binds[index] = Address(bind.host, moved)
                workers.addresses[index] = Address(address.host, moved)
                logger.warning(
                    "worker %d moves to %s: %s: %s", index, workers.addresses[index], address, exc
                )
            local = _unix_listening(self._paths[index])
            try:
                others = [str(a) for n, a in enumerate(workers.addresses) if n != index]
                await self.start(index, (public, private, local), others)
            finally:
                private.close()
                local.close()
        finally:
            public.close()
        try:
            await self.wait_serving(index)
        except BaseException:
            self.processes[index].kill()  # hung, or it exited already (then a no-op)
            raise
        logger.info("worker %d restarted (process %d)", index, self.processes[index].pid)

    def signal_all(self, signum: int) -> None:
        """Send ``signum`` to every worker still running."""
        for process in self.processes:
            if process.returncode is None:
                process.send_signal(signum)

    def kill_all(self) -> None:
        """Kill every worker still running (the supervisor failed to start)."""
        self.signal_all(signal.SIGKILL)


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


def _unix_listening(path: str) -> socket.socket:
    """A Unix domain socket listening at ``path`` (``@name``: in Linux's abstract
    namespace); what was there before is replaced (a dead worker's)."""
    if path.startswith("@"):
        address = "\0" + path[1:]
    else:
        address = path
        if os.path.exists(path):
            os.unlink(path)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(address)
    sock.listen(_BACKLOG)
    sock.set_inheritable(True)
    return sock


def _listening(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(_BACKLOG)
    sock.set_inheritable(True)
    return sock


async def _start(
    factory: str, settings: Settings, fds: tuple[int, ...], parent_fd: int, local_lanes: str
) -> trio.Process:
    variables = {ENV_PREFIX + name.upper() for name in dataclasses.asdict(settings)}
    env = {k: v for k, v in os.environ.items() if k not in variables}
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
        "--local-lanes",
        local_lanes,
    ]
    # A session of its own: Ctrl-C in a terminal reaches the supervisor only, which
    # passes it on once; the worker would take a second signal for "stop at once".
    return await trio.lowlevel.open_process(
        command, env=env, pass_fds=(*fds, parent_fd), start_new_session=True
    )


async def _stop_on_signal(signals: AsyncIterator[int], pool: _Pool) -> None:
    """First signal: stop every worker gracefully (SIGTERM). Second: kill them."""
    async for signum in signals:
        name = signal.Signals(signum).name
        if not pool.stopping:
            logger.info("%s: stopping the workers gracefully (again to kill them)", name)
            pool.stopped.set()
            pool.signal_all(signal.SIGTERM)
        else:
            logger.warning("%s again: killing the workers", name)
            pool.kill_all()
