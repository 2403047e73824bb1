"""Order events on ``paynotify``, with the order document as the outbox.

A transition to paid or closed sets ``pending_event`` in the same conditional
update, so the event is as durable as the transition. Whoever holds the claim
publishes it (with confirms) and clears it; if RabbitMQ is down the claim runs
out and the outbox drainer publishes it later. Delivery is at least once; the
pay page and the WebSocket relay ignore a status they already have.

The process that made the transition also hands the event straight to its own
pay-page sockets (``deliver_locally``): they hear it without the round trip
through RabbitMQ, and even while RabbitMQ is down. The copy that comes back
through the bridge is then a repeat, which the relay drops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from pymongo.errors import PyMongoError

from server.infra.bus import Bus, BusUnavailable
from server.infra.store import Store
from server.lifecycle import Callbacks
from server.push.tokens import PushTokens

log = logging.getLogger(__name__)

CLAIM_SECONDS = 10.0
# How often the outbox looks for pending events when this process saw no
# failed publish: the look is a query over the orders, which a busy store
# should not get every second.
IDLE_DRAIN_SECONDS = 30.0
TRANSITION_AT = "x-paypush-transition-at"  # header: when the order changed, for push latency
PUBLISH_GRACE = 5.0


def event_for(order: dict[str, Any], kind: str | None = None) -> dict[str, Any]:
    """The message the browser gets: ``{"type", "order_id", "status", "total_fee"}``.

    ``type`` is the transition (paid, closed) or, for a plain state report, status.
    """
    if kind is None:
        kind = order["status"] if order["status"] in ("paid", "closed") else "status"
    return {"type": kind, "order_id": order["_id"], "status": order["status"],
            "total_fee": int(order["pay_money"])}


def transition_time(order: dict[str, Any], kind: str) -> float:
    at = order.get("paid_at") if kind == "paid" else order.get("closed_at")
    return float(at or time.time())


def outbox_fields(event: str) -> dict[str, Any]:
    """Fields to ``$set`` in the transition that makes ``event`` happen."""
    return {"pending_event": event, "pending_claim_until": time.time() + CLAIM_SECONDS}


class OrderEvents:
    def __init__(self, store: Store, bus: Bus | None, tokens: PushTokens):
        self.store = store
        self.bus = bus
        self.tokens = tokens
        self.published = 0
        self._drain_soon = True  # at start-up: another process may have left some
        self._last_drain = 0.0
        self._tasks: set[asyncio.Task[bool]] = set()
        # (push token, event, transition time): this process's sockets for that token.
        self.deliver_locally: Callbacks[[str, dict[str, Any], float]] = Callbacks("events.deliver_locally")

    def flush_soon(self, order: dict[str, Any]) -> None:
        """Give the order's pending event to this process's sockets, and publish
        it in the background (the caller holds the claim)."""
        kind = order.get("pending_event")
        if not kind:
            return
        try:
            self.deliver_locally(self.tokens.token(order["_id"]), event_for(order, kind),
                                 transition_time(order, kind))
        except Exception:
            # The transition is recorded and the publish below still carries the
            # event; a fault here must not fail the caller (a notify being answered).
            log.exception("event %s for %s: local delivery failed", kind, order["_id"])
        if self.bus is None:
            return
        task = asyncio.get_running_loop().create_task(self._publish(order))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish(self, order: dict[str, Any]) -> bool:
        assert self.bus is not None
        kind = order["pending_event"]
        try:
            await self.bus.publish_json(self.tokens.routing_key(order["_id"]), event_for(order, kind),
                                        {TRANSITION_AT: transition_time(order, kind)})
        except BusUnavailable as exc:
            log.warning("event %s for %s not published yet (%s); the outbox keeps it",
                        kind, order["_id"], exc)
            # Let the drainer have it as soon as the broker is back.
            self._drain_soon = True
            with contextlib.suppress(PyMongoError):
                await self.store.orders.update_one({"_id": order["_id"], "pending_event": kind},
                                                   {"$set": {"pending_claim_until": 0}})
            return False
        self.published += 1
        try:
            await self.store.orders.update_one({"_id": order["_id"], "pending_event": kind},
                                               {"$unset": {"pending_event": "", "pending_claim_until": ""}})
        except PyMongoError as exc:
            # Published but still pending: it will be published again (at least once).
            log.warning("event %s for %s published, outbox not cleared: %s", kind, order["_id"], exc)
        return True

    async def publish_pending(self, limit: int = 100, stop: asyncio.Event | None = None) -> int:
        """Claim and publish pending events whose claim ran out. Returns how many went out.

        Once ``stop`` is set no further event is claimed (shutdown)."""
        if self.bus is None or not self.bus.is_open:
            return 0
        now = time.time()
        if not self._drain_soon and now - self._last_drain < IDLE_DRAIN_SECONDS:
            return 0
        self._drain_soon, self._last_drain = False, now
        sent = 0
        for _ in range(limit):
            if stop is not None and stop.is_set():
                break
            now = time.time()
            order = await self.store.orders.find_one_and_update(
                {"pending_event": {"$exists": True}, "pending_claim_until": {"$lt": now}},
                {"$set": {"pending_claim_until": now + CLAIM_SECONDS}})
            if order is None:
                break
            if not await self._publish(order):
                break
            sent += 1
        if sent == limit:
            self._drain_soon = True  # more where these came from
        return sent

    async def backlog(self) -> int:
        return await self.store.orders.count_documents({"pending_event": {"$exists": True}})

    async def close(self, within: float = PUBLISH_GRACE) -> None:
        """Let publishes under way finish (at most ``within`` seconds); the
        outbox keeps what does not make it."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=max(0.01, within))

