"""Refunds end to end, on API v2 and v3, against the simulator over real HTTP,
MongoDB and RabbitMQ: an operator gives part or all of a paid order back and
sees it reach success; a refund never exceeds what was paid, is never made
twice and is never lost (a dropped notify, a SYSTEMERROR, a refund WeChat never
got); a second payment is given back by itself."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

import settings as settings_mod
from server.composition.container import Services
from server.gateway.abc import Payment
from tests.support.config import sandbox_settings
from tests.support.shopper import Shopper
from tests.support.sockets import PageSocket
from tests.support.waiting import eventually


@pytest.fixture(params=["v2", "v3"])
def api(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def test_settings(api: str, http_port: int, tmp_path: Path, amqp_url: str) -> settings_mod.Settings:
    # A refund WeChat has not finished is looked at again within a second.
    return sandbox_settings(http_port, tmp_path, amqp_url, api, REFUND_CHECK_DELAYS="1,2")



async def control(shopper: Shopper, knobs: dict[str, Any]) -> None:
    status, reply = await shopper.request("POST", "/sandbox/wxpay/control", knobs)
    assert status == 200, reply


async def paid_order(shopper: Shopper, items: list[tuple[str, int]] | None = None) -> dict[str, Any]:
    order = await shopper.order(items or [("tea-longjing", 1)])
    native = await shopper.create_native(order["id"])
    status, trade = await shopper.request("POST", "/sandbox/wxpay/pay", {"code_url": native["code_url"]})
    assert status == 200, trade

    async def now_paid() -> dict[str, Any] | None:
        now = await shopper.get_order(order["id"])
        return now if now["status"] == "paid" else None

    return await eventually(now_paid, message=f"order {order['id']} paid")


async def refund(operator: Shopper, order_id: str, amount: object, reason: str = "customer asked",
                 key: str | None = None) -> tuple[int, Any]:
    headers = {"Idempotency-Key": key} if key is not None else {}
    return await operator.request("POST", f"/api/orders/{order_id}/refunds", {"amount": amount, "reason": reason},
                                  headers=headers)


async def refund_final(operator: Shopper, order_id: str, out_refund_no: str) -> dict[str, Any]:
    async def final() -> dict[str, Any] | None:
        order = await operator.get_order(order_id)
        [r] = [r for r in order["refunds"] if r["out_refund_no"] == out_refund_no]
        return order if r["status"] != "processing" else None

    return await eventually(final, message=f"refund {out_refund_no} final", within=20)


async def wechat_refund(shopper: Shopper, out_refund_no: str) -> dict[str, Any]:
    status, view = await shopper.request("GET", f"/sandbox/wxpay/refunds/{out_refund_no}")
    assert status == 200, view
    return dict(view)


async def _pushes(operator: Shopper, order_id: str) -> list[dict[str, Any]] | None:
    pushes = (await operator.get_order(order_id))["pushes"]
    return pushes if len(pushes) == 2 else None


def refund_of(order: dict[str, Any], out_refund_no: str) -> dict[str, Any]:
    [r] = [r for r in order["refunds"] if r["out_refund_no"] == out_refund_no]
    return dict(r)


# -- the operator's refund, start to end ------------------------------------------------

@pytest.mark.gen_test(timeout=90)
async def test_partial_then_full_refund_reaches_success_and_the_page_hears_refunded(
        shopper: Shopper, operator: Shopper, base_url: str) -> None:
    order = await paid_order(shopper)
    total = order["pay_money"]
    sock = await PageSocket.open(base_url, order["id"], shopper)
    assert (await sock.next_event())["status"] == "paid"

    status, first = await refund(operator, order["id"], total // 3)
    assert status == 201, first
    assert (first["amount"], first["status"]) == (total // 3, "processing")
    assert first["out_refund_no"].startswith("RF") and len(first["out_refund_no"]) <= 64
    after = await refund_final(operator, order["id"], first["out_refund_no"])
    done = refund_of(after, first["out_refund_no"])
    assert done["status"] == "success" and done["success_time"]
    assert (after["status"], after["refunded"]) == ("paid", total // 3), "a partial refund leaves it paid"
    assert (await wechat_refund(shopper, first["out_refund_no"]))["status"] == "SUCCESS"

    status, rest = await refund(operator, order["id"], total - total // 3, reason="the rest")
    assert status == 201, rest
    after = await refund_final(operator, order["id"], rest["out_refund_no"])
    assert (after["status"], after["refunded"]) == ("refunded", total)
    event = await sock.next_event(within=10)
    assert (event["type"], event["status"]) == ("refunded", "refunded")
    kinds = [e["kind"] for e in after["logs"]]
    assert kinds.count("refunded") == 1 and f"refund_success_{rest['out_refund_no']}" in kinds
    pushed = await eventually(lambda: _pushes(operator, order["id"]), message="both events' publish recorded")
    assert [p["event"] for p in pushed] == ["paid", "refunded"]
    # The shopper sees it too, on their own order.
    mine = await shopper.get_order(order["id"])
    assert mine["status"] == "refunded" and len(mine["refunds"]) == 2

    status, more = await refund(operator, order["id"], 1)
    assert status == 409, more


@pytest.mark.gen_test(timeout=60)
async def test_refund_requests_that_cannot_be_made(shopper: Shopper, operator: Shopper) -> None:
    order = await paid_order(shopper)
    for amount in (0, -5, "100", 1.5, True, None, [1], 10**30):
        status, reply = await refund(operator, order["id"], amount)
        assert status in (400, 409), (amount, status, reply)
        if amount != 10**30:
            assert status == 400 and "positive integer" in reply["error"], (amount, reply)
    status, reply = await refund(operator, order["id"], order["pay_money"] + 1)
    assert status == 409 and "still refundable" in reply["error"]
    status, reply = await refund(operator, order["id"], 1, reason="x" * 81)
    assert status == 400
    status, reply = await operator.request("POST", f"/api/orders/{order['id']}/refunds", "not an object")
    assert status == 400
    unpaid = await shopper.order([("tea-longjing", 1)])
    status, reply = await refund(operator, unpaid["id"], 1)
    assert status == 409 and "unpaid" in reply["error"]
    status, reply = await refund(operator, "2026112900000000000000000000000", 1)
    assert status == 404
    assert (await operator.get_order(order["id"]))["refunds"] == [], "nothing was reserved by a refusal"


@pytest.mark.gen_test(timeout=60)
async def test_shoppers_get_403_from_every_operator_endpoint(shopper: Shopper, operator: Shopper) -> None:
    order = await paid_order(shopper)
    status, reply = await refund(shopper, order["id"], 1)
    assert status == 403 and reply["error"] == "operators only"
    status, reply = await shopper.request("GET", "/api/admin/orders")
    assert status == 403
    status, page = await shopper.request("GET", "/admin")
    assert status == 403 and "Operators only" in page
    assert (await operator.get_order(order["id"]))["refunds"] == []
    status, reply = await operator.request("GET", "/api/admin/orders")
    assert status == 200 and reply["orders"][0]["id"] == order["id"]


# -- never twice, never more than paid ----------------------------------------------------

@pytest.mark.gen_test(timeout=60)
async def test_the_same_idempotency_key_makes_one_refund_even_at_once(shopper: Shopper, operator: Shopper) -> None:
    order = await paid_order(shopper)
    replies = await asyncio.gather(*(refund(operator, order["id"], 10, key="form-7f3a") for _ in range(6)))
    statuses = sorted(status for status, _ in replies)
    assert statuses.count(201) == 1 and set(statuses) <= {200, 201}, replies
    assert len({r["out_refund_no"] for _, r in replies}) == 1
    again = await refund(operator, order["id"], 10, key="form-7f3a")
    assert again[0] == 200 and again[1]["out_refund_no"] == replies[0][1]["out_refund_no"]
    other_amount = await refund(operator, order["id"], 11, key="form-7f3a")
    assert other_amount[0] == 409 and "Idempotency-Key already made" in other_amount[1]["error"]
    after = await operator.get_order(order["id"])
    assert len(after["refunds"]) == 1


@pytest.mark.gen_test(timeout=60)
async def test_concurrent_refunds_never_add_up_to_more_than_was_paid(shopper: Shopper, operator: Shopper) -> None:
    order = await paid_order(shopper)
    part = order["pay_money"] * 2 // 5  # three of these are more than the whole
    replies = await asyncio.gather(*(refund(operator, order["id"], part) for _ in range(3)))
    assert sorted(status for status, _ in replies) == [201, 201, 409], replies
    for _, r in replies:
        if "out_refund_no" in r:
            await refund_final(operator, order["id"], r["out_refund_no"])
    after = await operator.get_order(order["id"])
    assert after["refunded"] == 2 * part <= after["pay_money"]


# -- never lost -------------------------------------------------------------------------------

@pytest.mark.gen_test(timeout=60)
async def test_a_dropped_refund_notify_is_made_up_by_the_check(shopper: Shopper, operator: Shopper) -> None:
    order = await paid_order(shopper)
    await control(shopper, {"refund": {"notify": {"drop": True}}})
    status, r = await refund(operator, order["id"], order["pay_money"])
    assert status == 201
    after = await refund_final(operator, order["id"], r["out_refund_no"])
    assert refund_of(after, r["out_refund_no"])["status"] == "success"
    assert f"refund_success_{r['out_refund_no']}" in [e["kind"] for e in after["logs"]]
    assert [e["remarks"] for e in after["logs"] if e["kind"] == f"refund_success_{r['out_refund_no']}"] == \
        [f"{order['pay_money']} fen, found by refund query"]


@pytest.mark.gen_test(timeout=60)
async def test_systemerror_is_retried_with_the_same_refund_number_and_makes_one_refund(
        shopper: Shopper, operator: Shopper) -> None:
    order = await paid_order(shopper)
    await control(shopper, {"refund": {"systemerror": 1}})
    status, r = await refund(operator, order["id"], 30)
    assert status == 201 and r["status"] == "processing"
    after = await refund_final(operator, order["id"], r["out_refund_no"])
    assert refund_of(after, r["out_refund_no"])["status"] == "success"
    status, trade = await shopper.request("GET", f"/sandbox/wxpay/trades/{order['id']}")
    assert status == 200
    assert [x["out_refund_no"] for x in trade["refunds"]] == [r["out_refund_no"]], "one refund at WeChat"


@pytest.mark.gen_test(timeout=60)
async def test_a_refund_wechat_closes_gives_its_amount_back_to_refund_again(
        shopper: Shopper, operator: Shopper) -> None:
    order = await paid_order(shopper)
    await control(shopper, {"refund": {"outcome": "closed"}})
    status, r = await refund(operator, order["id"], order["pay_money"])
    assert status == 201
    after = await refund_final(operator, order["id"], r["out_refund_no"])
    assert refund_of(after, r["out_refund_no"])["status"] == "closed"
    assert (after["status"], after["refunded"]) == ("paid", 0)
    await control(shopper, {"refund": {"outcome": "success"}})
    status, again = await refund(operator, order["id"], order["pay_money"])
    assert status == 201, again
    after = await refund_final(operator, order["id"], again["out_refund_no"])
    assert after["status"] == "refunded"


@pytest.mark.gen_test(timeout=60)
async def test_an_abnormal_refund_keeps_its_amount_reserved(shopper: Shopper, operator: Shopper) -> None:
    order = await paid_order(shopper)
    await control(shopper, {"refund": {"outcome": "abnormal"}})
    status, r = await refund(operator, order["id"], order["pay_money"])
    assert status == 201
    after = await refund_final(operator, order["id"], r["out_refund_no"])
    assert refund_of(after, r["out_refund_no"])["status"] == "abnormal"
    assert after["status"] == "paid" and after["refunded"] == 0
    status, _reply = await refund(operator, order["id"], 1)
    assert status == 409, "the shopper may still get that money: it is not offered again"


@pytest.mark.gen_test(timeout=60)
async def test_a_refund_wechat_never_got_is_sent_again_by_its_check(
        shopper: Shopper, operator: Shopper, services: Services) -> None:
    """The process died between reserving and asking: only the order knows of
    the refund. Its check finds WeChat has none and asks with the same number."""
    order = await paid_order(shopper)
    no = "RF20261129" + uuid.uuid4().hex[:24]
    await services.store.orders.update_one({"_id": order["id"]}, {
        "$set": {f"refunds.{no}": {"amount": 20, "status": "processing", "reason": "crash", "who": "olga",
                                   "created_at": 1.0, "success_time": None}},
        "$inc": {"refund_reserved": 20, "refunds_open": 1}})
    await services.refund_queues.schedule(order["id"], no, 1)
    after = await refund_final(operator, order["id"], no)
    assert refund_of(after, no)["status"] == "success" and after["refunded"] == 20
    assert (await wechat_refund(shopper, no))["status"] == "SUCCESS"


# -- the second payment -------------------------------------------------------------------------

@pytest.mark.gen_test(timeout=60)
async def test_a_second_payment_is_given_back_by_itself(shopper: Shopper, operator: Shopper,
                                                        services: Services) -> None:
    order = await paid_order(shopper)
    native_again = await shopper.request("GET", f"/sandbox/wxpay/trades/{order['id']}")
    code_url = native_again[1]["code_url"]
    status, second = await shopper.request("POST", "/sandbox/wxpay/pay", {"code_url": code_url, "duplicate": True})
    assert status == 200, second
    assert second["transaction_id"] != order["transaction_id"]

    async def given_back() -> dict[str, Any] | None:
        now = await operator.get_order(order["id"])
        done = [r for r in now["refunds"] if r.get("transaction_id") == second["transaction_id"]
                and r["status"] == "success"]
        return now if done else None

    after = await eventually(given_back, message="the second payment refunded", within=20)
    assert after["status"] == "paid" and after["refunded"] == 0, "the sale stands"
    [r] = after["refunds"]
    assert r["amount"] == order["pay_money"]
    assert (await wechat_refund(shopper, r["out_refund_no"]))["status"] == "SUCCESS"
    # Its notify again (WeChat retries) takes the same path and makes no second refund.
    await services.payments.record_payment(
        Payment(order["id"], second["transaction_id"], order["pay_money"], time.time()), found_by="notify")
    assert len((await operator.get_order(order["id"]))["refunds"]) == 1


# -- the operator's list ---------------------------------------------------------------------------

@pytest.mark.gen_test(timeout=60)
async def test_the_order_list_pages_filters_and_finds_by_transaction(shopper: Shopper, operator: Shopper) -> None:
    paid = await paid_order(shopper)
    unpaid = [await shopper.order([("tea-longjing", 1)]) for _ in range(3)]
    status, page = await operator.request("GET", "/api/admin/orders?status=unpaid")
    assert status == 200
    assert [o["id"] for o in page["orders"]][:3] == [o["id"] for o in reversed(unpaid)]
    assert all(o["status"] == "unpaid" for o in page["orders"])
    status, found = await operator.request("GET", f"/api/admin/orders?q={paid['transaction_id']}")
    assert [o["id"] for o in found["orders"]] == [paid["id"]]
    status, found = await operator.request("GET", f"/api/admin/orders?q={paid['id']}")
    assert [o["id"] for o in found["orders"]] == [paid["id"]]
    status, _bad = await operator.request("GET", "/api/admin/orders?status=lost")
    assert status == 400
    status, _bad = await operator.request("GET", "/api/admin/orders?cursor=!!notbase64")
    assert status == 400


@pytest.mark.parametrize("api", ["v2"], indirect=False)
@pytest.mark.gen_test(timeout=60)
async def test_pages_of_the_order_list_meet_without_gaps_or_repeats(
        api: str, shopper: Shopper, operator: Shopper, services: Services) -> None:
    now = 1_800_000_000.0
    # Same created_at for some: the id breaks the tie, so no order falls between pages.
    docs = [{"_id": f"page{i:028d}", "user": "demo", "items": [], "pay_money": 1, "status": "closed",
             "created_at": now - i // 3, "expires_at": now} for i in range(120)]
    await services.store.orders.insert_many(docs)
    seen: list[str] = []
    cursor = ""
    while True:
        status, page = await operator.request("GET", f"/api/admin/orders?status=closed&cursor={cursor}")
        assert status == 200, page
        seen += [o["id"] for o in page["orders"]]
        if not page["next_cursor"]:
            break
        cursor = page["next_cursor"]
    newest_first = sorted(docs, key=lambda d: (d["created_at"], d["_id"]), reverse=True)
    assert seen == [d["_id"] for d in newest_first]


@pytest.mark.parametrize("api", ["v2"])
@pytest.mark.gen_test(timeout=60)
async def test_the_deadline_of_an_order_refunded_in_full_is_final(
        api: str, shopper: Shopper, operator: Shopper, services: Services) -> None:
    """Refunded before its deadline message comes (1 h by default): the timeout
    worker has nothing to do, and must not choke on the status."""
    from server.domain.timeouts import Outcome

    order = await paid_order(shopper)
    status, r = await refund(operator, order["id"], order["pay_money"])
    assert status == 201
    assert (await refund_final(operator, order["id"], r["out_refund_no"]))["status"] == "refunded"
    outcome, _ = await services.timeouts.settle(order["id"])
    assert outcome is Outcome.FINAL
