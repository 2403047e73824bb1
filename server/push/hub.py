"""This process's pay-page sockets, indexed by push token.

After python-websockets' broadcast guide: each socket has one bounded queue and
one relay task, so a browser that cannot keep up never stalls the others; when
its queue is full it is disconnected (the page reconnects and reads the state
afresh, so nothing is lost by that).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from server.lifecycle import Callbacks

log = logging.getLogger(__name__)

QUEUE_SIZE = 16
CLOSE_GOING_AWAY = 1001
CLOSE_TRY_AGAIN_LATER = 1013
# An order only moves forward: unpaid -> paid, unpaid -> closed -> paid (paid
# after close). Events come twice (this process's own copy, then RabbitMQ's)
# and from several processes in no global order, so a socket takes a status
# only if it is further along than what the page already has.
PROGRESS = {"unpaid": 0, "closed": 1, "paid": 2}


def is_news(status: Any, known: str | None) -> bool:
    if status in PROGRESS and known in PROGRESS:
        return PROGRESS[status] > PROGRESS[known]
    return status != known


class Peer(Protocol):
    """The browser end of a subscription (the WebSocket handler)."""

    def send_event(self, event: dict[str, Any]) -> Awaitable[None]:
        """Start writing ``event`` now; the result completes when it is written.
        Never raises: a peer that is gone closes itself."""
        ...

    def close_from_hub(self, code: int, reason: str) -> None: ...

    def ping_peer(self) -> None: ...


class Subscriber:
    """One pay-page socket. Its queue and relay task exist only while it has
    events to send: an idle waiting browser costs no task, no queue.

    An event offered to an idle socket is written at once, inside ``offer``;
    the relay task then only waits for that write (and sends what queued up
    behind it), so a push never waits a turn of the event loop to go out."""

    __slots__ = ("_pending", "_relay", "_started", "last_seen", "last_status", "on_delivered", "order_id",
                 "peer", "token", "user")

    def __init__(self, user: str, order_id: str, token: str, peer: Peer,
                 on_delivered: Callable[[float | None], None] | None = None):
        self.on_delivered = on_delivered
        self.user = user
        self.order_id = order_id
        self.token = token
        self.peer = peer
        self._pending: deque[tuple[dict[str, Any], float | None]] | None = None
        self._relay: asyncio.Task[None] | None = None
        self._started = False
        self.last_status: str | None = None
        self.last_seen = time.monotonic()

    def offer(self, event: dict[str, Any], at: float | None = None) -> bool:
        """Queue ``event`` (``at``: when its transition happened, for the latency metric)."""
        if self._pending is None:
            self._pending = deque()
        if len(self._pending) >= QUEUE_SIZE:
            log.warning("pay-page socket of %s for %s cannot keep up: disconnecting it",
                        self.user, self.order_id)
            self.close(CLOSE_TRY_AGAIN_LATER, "too slow")
            return False
        self._pending.append((event, at))
        if self._started and self._relay is None:
            self._relay_from(self._write_next())
        return True

    async def start(self, current: dict[str, Any]) -> None:
        """Send the current state, then relay what was queued meanwhile and after."""
        self.last_status = current.get("status")
        await self.peer.send_event(current)
        self._delivered(None)
        self._started = True
        if self._relay is None:
            self._relay_from(self._write_next())

    def _write_next(self) -> tuple[Awaitable[None], float | None] | None:
        """Start writing the next pending event that is news; None when there is none."""
        while self._pending:
            event, at = self._pending.popleft()
            # At-least-once delivery, the local copy and the subscribe-then-read
            # overlap all produce repeats and stale reports: only progress is news.
            if is_news(event.get("status"), self.last_status):
                self.last_status = event.get("status")
                return self.peer.send_event(event), at
        self._pending = None
        return None

    def _relay_from(self, writing: tuple[Awaitable[None], float | None] | None) -> None:
        if writing is not None and self._started:  # not stopped by a write that found the socket closed
            self._relay = asyncio.get_running_loop().create_task(self._run(writing))

    async def _run(self, writing: tuple[Awaitable[None], float | None] | None) -> None:
        try:
            while writing is not None:
                written, at = writing
                await written
                self._delivered(at)
                writing = self._write_next()
        except Exception as exc:
            log.debug("pay-page socket of %s for %s: write failed (%s)", self.user, self.order_id, exc)
        finally:
            self._relay = None

    def _delivered(self, at: float | None) -> None:
        if self.on_delivered is not None:
            self.on_delivered(at)

    @property
    def started(self) -> bool:
        return self._started

    def ping(self) -> None:
        self.peer.ping_peer()

    def close(self, code: int, reason: str) -> None:
        self.stop()
        self.peer.close_from_hub(code, reason)

    def stop(self) -> None:
        if self._relay is not None:
            self._relay.cancel()
            self._relay = None
        self._pending = None
        self._started = False


class PushHub:
    def __init__(self, max_sockets_per_user: int, max_sockets: int = 1_000_000):
        """``max_sockets``: what this process holds at most; past it a page is
        turned away (1013) to try again, and lands on another process."""
        self.max_sockets_per_user = max_sockets_per_user
        self.max_sockets = max_sockets
        # A token maps to its one subscriber, or to a set when a page is open
        # twice: most orders have one page, and a set costs ~240 bytes.
        self._by_token: dict[str, Subscriber | set[Subscriber]] = {}
        self._per_user: Counter[str] = Counter()
        self._open = 0
        # Told of every new subscriber (the active-query backstop), so nobody
        # has to walk all of them to find the new ones.
        self.on_subscribe: Callbacks[[Subscriber]] = Callbacks("hub.on_subscribe")
        # A token's first socket here, and its last one gone: what this
        # process must hear from RabbitMQ (the bridge binds exactly these).
        self.on_watched: Callbacks[[str]] = Callbacks("hub.on_watched")
        self.on_unwatched: Callbacks[[str]] = Callbacks("hub.on_unwatched")

    def __len__(self) -> int:
        return self._open

    def can_open(self, user: str) -> bool:
        return self._per_user[user] < self.max_sockets_per_user

    def has_room(self) -> bool:
        return self._open < self.max_sockets

    def watching(self, token: str) -> set[Subscriber]:
        entry = self._by_token.get(token)
        if entry is None:
            return set()
        return entry if isinstance(entry, set) else {entry}

    def watched(self) -> list[str]:
        """The tokens with a socket here."""
        return list(self._by_token)

    def subscribe(self, sub: Subscriber) -> None:
        entry = self._by_token.get(sub.token)
        if entry is None:
            self._by_token[sub.token] = sub
            self.on_watched(sub.token)
        elif isinstance(entry, set):
            entry.add(sub)
        else:
            self._by_token[sub.token] = {entry, sub}
        self._per_user[sub.user] += 1
        self._open += 1
        self.on_subscribe(sub)

    def unsubscribe(self, sub: Subscriber) -> None:
        subs = self.watching(sub.token)
        if sub not in subs:
            return
        subs.discard(sub)
        if not subs:
            del self._by_token[sub.token]
            self.on_unwatched(sub.token)
        elif len(subs) == 1:
            self._by_token[sub.token] = next(iter(subs))
        self._per_user[sub.user] -= 1
        self._open -= 1
        if self._per_user[sub.user] <= 0:
            del self._per_user[sub.user]
        sub.stop()

    def dispatch(self, token: str, event: dict[str, Any], at: float | None = None) -> int:
        """Queue ``event`` for every socket watching ``token``; returns how many took it."""
        # A copy: offering writes at once, and a socket found closed leaves the set.
        return sum(sub.offer(event, at) for sub in tuple(self.watching(token)))

    def subscribers(self) -> list[Subscriber]:
        # No throwaway set per token: this walks every socket.
        subs: list[Subscriber] = []
        for entry in self._by_token.values():
            if isinstance(entry, set):
                subs.extend(entry)
            else:
                subs.append(entry)
        return subs

    async def keep_alive(self, interval: float, tick: float = 0.1) -> None:
        """Ping every socket once per ``interval``; close those silent for two.

        One task for the whole process instead of Tornado's ping task per
        socket, spread evenly: each ``tick`` pings the next few sockets of a
        round. Bursts of pings (and of the pongs they bring back) delay the
        pushes queued behind them, and walking every socket each tick is
        itself slow with many sockets open, so a round works through a
        snapshot of the tokens: a page gone meanwhile is simply not found.
        """
        loop = asyncio.get_running_loop()
        ticks = max(1, round(interval / tick))
        while True:
            tokens = list(self._by_token)
            if not tokens:
                await asyncio.sleep(tick)
                continue
            per_tick = -(-len(tokens) // ticks)
            started = loop.time()
            for n, first in enumerate(range(0, len(tokens), per_tick), start=1):
                await asyncio.sleep(max(0.0, started + n * tick - loop.time()))
                cutoff = time.monotonic() - 2 * interval
                for token in tokens[first:first + per_tick]:
                    for sub in tuple(self.watching(token)):
                        if sub.last_seen < cutoff:
                            self.unsubscribe(sub)
                            sub.close(CLOSE_GOING_AWAY, "ping timeout")
                        else:
                            sub.ping()
            await asyncio.sleep(max(0.0, started + interval - loop.time()))

    def close_all(self, code: int = CLOSE_GOING_AWAY, reason: str = "server shutting down") -> None:
        for sub in self.subscribers():
            self.unsubscribe(sub)
            sub.close(code, reason)
