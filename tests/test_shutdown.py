"""SIGTERM in the middle of traffic: stop accepting, close sockets with 1001,
finish what is in flight, exit within 10 s, lose nothing."""

from __future__ import annotations

import asyncio
import signal
import uuid
from pathlib import Path

import aiohttp
import pytest
from pymongo import MongoClient

from tests.notify_client import signed_notify
from tests.processes import ServerProcess, base_env
from tests.shopper import Shopper
from tests.sockets import PageSocket

ORDERS = 120


async def notify(base_url: str, order: dict) -> str:  # type: ignore[type-arg]
    try:
        async with aiohttp.ClientSession() as http, http.post(
                base_url + "/wxpay/notify", data=signed_notify(order),
                timeout=aiohttp.ClientTimeout(total=15)) as resp:
            body = await resp.read()
            return "SUCCESS" if b"SUCCESS" in body else "FAIL"
    except (TimeoutError, aiohttp.ClientError):
        return "NO ANSWER"


@pytest.mark.gen_test(timeout=120)
async def test_sigterm_under_traffic_loses_nothing(tmp_path: Path, mongo_url: str, amqp_url: str) -> None:
    db_name = f"t{uuid.uuid4().hex[:12]}"
    env = base_env(tmp_path / "var", MONGO_URL=mongo_url, MONGO_DB=db_name, AMQP_URL=amqp_url, SANDBOX="1",
                   MAX_UNPAID_ORDERS_PER_USER=str(ORDERS),
                   COOKIE_SECRET="shutdown-" + uuid.uuid4().hex)
    server = ServerProcess(env).start()
    db = MongoClient(mongo_url)[db_name]
    db.skus.insert_one({"_id": "bulk", "name": "Bulk item", "price": 100, "stock": 10_000, "holds": {}})
    shopper = await Shopper.logged_in(server.base_url, "demo", "demo-pass-123")
    try:
        orders = [await shopper.order([("bulk", 1)]) for _ in range(ORDERS)]
        sock = await PageSocket.open(server.base_url, orders[0]["id"], shopper)
        assert (await sock.next())["status"] == "unpaid"

        async def staggered(i: int, order: dict) -> str:  # type: ignore[type-arg]
            await asyncio.sleep(i * 0.01)
            return await notify(server.base_url, order)

        traffic = asyncio.gather(*(staggered(i, o) for i, o in enumerate(orders)))
        await asyncio.sleep(0.4)
        server.send(signal.SIGTERM)
        replies = await traffic
        # Orchestrators kill after a grace period: the process must be gone
        # within 10 s of the signal (stop() raises TimeoutExpired otherwise).
        code = await asyncio.get_running_loop().run_in_executor(None, lambda: server.stop(timeout=10))
    finally:
        await shopper.close()

    assert code == 0, server.output
    assert "Traceback" not in server.output, server.output
    while (event := await sock.next()) is not None:  # order 0 may have been paid first
        assert event["type"] == "paid"
    assert sock.close_code == 1001
    succeeded = [o for o, r in zip(orders, replies, strict=True) if r == "SUCCESS"]
    assert 0 < len(succeeded) < ORDERS, replies  # the signal really landed mid-traffic
    for order in succeeded:  # SUCCESS was only said for what is recorded
        doc = db.orders.find_one({"_id": order["id"]})
        assert doc["status"] == "paid" and "paid" in doc["logs"]

    # WeChat retries the rest against the next process: everything ends paid, once.
    again = ServerProcess(env).start()
    try:
        retried = await asyncio.gather(*(notify(again.base_url, o) for o in orders))
        assert set(retried) == {"SUCCESS"}
        for _ in range(100):
            if db.orders.count_documents({"pending_event": {"$exists": True}}) == 0:
                break
            await asyncio.sleep(0.1)
    finally:
        assert again.stop() == 0, again.output
    assert db.orders.count_documents({"status": "paid"}) == ORDERS
    assert db.orders.count_documents({"pending_event": {"$exists": True}}) == 0  # every event published
    sku = db.skus.find_one({"_id": "bulk"})
    assert sku["stock"] == 10_000 - ORDERS
