"""POST /wxpay/notify: verified, recorded exactly once, refused with a reason otherwise."""

from __future__ import annotations

import asyncio
import itertools
import re
from typing import Any

import pytest

from server.composition.container import Services
from server.gateway.wxpay_v2 import signing, xmlcodec
from tests.support.notify_client import coupon_fields, notify_fields, post_notify, signed_notify
from tests.support.shopper import Shopper
from tests.support.waiting import eventually

SUCCESS_REPLY = (b"<xml><return_code><![CDATA[SUCCESS]]></return_code>"
                 b"<return_msg><![CDATA[OK]]></return_msg></xml>")


async def assert_untouched(shopper: Shopper, order: dict[str, Any]) -> None:
    now = await shopper.get_order(order["id"])
    assert now["status"] == "unpaid"
    assert now["transaction_id"] is None
    assert [e["kind"] for e in now["logs"]] == ["created"]
    status, _ = await shopper.request("GET", "/healthz")
    assert status == 200


def with_duplicate_sign(order: dict[str, Any]) -> bytes:
    good = signed_notify(order)
    return good.replace(b"</xml>", b"<sign><![CDATA[0123456789ABCDEF0123456789ABCDEF]]></sign></xml>")


def hmac_declared_md5_signed(order: dict[str, Any]) -> bytes:
    fields = signing.signed(notify_fields(order), "192006250b4c09247ec02edce69f6a2d", "MD5")
    fields["sign_type"] = "HMAC-SHA256"
    return xmlcodec.render(fields)


def hmac_under_wrong_key(order: dict[str, Any]) -> bytes:
    return signed_notify(order, key="f" * 32, sign_type="HMAC-SHA256")


def forged(order: dict[str, Any]) -> bytes:
    fields = notify_fields(order)
    fields["sign"] = "9A0A8659F005D6984697E2CA0A9CF3B7"
    return xmlcodec.render(fields)


def _with_sign(body: bytes, sign: str) -> bytes:
    return re.sub(rb"<sign><!\[CDATA\[[^\]]*\]\]></sign>",
                  b"<sign><![CDATA[" + sign.encode() + b"]]></sign>", body)


def _sign_of(body: bytes) -> str:
    return xmlcodec.parse(body)["sign"]


def coupon_notify(order: dict[str, Any], **kw: Any) -> bytes:
    return signed_notify(order, **{**coupon_fields(order), **kw})


def tampered_coupon(order: dict[str, Any]) -> bytes:
    return coupon_notify(order).replace(b"<coupon_fee_1>2</coupon_fee_1>", b"<coupon_fee_1>200</coupon_fee_1>")


def injected_field(order: dict[str, Any]) -> bytes:
    return coupon_notify(order).replace(b"</xml>", b"<coupon_fee_2>1</coupon_fee_2></xml>")


def ff_ligature(order: dict[str, Any]) -> bytes:
    """A genuine sign with its first "FF" spelled as U+FB00, which upper-cases to "FF"."""
    for n in itertools.count():
        body = signed_notify(order, nonce_str=f"ligature{n}")
        if "FF" in _sign_of(body):
            return _with_sign(body, _sign_of(body).replace("FF", "\ufb00", 1))
    raise AssertionError("unreachable")


def declared_hmac_stripped(order: dict[str, Any]) -> bytes:
    body = signed_notify(order, sign_type="HMAC-SHA256", declare=True)
    return body.replace(b"<sign_type><![CDATA[HMAC-SHA256]]></sign_type>", b"")


ABUSE = {
    "forged signature": (forged, 400, "signature"),
    "right signature, wrong key": (lambda o: signed_notify(o, key="0" * 32), 400, "signature"),
    "HMAC notify under the wrong key": (hmac_under_wrong_key, 400, "signature"),
    "declares HMAC, signed MD5": (hmac_declared_md5_signed, 400, "signature"),
    "amount one fen off": (lambda o: signed_notify(o, total_fee=str(o["pay_money"] - 1)), 400, "total_fee"),
    "amount one fen over": (lambda o: signed_notify(o, total_fee=str(o["pay_money"] + 1)), 400, "total_fee"),
    # Signed, so it reaches the amount check: "²".isdigit() is True and int("²") raises.
    "amount in superscript digits": (lambda o: signed_notify(o, total_fee="²"), 400, "total_fee"),
    "amount in Arabic-Indic digits": (lambda o: signed_notify(o, total_fee="١٠٠"), 400, "total_fee"),
    "wrong appid": (lambda o: signed_notify(o, appid="wx0000000000000000"), 400, "appid"),
    "wrong mch_id": (lambda o: signed_notify(o, mch_id="19999999"), 400, "mch_id"),
    "unknown order": (lambda o: signed_notify({**o, "id": "20261127ffffffffffffffffffffffff"}), 400, "unknown"),
    "over-long order id": (lambda o: signed_notify({**o, "id": "x" * 200}), 400, "unknown"),
    "coupon field tampered": (tampered_coupon, 400, "signature"),
    "unsigned coupon field injected": (injected_field, 400, "signature"),
    "sign one digit short": (lambda o: _with_sign(signed_notify(o), _sign_of(signed_notify(o))[:-1]),
                             400, "signature"),
    "HMAC sign cut to MD5 length": (lambda o: _with_sign(
        signed_notify(o, sign_type="HMAC-SHA256", declare=False),
        _sign_of(signed_notify(o, sign_type="HMAC-SHA256", declare=False))[:32]), 400, "signature"),
    "sign not ASCII": (lambda o: _with_sign(signed_notify(o), "é" * 32), 400, "signature"),
    "ff ligature in the sign": (ff_ligature, 400, "signature"),
    "unknown sign_type": (lambda o: signed_notify(o, sign_type="MD5", declare=False).replace(
        b"</xml>", b"<sign_type>SHA1</sign_type></xml>"), 400, "signature"),
    "declared sign_type stripped": (declared_hmac_stripped, 400, "signature"),
    "sign given twice": (with_duplicate_sign, 400, "more than once"),
    "nested field": (lambda o: signed_notify(o).replace(b"<openid>", b"<openid><a>1</a>"), 400, "malformed"),
    "DOCTYPE with entity": (lambda o: b'<!DOCTYPE xml [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
                            b"<xml><out_trade_no>&x;</out_trade_no></xml>", 400, "DTD"),
    "billion laughs": (lambda o: b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaa">'
                       b'<!ENTITY b "&a;&a;&a;&a;">]><xml><c>&b;</c></xml>', 400, "DTD"),
    "1 MiB body": (lambda o: b"<xml><pad>" + b"A" * (1 << 20) + b"</pad></xml>", 413, "too large"),
    "empty body": (lambda o: b"", 400, "empty"),
    "not XML": (lambda o: b'{"return_code": "SUCCESS"}', 400, "malformed"),
    "return_code FAIL": (lambda o: signed_notify(o, return_code="FAIL"), 400, "return_code"),
    "no transaction_id": (lambda o: signed_notify(o, transaction_id=""), 400, "transaction_id"),
}


@pytest.mark.parametrize("case", list(ABUSE))
@pytest.mark.gen_test(timeout=30)
async def test_abusive_notify_is_refused_and_changes_nothing(case: str, shopper: Shopper, base_url: str) -> None:
    order = await shopper.order([("fan-silk", 1)])
    make_body, http_status, reason = ABUSE[case]
    status, reply = await post_notify(base_url, make_body(order))
    assert status == http_status
    assert reply["return_code"] == "FAIL"
    assert reason.lower() in reply["return_msg"].lower()
    await assert_untouched(shopper, order)


@pytest.mark.gen_test(timeout=30)
async def test_get_is_refused(shopper: Shopper, base_url: str) -> None:
    order = await shopper.order([("fan-silk", 1)])
    status, reply = await post_notify(base_url, b"", method="GET")
    assert status == 405 and reply["return_code"] == "FAIL"
    await assert_untouched(shopper, order)


@pytest.mark.gen_test(timeout=30)
async def test_chunked_oversized_body_is_refused(shopper: Shopper, base_url: str) -> None:
    import aiohttp

    order = await shopper.order([("fan-silk", 1)])

    async def chunks():  # no Content-Length: the limit must hold while streaming
        for _ in range(32):
            yield b"<pad>" + b"B" * 4096 + b"</pad>"

    async with aiohttp.ClientSession() as http:
        try:
            async with http.post(base_url + "/wxpay/notify", data=chunks()) as resp:
                assert resp.status in (400, 413)
        except aiohttp.ClientError:
            pass  # the server may cut the connection once the limit is passed
    await assert_untouched(shopper, order)


@pytest.mark.parametrize("sign_type", ["MD5", "HMAC-SHA256"])
@pytest.mark.gen_test(timeout=30)
async def test_valid_notify_records_payment_once(sign_type: str, shopper: Shopper, base_url: str) -> None:
    order = await shopper.order([("mug-celadon", 1)])
    body = signed_notify(order, sign_type=sign_type)
    async with __import__("aiohttp").ClientSession() as http, \
            http.post(base_url + "/wxpay/notify", data=body) as resp:
        assert resp.status == 200
        assert await resp.read() == SUCCESS_REPLY
    paid = await shopper.get_order(order["id"])
    assert paid["status"] == "paid"
    assert paid["transaction_id"] == "4200000000202611270000000001"

    # WeChat repeats itself: SUCCESS again, nothing changes.
    status, reply = await post_notify(base_url, signed_notify(order, sign_type=sign_type))
    assert (status, reply["return_code"]) == (200, "SUCCESS")
    again = await shopper.get_order(order["id"])
    # Everything but "pushes", which the event's publish fills in after the reply.
    assert {**again, "pushes": None} == {**paid, "pushes": None}
    assert [e["kind"] for e in again["logs"]] == ["created", "paid"]


@pytest.mark.gen_test(timeout=30)
async def test_twenty_concurrent_copies_record_one_payment(shopper: Shopper, base_url: str,
                                                           services: Services) -> None:
    order = await shopper.order([("tea-longjing", 2)])
    body = signed_notify(order)
    replies = await asyncio.gather(*(post_notify(base_url, body) for _ in range(20)))
    assert [r[1]["return_code"] for r in replies] == ["SUCCESS"] * 20
    paid = await shopper.get_order(order["id"])
    assert paid["status"] == "paid"
    assert [e["kind"] for e in paid["logs"]].count("paid") == 1
    doc = await services.store.orders.find_one({"_id": order["id"]})
    assert doc is not None
    assert list(doc["logs"]) == ["created", "paid"]


@pytest.mark.gen_test(timeout=30)
async def test_failed_payment_result_is_acknowledged_and_order_stays_unpaid(
        shopper: Shopper, base_url: str) -> None:
    order = await shopper.order([("fan-silk", 1)])
    body = signed_notify(order, result_code="FAIL", err_code="NOTENOUGH", err_code_des="余额不足",
                         transaction_id="")
    status, reply = await post_notify(base_url, body)
    assert (status, reply["return_code"]) == (200, "SUCCESS")
    now = await shopper.get_order(order["id"])
    assert now["status"] == "unpaid"
    assert [e["kind"] for e in now["logs"]] == ["created", "payment_failed"]


@pytest.mark.gen_test(timeout=30)
async def test_second_payment_of_a_paid_order_is_flagged_not_recorded(shopper: Shopper, base_url: str) -> None:
    order = await shopper.order([("fan-silk", 1)])
    await post_notify(base_url, signed_notify(order))
    status, reply = await post_notify(base_url, signed_notify(order, transaction_id="4200000000999"))
    assert (status, reply["return_code"]) == (200, "SUCCESS")
    now = await shopper.get_order(order["id"])
    assert now["transaction_id"] == "4200000000202611270000000001"
    kinds = [e["kind"] for e in now["logs"]]
    assert kinds[:3] == ["created", "paid", "duplicate_payment_4200000000999"]
    # Given back (tests/test_refunds.py follows such a refund to its end).
    [refund] = now["refunds"]
    assert (refund["transaction_id"], refund["amount"]) == ("4200000000999", order["pay_money"])
    assert now["refunded"] == 0, "the second payment's refund is not a refund of the order"


# -- notifies as WeChat really sends them ---------------------------------------

HMAC_MERCHANT = [{"wxpay_sign_type": "HMAC-SHA256"}]


async def assert_paid_once(shopper: Shopper, order: dict[str, Any]) -> None:
    paid = await shopper.get_order(order["id"])
    assert paid["status"] == "paid"
    assert paid["transaction_id"] == "4200000000202611270000000001"
    assert [e["kind"] for e in paid["logs"]] == ["created", "paid"]


@pytest.mark.parametrize("extra_settings", HMAC_MERCHANT)
@pytest.mark.parametrize("coupons", [False, True])
@pytest.mark.gen_test(timeout=30)
async def test_hmac_merchant_accepts_notify_without_sign_type(extra_settings: dict[str, object], coupons: bool,
                                                              shopper: Shopper, base_url: str) -> None:
    """An order placed with HMAC-SHA256 gets a notify signed with it and no
    sign_type field (binarywang/WxJava#1585, easy-swoole/pay#38)."""
    order = await shopper.order([("mug-celadon", 1)])
    extra = coupon_fields(order) if coupons else {}
    body = signed_notify(order, sign_type="HMAC-SHA256", declare=False, **extra)
    assert b"sign_type" not in body and len(_sign_of(body)) == 64
    status, reply = await post_notify(base_url, body)
    assert (status, reply["return_code"]) == (200, "SUCCESS")
    await assert_paid_once(shopper, order)


@pytest.mark.parametrize("extra_settings", HMAC_MERCHANT)
@pytest.mark.parametrize("declare", [False, True])
@pytest.mark.gen_test(timeout=30)
async def test_hmac_merchant_refuses_md5_notify(extra_settings: dict[str, object], declare: bool,
                                                shopper: Shopper, base_url: str) -> None:
    """No downgrade: genuinely MD5-signed with the right key, and still refused,
    since WeChat signs this merchant's notifies with HMAC-SHA256."""
    order = await shopper.order([("fan-silk", 1)])
    body = signed_notify(order, sign_type="MD5", declare=declare)
    status, reply = await post_notify(base_url, body)
    assert status == 400 and reply["return_code"] == "FAIL"
    assert "MD5 is weaker than the HMAC-SHA256" in reply["return_msg"]
    await assert_untouched(shopper, order)
    # the control: the same notify signed HMAC-SHA256 is recorded
    status, reply = await post_notify(base_url, signed_notify(order, sign_type="HMAC-SHA256", declare=declare))
    assert (status, reply["return_code"]) == (200, "SUCCESS")
    await assert_paid_once(shopper, order)


@pytest.mark.parametrize("sign_type, declare", [("HMAC-SHA256", False), ("MD5", True)])
@pytest.mark.gen_test(timeout=30)
async def test_md5_merchant_accepts_other_genuine_spellings(sign_type: str, declare: bool,
                                                           shopper: Shopper, base_url: str) -> None:
    """HMAC-SHA256 is no weaker than MD5: an order placed before a switch back to
    MD5 still gets its notify recorded. sign_type=MD5 spelled out is MD5."""
    order = await shopper.order([("tea-longjing", 1)])
    body = signed_notify(order, sign_type=sign_type, declare=declare, **coupon_fields(order))
    status, reply = await post_notify(base_url, body)
    assert (status, reply["return_code"]) == (200, "SUCCESS")
    await assert_paid_once(shopper, order)


@pytest.mark.gen_test(timeout=30)
async def test_coupon_notify_records_the_order_amount(shopper: Shopper, base_url: str) -> None:
    """total_fee is the order's amount; coupons only lower cash_fee."""
    order = await shopper.order([("fan-silk", 2)])
    status, reply = await post_notify(base_url, coupon_notify(order))
    assert (status, reply["return_code"]) == (200, "SUCCESS")
    await assert_paid_once(shopper, order)


@pytest.mark.gen_test(timeout=30)
async def test_empty_fields_take_no_part_in_the_signature(shopper: Shopper, base_url: str) -> None:
    """WeChat's rule: an empty value is left out of the signed string, so an empty
    element added to a genuine notify changes nothing that was signed."""
    order = await shopper.order([("fan-silk", 1)])
    body = signed_notify(order).replace(b"</xml>", b"<attach></attach><device_info><![CDATA[]]></device_info></xml>")
    status, reply = await post_notify(base_url, body)
    assert (status, reply["return_code"]) == (200, "SUCCESS")
    await assert_paid_once(shopper, order)


@pytest.mark.parametrize("extra_settings", HMAC_MERCHANT)
@pytest.mark.gen_test(timeout=30)
async def test_simulated_wechat_notify_without_sign_type_and_with_coupons(extra_settings: dict[str, object],
                                                                         shopper: Shopper) -> None:
    """End to end: paypush places the order with HMAC-SHA256, the simulator pays
    it with coupons and notifies the way WeChat does, without sign_type; the
    first notify is acknowledged."""
    order = await shopper.order([("tea-longjing", 1)])
    native = await shopper.create_native(order["id"])
    status, _ = await shopper.request("POST", "/sandbox/wxpay/pay", {
        "code_url": native["code_url"], "notify": {"coupons": 3, "omit_sign_type": True}})
    assert status == 200

    async def answered_trade() -> dict[str, Any] | None:
        _, trade = await shopper.request("GET", f"/sandbox/wxpay/trades/{order['id']}")
        return trade if trade["notify_replies"] else None

    trade = await eventually(answered_trade, message="the simulator's notify answered", within=5, every=0.05)
    assert trade["notify_replies"][:1] == ["SUCCESS"]
    paid = await shopper.get_order(order["id"])
    assert paid["status"] == "paid" and paid["transaction_id"] == trade["transaction_id"]


def test_simulator_notify_with_coupons_is_signed_as_wechat_would() -> None:
    """The simulator's coupon notify, checked against wechatpy as a peer: the
    coupon fields are in the signed string and the amounts add up."""
    from wechatpy.pay import utils

    from server.simulator.notifier import Notifier, NotifyPlan
    from server.simulator.trades import Trade

    key = "192006250b4c09247ec02edce69f6a2d"
    trade = Trade("20261127aaaa", {"sign_type": "HMAC-SHA256", "total_fee": "100", "trade_type": "NATIVE"},
                  0.0, "weixin://wxpay/bizpayurl?pr=x", "wx1", transaction_id="4200000001", time_end="20261127120000")
    notifier = Notifier(None, key, "wxd930ea5d5a258f4f", "10000100")  # type: ignore[arg-type]  # no sending here
    message = notifier.message(trade, NotifyPlan(coupons=3, omit_sign_type=True))
    assert "sign_type" not in message
    unsigned = {k: v for k, v in message.items() if k != "sign"}
    assert message["sign"] == utils.calculate_signature_hmac(unsigned, key)
    assert int(message["cash_fee"]) + int(message["coupon_fee"]) == int(message["total_fee"]) == 100
    assert message["coupon_count"] == "3"
    assert sum(int(message[f"coupon_fee_{i}"]) for i in range(3)) == int(message["coupon_fee"])
    assert int(message["settlement_total_fee"]) == 100 - sum(
        int(message[f"coupon_fee_{i}"]) for i in range(3) if message[f"coupon_type_{i}"] == "NO_CASH")
    # without the knob the declared sign_type is kept, and it is part of what was signed
    declared = notifier.message(trade, NotifyPlan())
    assert declared["sign_type"] == "HMAC-SHA256"
    assert declared["sign"] == utils.calculate_signature_hmac(
        {k: v for k, v in declared.items() if k != "sign"}, key)
