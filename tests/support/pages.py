"""A pay page's socket as the push hub sees it (send, ping, close), with no
network in between: for the tests of the hub and of what drives it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from server.push.hub import Subscriber


class Page:
    """The browser end of one subscription.

    ``stuck``: it never drains its TCP buffer, so its first write never ends.
    ``answers``: it answers a ping as a browser does (a pong refreshes its
    subscriber's ``last_seen``, as the WebSocket handler does); a silent page does not.
    ``on_ping`` is told of each ping (to see how the pings of a round are spread).
    """

    def __init__(self, stuck: bool = False, answers: bool = True, on_ping: Callable[[Page], None] | None = None):
        self.received: list[dict[str, Any]] = []  # written through to the browser, in order
        self.closed: tuple[int, str] | None = None
        self.pings = 0
        self.sub: Subscriber | None = None
        self.answers = answers
        self.on_ping = on_ping
        self._gate = asyncio.Event()
        if not stuck:
            self._gate.set()

    def subscriber(self, user: str, order_id: str, token: str) -> Subscriber:
        """This page's subscription (what the WebSocket handler makes when a page opens)."""
        self.sub = Subscriber(user, order_id, token, self)
        return self.sub

    def send_event(self, event: dict[str, Any]) -> Awaitable[None]:
        # Typed as the hub's Peer has it, so a test's page may answer with a Future instead.
        return self._write(event)

    async def _write(self, event: dict[str, Any]) -> None:
        await self._gate.wait()
        self.received.append(event)

    def close_from_hub(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def ping_peer(self) -> None:
        self.pings += 1
        if self.on_ping is not None:
            self.on_ping(self)
        if self.answers and self.sub is not None:
            self.sub.last_seen = time.monotonic()

    def statuses(self) -> list[Any]:
        return [e.get("status") for e in self.received]


class PingBursts:
    """Pings grouped by the turn of the event loop they happened in: one
    keep-alive tick pings its share of sockets in one go, so each group is one tick."""

    def __init__(self) -> None:
        self.bursts: list[list[Page]] = []
        self._open = False

    def __call__(self, page: Page) -> None:
        if not self._open:
            self._open = True
            self.bursts.append([])
            # Runs once the code pinging now yields to the loop: the tick is over.
            asyncio.get_running_loop().call_soon(self._close)
        self.bursts[-1].append(page)

    def _close(self) -> None:
        self._open = False

    def total(self) -> int:
        return sum(len(b) for b in self.bursts)
