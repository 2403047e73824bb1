"""Chaos: 200 orders, a random mix of shopper behaviour, RabbitMQ connections
killed at random moments. Afterwards every invariant in DESIGN.md holds."""

from __future__ import annotations

import asyncio
import calendar
import collections
import functools
import random
import time
from typing import Any

import pytest

from server.composition.container import Services
from tests.support.rabbit import close_connections_on, vhost_of
from tests.support.shopper import Shopper
from tests.support.timeout_helpers import SETTINGS, log_kinds, no_markers_of, stock_total, trade
from tests.support.waiting import eventually

ORDERS = 200
MIX = ("pay", "no_pay", "duplicate_notify", "dropped_notify", "pay_during_close")


@pytest.fixture
def extra_settings() -> dict[str, object]:
    return {**SETTINGS, "order_timeout_seconds": 3, "sweep_interval_seconds": 5.0,
            "sweep_grace_seconds": 10.0, "active_query_after_seconds": 1000.0}


@pytest.mark.gen_test(timeout=300)
async def test_chaos_run_keeps_every_invariant(shopper: Shopper, services: Services) -> None:
    rng = random.Random(20261127)
    loop = asyncio.get_running_loop()
    before = await stock_total(services)
    skus = ["tea-longjing", "mug-celadon", "fan-silk"]
    await services.store.skus.update_many({}, {"$inc": {"stock": 1000}})
    before = {k: v + 1000 for k, v in before.items()}
    plan = [rng.choice(MIX) for _ in range(ORDERS)]
    print("chaos mix:", dict(collections.Counter(plan)))

    async def shopper_does(kind: str) -> tuple[str, dict[str, Any]]:
        await asyncio.sleep(rng.random() * 8)
        order = await shopper.order([(rng.choice(skus), rng.randint(1, 3))])
        if kind == "no_pay" and rng.random() < 0.5:
            return kind, order  # never even opened the pay page
        native = await shopper.create_native(order["id"])
        knobs = {"pay": {}, "no_pay": None, "duplicate_notify": {"copies": 3},
                 "dropped_notify": {"drop": True}, "pay_during_close": {}}[kind]
        if knobs is None:
            return kind, order
        if kind == "pay_during_close":
            # Around the deadline: before the close, during it, or just after it.
            await asyncio.sleep(max(0.0, order_deadline(order) - time.time()) + rng.uniform(-0.5, 2.0))
        else:
            await asyncio.sleep(rng.random() * 2)
        await shopper.request("POST", "/sandbox/wxpay/pay", {"code_url": native["code_url"], "notify": knobs})
        return kind, order

    vhost = vhost_of(services.settings.amqp_url)

    def reconnected_since(before: int) -> bool:
        return services.bus.reconnects != before

    async def chaos_monkey(stop: asyncio.Event) -> int:
        """Kills this run's own connections (the broker is shared) and proves
        each kill: paypush must have reconnected before the next one."""
        kills = 0
        while not stop.is_set():
            await asyncio.sleep(rng.uniform(1.5, 4))
            reconnects = services.bus.reconnects
            closed = await loop.run_in_executor(None, close_connections_on, vhost, "chaos")
            assert closed >= 1, f"no connection of paypush's found on vhost {vhost}"
            await eventually(functools.partial(reconnected_since, reconnects), within=30,
                             message="paypush noticed the killed connection and reconnected")
            kills += 1
        return kills

    stop = asyncio.Event()
    monkey = loop.create_task(chaos_monkey(stop))
    results = await asyncio.gather(*(shopper_does(k) for k in plan))
    await asyncio.sleep(6)
    stop.set()
    kills = await monkey

    ids = [o["id"] for _, o in results]

    async def all_settled_and_published() -> bool:
        return await services.store.orders.count_documents({"_id": {"$in": ids}, "status": "unpaid"}) == 0 and \
            await services.events.backlog() == 0

    await eventually(all_settled_and_published, within=120, every=0.5,
                     message="every chaos order paid or closed, and every event published")

    finals: collections.Counter[str] = collections.Counter()
    for kind, order in results:
        doc = await services.store.orders.find_one({"_id": order["id"]})
        assert doc is not None
        kinds = await log_kinds(services, order["id"])
        wechat = await trade(shopper, order["id"])
        finals[f"{kind}->{doc['status']}"] += 1
        assert doc["status"] in ("paid", "closed"), (kind, doc["status"])
        if doc["status"] == "paid":
            assert kinds.count("paid") == 1, kinds
            assert wechat["trade_state"] == "SUCCESS"
            assert "closed" not in kinds or doc.get("compensated"), kinds
            if kind != "dropped_notify":
                wechat = await eventually(  # the notify may still be on its way
                    functools.partial(notified, shopper, order["id"]), within=5,
                    message=f"WeChat's notify for paid order {order['id']} answered")
                # Every notify WeChat sent for a paid order was answered SUCCESS.
                assert wechat["notify_replies"] and set(wechat["notify_replies"]) == {"SUCCESS"}, wechat
        else:
            assert kinds.count("closed") == 1 and "paid" not in kinds, kinds
            assert wechat["trade_state"] in ("CLOSED", "NONE"), wechat
        assert "pending_event" not in doc
    print("chaos outcome:", dict(finals), f"connection kills: {kills}")
    assert kills >= 1, "the chaos run killed no connection"
    assert await stock_total(services) == before
    await eventually(functools.partial(no_markers_of, services, ids), within=30,
                     message="the SKUs carry nothing of the chaos orders (every in-flight marker tidied)")


async def notified(shopper: Shopper, order_id: str) -> dict[str, Any] | None:
    """The simulator's trade once it has had an answer to its notify."""
    wechat = await trade(shopper, order_id)
    return wechat if wechat["notify_replies"] else None


def order_deadline(order: dict[str, Any]) -> float:
    return calendar.timegm(time.strptime(order["expires_at"], "%Y-%m-%dT%H:%M:%SZ"))
