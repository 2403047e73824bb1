"""Chaos with money going back, on API v2 and v3: paid orders refunded in
part, in full and in two halves, refunds raced against each other, second
payments, refund notifies dropped and repeated, SYSTEMERRORs, and RabbitMQ
connections killed at random moments. Afterwards, for every order: refunded <=
paid, every refund final, WeChat's view (the simulator's trades and refunds)
equal to ours, and stock untouched by refunds."""

from __future__ import annotations

import asyncio
import collections
import functools
import random
import uuid
from pathlib import Path
from typing import Any

import pytest

import settings as settings_mod
from server.composition.container import Services
from tests.support.config import sandbox_settings
from tests.support.rabbit import close_connections_on, vhost_of
from tests.support.shopper import Shopper
from tests.support.timeout_helpers import stock_total, trade
from tests.support.waiting import eventually

ORDERS = 40
MIX = ("full", "part", "halves", "race", "duplicate_payment", "none")
OURS_AT_WECHAT = {"success": "SUCCESS", "closed": "CLOSED", "abnormal": "ABNORMAL"}


@pytest.fixture(params=["v2", "v3"])
def test_settings(request: pytest.FixtureRequest, http_port: int, tmp_path: Path,
                  amqp_url: str) -> settings_mod.Settings:
    return sandbox_settings(http_port, tmp_path, amqp_url, request.param,
                             REFUND_CHECK_DELAYS="1,2", MAX_UNPAID_ORDERS_PER_USER="1000")



@pytest.mark.gen_test(timeout=300)
async def test_refund_chaos_keeps_money_and_stock_straight(shopper: Shopper, operator: Shopper,
                                                           services: Services) -> None:
    rng = random.Random(20261129)
    loop = asyncio.get_running_loop()
    await services.store.skus.update_many({}, {"$inc": {"stock": 1000}})
    stock_before = await stock_total(services)
    skus = ["tea-longjing", "mug-celadon", "fan-silk"]
    plan = [rng.choice(MIX) for _ in range(ORDERS)]
    print("refund chaos mix:", dict(collections.Counter(plan)))

    async def knobs(phase: int) -> None:
        # Knobs are WeChat-wide: each phase plays one kind of trouble for every refund made in it.
        trouble = [{"notify": {"copies": 3}}, {"notify": {"drop": True}, "systemerror": 4}][phase]
        status, _ = await shopper.request("POST", "/sandbox/wxpay/control", {"refund": trouble})
        assert status == 200

    async def paid(order_id: str) -> dict[str, Any]:
        async def now_paid() -> dict[str, Any] | None:
            now = await operator.get_order(order_id)
            return now if now["status"] == "paid" else None

        return await eventually(now_paid, message=f"order {order_id} paid", within=30)

    async def refund(order_id: str, amount: int) -> tuple[int, Any]:
        return await operator.request("POST", f"/api/orders/{order_id}/refunds",
                                      {"amount": amount, "reason": "chaos"},
                                      headers={"Idempotency-Key": uuid.uuid4().hex})

    async def shopper_and_operator(kind: str) -> dict[str, Any]:
        await asyncio.sleep(rng.random() * 4)
        order = await shopper.order([(rng.choice(skus), rng.randint(1, 3))])
        native = await shopper.create_native(order["id"])
        await shopper.request("POST", "/sandbox/wxpay/pay", {"code_url": native["code_url"]})
        order = await paid(order["id"])
        total = order["pay_money"]
        if kind == "full":
            await refund(order["id"], total)
        elif kind == "part":
            await refund(order["id"], rng.randint(1, total - 1))
        elif kind == "halves":
            await refund(order["id"], total // 2)
            await refund(order["id"], total - total // 2)
        elif kind == "race":  # three at once, any two of which are more than was paid
            replies = await asyncio.gather(*(refund(order["id"], total * 2 // 5 + 1) for _ in range(3)))
            assert sorted(status for status, _ in replies) == [201, 201, 409], replies
        elif kind == "duplicate_payment":
            await shopper.request("POST", "/sandbox/wxpay/pay", {"code_url": native["code_url"], "duplicate": True})
        return order

    vhost = vhost_of(services.settings.amqp_url)

    def reconnected_since(before: int) -> bool:
        return services.bus.reconnects != before

    async def chaos_monkey(stop: asyncio.Event) -> int:
        kills = 0
        while not stop.is_set():
            await asyncio.sleep(rng.uniform(1.0, 3.0))
            reconnects = services.bus.reconnects
            closed = await loop.run_in_executor(None, close_connections_on, vhost, "refund chaos")
            assert closed >= 1
            await eventually(functools.partial(reconnected_since, reconnects), within=30,
                             message="paypush reconnected after the kill")
            kills += 1
        return kills

    stop = asyncio.Event()
    monkey = loop.create_task(chaos_monkey(stop))
    orders: list[dict[str, Any]] = []
    half = ORDERS // 2
    for phase, kinds in enumerate((plan[:half], plan[half:])):
        await knobs(phase)
        orders += await asyncio.gather(*(shopper_and_operator(k) for k in kinds))
    stop.set()
    kills = await monkey
    ids = [o["id"] for o in orders]

    async def all_final() -> bool:
        open_ = await services.store.orders.count_documents({"_id": {"$in": ids}, "refunds_open": {"$gt": 0}})
        return open_ == 0 and await services.events.backlog() == 0

    await eventually(all_final, within=120, every=0.5, message="every refund final and every event published")

    outcomes: collections.Counter[str] = collections.Counter()
    for kind, order in zip(plan, orders, strict=True):
        now = await operator.get_order(order["id"])
        wechat = await trade(shopper, order["id"])
        total, refunded = now["pay_money"], now["refunded"]
        assert 0 <= refunded <= total, now
        ours = {r["out_refund_no"]: r for r in now["refunds"]}
        assert all(r["status"] != "processing" for r in ours.values()), now["refunds"]
        assert refunded == sum(r["amount"] for r in ours.values()
                               if r["status"] == "success" and not r.get("transaction_id"))
        assert now["status"] == ("refunded" if refunded == total else "paid"), now
        # WeChat's view equals ours: the same refunds, amounts and outcomes.
        theirs = {r["out_refund_no"]: r for r in wechat["refunds"]}
        closed_by_refusal = {no for no, r in ours.items() if r["status"] == "closed" and no not in theirs}
        assert set(theirs) == set(ours) - closed_by_refusal, (kind, theirs, ours)
        for no, r in theirs.items():
            assert (r["refund_fee"], r["status"]) == (ours[no]["amount"], OURS_AT_WECHAT[ours[no]["status"]]), \
                (kind, r, ours[no])
        if kind == "duplicate_payment":
            [second] = wechat["extra_transactions"]
            given_back = [r for r in ours.values() if r.get("transaction_id") == second["transaction_id"]]
            assert [r["status"] for r in given_back] == ["success"], now["refunds"]
        if kind == "race":
            assert sum(r["status"] == "success" for r in ours.values()) == 2, now["refunds"]
        outcomes[f"{kind}->{now['status']}"] += 1
        assert [e["kind"] for e in now["logs"]].count("refunded") == (1 if now["status"] == "refunded" else 0)
    print("refund chaos outcome:", dict(outcomes), f"connection kills: {kills}")
    assert kills >= 1
    assert await stock_total(services) == stock_before, "refunds moved no stock, and none was lost"

