"""MongoDB goes away under a notify: WeChat hears FAIL, and its retry records the payment."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server.infra.embedded_mongo import EmbeddedMongo
from tests.support.notify_client import post_notify, signed_notify
from tests.support.shopper import Shopper
from tests.support.waiting import eventually


@pytest.fixture
def private_mongo(tmp_path: Path) -> Iterator[EmbeddedMongo]:
    """A server of this test's own, so stopping it disturbs no other test."""
    server = EmbeddedMongo(tmp_path / "mongo").start()
    yield server
    server.stop()


@pytest.fixture
def mongo_url(private_mongo: EmbeddedMongo) -> str:
    return private_mongo.url


@pytest.fixture
def extra_settings() -> dict[str, object]:
    return {"mongo_timeout_ms": 500}


async def in_thread(fn) -> None:  # type: ignore[no-untyped-def]
    await asyncio.get_running_loop().run_in_executor(None, fn)


@pytest.mark.gen_test(timeout=60)
async def test_notify_fails_while_storage_is_down_and_the_retry_records_it(
        shopper: Shopper, base_url: str, private_mongo: EmbeddedMongo) -> None:
    order = await shopper.order([("mug-celadon", 1)])
    await in_thread(private_mongo.stop)
    status, reply = await post_notify(base_url, signed_notify(order))
    assert status == 503
    assert reply["return_code"] == "FAIL"
    assert "storage" in reply["return_msg"]
    status, _ = await shopper.request("GET", "/readyz")
    assert status == 503

    await in_thread(private_mongo.start)
    status, reply = await post_notify(base_url, signed_notify(order))
    assert (status, reply["return_code"]) == (200, "SUCCESS")
    paid = await shopper.get_order(order["id"])
    assert paid["status"] == "paid"
    assert [e["kind"] for e in paid["logs"]] == ["created", "paid"]


@pytest.mark.gen_test(timeout=60)
async def test_simulator_retries_on_wechats_schedule_until_storage_is_back(
        shopper: Shopper, base_url: str, private_mongo: EmbeddedMongo) -> None:
    order = await shopper.order([("fan-silk", 1)])
    native = await shopper.create_native(order["id"])
    await in_thread(private_mongo.stop)
    status, _ = await shopper.request("POST", "/sandbox/wxpay/pay", {"code_url": native["code_url"]})
    assert status == 200

    async def refused_twice() -> bool:  # WeChat's schedule runs x1000 here: seconds, not hours
        _, trade = await shopper.request("GET", f"/sandbox/wxpay/trades/{order['id']}")
        return trade["notify_replies"].count("FAIL") >= 2

    await eventually(refused_twice, message="two scheduled notify attempts answered FAIL while storage is down")
    await in_thread(private_mongo.start)

    async def trade_acknowledged() -> dict[str, Any] | None:
        _, trade = await shopper.request("GET", f"/sandbox/wxpay/trades/{order['id']}")
        return trade if "SUCCESS" in trade["notify_replies"] else None

    trade = await eventually(trade_acknowledged, message="a notify retry answered SUCCESS once storage is back")
    replies = trade["notify_replies"]
    assert replies[-1] == "SUCCESS" and "FAIL" in replies[:-1]
    paid = await shopper.get_order(order["id"])
    assert paid["status"] == "paid"
    assert paid["transaction_id"] == trade["transaction_id"]
