"""One MPC session in its own process (python -m jointstats.node.session_worker).

The node starts this worker ahead of time (imports are the slow part), then writes one JSON
session spec to its stdin. The worker runs the protocol's local step and MPC program with MPyC
over the relay, writes one JSON line to its result pipe, and exits. MPyC is imported here only:
its runtime is a process-wide global, so one process is one session, and a crash or hang here
never takes the node down (the node kills this process on timeout).

MPyC is started with `--mix32-64bit` so that secure arrays travel as field bytes instead of
pickles, and our own start/stop replace `mpc.start()`/`mpc.shutdown()` (the latter unpickles
peer data through `mpc.transfer`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import selectors
import signal
import socket
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

_MPYC_ARGV = ["jointstats-session", "--mix32-64bit", "--no-log"]
_saved_argv, sys.argv = sys.argv, _MPYC_ARGV
import cryptography.hazmat.backends.openssl.backend  # noqa: E402, F401 (X25519 loads it late)
import grpc  # noqa: E402
import numpy  # noqa: E402
from mpyc import asyncoro, mpctools, random, secgroups, seclists, secpols, sectypes, statistics  # noqa: E402
from mpyc import runtime as mpyc_runtime  # noqa: E402

sys.argv = _saved_argv

from jointstats.errors import (  # noqa: E402
    JointstatsError,
    PeerError,
    SessionTimeout,
)
from jointstats.jobs import parse_job_bytes  # noqa: E402
from jointstats.keys import Identity, Roster  # noqa: E402
from jointstats.node.policy import check_contribution  # noqa: E402
from jointstats.node.relay_link import RelayLink  # noqa: E402
from jointstats.node.sources import FileSource, Source, source_for  # noqa: E402
from jointstats.node.workers import PRELOAD_ENV  # noqa: E402
from jointstats.protocols import parse_job, suppression  # noqa: E402, F401 (preloaded)
from jointstats.protocols.base import SessionContext  # noqa: E402
from jointstats.session import SessionSpec  # noqa: E402
from jointstats.transport import channel_credentials, channel_options  # noqa: E402

log = logging.getLogger(__name__)
HANDSHAKE_SECONDS = 30.0  # at least; a peer still in a long local step (a cold Spark JVM, 1e8
# rows) is alive, and a dead one fails the relay (keepalive) long before spec.timeout
PRECONNECT_ENV = "JOINTSTATS_PRECONNECT"
PRECONNECT_SECONDS = 10.0
BYE_SECONDS = 10.0
CACHE_ENV = "JOINTSTATS_CSV_CACHE_DIR"  # set by the node's WorkerPool
PROFILE_ENV = "JOINTSTATS_PROFILE_DIR"


class RelayChannel:
    """PartyChannel over the session's sealed relay links."""

    def __init__(self, link: RelayLink, spec: SessionSpec) -> None:
        self._link, self._spec = link, spec

    def send(self, pid: int, payload: bytes) -> None:
        self._link.peers[pid].send_data(payload)

    async def recv(self, pid: int) -> bytes:
        queue = self._link.peers[pid].data
        return await _or_fail(self._link, queue.get(), self._spec.timeout, self._spec.parties[pid])


def _new_runtime(pid: int, m: int) -> Any:
    options = mpyc_runtime.mpc.options
    options.threshold = (m - 1) // 2
    options.no_async = False  # set for the m = 1 runtime that importing mpyc creates
    parties = [mpyc_runtime.Party(i) for i in range(m)]
    rt = mpyc_runtime.Runtime(pid, parties, options)
    for module in (sectypes, asyncoro, mpctools, seclists, secpols, secgroups, random, statistics):
        module.runtime = rt
    return rt


async def _connect(rt: Any, link: RelayLink, spec: SessionSpec, identity: Identity) -> None:
    """Open the relay, authenticate a fresh key with every peer, then exchange PRSS keys."""
    roster = Roster.load(Path(spec.roster))
    await link.open()
    peers = [p for p in range(len(spec.parties)) if p != spec.pid]
    wait = max(HANDSHAKE_SECONDS, spec.timeout)
    for peer in peers:
        peer_link = link.add_peer(peer)
        peer_link.send_handshake(peer_link.seal.hello(identity))
    for peer in peers:
        peer_link = link.peers[peer]
        hello = await _or_fail(link, peer_link.handshake, wait, spec.parties[peer])
        peer_link.accept_handshake(hello, roster.get(spec.parties[peer]).sign_public)
        peer_link.send_prss(b"".join(rt._prss_keys_to_peer(peer)))
    for peer in peers:
        peer_link = link.peers[peer]
        keys = await _or_fail(link, peer_link.prss, wait, spec.parties[peer])
        if len(keys) != rt._prss_keys_from_peer(peer):
            raise PeerError(f"{spec.parties[peer]} sent PRSS keys of the wrong size")
        rt._prss_keys_from_peer(peer, keys)
        rt.parties[peer].protocol = peer_link
    rt.start_time = time.time()


async def _or_fail(link: RelayLink, awaitable: Any, seconds: float, party: str) -> Any:
    """Wait for `awaitable`, but stop at once when the relay fails or a peer is silent."""
    task = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait(
        {task, link.failed}, timeout=seconds, return_when="FIRST_COMPLETED"
    )
    if link.failed in done:
        task.cancel()
        link.failed.result()
    if task not in done:
        task.cancel()
        raise SessionTimeout(f"no answer from {party} within {seconds:.0f} s")
    return task.result()


async def _goodbye(link: RelayLink, spec: SessionSpec) -> None:
    """A barrier so that no party closes while others still expect its messages."""
    for peer_link in link.peers.values():
        peer_link.send_bye()
    for peer, peer_link in link.peers.items():
        await _or_fail(link, peer_link.bye, BYE_SECONDS, spec.parties[peer])


async def _preconnect() -> grpc.aio.Channel | None:
    """While waiting for a session, open the TLS channel to the coordinator, so that the
    handshake is not on the analyst's clock. The node passes where and with which keys."""
    address = os.environ.get(PRECONNECT_ENV)
    if not address:
        return None
    try:
        identity = Identity.load(Path(os.environ[PRECONNECT_ENV + "_KEYS"]))
        roster = Roster.load(Path(os.environ[PRECONNECT_ENV + "_ROSTER"]))
        channel = grpc.aio.secure_channel(
            address, channel_credentials(identity, roster), options=channel_options()
        )
        await asyncio.wait_for(channel.channel_ready(), PRECONNECT_SECONDS)
        return channel
    except (JointstatsError, KeyError, TimeoutError) as exc:
        log.warning("no pre-connected channel (%s); connecting at session start", exc)
        return None


def _cached(source: Source) -> Source:
    """CSV sources keep a columnar copy in the node's state folder (node/csv_cache.py)."""
    folder = os.environ.get(CACHE_ENV)
    if folder and isinstance(source, FileSource) and source.format == "csv":
        return dataclasses.replace(source, cache_dir=Path(folder), cache_wait=False)
    return source


async def _wait_for_spec() -> tuple[grpc.aio.Channel | None, str]:
    """Pre-connect while waiting for the spec line; at EOF (the node is gone) return at once
    instead of finishing a TLS handshake with a coordinator that may be gone too."""
    connecting = asyncio.ensure_future(_preconnect())
    line = await asyncio.to_thread(sys.stdin.readline)
    if not line:
        return None, ""
    return await connecting, line


async def run_session(
    spec: SessionSpec,
    channel: grpc.aio.Channel | None = None,
    progress: Callable[[str], None] = lambda phase: None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    progress("local")
    started = time.perf_counter()
    identity = Identity.load(Path(spec.key_dir))
    protocol, job = parse_job(parse_job_bytes(spec.job_json.encode()))
    local = None
    if spec.node in spec.data_parties:
        sources = {name: _cached(source_for(name, entry)) for name, entry in spec.datasets.items()}
        local = await asyncio.to_thread(protocol.local_step, job, spec.node, sources)
    timings = {"local": time.perf_counter() - started}
    facts_of = getattr(protocol, "local_facts", None)
    facts = facts_of(job, local) if facts_of is not None and local is not None else {}
    check_contribution(spec.node, spec.job_id, spec.max_rows, facts)
    rt = _new_runtime(spec.pid, len(spec.parties))
    link = RelayLink(
        spec.coordinator,
        identity,
        Roster.load(Path(spec.roster)),
        spec.session_id,
        spec.pid,
        channel,
        spec.description.digest,
    )

    def phase(name: str) -> None:
        link.phase = name  # what is sent from now on counts towards this phase
        progress(name)

    try:
        phase("connect")
        mark = time.perf_counter()
        await _connect(rt, link, spec, identity)
        timings["connect"] = time.perf_counter() - mark
        mark = time.perf_counter()
        ctx = SessionContext(
            rt,
            spec.pid,
            tuple(spec.parties),
            tuple(spec.data_parties),
            dict(spec.description.disclosure),
            channel=RelayChannel(link, spec),
            progress=phase,
        )
        phase("mpc")
        result = await _or_fail(
            link, protocol.mpc_program(job, ctx, local), spec.timeout, "the session"
        )
        timings["mpc"] = time.perf_counter() - mark
        phase("bye")
        await _goodbye(link, spec)
    finally:
        await link.close()
    facts = {**facts, "sent": link.sent(spec.parties), "bytes_sent": bytes_by_peer(link, spec)}
    result["metadata"].update(job_id=spec.job_id, session_id=spec.session_id)
    result["session"] = spec.description.to_dict()
    result["metadata"].setdefault("timings", {}).update(
        {k: round(v, 4) for k, v in timings.items()}
    )
    return result, facts


def bytes_by_peer(link: RelayLink, spec: SessionSpec) -> dict[str, dict[str, int]]:
    """Sealed bytes this party sent, per peer and message kind (for the node's audit log)."""
    totals: dict[str, dict[str, int]] = {}
    for row in link.sent(spec.parties):
        per_kind = totals.setdefault(str(row["to"]), {})
        per_kind[str(row["kind"])] = per_kind.get(str(row["kind"]), 0) + int(row["bytes"])
    return totals


def _public_error(exc: BaseException) -> tuple[str, str]:
    """A message safe to send across the node boundary (no microdata, no traceback)."""
    if isinstance(exc, JointstatsError):
        return type(exc).__name__, str(exc)
    if isinstance(exc, asyncio.TimeoutError):
        return "SessionTimeout", "the MPC session timed out"
    return (
        "InternalError",
        f"internal error in the session worker ({type(exc).__name__}); see node log",
    )


def _profiled(run: Callable[[], Any], job_id: str) -> Any:
    """With JOINTSTATS_PROFILE_DIR set (benchmarks), the session runs under cProfile and its
    statistics go to DIR/<job>-<pid>.prof (docs/performance.md)."""
    folder = os.environ.get(PROFILE_ENV)
    if not folder:
        return run()
    import cProfile

    profile = cProfile.Profile()
    try:
        return profile.runcall(run)
    finally:
        profile.dump_stats(str(Path(folder) / f"{job_id}-{os.getpid()}.prof"))


def main() -> int:
    # The node owns this process: a SIGTERM to the whole group (systemd, Ctrl-C) must let the
    # node abort the session, report it and log it; the node kills us itself.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    result_pipe = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # MPyC prints to stdout; keep the result pipe clean
    logging.basicConfig(level=logging.INFO, format="%(asctime)s session %(levelname)s %(message)s")
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    channel, line = loop.run_until_complete(_wait_for_spec())
    if not line:
        os._exit(0)  # the node shut down before handing us a session
    try:
        spec = SessionSpec.from_dict(json.loads(line))

        def progress(phase: str) -> None:
            result_pipe.write(json.dumps({"progress": phase}) + "\n")
            result_pipe.flush()

        session = asyncio.wait_for(run_session(spec, channel, progress), spec.timeout + 30)
        result, facts = _profiled(lambda: loop.run_until_complete(session), spec.job_id)
        result_pipe.write(json.dumps({"ok": True, "result": result, "facts": facts}) + "\n")
        code = 0
    except BaseException as exc:  # report every failure as one line; details stay in the log
        traceback.print_exc()
        kind, message = _public_error(exc)
        result_pipe.write(json.dumps({"ok": False, "type": kind, "error": message}) + "\n")
        code = 1
    result_pipe.flush()
    os._exit(code)  # don't wait for gRPC or MPyC threads


def fork_server(fd: int) -> int:
    """Serve fork requests on socket `fd` (node/workers.py, `ForkServer`): a node's connected
    socket (stop when the node closes it), or a listening one that `jointstats local` shares
    among its nodes (stop at SIGTERM). Stopping waits for the workers still running, so that
    they are reaped here (an init that reaps no orphans would keep them as zombies); they
    end on their own once their node is gone (EOF on stdin) or their session is over.

    This process imported everything once and never starts gRPC or an event loop, so a fork
    of it is a clean worker in milliseconds (the node itself runs gRPC threads: never fork it).
    A request is one JSON packet {"env": {...}} with three descriptors: the worker's stdin,
    stdout and stderr. The answer is b"ok" with a pidfd of the child, which the node uses to
    signal and await it (no pid reuse races)."""
    server = socket.socket(fileno=fd)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s session %(levelname)s %(message)s")
    listening = bool(server.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
    # a node's own fork server serves many jobs, of both kinds; a one-shot run's only when
    # its job needs it (a linked job, margins), and it also forks that run's services
    if not listening or os.environ.get(PRELOAD_ENV) == "all":
        _preload_for_many_jobs()
    if "spark-connect" in os.environ.get(PRELOAD_ENV, "").split(","):
        _preload_spark_connect()
    if listening:
        _preload_services()
    threads = len(os.listdir("/proc/self/task"))
    if threads > 1:  # a fork copies no thread: a library's pool would be missing in children
        log.warning("fork server: %d threads after imports", threads)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, lambda *_: _reap())
    signal.signal(signal.SIGTERM, _stop)
    with contextlib.suppress(_Stopped):
        _serve(server, listening)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    with contextlib.suppress(ChildProcessError):
        while True:
            os.wait()
    return 0


def _preload_for_many_jobs() -> None:
    """Import what some sessions load: a linked one pandas, pyarrow and the linkage code, a
    table with margins or a known total scipy's LP solver (≈0.2 s CPU each), so that a forked
    worker does not import them on the analyst's clock. A one-shot run's shared fork server
    loads them only when its one job needs them (`PRELOAD_ENV` = "all"): its imports are on
    that job's clock. Nodes and the coordinator never import these."""
    import scipy.optimize  # noqa: F401
    import scipy.sparse  # noqa: F401

    from jointstats.protocols.linked import compare, fuzzy, program, records, wire  # noqa: F401


def _preload_spark_connect() -> None:
    """pyspark's Spark Connect client (≈0.4 s of imports), for a node with an sc:// dataset:
    a gRPC client that starts no thread and no JVM until a worker connects."""
    with warnings.catch_warnings():  # pyspark's notice about the pandas version
        warnings.simplefilter("ignore", FutureWarning)
        import pyspark.sql.connect.client.retries  # noqa: F401
        import pyspark.sql.connect.session  # noqa: F401


def _preload_services() -> None:
    """What `jointstats.serve` needs to run a node or a coordinator (a one-shot run forks them
    from its shared fork server, as workers are: no interpreter start, no imports)."""
    import jointstats.config  # noqa: F401
    import jointstats.coordinator.server  # noqa: F401
    import jointstats.node.server  # noqa: F401
    import jointstats.serve  # noqa: F401


class _Stopped(Exception):
    """SIGTERM reached the fork server."""


def _stop(*_: object) -> None:
    raise _Stopped


def _serve(server: socket.socket, listening: bool) -> None:
    with selectors.DefaultSelector() as selector:
        selector.register(server, selectors.EVENT_READ)
        while selector.get_map():
            for key, _ in selector.select():
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if listening and sock is server:
                    selector.register(server.accept()[0], selectors.EVENT_READ)
                elif not _serve_one(sock, selector, listening):
                    selector.unregister(sock)
                    sock.close()
                    if not listening:
                        return


def _serve_one(sock: socket.socket, selector: selectors.BaseSelector, services: bool) -> bool:
    """Answer one request on `sock`; False when the peer is gone."""
    try:
        message, fds, _, _ = socket.recv_fds(sock, 1 << 16, 3)
    except OSError:
        return False
    if not message:
        return False
    if len(fds) != 3:
        for extra in fds:
            os.close(extra)
        sock.send(b"error: a request carries three descriptors")
        return True
    # SIGCHLD stays blocked until the pidfd is open, so that the reaper cannot free the pid
    # of a child that exits at once before we hold it
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    try:
        try:
            pid = os.fork()
        except OSError as exc:  # EAGAIN, ENOMEM: refuse this request, keep serving
            log.warning("fork server: fork failed: %s", exc)
            for passed in fds:
                os.close(passed)
            with contextlib.suppress(OSError):
                sock.send(b"error: fork failed")
            return True
        if pid == 0:
            sockets = [k.fileobj for k in selector.get_map().values()]
            _become_worker(
                [s for s in sockets if isinstance(s, socket.socket)], fds, message, services
            )
        pidfd = os.pidfd_open(pid)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
    for passed in fds:
        os.close(passed)
    try:
        socket.send_fds(sock, [b"ok"], [pidfd])
    except OSError:
        return False
    finally:
        os.close(pidfd)
    return True


def _reap() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


def _become_worker(
    sockets: list[socket.socket], fds: list[int], message: bytes, services: bool = False
) -> None:
    """In the forked child: take the node's pipes as stdin/stdout/stderr and run `main`; or,
    for a one-shot run's shared fork server (`services`), a request with `argv` runs
    `jointstats.serve` (that run's coordinator or a node) instead."""
    code = 1
    try:
        for sock in sockets:  # the fork server's sockets are not the worker's business
            sock.close()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # main() sets its own
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
        os.setsid()  # its own process group, as a worker started by exec
        for target, passed in enumerate(fds):
            os.dup2(passed, target)
            os.close(passed)
        request = json.loads(message)
        os.environ.update({str(k): str(v) for k, v in request["env"].items()})
        # Every fork starts from the fork server's memory: Python's `random` reseeds itself
        # after a fork, numpy's global generator does not. Our protocols and MPyC draw from
        # `secrets` (the OS), but no child should repeat another's "random" numbers.
        numpy.random.seed()
        code = _serve_service(request["argv"]) if services and "argv" in request else main()
    finally:
        os._exit(code)


def _serve_service(argv: list[str]) -> int:
    """Run `python -m jointstats.serve ARGV` in this forked child, configured as a fresh
    interpreter would be (logging, Ctrl-C), and flush its output before the child exits."""
    from jointstats import serve

    logging.getLogger().handlers.clear()  # the fork server's format is not the service's
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return serve.main([str(arg) for arg in argv])
    except BaseException:  # as a fresh interpreter would: the traceback in the log
        traceback.print_exc()
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--fork-server"]:
        sys.exit(fork_server(int(sys.argv[2])))
    sys.exit(main())
