"""Where paypush listens, and how fast it takes new connections.

A flash sale or a restarted neighbour sends thousands of pay pages at once.
Tornado accepts every connection the kernel has queued, up to 128 a turn of
the event loop, and starts each one's handshake; when the loop is behind,
thousands are under way at once. Each holds its request's headers, parser
and handler, the page's first read of its order, and whatever the driver
makes for it. They are all freed within seconds, but pymalloc had placed the
waiting pages' lasting objects among them, and keeps every arena that still
holds one: 10,000 pages opened in a flood left the process 21.7 KiB a page
bigger, against 12.9 KiB when at most 400 were opening at once (the same
objects, 69 MiB more of emptied pools; BENCHMARKS.md).

So a connection counts as *opening* from its accept until its first request
is known not to be a page's socket (its headers are read), or until that
socket has sent the order's state. Only pages are held back: a notify that
waits on a busy RabbitMQ, or a page that polls, must not keep pages out (in
a 100,000-page restart storm notifies waited seconds on publisher confirms).
While ``limit`` are opening, this process stops accepting and the kernel's
accept queue (``LISTEN_BACKLOG`` deep, where a connection costs this process
nothing) holds the rest. A connection that sends nothing counts for at most
``OPENING_SECONDS``, so idle or hostile connections slow the accepting down
but cannot stop it. Opening must stay short: with SO_REUSEPORT the kernel
picks a process by the connection's addresses, and a page retrying its SYN
lands on the same full queue again while another process idles (which is why
a page waits only briefly for its key to be bound: paynotify_bridge.BIND_WAIT).
"""

from __future__ import annotations

import contextlib
import resource
import socket
import time
from collections.abc import Callable

import tornado.httpserver
import tornado.iostream
import tornado.netutil
from tornado.ioloop import PeriodicCallback

# The kernel caps it at net.core.somaxconn: a restart sends thousands of pages
# at once, and Tornado's 128 would refuse most of them for a retry.
LISTEN_BACKLOG = 4096
OPENING_LIMIT = 256
OPENING_SECONDS = 5.0
SWEEP_SECONDS = 0.25


def raise_open_file_limit() -> None:
    """Every waiting pay page is an open file: take the hard limit, not the
    soft one (often 1,024), as nginx's worker_rlimit_nofile does."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Listener:
    """Accepts for one Tornado server, at most ``limit`` connections opening at a time."""

    def __init__(self, server: tornado.httpserver.HTTPServer, *, limit: int = OPENING_LIMIT,
                 opening_seconds: float = OPENING_SECONDS):
        self.server = server
        self.limit = limit
        self.opening_seconds = opening_seconds
        self.paused = 0  # times accepting stopped because ``limit`` were opening
        self._opening: dict[tornado.iostream.IOStream, float] = {}  # stream -> when accepted
        self._sockets: list[socket.socket] = []
        self._stop_accepting: list[Callable[[], None]] = []
        self._stopped = False
        # Also forgets connections that closed while opening.
        self._sweeper = PeriodicCallback(self._sweep, SWEEP_SECONDS * 1000)

    @property
    def opening(self) -> int:
        return len(self._opening)

    @property
    def accepting(self) -> bool:
        return bool(self._stop_accepting)

    def listen(self, port: int, host: str, *, reuse_port: bool = False) -> None:
        """Bind and start accepting. OSError when the address cannot be had."""
        self._sockets += tornado.netutil.bind_sockets(port, host, backlog=LISTEN_BACKLOG, reuse_port=reuse_port)
        self._resume()

    def add_sockets(self, sockets: list[socket.socket]) -> None:
        """Accept on sockets bound elsewhere (tests listen on an unused port this way)."""
        self._sockets += sockets
        self._resume()

    def done(self, stream: tornado.iostream.IOStream | None) -> None:
        """``stream`` no longer counts as opening: its request is no page's
        socket, or the page has been sent its state (or refused)."""
        if stream is not None and self._opening.pop(stream, None) is not None and not self.accepting:
            self._resume()

    def stop(self) -> None:
        """Stop accepting for good and close the listening sockets."""
        self._stopped = True
        self._pause()
        self._sweeper.stop()
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()
        self._opening.clear()

    def _accepted(self, connection: socket.socket, address: tuple[str, int]) -> None:
        # What TCPServer does for a plain (no TLS) listener, with the count added.
        stream = tornado.iostream.IOStream(connection, max_buffer_size=self.server.max_buffer_size,
                                           read_chunk_size=self.server.read_chunk_size)
        self._opening[stream] = time.monotonic()
        self.server.handle_stream(stream, address)
        if len(self._opening) >= self.limit and self.accepting:
            self.paused += 1
            self._pause()

    def _pause(self) -> None:
        for stop in self._stop_accepting:
            stop()
        self._stop_accepting.clear()

    def _resume(self) -> None:
        if self._stopped or self.accepting or len(self._opening) >= self.limit:
            return
        self._stop_accepting = [tornado.netutil.add_accept_handler(sock, self._accepted) for sock in self._sockets]
        if not self._sweeper.is_running():
            self._sweeper.start()

    def _sweep(self) -> None:
        """Forget connections that closed, or sent nothing for ``opening_seconds``."""
        too_old = time.monotonic() - self.opening_seconds
        for stream in [s for s, at in self._opening.items() if at < too_old or s.closed()]:
            del self._opening[stream]
        self._resume()
