"""A waiting pay page whose notify was lost still turns to paid: orderquery."""

from __future__ import annotations

import pytest

from tests.shopper import Shopper
from tests.sockets import PageSocket


@pytest.fixture
def extra_settings() -> dict[str, object]:
    return {"active_query_after_seconds": 1.0}


@pytest.mark.gen_test(timeout=60)
async def test_open_page_with_lost_notify_gets_paid(shopper: Shopper, base_url: str) -> None:
    order = await shopper.order([("fan-silk", 1)])
    native = await shopper.create_native(order["id"])
    sock = await PageSocket.open(base_url, order["id"], shopper)
    assert (await sock.next())["status"] == "unpaid"
    status, _ = await shopper.request("POST", "/sandbox/wxpay/pay",
                                      {"code_url": native["code_url"], "notify": {"drop": True}})
    assert status == 200
    assert (await sock.next(within=20))["type"] == "paid"
    paid = await shopper.get_order(order["id"])
    assert [e["kind"] for e in paid["logs"]] == ["created", "paid"]
    assert "found by order query" in paid["logs"][1]["remarks"]


@pytest.mark.gen_test(timeout=60)
async def test_no_page_no_query(shopper: Shopper) -> None:
    """Without a waiting page nobody asks: the order stays unpaid until its deadline."""
    import asyncio

    order = await shopper.order([("fan-silk", 1)])
    native = await shopper.create_native(order["id"])
    await shopper.request("POST", "/sandbox/wxpay/pay", {"code_url": native["code_url"], "notify": {"drop": True}})
    await asyncio.sleep(4)
    assert (await shopper.get_order(order["id"]))["status"] == "unpaid"
