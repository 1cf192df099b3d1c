"""Session worker processes: one per MPC session, killed on timeout.

A worker is forked from the node's fork server (a `session_worker --fork-server` process that
imported MPyC, the protocols and DuckDB once), so it starts in milliseconds instead of the
second of CPU that a fresh interpreter spends on imports. The fork server is its own clean
process: the node runs gRPC threads and must never fork itself. Each forked worker is still
one process per session, in its own process group, killed by the node on timeout, exactly as a
worker started from a fresh interpreter (which remains the fallback, and the path a test takes
when it swaps in a hostile worker through JOINTSTATS_SESSION_WORKER).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from jointstats.errors import PeerError, SessionTimeout

log = logging.getLogger(__name__)
# Tests swap in a misbehaving worker through JOINTSTATS_SESSION_WORKER to play a hostile peer.
WORKER_MODULE = "jointstats.node.session_worker"
SPARE_WORKERS = 2  # fresh interpreters: imports take a second, so keep two ready
FORKED_SPARES = 1  # forked workers start at once; one spare keeps its TLS channel ready
SPARES_ENV = "JOINTSTATS_SPARE_WORKERS"  # overrides the spare count (0: start on demand)
FORK_ENV = "JOINTSTATS_FORK_SERVER"  # "0": start every worker as a fresh interpreter
SHARED_ENV = "JOINTSTATS_FORK_SERVER_SOCKET"  # a listening fork server to use (local runs)
PRELOAD_ENV = "JOINTSTATS_FORK_PRELOAD"  # "all": a shared fork server preloads like a node's
CACHE_ENV = "JOINTSTATS_CSV_CACHE"  # "0": no columnar copies of CSV sources
CACHE_DIR_ENV = "JOINTSTATS_CSV_CACHE_DIR"  # where a worker keeps them (session_worker.py)
RESULT_LIMIT_BYTES = 64 * 1024 * 1024  # the worker's one-line answer
FORK_SERVER_SECONDS = 60.0  # the fork server's imports, on a loaded machine
FORK_SERVER_STOP_SECONDS = 5.0  # its workers are killed first; then it reaps them and exits
# Libraries that start helper threads at import: a fork copies no thread, so the fork server
# runs without them (BLAS on our tiny matrices and Arrow's allocator do not need them).
SINGLE_THREAD_ENV = {"OPENBLAS_NUM_THREADS": "1", "JE_ARROW_MALLOC_CONF": "background_thread:false"}


class Process(Protocol):
    """What `Worker` needs of a process: asyncio's subprocess, or a forked worker."""

    stdin: asyncio.StreamWriter | None
    stdout: asyncio.StreamReader | None
    returncode: int | None

    def kill(self) -> None: ...

    async def wait(self) -> int: ...


class ForkedProcess:
    """A worker forked by the fork server: not our child, so it is signalled and awaited
    through a pidfd, which always names this process (never a later one with its pid)."""

    def __init__(
        self, pidfd: int, stdin: asyncio.StreamWriter, stdout: asyncio.StreamReader
    ) -> None:
        self.pidfd, self.stdin, self.stdout = pidfd, stdin, stdout
        self.returncode: int | None = None
        self.pid = pid_of(pidfd)

    @classmethod
    async def attach(cls, pidfd: int, stdin_fd: int, stdout_fd: int) -> ForkedProcess:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=RESULT_LIMIT_BYTES)
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(stdout_fd, "rb", 0)
        )
        transport, protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, os.fdopen(stdin_fd, "wb", 0)
        )
        writer = asyncio.StreamWriter(transport, protocol, None, loop)
        return cls(pidfd, writer, reader)

    def kill(self) -> None:
        signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)

    async def wait(self) -> int:
        if self.returncode is None:
            loop = asyncio.get_running_loop()
            exited = loop.create_future()
            loop.add_reader(self.pidfd, lambda: exited.done() or exited.set_result(None))
            try:
                await exited  # a pidfd is readable once its process has exited
            finally:
                loop.remove_reader(self.pidfd)
            os.close(self.pidfd)
            self.stdin.close()
            self.returncode = -1  # the fork server reaps it; its status is in the session log
        return self.returncode


def pid_of(pidfd: int) -> int:
    """The pid behind a pidfd, for logs and tests (/proc/self/fdinfo)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/self/fdinfo/{pidfd}").read_text().splitlines():
            if line.startswith("Pid:"):
                return int(line.split()[1])
    return -1


class ForkServer:
    """The node's `session_worker --fork-server` process, started on first use."""

    def __init__(self, log_path: Path, env: dict[str, str]) -> None:
        self._log_path, self._env = log_path, env
        self._process: asyncio.subprocess.Process | None = None
        self._sock: socket.socket | None = None
        self._lock = asyncio.Lock()

    async def _ensure(self) -> socket.socket:
        if self._sock is not None and (self._process is None or self._process.returncode is None):
            return self._sock
        await self.close()
        shared = os.environ.get(SHARED_ENV)
        if shared:  # `jointstats local`: one fork server for all its nodes
            with contextlib.suppress(OSError):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                sock.settimeout(FORK_SERVER_SECONDS)
                sock.connect(shared)
                self._sock = sock
                return sock
            log.warning("no shared fork server at %s; starting this node's own", shared)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs, open(self._log_path, "ab") as log_file:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", WORKER_MODULE, "--fork-server", str(theirs.fileno()),
                pass_fds=[theirs.fileno()],
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                env={**os.environ, **self._env, **SINGLE_THREAD_ENV},
                start_new_session=True,
            )  # fmt: skip
        ours.settimeout(FORK_SERVER_SECONDS)
        self._sock = ours
        return ours

    async def spawn(self, env: dict[str, str]) -> ForkedProcess:
        """A new worker with `env` added to its environment, stderr to the session log."""
        async with self._lock:
            sock = await self._ensure()
            stdin_r, stdin_w = os.pipe()
            stdout_r, stdout_w = os.pipe()
            log_fd = os.open(self._log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            passed = [stdin_r, stdout_w, log_fd]
            try:
                pidfd = await asyncio.to_thread(_request, sock, {"env": env}, passed)
            except BaseException:
                os.close(stdin_w)
                os.close(stdout_r)
                await self.close()
                raise
            finally:
                for fd in passed:
                    os.close(fd)
        return await ForkedProcess.attach(pidfd, stdin_w, stdout_r)

    async def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):  # wakes a request blocked in recv (a thread)
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()  # EOF: our own fork server exits (a shared one runs on)
            self._sock = None
        if self._process is not None and self._process.returncode is None:
            # it exits once its remaining workers have (it reaps them); don't wait forever
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._process.wait(), FORK_SERVER_STOP_SECONDS)
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
            await self._process.wait()
        self._process = None


def _request(sock: socket.socket, message: dict[str, Any], fds: list[int]) -> int:
    socket.send_fds(sock, [json.dumps(message).encode()], fds)
    answer, received, _, _ = socket.recv_fds(sock, 1024, 1)
    if answer != b"ok" or len(received) != 1:
        for fd in received:
            os.close(fd)
        raise OSError(f"the fork server answered {answer[:80]!r}")
    return received[0]


class Worker:
    """A started session worker, waiting for its session spec."""

    def __init__(self, process: Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, log_path: Path, env: dict[str, str] | None = None) -> Worker:
        """A fresh interpreter (`python -m jointstats.node.session_worker`)."""
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


def _spares(forked: bool) -> int:
    configured = os.environ.get(SPARES_ENV, "")
    if configured.isdigit():
        return int(configured)
    return FORKED_SPARES if forked else SPARE_WORKERS


class WorkerPool:
    """Keeps spare workers started ahead (with their TLS channel to the coordinator open), so
    that a session, even right after another one, starts on a ready process."""

    def __init__(
        self, log_path: Path, env: dict[str, str] | None = None, spares: int | None = None
    ) -> None:
        self._log_path = log_path
        self._env = dict(env or {})
        if os.environ.get(CACHE_ENV, "1") != "0":
            self._env[CACHE_DIR_ENV] = str(log_path.parent / "cache")
        # a swapped-in worker module (tests) runs as its own interpreter, as before
        forked = os.environ.get(FORK_ENV, "1") != "0" and "JOINTSTATS_SESSION_WORKER" not in (
            os.environ
        )
        self._fork_server = ForkServer(log_path, self._env) if forked else None
        self._size = _spares(forked) if spares is None else spares
        self._spares: collections.deque[asyncio.Task[Worker]] = collections.deque()

    def warm(self) -> None:
        while len(self._spares) < self._size:
            self._spares.append(asyncio.create_task(self._start()))

    async def _start(self) -> Worker:
        if self._fork_server is not None:
            try:
                return Worker(await self._fork_server.spawn(self._env))
            except OSError as exc:  # a fresh interpreter still runs the session
                log.warning("fork server failed (%s); starting a fresh worker", exc)
        return await Worker.start(self._log_path, self._env)

    async def take(self) -> Worker:
        """The oldest spare: the one most likely ready. The replacement is started by
        `warm()` after the session, so that it does not compete with the session."""
        if not self._spares:
            self._spares.append(asyncio.create_task(self._start()))
        return await self._spares.popleft()

    async def close(self) -> None:
        """Kill the spares; one still starting (a fork server still importing) is cancelled
        rather than awaited, so that a node stops at once even right after it started."""
        while self._spares:
            task = self._spares.popleft()
            if not task.done():
                task.cancel()
            with contextlib.suppress(BaseException):
                worker = await task
                await worker.kill()
        if self._fork_server is not None:
            await self._fork_server.close()
