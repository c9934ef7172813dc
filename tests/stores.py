"""Real state stores for the tests: redis-server and PostgreSQL, each started on a free
loopback port in a temporary directory and stopped after the session, from Debian's
packages (``apt-get install redis-server postgresql``; ``.ci/run`` installs them).

A test that needs a server the machine lacks skips, saying which package to install;
CI installs them all, so nothing skips there.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

#: How long a server may take to start (CI machines are slow).
START_SECONDS = 60
#: Where Debian puts PostgreSQL's server programs (not on PATH).
_PG_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin"))


def free_port() -> int:
    """A TCP port free on the loopback interface now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode} before serving")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)  # a server starting in another process: nothing to wait on
    raise RuntimeError(f"{what} did not listen on {port} within {START_SECONDS} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)


class RedisServer:
    """A redis-server of its own, in a temporary directory, on a free port."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed (apt-get install redis-server)")
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_port(self.port, self.process, "redis-server")

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)
            self.process = None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


class PostgresServer:
    """A PostgreSQL cluster of its own (initdb), in a temporary directory, on a free
    port. As root it runs as the ``postgres`` user (PostgreSQL refuses root), in a
    directory of its own under /tmp: pytest's temporary directories are root's alone."""

    def __init__(self, directory: Path) -> None:
        self.user = "postgres" if os.geteuid() == 0 else None
        if self.user:
            directory = Path(tempfile.mkdtemp(prefix="towtruck-postgres-"))
            shutil.chown(directory, self.user, self.user)
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.role = self.user or os.environ.get("USER", "postgres")
        self.url = f"postgresql://{self.role}@127.0.0.1:{self.port}/postgres"

    def _as_owner(self) -> dict[str, Any]:
        """Popen's arguments that run a program as the cluster's owner, in its directory
        (Popen switches user itself: ``runuser`` would not pass signals on)."""
        if not self.user:
            return {"cwd": self.directory}
        return {"cwd": self.directory, "user": self.user, "group": self.user, "extra_groups": []}

    def start(self) -> None:
        if not _PG_BIN:
            pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
        bin_dir = _PG_BIN[-1]
        data = self.directory / "data"
        initdb = subprocess.run(
            [str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", self.role, "--no-sync"],
            capture_output=True,
            **self._as_owner(),
        )
        if initdb.returncode:
            raise RuntimeError(f"initdb failed: {initdb.stderr.decode(errors='replace')}")
        listen = ["-p", str(self.port), "-h", "127.0.0.1", "-k", str(self.directory)]
        options = ["-c", "fsync=off", "-c", "max_connections=200"]
        self.process = subprocess.Popen(
            [str(bin_dir / "postgres"), "-D", str(data), *listen, *options],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            **self._as_owner(),
        )
        _wait_port(self.port, self.process, "postgres")

    def stop(self) -> None:
        if self.process is not None:
            # SIGINT is PostgreSQL's fast shutdown: it ends the clients' sessions, where
            # SIGTERM (what _stop sends) would wait for every client to disconnect.
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
            self.process = None
        if self.user:
            shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    server = PostgresServer(tmp_path_factory.mktemp("postgres"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


#: The membership tables the contract runs on (``tests/test_tables.py``); a backend's
#: author adds its name here and its URL in :func:`table_url`.
TABLE_BACKENDS = ["memory", "redis", "postgres", "etcd"]


def table_url(request: pytest.FixtureRequest, kind: str, cluster: str) -> str:
    """The URL of a membership table of ``kind`` for a cluster called ``cluster``,
    starting the server it needs (a session fixture) if it is not running yet."""
    if kind == "memory":
        return f"memory://{cluster}"
    if kind == "redis":
        return f"{request.getfixturevalue('redis_server').url}?cluster={cluster}"
    if kind == "postgres":
        return f"{request.getfixturevalue('postgres_server').url}?cluster={cluster}"
    if kind == "etcd":
        return f"{request.getfixturevalue('etcd_server').url}?cluster={cluster}"
    raise ValueError(f"no membership table {kind!r}")


class EtcdServer:
    """A one-member etcd of its own, in a temporary directory, with free ports for its
    clients and its (unused) peers. Its URL is the membership table's, ``etcd://``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.peer_port = free_port()
        self.url = f"etcd://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("etcd") or "/usr/bin/etcd"
        if not os.access(binary, os.X_OK):
            pytest.skip("etcd is not installed (apt-get install etcd-server)")
        client = f"http://127.0.0.1:{self.port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        self.process = subprocess.Popen(
            [
                binary,
                "--name",
                "towtruck-tests",
                "--data-dir",
                str(self.directory / "data"),
                "--listen-client-urls",
                client,
                "--advertise-client-urls",
                client,
                "--listen-peer-urls",
                peer,
                "--initial-advertise-peer-urls",
                peer,
                "--initial-cluster",
                f"towtruck-tests={peer}",
                "--initial-cluster-state",
                "new",
                "--log-level",
                "error",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_port(self.port, self.process, "etcd")
        self._wait_healthy(client)

    def _wait_healthy(self, client: str) -> None:
        """Wait until etcd has elected itself leader: it listens before it serves."""
        import urllib.request

        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.process.returncode} before serving")
            try:
                with urllib.request.urlopen(f"{client}/health", timeout=1) as answer:
                    if b'"true"' in answer.read():
                        return
            except OSError:
                pass
            time.sleep(0.05)  # a server starting in another process: nothing to wait on
        raise RuntimeError(f"etcd on {self.port} was not healthy within {START_SECONDS} s")

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)
            self.process = None


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    server = EtcdServer(tmp_path_factory.mktemp("etcd"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
