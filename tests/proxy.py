"""A TCP proxy for tests that can cut the network between a node and the coordinator, or
black-hole it.

`cut()` closes the sockets: both ends see a FIN/RST at once. `freeze()` is the other kind of
failure (a cable pulled, a NAT entry expired, a laptop suspended): nothing is forwarded in either
direction and nothing is closed, so both ends see only silence, and must notice by themselves.
Bytes that arrive while frozen are held, not dropped, as TCP would retransmit them: after
`thaw()` a connection that neither end gave up on carries on, and one that an end closed
meanwhile is closed on the other side too.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable

CHUNK_BYTES = 65536


class CuttableProxy:
    def __init__(self, target: Callable[[], str]) -> None:
        self._target = target
        self._server = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._server.getsockname()[1]}"
        self._open = threading.Event()
        self._open.set()
        self._flowing = threading.Event()  # cleared while frozen
        self._flowing.set()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if not self._open.is_set():
                client.close()
                continue
            # Frozen: a new connection is accepted (the kernel completes it anyway) but nothing
            # goes through it, not even the dial upstream, until thaw().
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        with self._lock:
            self._sockets.append(client)
        self._flowing.wait()
        try:
            host, port = self._target().rsplit(":", 1)
            upstream = socket.create_connection((host, int(port)))
        except (OSError, AttributeError, KeyError):  # no target yet, or it refuses
            with contextlib.suppress(OSError):
                client.close()
            return
        with self._lock:
            if client not in self._sockets:  # cut() meanwhile
                upstream.close()
                return
            self._sockets.append(upstream)
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while True:
                # Frozen: stop reading, so the bytes wait in the kernel's buffers and, once
                # those are full, the sender's writes stall, as on a dead link.
                self._flowing.wait()
                data = source.recv(CHUNK_BYTES)
                if not data:
                    break
                self._flowing.wait()  # what was read just before freeze() is held too
                sink.sendall(data)
        self._flowing.wait()  # an end's close travels no faster than its data
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Drop every connection and refuse new ones."""
        self._open.clear()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._sockets.clear()
        self._flowing.set()  # a frozen pipe wakes up to find its sockets closed

    def restore(self) -> None:
        self._open.set()

    def freeze(self) -> None:
        """Black-hole every connection, open or new, without closing any."""
        self._flowing.clear()

    def thaw(self) -> None:
        """Forward again, including what arrived while frozen."""
        self._flowing.set()

    def close(self) -> None:
        self.cut()
        self._server.close()
