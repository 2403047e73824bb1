"""This process's pay-page sockets, indexed by push token.

After python-websockets' broadcast guide: each socket has one bounded queue and
one relay task, so a browser that cannot keep up never stalls the others; when
its queue is full it is disconnected (the page reconnects and reads the state
afresh, so nothing is lost by that).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

QUEUE_SIZE = 16
CLOSE_GOING_AWAY = 1001
CLOSE_TRY_AGAIN_LATER = 1013

Send = Callable[[dict[str, Any]], Awaitable[None]]
Close = Callable[[int, str], None]


class Subscriber:
    def __init__(self, user: str, order_id: str, token: str, send: Send, close: Close):
        self.user = user
        self.order_id = order_id
        self.token = token
        self._send = send
        self._close = close
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_SIZE)
        self._relay: asyncio.Task[None] | None = None
        self.last_status: str | None = None
        self.sent = 0

    def offer(self, event: dict[str, Any]) -> bool:
        try:
            self._queue.put_nowait(event)
            return True
        except asyncio.QueueFull:
            log.warning("pay-page socket of %s for %s cannot keep up: disconnecting it",
                        self.user, self.order_id)
            self.close(CLOSE_TRY_AGAIN_LATER, "too slow")
            return False

    async def start(self, current: dict[str, Any]) -> None:
        """Send the current state, then relay what was queued meanwhile and after."""
        await self._deliver(current)
        self._relay = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            event = await self._queue.get()
            # At-least-once delivery and the subscribe-then-read overlap both
            # produce repeats; a status the page already has is not news.
            if event.get("status") != self.last_status:
                await self._deliver(event)

    async def _deliver(self, event: dict[str, Any]) -> None:
        self.last_status = event.get("status")
        await self._send(event)
        self.sent += 1

    def close(self, code: int, reason: str) -> None:
        self.stop()
        self._close(code, reason)

    def stop(self) -> None:
        if self._relay is not None:
            self._relay.cancel()
            self._relay = None


class PushHub:
    def __init__(self, max_sockets_per_user: int):
        self.max_sockets_per_user = max_sockets_per_user
        self._by_token: dict[str, set[Subscriber]] = {}
        self._per_user: Counter[str] = Counter()

    def __len__(self) -> int:
        return sum(self._per_user.values())

    def can_open(self, user: str) -> bool:
        return self._per_user[user] < self.max_sockets_per_user

    def subscribe(self, sub: Subscriber) -> None:
        self._by_token.setdefault(sub.token, set()).add(sub)
        self._per_user[sub.user] += 1

    def unsubscribe(self, sub: Subscriber) -> None:
        subs = self._by_token.get(sub.token)
        if subs is None or sub not in subs:
            return
        subs.discard(sub)
        if not subs:
            del self._by_token[sub.token]
        self._per_user[sub.user] -= 1
        if self._per_user[sub.user] <= 0:
            del self._per_user[sub.user]
        sub.stop()

    def dispatch(self, token: str, event: dict[str, Any]) -> int:
        """Queue ``event`` for every socket watching ``token``; returns how many took it."""
        return sum(sub.offer(event) for sub in list(self._by_token.get(token, ())))

    def subscribers(self) -> list[Subscriber]:
        return [sub for subs in self._by_token.values() for sub in subs]

    async def resync(self, current_event: Callable[[str], Awaitable[dict[str, Any] | None]]) -> None:
        """Offer every socket its order's state again (events may have passed us by)."""
        for sub in self.subscribers():
            event = await current_event(sub.order_id)
            if event is not None:
                sub.offer(event)

    def close_all(self, code: int = CLOSE_GOING_AWAY, reason: str = "server shutting down") -> None:
        for sub in self.subscribers():
            self.unsubscribe(sub)
            sub.close(code, reason)
