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
import secrets
import time
from collections.abc import Iterable
from typing import Any

from pymongo.errors import PyMongoError

from server.infra.bus import Bus, BusUnavailable
from server.infra.store import Store
from server.lifecycle import Batches, Callbacks
from server.push.tokens import PushTokens

log = logging.getLogger(__name__)

CLAIM_SECONDS = 10.0
# How often the outbox looks for pending events when this process saw no
# failed publish: the look is a query over the orders, which a busy store
# should not get every second.
IDLE_DRAIN_SECONDS = 30.0
TRANSITIONS = ("paid", "closed", "refunded")  # each stamps ``<transition>_at`` on the order
TRANSITION_AT = "x-paypush-transition-at"  # header: when the order changed, for push latency
PUBLISH_GRACE = 5.0
# Events waiting to be published by this process; past that the outbox keeps
# them for the drainer. Kept well under what is published within CLAIM_SECONDS,
# so a waiting event is not also claimed by the drainer.
OUTGOING_LIMIT = 2000
DRAIN_BATCH = 200
BACKLOG_CAP = 10_000  # /metrics reports "at least this many" beyond it
# How long a transition (a notify being answered) waits for room among the
# events to publish: enough to follow the broker's pace, far inside WeChat's 5 s.
ROOM_WAIT = 1.0
# Orders with an event waiting. Not {"$exists": True}: nx-27017 answers that
# by reading every order whatever the index (45 ms at 100,000 orders, asked
# by every process's drainer each second under traffic), and this range
# through the sparse index (0.9 ms). On MongoDB both are the same set, since
# an event is one of TRANSITIONS: a non-empty string.
HAS_PENDING_EVENT: dict[str, Any] = {"pending_event": {"$gt": ""}}


def event_for(order: dict[str, Any], kind: str | None = None) -> dict[str, Any]:
    """The message the browser gets: ``{"type", "order_id", "status", "total_fee"}``.

    ``type`` is the transition (paid, closed) or, for a plain state report, status.
    """
    if kind is None:
        kind = order["status"] if order["status"] in TRANSITIONS else "status"
    return {"type": kind, "order_id": order["_id"], "status": order["status"],
            "total_fee": int(order["pay_money"])}


def transition_time(order: dict[str, Any], kind: str) -> float:
    at = order.get(f"{kind}_at") if kind in TRANSITIONS else None
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
        # Publishes after a transition go out in batches: the confirms of a
        # batch come back together and its outbox entries are cleared in one
        # update per kind, instead of a broker and a store round trip each.
        self._outgoing: Batches[dict[str, Any]] = Batches("events.publish", self._publish_batch, limit=OUTGOING_LIMIT)
        # Confirmed events leave the outbox in a batch of their own, so the next
        # publish does not wait behind the store (under load the clear queues
        # behind the notifies' own writes). Unbounded in effect: each item is
        # an event already confirmed, and a clear not made only means it is
        # published again (at least once).
        self._confirmed: Batches[dict[str, Any]] = Batches("events.clear", self._clear_batch, limit=1_000_000,
                                                           swallow=(PyMongoError,))
        # (push token, event, transition time): this process's sockets for that token.
        self.deliver_locally: Callbacks[[str, dict[str, Any], float]] = Callbacks("events.deliver_locally")

    async def flush_soon(self, order: dict[str, Any]) -> None:
        """Give the order's pending event to this process's sockets, and publish
        it in the background (the caller holds the claim). When more events
        wait than the broker takes, the caller waits a moment for room."""
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
        if not await self._outgoing.put(order, wait=ROOM_WAIT):
            # Still no room (the broker is slow or stalled): this one stays in
            # the outbox, and the drainer publishes it when its claim runs out.
            self._drain_soon = True

    async def _publish_batch(self, orders: list[dict[str, Any]]) -> int:
        """Publish the orders' pending events (confirmed) and clear those that
        went out from the outbox. Returns how many went out."""
        assert self.bus is not None
        bus = self.bus
        results = await bus.publish_events(
            [(self.tokens.routing_key(o["_id"]), event_for(o, o["pending_event"]),
              {TRANSITION_AT: transition_time(o, o["pending_event"])}) for o in orders])
        sent = [o for o, r in zip(orders, results, strict=True) if r is None]
        failed = [(o, r) for o, r in zip(orders, results, strict=True) if r is not None]
        self.published += len(sent)
        if failed:
            first = failed[0][1]
            if not isinstance(first, BusUnavailable):
                log.error("publishing %d event(s) failed unexpectedly", len(failed), exc_info=first)
            log.warning("%d event(s) not published yet, first for %s (%s); the outbox keeps them",
                        len(failed), failed[0][0]["_id"], first)
            self._drain_soon = True  # the drainer takes them as soon as the broker is back
            with contextlib.suppress(PyMongoError):
                for kind, ids in by_kind(o for o, _ in failed).items():
                    await self.store.orders.update_many({"_id": {"$in": ids}, "pending_event": kind},
                                                        {"$set": {"pending_claim_until": 0}})
        for order in sent:
            self._confirmed.add(order)
        return len(sent)

    async def _clear_batch(self, confirmed: list[dict[str, Any]]) -> None:
        """Take confirmed events off the outbox, one update per kind of event."""
        now = time.time()
        for kind, ids in by_kind(confirmed).items():
            # When it went out stays on the order (the operator's timeline), at no extra round trip.
            await self.store.orders.update_many(
                {"_id": {"$in": ids}, "pending_event": kind},
                {"$unset": {"pending_event": "", "pending_claim_until": "", "pending_claimed_by": ""},
                 "$set": {f"published.{kind}": now}})

    async def publish_pending(self, limit: int = 1000, stop: asyncio.Event | None = None) -> int:
        """Claim and publish pending events whose claim ran out, a batch at a
        time. Returns how many went out. Once ``stop`` is set no further
        batch is claimed (shutdown)."""
        if self.bus is None or not self.bus.is_open:
            return 0
        now = time.time()
        if not self._drain_soon and now - self._last_drain < IDLE_DRAIN_SECONDS:
            return 0
        self._drain_soon, self._last_drain = False, now
        sent = 0
        while sent < limit and not (stop is not None and stop.is_set()):
            claimed = await self._claim(min(DRAIN_BATCH, limit - sent))
            if not claimed:
                # Pending events whose claim has not run out yet (left by a
                # publish that failed or found no room) are due in a moment.
                self._drain_soon = await self.store.orders.find_one(
                    HAS_PENDING_EVENT, projection={"_id": 1}) is not None
                break
            went = await self._publish_batch(claimed)
            sent += went
            if went < len(claimed):
                break  # the broker is failing again
        if sent >= limit:
            self._drain_soon = True  # more where these came from
        return sent

    async def _claim(self, n: int) -> list[dict[str, Any]]:
        """Up to ``n`` pending events whose claim ran out, claimed by this call:
        each order is taken by the conditional update, which another process's
        claim of the same order cannot also win, and read back by the claim's token."""
        now = time.time()
        due = await self.store.orders.find(
            {**HAS_PENDING_EVENT, "pending_claim_until": {"$lt": now}}, projection={"_id": 1}).to_list(n)
        if not due:
            return []
        ids = [d["_id"] for d in due]
        token = secrets.token_hex(8)
        await self.store.orders.update_many(
            {"_id": {"$in": ids}, **HAS_PENDING_EVENT, "pending_claim_until": {"$lt": now}},
            {"$set": {"pending_claim_until": now + CLAIM_SECONDS, "pending_claimed_by": token}})
        return await self.store.orders.find({"_id": {"$in": ids}, "pending_claimed_by": token}).to_list(None)

    async def backlog(self, cap: int = BACKLOG_CAP) -> int:
        """Events not yet confirmed, counted up to ``cap`` (then ``cap``): read
        through the index, not counted, since nx-27017 counts by reading every
        order (README, "nx-27017 quirks") and /metrics asks at every scrape."""
        found = await self.store.orders.find(HAS_PENDING_EVENT, projection={"_id": 1}).to_list(cap)
        return len(found)

    async def close(self, within: float = PUBLISH_GRACE) -> None:
        """Let publishes under way finish (at most ``within`` seconds); the
        outbox keeps what does not make it."""
        deadline = time.monotonic() + within
        await self._outgoing.drain(within)
        await self._outgoing.close()
        # Published but still pending if this runs out: published again after a restart (at least once).
        await self._confirmed.drain(deadline - time.monotonic())
        await self._confirmed.close()


def by_kind(orders: Iterable[dict[str, Any]]) -> dict[str, list[str]]:
    """Order ids grouped by the event pending on them."""
    groups: dict[str, list[str]] = {}
    for order in orders:
        groups.setdefault(order["pending_event"], []).append(order["_id"])
    return groups

