"""The WeChat Pay v2 client against the simulator, both over real HTTP."""

from __future__ import annotations

import datetime as dt
from typing import Any

import aiohttp
import pytest
import tornado.httpserver
import tornado.netutil
import tornado.web

import settings as settings_mod
from server.composition.container import Services
from server.gateway.errors import WxPayBadResponse, WxPayError, WxPayReturnFail, WxPayUnreachable
from server.gateway.wxpay_v2 import signing, xmlcodec
from server.gateway.wxpay_v2.client import Merchant, WxPayClient
from tests.support.shopper import Shopper
from tests.support.waiting import eventually

MERCHANT = Merchant(settings_mod.SANDBOX_APPID, settings_mod.SANDBOX_MCH_ID, settings_mod.SANDBOX_KEY)


def soon(seconds: int = 3600) -> dt.datetime:
    return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)


async def unified(client: WxPayClient, no: str, fee: int = 100, expire: dt.datetime | None = None) -> dict:
    return await client.unified_order(out_trade_no=no, body="test", total_fee=fee,
                                      notify_url="http://127.0.0.1:9/wxpay/notify", product_id="p1",
                                      time_expire=expire or soon())


@pytest.fixture
def extra_settings() -> dict[str, object]:
    return {"sim_close_min_age_seconds": 0.0}


@pytest.fixture
def wx(http_server, base_url: str, io_loop):  # type: ignore[no-untyped-def]
    """A client of its own (closed with the test) for each merchant it is asked for."""
    sessions: list[aiohttp.ClientSession] = []

    def make(merchant: Merchant = MERCHANT, api_base: str = base_url + "/sandbox/wxpay") -> WxPayClient:
        session = aiohttp.ClientSession()
        sessions.append(session)
        return WxPayClient(session, api_base, merchant, timeout=3)

    yield make
    for s in sessions:
        io_loop.run_sync(s.close)


@pytest.mark.parametrize("sign_type", ["MD5", "HMAC-SHA256"])
@pytest.mark.gen_test(timeout=30)
async def test_unifiedorder_gives_a_stable_code_url(wx, sign_type: str) -> None:  # type: ignore[no-untyped-def]
    client = wx(Merchant(MERCHANT.appid, MERCHANT.mch_id, MERCHANT.key, sign_type))
    first = await unified(client, "T1" + sign_type[:3])
    assert first["code_url"].startswith("weixin://wxpay/bizpayurl?pr=")
    assert first["trade_type"] == "NATIVE" and first["prepay_id"]
    again = await unified(client, "T1" + sign_type[:3])
    assert again["code_url"] == first["code_url"]
    with pytest.raises(WxPayError) as err:
        await unified(client, "T1" + sign_type[:3], fee=101)
    assert err.value.err_code == "INVALID_REQUEST" and not err.value.retryable


@pytest.mark.gen_test(timeout=30)
async def test_query_close_and_their_error_codes(wx, shopper: Shopper) -> None:  # type: ignore[no-untyped-def]
    client = wx()
    with pytest.raises(WxPayError) as err:
        await client.order_query("NOPE")
    assert err.value.err_code == "ORDERNOTEXIST"
    trade = await unified(client, "T2")
    assert (await client.order_query("T2"))["trade_state"] == "NOTPAY"
    status, _ = await shopper.request("POST", "/sandbox/wxpay/scan", {"code_url": trade["code_url"]})
    assert status == 200
    assert (await client.order_query("T2"))["trade_state"] == "USERPAYING"
    await client.close_order("T2")
    assert (await client.order_query("T2"))["trade_state"] == "CLOSED"
    with pytest.raises(WxPayError) as err:
        await client.close_order("T2")
    assert err.value.err_code == "ORDERCLOSED"
    with pytest.raises(WxPayError) as err:
        await unified(client, "T2")
    assert err.value.err_code == "ORDERCLOSED"
    status, body = await shopper.request("POST", "/sandbox/wxpay/pay", {"code_url": trade["code_url"]})
    assert status == 409 and body["error"] == "ORDERCLOSED"


@pytest.mark.gen_test(timeout=30)
async def test_paid_trade_cannot_be_closed_and_query_tells_the_payment(wx, shopper: Shopper) -> None:  # type: ignore[no-untyped-def]
    client = wx()
    trade = await unified(client, "T3", fee=250)
    status, paid = await shopper.request("POST", "/sandbox/wxpay/pay",
                                         {"code_url": trade["code_url"], "notify": {"drop": True}})
    assert status == 200
    answer = await client.order_query("T3")
    assert answer["trade_state"] == "SUCCESS"
    assert answer["transaction_id"] == paid["transaction_id"] and answer["total_fee"] == "250"
    with pytest.raises(WxPayError) as err:
        await client.close_order("T3")
    assert err.value.err_code == "ORDERPAID"
    with pytest.raises(WxPayError) as err:
        await unified(client, "T3", fee=250)
    assert err.value.err_code == "ORDERPAID"


@pytest.mark.gen_test(timeout=30)
async def test_expired_qr_cannot_be_paid(wx, shopper: Shopper) -> None:  # type: ignore[no-untyped-def]
    trade = await unified(wx(), "T4", expire=soon(-60))
    status, body = await shopper.request("POST", "/sandbox/wxpay/pay", {"code_url": trade["code_url"]})
    assert status == 409 and body["error"] == "ORDER_EXPIRED"


@pytest.mark.gen_test(timeout=30)
async def test_wrong_credentials_are_refused_by_the_simulator(wx) -> None:  # type: ignore[no-untyped-def]
    for merchant, message in ((Merchant(MERCHANT.appid, MERCHANT.mch_id, "0" * 32), "签名错误"),
                              (Merchant("wx0000000000000000", MERCHANT.mch_id, MERCHANT.key), "appid"),
                              (Merchant(MERCHANT.appid, "1", MERCHANT.key), "mch_id")):
        with pytest.raises(WxPayReturnFail) as err:
            await unified(wx(merchant), "T5")
        assert message in err.value.message and err.value.retryable


@pytest.mark.parametrize("body, message", [
    (b"", "POST_DATA_EMPTY"),
    (b"<xml><appid>", "XML_FORMAT_ERROR"),
    (b'<!DOCTYPE x [<!ENTITY e "1">]><xml/>', "XML_FORMAT_ERROR"),
])
@pytest.mark.gen_test(timeout=30)
async def test_simulator_refuses_malformed_requests(body: bytes, message: str, base_url: str,  # type: ignore[no-untyped-def]
                                                    http_server) -> None:
    async with aiohttp.ClientSession() as http, \
            http.post(base_url + "/sandbox/wxpay/pay/unifiedorder", data=body) as resp:
        reply = xmlcodec.parse(await resp.read())
    assert reply["return_code"] == "FAIL" and message in reply["return_msg"]


@pytest.mark.gen_test(timeout=30)
async def test_simulator_wants_every_required_field(base_url: str, http_server) -> None:  # type: ignore[no-untyped-def]
    request = signing.signed({"appid": MERCHANT.appid, "mch_id": MERCHANT.mch_id,
                              "nonce_str": signing.nonce(), "out_trade_no": "T6", "trade_type": "NATIVE",
                              "body": "x", "total_fee": "1"}, MERCHANT.key)
    async with aiohttp.ClientSession() as http, \
            http.post(base_url + "/sandbox/wxpay/pay/unifiedorder", data=xmlcodec.render(request)) as resp:
        reply = xmlcodec.parse(await resp.read())
    assert reply["result_code"] == "FAIL" and reply["err_code"] == "LACK_PARAMS"
    assert "product_id" in reply["err_code_des"] and "notify_url" in reply["err_code_des"]
    assert signing.verify(reply, MERCHANT.key)
    async with aiohttp.ClientSession() as http, http.get(base_url + "/sandbox/wxpay/pay/orderquery") as resp:
        assert "REQUIRE_POST_METHOD" in xmlcodec.parse(await resp.read())["return_msg"]


class ForgedWeChat(tornado.web.RequestHandler):
    """A man in the middle answering with a signature made under another key."""

    def post(self) -> None:
        self.write(xmlcodec.render(signing.signed({
            "return_code": "SUCCESS", "result_code": "SUCCESS", "appid": MERCHANT.appid,
            "mch_id": MERCHANT.mch_id, "code_url": "weixin://wxpay/bizpayurl?pr=evil",
            "nonce_str": "x"}, "f" * 32)))


@pytest.mark.gen_test(timeout=30)
async def test_client_refuses_answers_it_cannot_verify_and_dead_endpoints(wx) -> None:  # type: ignore[no-untyped-def]
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    port = sockets[0].getsockname()[1]
    server = tornado.httpserver.HTTPServer(tornado.web.Application([(r"/pay/unifiedorder", ForgedWeChat)]))
    server.add_sockets(sockets)
    try:
        with pytest.raises(WxPayBadResponse):
            await unified(wx(api_base=f"http://127.0.0.1:{port}"), "T7")
    finally:
        server.stop()
    with pytest.raises(WxPayUnreachable) as err:
        await unified(wx(api_base="http://127.0.0.1:9"), "T8")
    assert err.value.retryable


@pytest.mark.gen_test(timeout=30)
async def test_notify_knobs_twice_and_drop(shopper: Shopper, services: Services) -> None:
    twice = await shopper.order([("fan-silk", 1)])
    dropped = await shopper.order([("fan-silk", 1)])
    for order, knobs in ((twice, {"copies": 2}), (dropped, {"drop": True})):
        native = await shopper.create_native(order["id"])
        status, _ = await shopper.request("POST", "/sandbox/wxpay/pay",
                                          {"code_url": native["code_url"], "notify": knobs})
        assert status == 200

    async def trade_notified_twice() -> dict[str, Any] | None:
        _, trade = await shopper.request("GET", f"/sandbox/wxpay/trades/{twice['id']}")
        return trade if len(trade["notify_replies"]) == 2 else None

    trade = await eventually(trade_notified_twice, message="both copies of the notify answered", within=5,
                             every=0.05)
    assert trade["notify_replies"] == ["SUCCESS", "SUCCESS"]
    assert (await shopper.get_order(twice["id"]))["status"] == "paid"
    doc = await services.store.orders.find_one({"_id": twice["id"]})
    assert doc is not None
    assert sorted(doc["logs"]) == ["created", "paid"]
    _, trade = await shopper.request("GET", f"/sandbox/wxpay/trades/{dropped['id']}")
    assert trade["trade_state"] == "SUCCESS" and trade["notify_replies"] == []
    assert (await shopper.get_order(dropped["id"]))["status"] == "unpaid"


@pytest.mark.gen_test(timeout=30)
async def test_create_native_records_a_payment_wechat_already_has(shopper: Shopper,
                                                                  services: Services) -> None:
    """The notify was lost and the cached QR expired: unifiedorder says ORDERPAID."""
    order = await shopper.order([("fan-silk", 1)])
    native = await shopper.create_native(order["id"])
    await shopper.request("POST", "/sandbox/wxpay/pay", {"code_url": native["code_url"], "notify": {"drop": True}})
    await services.store.orders.update_one({"_id": order["id"]}, {"$set": {"wx.at": 0}})
    status, body = await shopper.request("GET", f"/wxpay/createNative?orderId={order['id']}")
    assert status == 409 and body == {"error": "order is already paid"}
    paid = await shopper.get_order(order["id"])
    assert paid["status"] == "paid"
    assert [e["kind"] for e in paid["logs"]] == ["created", "paid"]
    assert "found by order query" in paid["logs"][1]["remarks"]


@pytest.mark.parametrize("payload, status", [
    (b"{}", 400), (b"[]", 400), (b"not json", 400),
    (b'{"code_url": "x", "notify": {"copies": "many"}}', 400),
    (b'{"code_url": "weixin://nope"}', 409),  # well formed, but no such trade
])
@pytest.mark.gen_test(timeout=30)
async def test_phone_endpoint_refuses_bad_input(payload: bytes, status: int, base_url: str,  # type: ignore[no-untyped-def]
                                                http_server) -> None:
    async with aiohttp.ClientSession() as http, http.post(base_url + "/sandbox/wxpay/pay", data=payload) as resp:
        assert resp.status == status
        assert "error" in await resp.json()
