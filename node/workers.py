"""Session worker processes: started ahead of time, one per MPC session, killed on timeout."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jointstats.errors import PeerError, SessionTimeout

log = logging.getLogger(__name__)
# Tests swap in a misbehaving worker through JOINTSTATS_SESSION_WORKER to play a hostile peer.
WORKER_MODULE = "jointstats.node.session_worker"
SPARE_WORKERS = 2
RESULT_LIMIT_BYTES = 64 * 1024 * 1024  # the worker's one-line answer


class Worker:
    """A started `python -m jointstats.node.session_worker`, waiting for its session spec."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, log_path: Path, env: dict[str, str] | None = None) -> Worker:
        with open(log_path, "ab") as log_file:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                os.environ.get("JOINTSTATS_SESSION_WORKER", WORKER_MODULE),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log_file,
                env={**os.environ, **(env or {})},
                # Its own process group: a SIGTERM to the node's group (Ctrl-C, an init system)
                # reaches the node, which aborts, reports and logs the session, then kills it.
                start_new_session=True,
                limit=RESULT_LIMIT_BYTES,
            )
        return cls(process)

    async def run(
        self,
        spec: dict[str, Any],
        timeout: float,
        on_progress: Callable[[str], None] = lambda phase: None,
    ) -> dict[str, Any]:
        """Hand the spec over, pass on progress lines, and return the final answer line;
        kill the process on timeout."""
        assert self.process.stdin is not None and self.process.stdout is not None
        try:
            self.process.stdin.write(json.dumps(spec).encode() + b"\n")
            await self.process.stdin.drain()
            line = await asyncio.wait_for(self._answer(on_progress), timeout)
        except TimeoutError:
            raise SessionTimeout(f"the MPC session did not finish within {timeout:.0f} s") from None
        except (BrokenPipeError, ConnectionResetError):
            raise PeerError("the session worker died before it started") from None
        except (ValueError, asyncio.LimitOverrunError):
            raise PeerError("the session's result is too large to report") from None
        finally:
            await self.kill()
        if not line:
            raise PeerError("the session worker crashed (see the node's session log)")
        return json.loads(line)

    async def _answer(self, on_progress: Callable[[str], None]) -> bytes:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            message = json.loads(line)
            if "progress" not in message:
                return line
            on_progress(str(message["progress"])[:40])
        return b""

    async def kill(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()


class WorkerPool:
    """Keeps `spares` workers started ahead (imports and the TLS channel take about a second),
    so that a session, even right after another one, starts on a ready process."""

    def __init__(
        self, log_path: Path, env: dict[str, str] | None = None, spares: int = SPARE_WORKERS
    ) -> None:
        self._log_path = log_path
        self._env = env
        self._size = spares
        self._spares: collections.deque[asyncio.Task[Worker]] = collections.deque()

    def warm(self) -> None:
        while len(self._spares) < self._size:
            self._spares.append(asyncio.create_task(Worker.start(self._log_path, self._env)))

    async def take(self) -> Worker:
        """The oldest spare: the one most likely done importing. The replacement is started by
        `warm()` after the session, so that its imports do not compete with the session."""
        if not self._spares:
            self.warm()
        return await self._spares.popleft()

    async def close(self) -> None:
        while self._spares:
            worker = await self._spares.popleft()
            await worker.kill()
