"""A day's bill end to end, on API v2 and v3, in sandbox mode: a shopper pays
two orders through the pay page's flow, an operator refunds one of them in
full, and today's bill, downloaded through the very gateway paypush's services
hold (plain and gzip), names exactly those payments and that refund, with
totals that add up. The simulator bills today so far (real WeChat publishes a
day's bill the next morning)."""

from __future__ import annotations

import datetime as dt
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import pytest

import settings as settings_mod
from server.composition.container import Services
from server.gateway.abc import BEIJING, BILL_PAYMENT, BILL_REFUND, BillSummary
from server.gateway.errors import BillNotReady
from tests.support.config import sandbox_settings
from tests.support.shopper import Shopper
from tests.support.waiting import eventually


@pytest.fixture(params=["v2", "v3"])
def api(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def test_settings(api: str, http_port: int, tmp_path: Path, amqp_url: str) -> settings_mod.Settings:
    return sandbox_settings(http_port, tmp_path, amqp_url, api, REFUND_CHECK_DELAYS="1,2")



async def paid_order(shopper: Shopper, sku: str) -> tuple[dict[str, Any], str]:
    order = await shopper.order([(sku, 1)])
    native = await shopper.create_native(order["id"])
    status, trade = await shopper.request("POST", "/sandbox/wxpay/pay", {"code_url": native["code_url"]})
    assert status == 200, trade

    async def now_paid() -> dict[str, Any] | None:
        now = await shopper.get_order(order["id"])
        return now if now["status"] == "paid" else None

    return await eventually(now_paid, message=f"order {order['id']} paid"), native["out_trade_no"]


def fee(total: int) -> int:
    """The simulator's documented handling fee: 0.6% of a payment, half up to the fen."""
    return int((Decimal(total) * Decimal("0.006")).quantize(Decimal(1), rounding=ROUND_HALF_UP))


@pytest.mark.gen_test(timeout=90)
async def test_todays_bill_names_the_payments_and_the_refund_made_through_paypush(
        shopper: Shopper, operator: Shopper, services: Services) -> None:
    first, first_no = await paid_order(shopper, "tea-longjing")
    second, second_no = await paid_order(shopper, "tea-longjing")
    status, refund = await operator.request("POST", f"/api/orders/{second['id']}/refunds",
                                            {"amount": second["pay_money"], "reason": "customer asked"})
    assert status == 201, refund

    async def refunded() -> dict[str, Any] | None:
        order = await operator.get_order(second["id"])
        return order if order["status"] == "refunded" else None

    await eventually(refunded, message="the refund succeeded", within=20)
    today = dt.datetime.now(BEIJING).date()
    paid_days = {dt.datetime.fromtimestamp(o["pay_time"], BEIJING).date() for o in (first, second)
                 if isinstance(o.get("pay_time"), (int, float))}
    if paid_days - {today}:
        pytest.skip("paid on another Beijing day than the bill's (midnight)")

    gateway = services.payments.gateway
    readings = []
    for gzipped in (True, False):
        gateway.bill_gzip = gzipped  # type: ignore[attr-defined]
        bill = await gateway.download_bill(today)
        lines = [line async for line in bill.lines]
        readings.append((lines, bill.summary))
        payments = {(b.out_trade_no, b.transaction_id): (b.amount, b.trade_state, b.fee)
                    for b in lines if b.kind == BILL_PAYMENT}
        refunds = [(b.out_trade_no, b.out_refund_no, b.amount, b.refund_status) for b in lines if b.kind == BILL_REFUND]
        assert payments == {
            (first_no, first["transaction_id"]): (first["pay_money"], "SUCCESS", fee(first["pay_money"])),
            (second_no, second["transaction_id"]): (second["pay_money"], "REFUND", fee(second["pay_money"])),
        }
        assert refunds == [(second_no, refund["out_refund_no"], second["pay_money"], "SUCCESS")]
        assert bill.summary == BillSummary(trades=3, paid=first["pay_money"] + second["pay_money"],
                                           refunded=second["pay_money"],
                                           fees=fee(first["pay_money"]) + fee(second["pay_money"]))
    assert readings[0] == readings[1]

    with pytest.raises(BillNotReady):  # a day without a trade: WeChat has no bill for it
        await gateway.download_bill(today - dt.timedelta(days=400))
    status, _ = await shopper.request("POST", "/sandbox/wxpay/control", {"bill": {"not_ready": True}})
    assert status == 200
    with pytest.raises(BillNotReady):  # what the daily job sees before WeChat published the day
        await gateway.download_bill(today)
