"""WXPAY_API=v3 end to end in sandbox mode: the v3 gateway against the v3
simulator (its own crypto, keys generated under VAR_DIR), over real HTTP and
MongoDB: order, QR, encrypted and signed notify to /wxpay/v3/notify, paid;
nobody paying, closed at WeChat and here; WeChat's migration from platform
certificates to its public key, and a certificate rotation, without a failed
notify."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import settings as settings_mod
from server.composition.container import Services
from server.gateway.wxpay_v3.gateway import WxPayV3Gateway
from tests.support.config import sandbox_settings
from tests.support.shopper import Shopper
from tests.support.timeout_helpers import SETTINGS, final_order, trade
from tests.support.waiting import eventually


@pytest.fixture
def test_settings(http_port: int, tmp_path: Path, amqp_url: str) -> settings_mod.Settings:
    return sandbox_settings(http_port, tmp_path, amqp_url, "v3")


async def paid(shopper: Shopper, order_id: str) -> dict[str, Any]:
    async def order_if_paid() -> dict[str, Any] | None:
        order = await shopper.get_order(order_id)
        return order if order["status"] == "paid" else None

    return await eventually(order_if_paid, message=f"order {order_id} paid", within=15)


async def pay(shopper: Shopper, code_url: str) -> dict[str, Any]:
    status, paid_trade = await shopper.request("POST", "/sandbox/wxpay/pay", {"code_url": code_url})
    assert status == 200, paid_trade
    return paid_trade


@pytest.mark.gen_test(timeout=60)
async def test_v3_order_pay_notify_paid(shopper: Shopper, services: Services) -> None:
    assert isinstance(services.payments.gateway, WxPayV3Gateway)
    assert services.settings.notify_url.endswith("/wxpay/v3/notify")
    order = await shopper.order([("tea-longjing", 1)])
    native = await shopper.create_native(order["id"])
    assert native["code_url"].startswith("weixin://wxpay/bizpayurl?pr=")
    assert (await trade(shopper, order["id"]))["api"] == "v3"
    paid_trade = await pay(shopper, native["code_url"])
    recorded = await paid(shopper, order["id"])
    assert recorded["transaction_id"] == paid_trade["transaction_id"]
    assert [e["kind"] for e in recorded["logs"]] == ["created", "paid"]
    # WeChat heard 2xx for its notify, and nothing else.
    replies = await eventually(lambda: _replies(shopper, order["id"]), message="the notify's reply recorded")
    assert set(replies) == {"SUCCESS"}, replies


async def _replies(shopper: Shopper, order_id: str) -> list[str] | None:
    return (await trade(shopper, order_id))["notify_replies"] or None


@pytest.mark.parametrize("extra_settings", [SETTINGS])  # deadlines in 2 s, closeorder allowed at once
@pytest.mark.gen_test(timeout=60)
async def test_v3_unpaid_order_is_queried_closed_at_wechat_and_closed(extra_settings: dict[str, object],
                                                                     shopper: Shopper) -> None:
    order = await shopper.order([("fan-silk", 1)])
    await shopper.create_native(order["id"])
    closed = await final_order(shopper, order["id"], within=30)
    assert closed["status"] == "closed"
    assert (await trade(shopper, order["id"]))["trade_state"] == "CLOSED"


@pytest.mark.gen_test(timeout=90)
async def test_v3_migration_and_rotation_lose_no_notify(shopper: Shopper) -> None:
    """The simulator signs with a platform certificate, then with WeChat's public
    key (the migration), then with a brand-new certificate (a rotation): each
    payment's notify is recorded, whoever signed it."""
    for knobs in ({"v3_mode": "certificate"}, {"v3_mode": "public_key"},
                  {"v3_mode": "certificate", "v3_rotate": True}):
        status, state = await shopper.request("POST", "/sandbox/wxpay/control", knobs)
        assert status == 200, state
        order = await shopper.order([("mug-celadon", 1)])
        native = await shopper.create_native(order["id"])
        await pay(shopper, native["code_url"])
        await paid(shopper, order["id"])


# -- /wxpay/v3/notify attacked: forged, stale, malformed, repeated -----------------------------

async def genuine_notify(shopper: Shopper, services: Services) -> tuple[dict[str, Any], bytes, dict[str, str]]:
    """A paid trade's notify exactly as the simulator (WeChat) would send it, not sent yet."""
    from server.simulator import v3_messages as sim_v3

    order = await shopper.order([("tea-longjing", 1)])
    native = await shopper.create_native(order["id"])
    sim = services.simulator
    assert sim is not None and sim.v3 is not None
    wechat_trade = sim.trades.pay(native["code_url"])
    body, headers = sim_v3.notify_message(sim.v3, wechat_trade)
    return order, body, headers


async def post_v3(shopper: Shopper, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    """As WeChat posts it: no cookie, no XSRF token."""
    async with aiohttp.ClientSession() as wechat, \
            wechat.post(f"{shopper.base_url}/wxpay/v3/notify", data=body, headers=headers) as resp:
        return resp.status, await resp.text()


@pytest.mark.gen_test(timeout=60)
async def test_v3_notify_repeated_is_recorded_once_and_always_acknowledged(
        shopper: Shopper, services: Services) -> None:
    order, body, headers = await genuine_notify(shopper, services)
    for _ in range(3):
        assert await post_v3(shopper, body, headers) == (204, "")
    recorded = await shopper.get_order(order["id"])
    assert recorded["status"] == "paid"
    assert [e["kind"] for e in recorded["logs"]] == ["created", "paid"]


def tampered(body: bytes) -> bytes:
    text = body.decode()
    return text.replace('"TRANSACTION.SUCCESS"', '"TRANSACTION.SUCCESS" ').encode()


@pytest.mark.parametrize("attack", ["forged body", "stale", "unknown serial", "no signature", "not json",
                                    "signature of another body"])
@pytest.mark.gen_test(timeout=60)
async def test_v3_notify_that_must_not_be_believed_is_refused_and_records_nothing(
        attack: str, shopper: Shopper, services: Services) -> None:
    order, body, headers = await genuine_notify(shopper, services)
    headers = dict(headers)
    if attack == "forged body":
        body = tampered(body)
    elif attack == "stale":
        headers["Wechatpay-Timestamp"] = str(int(headers["Wechatpay-Timestamp"]) - 600)
    elif attack == "unknown serial":
        headers["Wechatpay-Serial"] = "PUB_KEY_ID_0000000000000000000000000000000000"
    elif attack == "no signature":
        del headers["Wechatpay-Signature"]
    elif attack == "not json":
        body = b"<xml><return_code>SUCCESS</return_code></xml>"
    elif attack == "signature of another body":
        _, _, other_headers = await genuine_notify(shopper, services)
        headers = dict(other_headers)
    status, text = await post_v3(shopper, body, headers)
    assert 400 <= status < 500, (status, text)
    reply = json.loads(text)
    assert reply["code"] == "FAIL" and reply["message"], reply
    # Nothing recorded: the order is still unpaid; the genuine notify, sent after, is what pays it.
    assert (await shopper.get_order(order["id"]))["status"] == "unpaid"
    _, genuine, genuine_headers = order, *(await _resign(services, order))
    assert (await post_v3(shopper, genuine, genuine_headers))[0] == 204
    assert (await shopper.get_order(order["id"]))["status"] == "paid"


async def _resign(services: Services, order: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    from server.simulator import v3_messages as sim_v3

    sim = services.simulator
    assert sim is not None and sim.v3 is not None
    return sim_v3.notify_message(sim.v3, sim.trades.get(order["id"]))


# -- switching from v2 to v3: the same trades at WeChat -----------------------------------------

async def place_with_v2(services: Services, order: dict[str, Any]) -> str:
    """The order's trade placed through API v2, as before the merchant switched."""
    import datetime as dt

    from server.gateway.wxpay_v2.client import Merchant, WxPayClient

    cfg = services.settings
    v2 = WxPayClient(services.http, cfg.wxpay_api_base, Merchant(cfg.wxpay_appid, cfg.wxpay_mch_id, cfg.wxpay_key))
    reply = await v2.unified_order(
        out_trade_no=order["id"], body="placed under v2", total_fee=order["pay_money"],
        notify_url=f"{cfg.public_url}/wxpay/notify", product_id="tea-longjing",
        time_expire=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
    return reply["code_url"]


@pytest.mark.parametrize("extra_settings", [SETTINGS])  # deadlines in 2 s, closeorder allowed at once
@pytest.mark.gen_test(timeout=60)
async def test_an_order_placed_under_v2_is_queried_and_closed_under_v3(
        extra_settings: dict[str, object], shopper: Shopper, services: Services) -> None:
    order = await shopper.order([("fan-silk", 1)])
    await place_with_v2(services, order)
    assert (await trade(shopper, order["id"]))["api"] == "v2"
    closed = await final_order(shopper, order["id"], within=30)
    assert closed["status"] == "closed"
    assert (await trade(shopper, order["id"]))["trade_state"] == "CLOSED"


@pytest.mark.gen_test(timeout=60)
async def test_a_late_v2_notify_for_an_order_placed_before_the_switch_is_recorded(
        shopper: Shopper, services: Services) -> None:
    """Its notify comes in v2 XML to /wxpay/notify, and the v2 key is still set."""
    order = await shopper.order([("tea-longjing", 1)])
    code_url = await place_with_v2(services, order)
    await pay(shopper, code_url)
    recorded = await paid(shopper, order["id"])
    assert [e["kind"] for e in recorded["logs"]] == ["created", "paid"]
