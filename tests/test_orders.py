"""Orders API: validation, atomic stock reservation, ownership, auth and XSRF."""

from __future__ import annotations

import asyncio
import re

import pytest

from server.composition.container import Services
from tests.support.notify_client import post_notify, signed_notify
from tests.support.shopper import Shopper
from tests.support.timeout_helpers import holdings

# For the tests that race many orders of one shopper against the stock.
NO_UNPAID_CAP = {"max_unpaid_orders_per_user": 1000}


async def stock_and_holds(services: Services, sku_id: str) -> tuple[int, int]:
    """On hand, and the sum held by orders not paid for."""
    on_hand, held = await holdings(services)
    paid = {o["_id"] async for o in services.store.orders.find({"status": {"$in": ["paid", "refunded"]}})}
    return on_hand[sku_id], sum(n for oid, n in held.get(sku_id, {}).items() if oid not in paid)


@pytest.mark.gen_test(timeout=30)
async def test_skus_list_prices_in_fen(shopper: Shopper) -> None:
    status, skus = await shopper.request("GET", "/api/skus")
    assert status == 200
    assert {"id", "name", "price", "stock", "max_per_order"} == set(skus[0])
    mug = next(s for s in skus if s["id"] == "mug-celadon")
    assert mug["price"] == 3900 and isinstance(mug["price"], int)
    assert mug["max_per_order"] == 99
    assert next(s for s in skus if s["id"] == "card-sticker")["max_per_order"] == 2


@pytest.mark.parametrize("extra_settings", [NO_UNPAID_CAP])
@pytest.mark.gen_test(timeout=30)
async def test_concurrent_orders_for_the_last_items_never_oversell(
        extra_settings: dict[str, object], shopper: Shopper, services: Services) -> None:
    start, _ = await stock_and_holds(services, "card-sticker")
    assert start == 5
    results = await asyncio.gather(*(
        shopper.request("POST", "/api/orders", {"items": [{"sku_id": "card-sticker", "num": 1}]})
        for _ in range(30)))
    statuses = sorted(r[0] for r in results)
    assert statuses.count(201) == 5
    assert statuses.count(409) == 25
    assert all("card-sticker" in r[1]["error"] for r in results if r[0] == 409)
    assert await stock_and_holds(services, "card-sticker") == (0, 5)


@pytest.mark.parametrize("extra_settings", [NO_UNPAID_CAP])
@pytest.mark.gen_test(timeout=30)
async def test_mixed_concurrent_orders_conserve_stock(extra_settings: dict[str, object], shopper: Shopper,
                                                      services: Services) -> None:
    skus = ("card-sticker", "fan-silk", "mug-celadon")
    before = {s: sum(await stock_and_holds(services, s)) for s in skus}
    baskets = [[("card-sticker", 1), ("fan-silk", 3)], [("fan-silk", 4), ("mug-celadon", 5)],
               [("mug-celadon", 7), ("card-sticker", 2)]] * 6
    await asyncio.gather(*(shopper.request(
        "POST", "/api/orders", {"items": [{"sku_id": s, "num": n} for s, n in b]}) for b in baskets))
    for s in skus:
        on_hand, held = await stock_and_holds(services, s)
        assert on_hand >= 0
        assert on_hand + held == before[s]


@pytest.mark.gen_test(timeout=30)
async def test_short_later_sku_gives_back_earlier_reservations(shopper: Shopper, services: Services) -> None:
    card_before = await stock_and_holds(services, "card-sticker")
    status, body = await shopper.request("POST", "/api/orders", {"items": [
        {"sku_id": "card-sticker", "num": 1}, {"sku_id": "mug-celadon", "num": 31}]})
    assert status == 409
    assert body == {"error": "not enough stock for mug-celadon"}
    assert await stock_and_holds(services, "card-sticker") == card_before
    rejected = await services.store.orders.find_one({"status": "rejected"})
    assert rejected is not None
    status, _ = await shopper.request("GET", f"/api/orders/{rejected['_id']}")
    assert status == 404


@pytest.mark.gen_test(timeout=60)
async def test_unpaid_orders_per_user_are_capped_even_in_parallel(shopper: Shopper, mallory: Shopper,
                                                                 services: Services) -> None:
    assert services.settings.max_unpaid_orders_per_user == 5
    body = {"items": [{"sku_id": "fan-silk", "num": 1}]}
    results = await asyncio.gather(*(shopper.request("POST", "/api/orders", body) for _ in range(12)))
    accepted = [data["id"] for status, data in results if status == 201]
    refused = [data for status, data in results if status != 201]
    # Near the cap parallel orders may all be refused; never more than the cap accepted.
    assert len(accepted) <= 5
    assert all(r == {"error": "you already have 5 unpaid orders: pay one or let it expire first"}
               for r in refused), refused
    assert [s for s, _ in results if s != 201] == [429] * len(refused)
    # Stock taken only for what was accepted: nothing held for a refused order.
    assert await stock_and_holds(services, "fan-silk") == (20 - len(accepted), len(accepted))

    # One at a time, exactly up to the cap.
    while len(accepted) < 5:
        accepted.append((await shopper.order([("fan-silk", 1)]))["id"])
    status, data = await shopper.request("POST", "/api/orders", body)
    assert status == 429 and "5 unpaid orders" in data["error"]
    assert await stock_and_holds(services, "fan-silk") == (15, 5)
    # The cap is per shopper.
    assert (await mallory.order([("fan-silk", 1)]))["status"] == "unpaid"
    # A paid order no longer counts.
    paid = await shopper.get_order(accepted[0])
    _, reply = await post_notify(shopper.base_url, signed_notify(paid))
    assert reply["return_code"] == "SUCCESS"
    assert (await shopper.order([("fan-silk", 1)]))["status"] == "unpaid"
    status, _ = await shopper.request("POST", "/api/orders", body)
    assert status == 429


@pytest.mark.gen_test(timeout=30)
async def test_a_sku_can_limit_how_many_one_order_takes(shopper: Shopper, services: Services) -> None:
    status, data = await shopper.request("POST", "/api/orders", {"items": [{"sku_id": "card-sticker", "num": 3}]})
    assert status == 400 and data == {"error": "at most 2 of card-sticker per order"}
    assert await stock_and_holds(services, "card-sticker") == (5, 0)
    assert (await shopper.order([("card-sticker", 2)]))["pay_money"] == 2


@pytest.mark.gen_test(timeout=30)
async def test_order_ids_are_valid_out_trade_nos_and_distinct(shopper: Shopper) -> None:
    ids = {(await shopper.order([("tea-longjing", 1)]))["id"] for _ in range(5)}
    assert len(ids) == 5
    assert all(re.fullmatch(r"\d{8}[0-9a-f]{24}", i) for i in ids)


@pytest.mark.parametrize("payload, message", [
    (None, "expected"),
    ([], "expected"),
    ({"items": []}, "expected"),
    ({"items": "tea"}, "expected"),
    ({"items": [{"sku_id": "tea-longjing", "num": 0}]}, "num"),
    ({"items": [{"sku_id": "tea-longjing", "num": -3}]}, "num"),
    ({"items": [{"sku_id": "tea-longjing", "num": 1.5}]}, "num"),
    ({"items": [{"sku_id": "tea-longjing", "num": "2"}]}, "num"),
    ({"items": [{"sku_id": "tea-longjing", "num": True}]}, "num"),
    ({"items": [{"sku_id": "tea-longjing", "num": 10**12}]}, "num"),
    ({"items": [{"sku_id": "tea-longjing", "num": 60}, {"sku_id": "tea-longjing", "num": 60}]}, "at most"),
    ({"items": [{"sku_id": {"$gt": ""}, "num": 1}]}, "sku_id"),
    ({"items": [{"sku_id": "holds.x", "num": 1}]}, "sku_id"),
    ({"items": [{"sku_id": "no-such-sku", "num": 1}]}, "unknown"),
    ({"items": [{"sku_id": f"s{i}", "num": 1} for i in range(21)]}, "at most"),
    ({"items": ["tea-longjing"]}, "object"),
])
@pytest.mark.gen_test(timeout=30)
async def test_malformed_orders_get_a_clear_400(payload: object, message: str, shopper: Shopper,
                                               services: Services) -> None:
    status, body = await shopper.request("POST", "/api/orders", payload)
    assert status == 400
    assert message in body["error"]
    assert await services.store.orders.count_documents({}) == 0


@pytest.mark.gen_test(timeout=30)
async def test_non_json_body_is_a_400(shopper: Shopper) -> None:
    status, body = await shopper.request("POST", "/api/orders", data=b"\xff{not json",
                                         headers={"X-XSRFToken": shopper.xsrf})
    assert status == 400 and body == {"error": "body must be JSON"}


@pytest.mark.gen_test(timeout=30)
async def test_deeply_nested_json_is_a_400(shopper: Shopper, services: Services) -> None:
    status, body = await shopper.request("POST", "/api/orders", data=b"[" * 60_000,
                                         headers={"X-XSRFToken": shopper.xsrf})
    assert status == 400 and body == {"error": "body must be JSON"}
    assert await services.store.orders.count_documents({}) == 0


@pytest.mark.gen_test(timeout=30)
async def test_api_bodies_over_64_kib_are_a_413(shopper: Shopper, services: Services) -> None:
    items = [{"sku_id": "fan-silk", "num": 1}]
    status, body = await shopper.request("POST", "/api/orders", {"items": items, "pad": "x" * (64 * 1024)})
    assert status == 413 and "too large" in body["error"]
    # Sent without a Content-Length, the body is counted as it arrives.
    async def chunks():  # type: ignore[no-untyped-def]
        yield b'{"items": [{"sku_id": "fan-silk", "num": 1}], "pad": "'
        for _ in range(80):
            yield b"x" * 1024
        yield b'"}'
    status, body = await shopper.request("POST", "/api/orders", data=chunks(),
                                         headers={"X-XSRFToken": shopper.xsrf})
    assert status == 413 and "too large" in body["error"]
    assert await services.store.orders.count_documents({}) == 0
    # Just under the limit is an ordinary order.
    status, _ = await shopper.request("POST", "/api/orders", {"items": items, "pad": "x" * 60000})
    assert status == 201


@pytest.mark.gen_test(timeout=30)
async def test_another_users_order_is_not_found(shopper: Shopper, mallory: Shopper) -> None:
    order = await shopper.order([("fan-silk", 1)])
    for path in (f"/api/orders/{order['id']}", f"/wxpay/createNative?orderId={order['id']}"):
        status, body = await mallory.request("GET", path)
        assert status == 404 and body == {"error": "no such order"}
    status, _ = await mallory.request("GET", f"/weixinpay.html?orderId={order['id']}")
    assert status == 404


@pytest.mark.gen_test(timeout=30)
async def test_api_needs_login_and_xsrf(shopper: Shopper, base_url: str) -> None:
    anonymous = Shopper(base_url)
    try:
        status, body = await anonymous.request("GET", "/api/skus")
        assert status == 401 and body == {"error": "log in first"}
        status, _ = await anonymous.request("GET", "/")
        assert status == 302
    finally:
        await anonymous.close()
    shopper.xsrf = "forged"
    status, body = await shopper.request("POST", "/api/orders", {"items": [{"sku_id": "fan-silk", "num": 1}]})
    assert status == 403


@pytest.mark.gen_test(timeout=30)
async def test_create_native_refuses_bad_and_missing_order_ids(shopper: Shopper) -> None:
    for path, code in (("/wxpay/createNative", 400), ("/wxpay/createNative?orderId=x", 404),
                       ("/wxpay/createNative?orderId=" + "9" * 100, 404)):
        status, body = await shopper.request("GET", path)
        assert status == code and "error" in body
