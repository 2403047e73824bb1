"""The outbox drainer claims pending events a batch at a time. Two processes
draining the same backlog at once publish every event exactly once between
them (each order's claim is one conditional update only one of them wins),
and the outbox is empty afterwards."""

from __future__ import annotations

import asyncio
import collections
import json
import time

import aio_pika
import pytest

from server.composition.container import Services
from server.push.events import HAS_PENDING_EVENT, TRANSITIONS, OrderEvents
from tests.support.waiting import eventually

BACKLOG = 450  # more than two drain batches


@pytest.mark.gen_test(timeout=60)
async def test_two_drainers_publish_a_backlog_once_each_event(services: Services, amqp_url: str) -> None:
    now = time.time()
    ids = [f"drain{i:027d}" for i in range(BACKLOG)]
    orders = [{"_id": order_id, "user": "demo", "items": [], "pay_money": 100, "status": "paid",
               "paid_at": now, "pending_event": "paid", "pending_claim_until": 0} for order_id in ids]
    await services.store.orders.insert_many(orders)
    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel()
    queue = await channel.declare_queue(exclusive=True)
    for order_id in ids:  # exactly these orders' keys: other tests' events do not count
        await queue.bind("paynotify", routing_key=services.push_tokens.routing_key(order_id))
    heard: collections.Counter[str] = collections.Counter()

    async def hear(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        heard[json.loads(message.body)["order_id"]] += 1
        await message.ack()

    await queue.consume(hear)
    # Another process: its own OrderEvents over the same store and broker.
    other = OrderEvents(services.store, services.bus, services.push_tokens)
    mine = OrderEvents(services.store, services.bus, services.push_tokens)
    sent = await asyncio.gather(mine.publish_pending(), other.publish_pending())
    assert sum(sent) == BACKLOG, f"published {sent} between them"
    await eventually(lambda: len(heard) == BACKLOG, message="every event heard on paynotify")
    assert max(heard.values()) == 1, "no event published twice"
    left = await services.store.orders.count_documents({"_id": {"$in": ids},
                                                        "pending_event": {"$exists": True}})
    assert left == 0
    await connection.close()


@pytest.mark.gen_test(timeout=60)
async def test_an_event_claimed_elsewhere_and_not_yet_due_is_left_alone(services: Services) -> None:
    await services.store.orders.insert_one(
        {"_id": "claimed-elsewhere", "user": "demo", "items": [], "pay_money": 1, "status": "paid",
         "paid_at": time.time(), "pending_event": "paid", "pending_claim_until": time.time() + 60})
    events = OrderEvents(services.store, services.bus, services.push_tokens)
    assert await events.publish_pending() == 0
    order = await services.store.orders.find_one({"_id": "claimed-elsewhere"})
    assert order is not None and order["pending_event"] == "paid"


@pytest.mark.gen_test(timeout=30)
async def test_the_backlog_is_read_up_to_its_cap(services: Services) -> None:
    await services.store.orders.insert_many([
        {"_id": f"backlog{i}", "user": "demo", "items": [], "pay_money": 1, "status": "paid", "paid_at": time.time(),
         "pending_event": "paid", "pending_claim_until": time.time() + 60} for i in range(3)])
    assert await services.events.backlog() == 3
    assert await services.events.backlog(cap=2) == 2


@pytest.mark.gen_test(timeout=30)
async def test_the_outbox_condition_selects_exactly_the_orders_with_an_event_waiting(services: Services) -> None:
    # The outbox asks for a range rather than {"$exists": True}, which the
    # embedded store answers by reading every order (README, "nx-27017
    # quirks"); both must be the same set, on any store, for every event kind.
    orders = services.store.orders
    waiting = [{"_id": f"waiting-{kind}", "pending_event": kind} for kind in TRANSITIONS]
    await orders.insert_many([*waiting, {"_id": "settled"}, {"_id": "settled-again", "published": {"paid": 1.0}}])
    by_range = {o["_id"] for o in await orders.find(HAS_PENDING_EVENT, projection={"_id": 1}).to_list(None)}
    by_exists = {o["_id"] for o in await orders.find({"pending_event": {"$exists": True}},
                                                     projection={"_id": 1}).to_list(None)}
    assert by_range == by_exists == {o["_id"] for o in waiting}
