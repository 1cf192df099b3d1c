"""A whole federation on loopback: a coordinator process and one process per node, fresh keys
and certificates, mutual TLS, MPC through the relay. Used by `jointstats local`, the demo,
the tests and the benchmarks."""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import tomli_w

from jointstats.config import load_node_datasets
from jointstats.errors import ConfigError, PeerError
from jointstats.keys import Roster, load_member, new_member

if TYPE_CHECKING:  # imported once the processes are started (see `connect`)
    from jointstats.client import Client

START_SECONDS = 60.0
LOCAL_EPSILON_BUDGET = 100.0
SOCKET_PATH_MAX = 100  # AF_UNIX paths are limited to 107 bytes
TIMINGS_ENV = "JOINTSTATS_LOCAL_TIMINGS"  # a file: write the start/stop phase clock there
# `node serve` and `coordinator serve` without the CLI's imports (0.1 s of CPU per process)
SERVER_MODULE = "jointstats.serve"


class ForkedService:
    """A coordinator or node of a one-shot run, forked by the run's shared fork server (which
    has their imports loaded) instead of started as a fresh interpreter. It is the fork
    server's child, not ours: it is signalled and awaited through a pidfd, like
    `subprocess.Popen` as far as `LocalFederation` uses it. The pidfd arrives when the fork
    server has done its imports and forked; until then the handle is pending."""

    def __init__(self, launcher: ServiceLauncher) -> None:
        self._launcher = launcher
        self._pidfd: int | None = None
        self._pid = -1
        self.returncode: int | None = None

    def attach(self, pidfd: int) -> None:
        from jointstats.node.workers import pid_of

        self._pidfd, self._pid = pidfd, pid_of(pidfd)

    def _fd(self) -> int | None:
        """The pidfd; None when the fork server never started this process."""
        if self._pidfd is None and self.returncode is None:
            with contextlib.suppress(PeerError):  # then it counts as exited
                self._launcher.resolve()
            if self._pidfd is None:
                self.returncode = -1
        return self._pidfd

    @property
    def pid(self) -> int:
        self._fd()
        return self._pid

    def poll(self) -> int | None:
        """-1 once it has exited (its exit status goes to the fork server), else None."""
        fd = self._fd()
        if self.returncode is None and fd is not None and select.select([fd], [], [], 0)[0]:
            self.returncode = -1
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        fd = self._fd()
        if self.returncode is None and fd is not None:
            if not select.select([fd], [], [], timeout)[0]:
                raise subprocess.TimeoutExpired(f"pid {self._pid}", timeout or 0.0)
            self.returncode = -1
        return -1

    def signal(self, sig: int) -> None:
        """Its process group is itself: its session workers are forked apart."""
        if self.poll() is None and self._pidfd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, sig)

    def close(self) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None


class ServiceLauncher:
    """Asks a one-shot run's shared fork server to fork `jointstats.serve` processes. Requests
    are queued at once, while the fork server still imports (nothing waits for it here); its
    answers, a pidfd each in request order, are read when a handle is first used."""

    def __init__(self, path: Path) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._sock.connect(str(path))
        self._pending: list[ForkedService] = []
        self.services: list[ForkedService] = []

    def start(self, argv: list[str], env: dict[str, str], log_path: Path) -> ForkedService:
        request = json.dumps({"env": env, "argv": argv}).encode()
        with open(log_path, "ab") as log, open(os.devnull, "rb") as null:
            socket.send_fds(self._sock, [request], [null.fileno(), log.fileno(), log.fileno()])
        service = ForkedService(self)
        self._pending.append(service)
        self.services.append(service)
        return service

    def resolve(self) -> None:
        self._sock.settimeout(START_SECONDS)
        while self._pending:
            try:
                answer, fds, _, _ = socket.recv_fds(self._sock, 1024, 1)
            except OSError:
                answer, fds = b"", []
            if answer != b"ok" or len(fds) != 1:
                for extra in fds:
                    os.close(extra)
                for service in self._pending:  # none of them will start: once, not each
                    service.returncode = -1
                self._pending.clear()
                raise PeerError(
                    "the fork server did not start the federation's processes (see its log, "
                    "forkserver.log, with --workdir)"
                )
            self._pending.pop(0).attach(fds[0])

    def close(self) -> None:
        self._sock.close()
        for service in self.services:
            service.close()


def _signal(process: subprocess.Popen | ForkedService, sig: int) -> None:
    """Signal a started process and its group (a forked service is its own group)."""
    if isinstance(process, ForkedService):
        process.signal(sig)
    else:
        os.killpg(process.pid, sig)


@dataclass
class LocalNode:
    """A node to run: its datasets (name -> file or folder, or a [datasets.NAME] table as in a
    node config, docs/sources.md); none makes it a compute-only node."""

    name: str
    datasets: dict[str, Path | dict] = field(default_factory=dict)
    policy: dict = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)  # extra environment for its process
    coordinator: str = ""  # dial this address instead (tests put a proxy in between)

    @property
    def role(self) -> str:
        return "node" if self.datasets else "compute"


def parse_node_option(option: str, nodes: dict[str, LocalNode]) -> None:
    """`NAME=PATH` serves a file or folder as the dataset named by its stem; `NAME=node.toml`
    serves the datasets of a node config (its other fields are ignored); `NAME` is compute-only."""
    name, _, path = option.partition("=")
    name = name.strip()
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"--node {option!r}: give NAME=PATH or NAME (letters, digits, - and _)")
    node = nodes.setdefault(name, LocalNode(name))
    if not path:
        return
    file = Path(path).expanduser().resolve()
    if file.suffix.lower() == ".toml" and file.is_file():
        node.datasets.update(load_node_datasets(file))
    elif file.is_file() or file.is_dir():
        node.datasets[file.stem] = file
    else:
        raise ConfigError(f"--node {option}: no such file or folder {path}")


def _free_port() -> int:
    """A loopback port free right now (the coordinator binds it a moment later)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class LocalFederation:
    def __init__(
        self,
        nodes: list[LocalNode],
        workdir: Path | None = None,
        session_timeout: float = 300.0,
        coordinator_module: str = SERVER_MODULE,
        one_shot: bool | None = None,
        preload_all: bool = False,
    ) -> None:
        """`one_shot` (default: no `workdir` given, so nothing is kept): the nodes share one
        fork server for their session workers and keep no columnar copy of CSV files, which
        only pays from the second job on (docs/performance.md)."""
        if len({n.name for n in nodes}) != len(nodes):
            raise ConfigError("each --node name must be different")
        reserved = {"coordinator", "analyst"} & {n.name for n in nodes}
        if reserved:
            raise ConfigError(f"--node {reserved.pop()}: that name is reserved, choose another")
        self.nodes = nodes
        self._keep = workdir is not None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="jointstats-"))
        self.session_timeout = session_timeout
        self.coordinator_module = coordinator_module
        self.one_shot = workdir is None if one_shot is None else one_shot
        # a one-shot run whose job is linked or has margins: its fork server preloads what the
        # workers would each import (pandas, pyarrow, the linkage code, scipy's LP solver)
        self.preload_all = preload_all
        self.clock: dict[str, float] = {"created": time.time()}  # wall clock at each phase
        self.processes: dict[str, subprocess.Popen | ForkedService] = {}
        self._fork_server: subprocess.Popen | None = None
        self._launcher: ServiceLauncher | None = None  # one-shot: services forked, not started
        self._commands: dict[str, tuple[list[str], str, dict | None]] = {}
        self._node_env: dict[str, str] = {}
        self.client: Client | None = None

    def _permissive_policy(self, node: LocalNode) -> dict:
        """Local runs: the generated analyst may use every dataset and column."""
        analyst = self.roster.get("analyst")
        policy = {
            "analysts": [
                {
                    "name": "analyst",
                    "fingerprint": analyst.signing_fingerprint,
                    "datasets": {"*": ["*"]},
                }
            ],
            "partners": ["*"],
            "budgets": dict.fromkeys(node.datasets, LOCAL_EPSILON_BUDGET),
        }
        return {**policy, **node.policy}

    def _write_keys(self) -> Roster:
        roster = Roster()
        members = [("coordinator", "coordinator")] + [(n.name, n.role) for n in self.nodes]
        members.append(("analyst", "analyst"))
        for name, role in members:
            key_dir = self.workdir / name / "keys"
            if (key_dir / "member.toml").exists():  # a kept --workdir: same keys, same audit log
                member = load_member(key_dir / "member.toml")
                if member.role == role:
                    roster.members[name] = member
                    continue
            roster.members[name] = new_member(key_dir, name, role)
        roster.save(self.workdir / "roster.toml")
        return roster

    def _spawn_coordinator(self) -> None:
        config = self.workdir / "coordinator" / "coordinator.toml"
        args = ["coordinator", "serve", "--config", str(config)]
        self._spawn("coordinator", args, module=self.coordinator_module)

    def _write_configs(self, listen: str) -> None:
        coordinator = {
            "listen": listen,
            "roster": "../roster.toml",
            "keys": "keys",
            "db": "coordinator.sqlite",
            "port_file": "port",
        }
        (self.workdir / "coordinator" / "coordinator.toml").write_text(tomli_w.dumps(coordinator))

    def _write_node_config(self, node: LocalNode, address: str) -> Path:
        config = {
            "name": node.name,
            "coordinator": node.coordinator or address,
            "roster": "../roster.toml",
            "keys": "keys",
            "state_dir": ".",
            "session_timeout": self.session_timeout,
            "datasets": {
                name: entry if isinstance(entry, dict) else {"path": str(entry)}
                for name, entry in node.datasets.items()
            },
            "policy": self._permissive_policy(node),
        }
        path = self.workdir / node.name / "node.toml"
        path.write_text(tomli_w.dumps(config))
        return path

    def _spawn(
        self, name: str, args: list[str], module: str = SERVER_MODULE, env: dict | None = None
    ) -> None:
        self._commands[name] = (args, module, env)
        if self._launcher is not None and module == SERVER_MODULE:
            self.processes[name] = self._launcher.start(args, env or {}, self.log(name))
            return
        log = open(self.workdir / name / f"{name}.log", "ab")  # noqa: SIM115 (owned by the child)
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            env={**os.environ, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()

    def _wait_for_port(self) -> str:
        port_file = self.workdir / "coordinator" / "port"
        deadline = time.monotonic() + START_SECONDS
        while not port_file.exists():
            process = self.processes["coordinator"]
            if process.poll() is not None:
                raise PeerError(f"the coordinator exited at start (see {self.log('coordinator')})")
            if time.monotonic() > deadline:
                raise PeerError("the coordinator did not start in time")
            time.sleep(0.02)
        return f"127.0.0.1:{port_file.read_text().strip()}"

    def log(self, name: str) -> Path:
        return self.workdir / name / f"{name}.log"

    def _start_fork_server(self) -> dict[str, str]:
        """One-shot runs: one fork server for every node's session workers (its imports,
        about a second of CPU, are paid once instead of once per node). It listens on a
        socket in the workdir, made here so that nodes may connect before it is ready."""
        path = self.workdir / "forkserver.sock"
        if not self.one_shot:
            return {}
        no_cache = {"JOINTSTATS_CSV_CACHE": "0"}
        if len(str(path)) > SOCKET_PATH_MAX:
            return no_cache
        from jointstats.node.workers import (
            PRELOAD_ENV,
            SHARED_ENV,
            SINGLE_THREAD_ENV,
            WORKER_MODULE,
        )

        preload = {PRELOAD_ENV: "all"} if self.preload_all else {}

        path.unlink(missing_ok=True)
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as listener:
            listener.bind(str(path))
            listener.listen(len(self.nodes) + 4)
            with open(self.workdir / "forkserver.log", "ab") as log:
                self._fork_server = subprocess.Popen(
                    [sys.executable, "-m", WORKER_MODULE, "--fork-server", str(listener.fileno())],
                    pass_fds=[listener.fileno()],
                    env={**os.environ, **SINGLE_THREAD_ENV, **preload},
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        self._launcher = ServiceLauncher(path)
        return {SHARED_ENV: str(path), **no_cache}

    def _spawn_nodes(self, address: str, env: dict[str, str]) -> None:
        for node in self.nodes:
            path = self._write_node_config(node, address)
            args = ["node", "serve", "--config", str(path)]
            self._spawn(node.name, args, env={**env, **node.env})

    def start(self) -> LocalFederation:
        """Coordinator, nodes (and a shared fork server) start at once, on a port chosen
        here; when another process took that port first, the nodes start after the
        coordinator has its own."""
        self.launch()
        return self.connect()

    def launch(self) -> None:
        """Start the processes without waiting for them: a caller may import what it needs
        next while they import theirs (`jointstats local`). Then call `connect`."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "coordinator" / "port").unlink(missing_ok=True)
        self.roster = self._write_keys()
        self.clock["keys"] = time.time()
        self._node_env = self._start_fork_server()
        port = _free_port()
        self._write_configs(f"127.0.0.1:{port}")
        self._spawn_coordinator()
        self._spawn_nodes(f"127.0.0.1:{port}", self._node_env)

    def connect(self) -> LocalFederation:
        """Wait for the coordinator's port and for every node to connect (after `launch`)."""
        from jointstats.client import Client  # its imports overlap the processes' start

        try:
            self.address = self._wait_for_port()
        except PeerError:
            for node in self.nodes:  # the port was taken: let the coordinator pick one
                self.stop_process(node.name)
            self.stop_process("coordinator")  # (or it was too slow: never leave it running)
            self._write_configs("127.0.0.1:0")
            self._spawn_coordinator()
            self.address = self._wait_for_port()
            self._spawn_nodes(self.address, self._node_env)
        analyst = self.workdir / "analyst"
        client_config = {"coordinator": self.address, "roster": "../roster.toml", "keys": "keys"}
        (analyst / "client.toml").write_text(tomli_w.dumps(client_config))
        self.client = Client(self.address, self.workdir / "roster.toml", analyst / "keys")
        self.clock["spawned"] = time.time()
        self.client.wait_for_nodes([n.name for n in self.nodes], START_SECONDS)
        self.clock["nodes_ready"] = time.time()
        return self

    def restart_coordinator(self) -> None:
        """Stop the coordinator and start it again on the same port (nodes reconnect)."""
        self.stop_process("coordinator")
        config_path = self.workdir / "coordinator" / "coordinator.toml"
        config = tomllib.loads(config_path.read_text())
        config["listen"] = self.address
        config_path.write_text(tomli_w.dumps(config))
        (self.workdir / "coordinator" / "port").unlink(missing_ok=True)
        self._spawn(
            "coordinator",
            ["coordinator", "serve", "--config", str(config_path)],
            module=self.coordinator_module,
        )
        self._wait_for_port()

    def restart_node(self, name: str) -> None:
        """Stop a node and start it again with the same config and state."""
        self.stop_process(name)
        args, module, env = self._commands[name]
        self._spawn(name, args, module, env)

    def stop_process(self, name: str, sig: int = signal.SIGTERM) -> None:
        process = self.processes.get(name)
        if process is None or process.poll() is not None:
            return
        _signal(process, sig)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            _signal(process, signal.SIGKILL)
            process.wait()

    def stop(self) -> None:
        self.clock["stop"] = time.time()
        if self.client is not None:
            self.client.close()
        names = [n.name for n in self.nodes]
        # One-shot runs keep nothing (the workdir is removed below), so their processes are
        # killed at once instead of flushing logs that nobody will read (about a second).
        sig = signal.SIGKILL if self.one_shot and not self._keep else signal.SIGTERM
        if sig == signal.SIGKILL:
            names.append("coordinator")
        for name in names:  # signal every node first, then wait for them together
            process = self.processes.get(name)
            if process is not None and process.poll() is None:
                _signal(process, sig)
        for name in names:
            self.stop_process(name)
        self.clock["nodes_stopped"] = time.time()
        self.stop_process("coordinator")
        self._stop_fork_server(kill=sig == signal.SIGKILL)
        if self._launcher is not None:
            self._launcher.close()
        self.clock["stopped"] = time.time()
        if os.environ.get(TIMINGS_ENV):  # benchmarks: where the start-up time goes
            Path(os.environ[TIMINGS_ENV]).write_text(json.dumps(self.clock))
        if not self._keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _stop_fork_server(self, kill: bool) -> None:
        server = self._fork_server
        if server is None or server.poll() is not None:
            return
        if kill and _kill_when_idle(server):
            return
        # it reaps its workers (they end once their node is gone), then exits
        os.kill(server.pid, signal.SIGTERM)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()

    def __enter__(self) -> LocalFederation:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _children(pid: int) -> list[str] | None:
    """Pids of the children of single-threaded process `pid` (None: /proc cannot tell)."""
    try:
        return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None


def _state(pid: int) -> str:
    """The process state letter of `pid` (R, S, T stopped, Z zombie, ...)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return "X"


def _kill_when_idle(server: subprocess.Popen, seconds: float = 5.0) -> bool:
    """A one-shot run's fork server, once its nodes are gone: kill it as soon as it has reaped
    its last worker (they end with their nodes), which skips its interpreter's teardown
    (0.1-0.4 s of the stop; its log is deleted anyway). It is stopped (SIGSTOP) before the
    last look at its children, so it cannot fork for a request a dead node left queued
    between that look and the kill: no worker is orphaned. False: stop it gracefully."""
    deadline = time.monotonic() + seconds
    while (children := _children(server.pid)) != []:
        if children is None or time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    os.kill(server.pid, signal.SIGSTOP)
    killed = False
    try:
        while _state(server.pid) not in ("T", "Z", "X"):
            if time.monotonic() > deadline:
                break
            time.sleep(0.001)
        if _state(server.pid) == "T" and _children(server.pid) == []:
            os.kill(server.pid, signal.SIGKILL)
            server.wait()
            killed = True
    finally:
        if not killed:  # never leave it stopped (Ctrl-C included)
            os.kill(server.pid, signal.SIGCONT)
    return killed
