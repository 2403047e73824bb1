"""The whole Native checkout through the simulator, over real HTTP and MongoDB."""

from __future__ import annotations

import functools
import logging
from typing import Any

import pytest

from server.composition.container import Services
from tests.support.shopper import Shopper
from tests.support.timeout_helpers import no_markers_of
from tests.support.waiting import eventually


async def paid(shopper: Shopper, order_id: str) -> dict[str, Any]:
    async def order_if_paid() -> dict[str, Any] | None:
        order = await shopper.get_order(order_id)
        return order if order["status"] == "paid" else None

    return await eventually(order_if_paid, message=f"order {order_id} paid", within=10, every=0.05)


async def stock(services: Services, sku_id: str) -> int:
    doc = await services.store.skus.find_one({"_id": sku_id})
    assert doc is not None
    return int(doc["stock"])


@pytest.mark.gen_test(timeout=30)
async def test_order_scan_pay_notify_paid(shopper: Shopper, services: Services, amqp_url: str) -> None:
    tea_before, mug_before = await stock(services, "tea-longjing"), await stock(services, "mug-celadon")
    order = await shopper.order([("tea-longjing", 1), ("mug-celadon", 2)])
    assert order["status"] == "unpaid"
    assert order["pay_money"] == 8800 + 2 * 3900
    assert len(order["id"]) <= 32
    assert await stock(services, "tea-longjing") == tea_before - 1
    assert await stock(services, "mug-celadon") == mug_before - 2

    native = await shopper.create_native(order["id"])
    assert native["code_url"].startswith("weixin://wxpay/bizpayurl?pr=")
    assert native["out_trade_no"] == order["id"]
    assert native["total_fee"] == order["pay_money"]
    assert native["qr_svg"].startswith("<svg")
    assert native["push"]["stomp"]["destination"].startswith("/exchange/paynotify/order.")
    assert order["id"] not in native["push"]["stomp"]["destination"]
    # The vhost the page must name in its STOMP CONNECT: this session's, not "/".
    assert native["push"]["stomp"]["host"] == amqp_url.rsplit("/", 1)[1]
    again = await shopper.create_native(order["id"])
    assert again["code_url"] == native["code_url"]

    status, trade = await shopper.request("POST", "/sandbox/wxpay/pay", {"code_url": native["code_url"]})
    assert status == 200, trade
    recorded = await paid(shopper, order["id"])
    assert recorded["transaction_id"] == trade["transaction_id"]
    assert recorded["pay_time"]
    assert [e["kind"] for e in recorded["logs"]].count("paid") == 1
    # The sale keeps the stock taken, and the holds are settled.
    assert await stock(services, "tea-longjing") == tea_before - 1
    assert await stock(services, "mug-celadon") == mug_before - 2

    # The order records its holds; the SKU keeps no trace of it once placed
    # (its take markers are tidied just after the reply).
    assert (await services.store.orders.find_one({"_id": order["id"]}) or {})["stock_held"] == {
        "tea-longjing": 1, "mug-celadon": 2}
    await eventually(functools.partial(no_markers_of, services, [order["id"]]),
                     message="the SKUs carry nothing of the paid order", within=5, every=0.05)
    # WeChat read SUCCESS on its first try.
    _, seen = await shopper.request("GET", f"/sandbox/wxpay/trades/{order['id']}")
    assert seen["notify_replies"] == ["SUCCESS"]

    status, body = await shopper.request("GET", f"/wxpay/createNative?orderId={order['id']}")
    assert status == 409 and "paid" in body["error"]


@pytest.mark.gen_test(timeout=30)
async def test_pages_walk_from_shop_to_success(shopper: Shopper) -> None:
    status, page = await shopper.request("GET", "/")
    assert status == 200 and "Celadon mug" in page
    order = await shopper.order([("fan-silk", 1)])
    status, page = await shopper.request("GET", f"/weixinpay.html?orderId={order['id']}")
    assert status == 200 and order["id"] in page and "¥25.00" in page
    native = await shopper.create_native(order["id"])
    status, phone = await shopper.request("GET", "/sandbox/wxpay/phone", params={"code_url": native["code_url"]})
    assert status == 200 and "¥25.00" in phone
    status, phone = await shopper.request("POST", "/sandbox/wxpay/phone", data={"code_url": native["code_url"]})
    assert status == 200 and 'id="paid"' in phone
    await paid(shopper, order["id"])
    status, page = await shopper.request("GET", "/paysuccess.html?money=25.00")
    assert status == 200 and "¥25.00" in page
    status, page = await shopper.request("GET", "/paysuccess.html?money=<script>")
    assert status == 200 and "<script>" not in page.split("<main>")[1]


@pytest.mark.parametrize("extra_settings", [{"wxpay_api_base": "http://127.0.0.1:9/internal-gateway"}])
@pytest.mark.gen_test(timeout=30)
async def test_wechat_failure_is_a_generic_502_and_the_detail_is_logged(
        extra_settings: dict[str, object], shopper: Shopper, caplog: pytest.LogCaptureFixture) -> None:
    order = await shopper.order([("fan-silk", 1)])
    with caplog.at_level(logging.WARNING):
        status, body = await shopper.request("GET", f"/wxpay/createNative?orderId={order['id']}")
    assert status == 502
    assert body == {"error": "WeChat Pay is unavailable, try again shortly"}
    # Where WeChat was called and how it failed is for the log, not the shopper.
    assert any(order["id"] in r.getMessage() and "UNREACHABLE" in r.getMessage() and "127.0.0.1:9" in r.getMessage()
               for r in caplog.records)
