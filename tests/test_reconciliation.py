"""Reconciliation end to end on API v2 and v3: each kind of difference made on
purpose against the simulator (whose bill is built from its own book), then
found by comparing today's bill, and fixed through the usual transitions or
left for a person. A second run changes nothing."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

import settings as settings_mod
from server.composition.container import Services
from server.domain.reconciliation import Report
from server.gateway.abc import BEIJING, RefundRequest
from server.gateway.errors import BillNotReady
from tests.support.config import sandbox_settings
from tests.support.shopper import Shopper
from tests.support.waiting import eventually
from workers.daily_reconciliation import RETRY_SECONDS, Outcome, reconcile_if_due


@pytest.fixture(params=["v2", "v3"])
def test_settings(request: pytest.FixtureRequest, http_port: int, tmp_path: Path,
                  amqp_url: str) -> settings_mod.Settings:
    return sandbox_settings(http_port, tmp_path, amqp_url, request.param,
                             REFUND_CHECK_DELAYS="1,2",
                             # The backstops stay away: only reconciliation may find a lost payment.
                             ACTIVE_QUERY_AFTER_SECONDS="1000", SWEEP_INTERVAL_SECONDS="1000")



def today() -> dt.date:
    return dt.datetime.now(BEIJING).date()


async def pay(shopper: Shopper, items: list[tuple[str, int]], notify: dict[str, Any] | None = None,
              ) -> dict[str, Any]:
    order = await shopper.order(items)
    native = await shopper.create_native(order["id"])
    status, trade = await shopper.request("POST", "/sandbox/wxpay/pay",
                                          {"code_url": native["code_url"], "notify": notify or {}})
    assert status == 200, trade
    return {**order, "transaction_id": trade["transaction_id"]}


async def status_of(shopper: Shopper, order_id: str, status: str) -> dict[str, Any] | None:
    now = await shopper.get_order(order_id)
    return now if now["status"] == status else None


async def paid_with_its_trade(shopper: Shopper) -> tuple[dict[str, Any], dict[str, Any]]:
    """An order paid and recorded, and its trade at the simulator (whose code_url pays it again)."""
    paid = await pay(shopper, [("tea-longjing", 1)])
    paid = await eventually(lambda: status_of(shopper, paid["id"], "paid"), message="paid")
    _, trade = await shopper.request("GET", f"/sandbox/wxpay/trades/{paid['id']}")
    return paid, trade


def kinds(findings: list[Any]) -> list[tuple[str, str]]:
    return sorted((f.kind, f.out_trade_no) for f in findings)


@pytest.mark.gen_test(timeout=90)
async def test_each_kind_of_difference_is_fixed_or_reported_and_a_second_run_changes_nothing(
        shopper: Shopper, operator: Shopper, services: Services) -> None:
    # Agreeing: paid, notified, recorded.
    fine = await pay(shopper, [("tea-longjing", 1)])
    await eventually(lambda: status_of(shopper, fine["id"], "paid"), message="paid by its notify")
    # 1. Paid at WeChat, the notify lost: unpaid here.
    lost = await pay(shopper, [("mug-celadon", 1)], notify={"drop": True})
    # 2. Paid at WeChat after we had closed it (locally): closed here.
    late = await shopper.order([("fan-silk", 1)])
    native = await shopper.create_native(late["id"])
    won, _ = await services.orders.close(late["id"], "closed for the test")
    assert won
    status, _ = await shopper.request("POST", "/sandbox/wxpay/pay",
                                      {"code_url": native["code_url"], "notify": {"drop": True}})
    assert status == 200
    # 3. A refund made at WeChat only (the merchant platform, by hand).
    by_hand = await pay(shopper, [("card-sticker", 2)])
    by_hand = await eventually(lambda: status_of(shopper, by_hand["id"], "paid"), message="paid")
    gateway = services.payments.gateway
    refund_no = "RFHAND" + uuid.uuid4().hex[:20]
    await gateway.refund(RefundRequest(by_hand["id"], refund_no, by_hand["pay_money"], by_hand["pay_money"],
                                       "by hand", notify_url=""))

    async def settled_at_wechat() -> bool:
        return (await gateway.query_refund(refund_no)).status == "success"

    await eventually(settled_at_wechat, message="the hand-made refund settled at WeChat")
    # 4. An amount tampered with in our store.
    tampered = await pay(shopper, [("tea-longjing", 2)])
    await eventually(lambda: status_of(shopper, tampered["id"], "paid"), message="paid")
    await services.store.orders.update_one({"_id": tampered["id"]}, {"$inc": {"pay_money": 1}})
    # 5. Paid here, unknown to WeChat.
    ghost = f"2026{uuid.uuid4().hex[:28]}"
    await services.store.orders.insert_one({
        "_id": ghost, "user": "demo", "items": [], "pay_money": 500, "status": "paid", "created_at": time.time(),
        "expires_at": time.time(), "transaction_id": "4200000000000000000000000001", "pay_time": time.time()})

    report = await services.reconciler.run(today())
    assert kinds(report.fixed) == sorted([("payment_recorded", lost["id"]), ("payment_recorded", late["id"]),
                                          ("refund_recorded", by_hand["id"])]), report.fixed
    assert kinds(report.mismatches) == sorted([("amount_differs", tampered["id"]),
                                               ("paid_here_not_at_wechat", ghost)]), report.mismatches
    assert not report.agrees
    assert (await shopper.get_order(lost["id"]))["status"] == "paid"
    closed_then_paid = await services.orders.get(late["id"])
    assert closed_then_paid is not None and closed_then_paid["status"] == "paid"
    assert closed_then_paid.get("compensated"), "the compensation log, as for any payment after a close"
    assert "found by reconciliation" in closed_then_paid["logs"]["paid"]["remarks"]
    refunded = await operator.get_order(by_hand["id"])
    assert (refunded["status"], refunded["refunded"]) == ("refunded", by_hand["pay_money"])
    assert [r["out_refund_no"] for r in refunded["refunds"]] == [refund_no]
    # The bill's own totals match what its lines add up to.
    assert (report.wechat_summary.paid, report.wechat_summary.refunded) == (report.wechat.paid,
                                                                             report.wechat.refunded)

    again = await services.reconciler.run(today())
    assert again.fixed == [], "the second run finds nothing left to fix"
    assert kinds(again.mismatches) == kinds(report.mismatches), "and reports the same differences"
    kept = await services.store.reconciliations.find_one({"_id": today().isoformat()})
    assert kept is not None and kept["runs"] == 2 and len(kept["fixed_earlier"]) == 3
    status, listed = await operator.request("GET", "/api/admin/reconciliations")
    assert status == 200 and listed["reports"][0]["date"] == today().isoformat()
    assert len(listed["reports"][0]["mismatches"]) == 2


@pytest.mark.gen_test(timeout=60)
async def test_a_refund_processing_here_takes_the_bills_final_word(
        shopper: Shopper, operator: Shopper, services: Services) -> None:
    paid = await pay(shopper, [("tea-longjing", 1)])
    paid = await eventually(lambda: status_of(shopper, paid["id"], "paid"), message="paid")
    # Our side lost track of the outcome: the notify dropped and its checks held back.
    await shopper.request("POST", "/sandbox/wxpay/control", {"refund": {"notify": {"drop": True}}})
    await services.refund_queues.stop_consuming()
    status, refund = await operator.request("POST", f"/api/orders/{paid['id']}/refunds", {"amount": 10})
    assert status == 201

    async def done_at_wechat() -> bool:
        return (await services.payments.gateway.query_refund(refund["out_refund_no"])).status == "success"

    await eventually(done_at_wechat, message="settled at WeChat")
    assert (await operator.get_order(paid["id"]))["refunds"][0]["status"] == "processing"
    report = await services.reconciler.run(today())
    assert [(f.kind, f.out_refund_no) for f in report.fixed] == [("refund_finished", refund["out_refund_no"])]
    assert report.agrees, report.mismatches
    assert (await operator.get_order(paid["id"]))["refunds"][0]["status"] == "success"


@pytest.mark.gen_test(timeout=60)
async def test_the_daily_run_waits_for_the_bill_and_runs_once_across_processes(
        shopper: Shopper, services: Services) -> None:
    paid = await pay(shopper, [("tea-longjing", 1)])
    await eventually(lambda: status_of(shopper, paid["id"], "paid"), message="paid")
    # "Tomorrow" at the hour, Beijing time: the bill due is today's.
    tomorrow = dt.datetime.combine(today() + dt.timedelta(days=1), dt.time(10, 30), BEIJING).timestamp()
    at = dt.time(10, 0)
    outcome = Outcome()
    await shopper.request("POST", "/sandbox/wxpay/control", {"bill": {"not_ready": True}})
    with pytest.raises(BillNotReady):
        await services.reconciler.run(today())
    assert await reconcile_if_due(services.reconciler, services.store, at, outcome, now=tomorrow)
    assert outcome.runs["not_ready"] == 1
    assert not await reconcile_if_due(services.reconciler, services.store, at, outcome, now=tomorrow + 60), \
        "not before its retry time"
    await shopper.request("POST", "/sandbox/wxpay/control", {"bill": {"not_ready": False}})
    later = tomorrow + RETRY_SECONDS + 1
    ran = await asyncio.gather(*(reconcile_if_due(services.reconciler, services.store, at, outcome, now=later)
                                 for _ in range(3)))
    assert sorted(ran) == [False, False, True], "one process of three ran it"
    assert outcome.runs["agreed"] == 1 and outcome.mismatches == 0 and outcome.last_agreed == later
    assert not await reconcile_if_due(services.reconciler, services.store, at, outcome, now=later + 3600)
    too_early = dt.datetime.combine(today() + dt.timedelta(days=2), dt.time(9, 59), BEIJING).timestamp()
    assert not await reconcile_if_due(services.reconciler, services.store, at, outcome, now=too_early)


def test_report_json_has_the_contracts_keys() -> None:
    doc = Report(dt.date(2026, 11, 28)).as_json()
    assert {"date", "wechat", "ours", "fixed", "mismatches"} <= set(doc)
    assert doc["date"] == "2026-11-28" and doc["agrees"] is True


@pytest.mark.gen_test(timeout=90)
async def test_a_second_payment_whose_refund_wechat_closed_is_given_back_by_the_bill(
        shopper: Shopper, operator: Shopper, services: Services) -> None:
    paid, trade = await paid_with_its_trade(shopper)
    await shopper.request("POST", "/sandbox/wxpay/control", {"refund": {"outcome": "closed"}})
    status, second = await shopper.request("POST", "/sandbox/wxpay/pay",
                                           {"code_url": trade["code_url"], "duplicate": True})
    assert status == 200

    async def closed_refund() -> bool:
        order = await operator.get_order(paid["id"])
        return [r["status"] for r in order["refunds"]] == ["closed"]

    await eventually(closed_refund, message="the second payment's refund closed at WeChat")
    await shopper.request("POST", "/sandbox/wxpay/control", {"refund": {"outcome": "success"}})
    report = await services.reconciler.run(today())
    assert [(f.kind, f.transaction_id) for f in report.fixed] == [("second_payment_refunded",
                                                                   second["transaction_id"])]

    async def given_back() -> bool:
        order = await operator.get_order(paid["id"])
        return sorted(r["status"] for r in order["refunds"]) == ["closed", "success"]

    await eventually(given_back, message="a new refund of the second payment succeeded")
    after = await operator.get_order(paid["id"])
    assert (after["status"], after["refunded"]) == ("paid", 0), "the sale stands"


@pytest.mark.gen_test(timeout=90)
async def test_a_refund_by_hand_of_a_second_payment_is_not_charged_to_the_order(
        shopper: Shopper, operator: Shopper, services: Services) -> None:
    paid, trade = await paid_with_its_trade(shopper)
    # The second payment's notify is lost, and someone refunds it by hand at WeChat.
    status, second = await shopper.request("POST", "/sandbox/wxpay/pay", {
        "code_url": trade["code_url"], "duplicate": True, "notify": {"drop": True}})
    assert status == 200
    by_hand = "RFHAND" + uuid.uuid4().hex[:20]
    await services.payments.gateway.refund(RefundRequest(
        paid["id"], by_hand, paid["pay_money"], paid["pay_money"], "by hand", notify_url="",
        transaction_id=second["transaction_id"]))

    async def settled() -> bool:
        return (await services.payments.gateway.query_refund(by_hand)).status == "success"

    await eventually(settled, message="the hand-made refund settled at WeChat")
    report = await services.reconciler.run(today())
    assert ("refund_of_second_payment", paid["id"]) in kinds(report.mismatches), report.mismatches
    after = await operator.get_order(paid["id"])
    assert (after["status"], after["refunded"]) == ("paid", 0), "the order's sale was not refunded"
