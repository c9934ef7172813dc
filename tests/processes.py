"""Running towtruck in child processes, as users do, for the command-line tests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import trio

ROOT = Path(__file__).parents[1]
#: Bound for a child process to start, serve and stop (CI machines are slow).
PROCESS_SECONDS = 60


class Output:
    """Everything a child wrote to stdout and stderr, waitable by pattern."""

    def __init__(self) -> None:
        self.text = ""
        self._changed = trio.Event()
        self._closed = 0

    async def pump(self, stream: trio.abc.ReceiveStream) -> None:
        async with stream:
            while chunk := await stream.receive_some():
                self.text += chunk.decode(errors="replace")
                self._changed.set()
                self._changed = trio.Event()
        self._closed += 1
        self._changed.set()

    async def wait_for(self, pattern: str) -> re.Match[str]:
        """Wait until the output matches ``pattern`` (fails if both pipes close first)."""
        while True:
            match = re.search(pattern, self.text)
            if match:
                return match
            if self._closed == 2:
                raise AssertionError(
                    f"the process ended without printing {pattern!r}:\n{self.text}"
                )
            await self._changed.wait()


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child: the repo importable, no TOWTRUCK_* leaking in but
    the HTTP parser the suite runs on (see ``tests/h11_parser.py``)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TOWTRUCK_") or k == "TOWTRUCK_HTTP_PARSER"
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def towtruck_command() -> list[str]:
    """The ``towtruck`` console script installed beside this Python."""
    script = Path(sys.executable).with_name("towtruck")
    assert script.exists(), f"the towtruck script is not installed beside {sys.executable}"
    return [str(script)]


@asynccontextmanager
async def running(
    argv: Sequence[str], *, ready: str, env: dict[str, str] | None = None
) -> AsyncIterator[tuple[trio.Process, re.Match[str], Output]]:
    """Start a child and wait until its output matches ``ready``; kill it on the way out
    if it is still running."""
    process = await trio.lowlevel.open_process(
        list(argv),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env if env is not None else child_env(),
        cwd=ROOT,
    )
    output = Output()
    try:
        async with trio.open_nursery() as nursery:
            assert process.stdout is not None
            assert process.stderr is not None
            nursery.start_soon(output.pump, process.stdout)
            nursery.start_soon(output.pump, process.stderr)
            match = await output.wait_for(ready)
            yield process, match, output
            with trio.move_on_after(PROCESS_SECONDS):
                await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()


async def run_to_end(
    argv: Sequence[str], *, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a child to completion (for commands that should exit at once)."""
    result = await trio.run_process(
        list(argv),
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env=env if env is not None else child_env(),
        cwd=ROOT,
    )
    return subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
    )
