"""POST /wxpay/notify: verified, recorded exactly once, refused with a reason otherwise."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from server.services import Services
from server.wxpay import signing, xmlcodec
from tests.notify_client import notify_fields, post_notify, signed_notify
from tests.shopper import Shopper

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


ABUSE = {
    "forged signature": (forged, 400, "signature"),
    "right signature, wrong key": (lambda o: signed_notify(o, key="0" * 32), 400, "signature"),
    "HMAC notify under the wrong key": (hmac_under_wrong_key, 400, "signature"),
    "declares HMAC, signed MD5": (hmac_declared_md5_signed, 400, "signature"),
    "amount one fen off": (lambda o: signed_notify(o, total_fee=str(o["pay_money"] - 1)), 400, "total_fee"),
    "amount one fen over": (lambda o: signed_notify(o, total_fee=str(o["pay_money"] + 1)), 400, "total_fee"),
    "wrong appid": (lambda o: signed_notify(o, appid="wx0000000000000000"), 400, "appid"),
    "wrong mch_id": (lambda o: signed_notify(o, mch_id="19999999"), 400, "mch_id"),
    "unknown order": (lambda o: signed_notify({**o, "id": "20261127ffffffffffffffffffffffff"}), 400, "unknown"),
    "over-long order id": (lambda o: signed_notify({**o, "id": "x" * 200}), 400, "unknown"),
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
    assert again == paid
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
    assert [e["kind"] for e in now["logs"]] == ["created", "paid", "duplicate_payment"]
