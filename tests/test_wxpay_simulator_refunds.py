"""Refunds in the WeChat Pay simulator, checked by clients no one here wrote.

v2: ``wechatpy`` (PyPI, a test dependency only) applies for and queries refunds
over real HTTP, checks the answers' signatures, and decrypts the refund
notifies' ``req_info`` with its own ``parse_refund_notify_result``. v3:
``wechatpayv3`` refunds and queries (verifying every answer's signature) and
reads REFUND.* notifies with its own callback parser. Both share one book of
trades, so the rules (paid trade, matching total, not more than is left, the
same out_refund_no is the same refund) are checked once each, by whichever
face says them most plainly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import tornado.httpserver
import tornado.netutil
import tornado.web
import xmltodict
from wechatpayv3 import WeChatPay, WeChatPayType
from wechatpy.exceptions import WeChatPayException
from wechatpy.pay import WeChatPay as WeChatPayV2

from server.simulator import app as simulator_app
from server.simulator.v3_keys import PUBLIC_KEY_MODE, SandboxKeyFiles, generate_sandbox_keys
from tests.support.waiting import eventually

MCHID, APPID = "1900000109", "wxd678efh567hg6787"
API_KEY = "192006250b4c09247ec02edce69f6a2d"  # the example key of WeChat's v2 signing docs
PREFIX = "/sandbox/wxpay"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def key_files(tmp_path_factory: pytest.TempPathFactory) -> SandboxKeyFiles:
    return generate_sandbox_keys(tmp_path_factory.mktemp("wxpay_v3_refunds"))


@dataclass
class World:
    """The simulator on a real port, and a merchant beside it whose notify
    endpoints hand every notify to the third-party parsers."""

    files: SandboxKeyFiles
    sim: simulator_app.Simulator
    http: aiohttp.ClientSession
    base: str
    refuse_notifies: int = 0  # answer this many notifies FAIL first
    v2_notifies: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (kind, as wechatpy read it)
    v2_raw: list[bytes] = field(default_factory=list)
    v3_notifies: list[dict[str, Any] | None] = field(default_factory=list)  # as wechatpayv3 read them
    v3_parser: WeChatPay | None = None
    v3_raw: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    @property
    def api_base(self) -> str:
        return self.base + PREFIX

    def wechatpy(self) -> WeChatPayV2:
        client = WeChatPayV2(appid=APPID, api_key=API_KEY, mch_id=MCHID, timeout=10)
        client.API_BASE_URL = self.api_base + "/"  # the library's way to another host
        return client

    def wechatpayv3(self) -> WeChatPay:
        client = WeChatPay(wechatpay_type=WeChatPayType.NATIVE, mchid=MCHID,
                           private_key=self.files.merchant_private_key.read_text(),
                           cert_serial_no=self.files.merchant_serial, appid=APPID,
                           apiv3_key=self.files.apiv3_key, notify_url=self.base + "/merchant/v3",
                           public_key=self.files.public_key.read_text(), public_key_id=self.files.public_key_id,
                           timeout=(3, 10))
        client._core._gate_way = self.api_base
        return client

    async def control(self, **knobs: Any) -> dict[str, Any]:
        async with self.http.post(f"{self.api_base}/control", json=knobs) as r:
            assert r.status == 200, await r.text()
            return await r.json()

    async def view(self, kind: str, no: str) -> dict[str, Any]:
        async with self.http.get(f"{self.api_base}/{kind}/{no}") as r:
            assert r.status == 200, await r.text()
            return await r.json()

    async def phone_pay(self, code_url: str, **payload: Any) -> dict[str, Any]:
        async with self.http.post(f"{self.api_base}/pay", json={"code_url": code_url, **payload}) as r:
            assert r.status == 200, await r.text()
            return await r.json()


async def v2(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """wechatpy is synchronous (requests): run it beside the event loop."""
    return await asyncio.to_thread(fn, *args, **kwargs)


async def v2_refused(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> str:
    """The err_code of a call the simulator refuses (result_code FAIL)."""
    with pytest.raises(WeChatPayException) as err:
        await v2(fn, *args, **kwargs)
    assert err.value.result_code == "FAIL", err.value
    return str(err.value.errcode)


async def v3(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[int, Any]:
    code, text = await asyncio.to_thread(fn, *args, **kwargs)
    return code, json.loads(text) if text else None


class V2Notify(tornado.web.RequestHandler):
    def initialize(self, world: World) -> None:
        self.world = world

    def check_xsrf_cookie(self) -> None:
        """Server-to-server."""

    def post(self) -> None:
        body = self.request.body
        self.world.v2_raw.append(body)
        client = self.world.wechatpy()
        if "req_info" in xmltodict.parse(body)["xml"]:
            self.world.v2_notifies.append(("refund", dict(client.parse_refund_notify_result(body))))
        else:
            self.world.v2_notifies.append(("payment", dict(client.parse_payment_result(body))))
        refuse = self.world.refuse_notifies > 0
        self.world.refuse_notifies -= 1
        self.set_header("Content-Type", "text/xml")
        self.finish(f"<xml><return_code>{'FAIL' if refuse else 'SUCCESS'}</return_code></xml>")


class V3Notify(tornado.web.RequestHandler):
    def initialize(self, world: World) -> None:
        self.world = world

    def check_xsrf_cookie(self) -> None:
        """Server-to-server."""

    async def post(self) -> None:
        assert self.world.v3_parser is not None
        self.world.v3_raw.append((dict(self.request.headers), self.request.body))
        parsed = await asyncio.to_thread(self.world.v3_parser.callback, self.request.headers, self.request.body)
        self.world.v3_notifies.append(parsed)
        self.set_status(204 if parsed else 500)


@contextlib.asynccontextmanager
async def refund_world(files: SandboxKeyFiles) -> AsyncIterator[World]:
    http = aiohttp.ClientSession()
    sim = simulator_app.Simulator.create(http, appid=APPID, mch_id=MCHID, key=API_KEY, close_min_age_seconds=0.0,
                                         notify_speed=1000.0, v3=files.v3_keys(MCHID, APPID, PUBLIC_KEY_MODE))
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    world = World(files, sim, http, f"http://127.0.0.1:{sockets[0].getsockname()[1]}")
    world.v3_parser = world.wechatpayv3()
    app = tornado.web.Application([*simulator_app.routes(PREFIX, sim),
                                   (r"/merchant/v2", V2Notify, {"world": world}),
                                   (r"/merchant/v3", V3Notify, {"world": world})],
                                  template_path=str(ROOT / "templates"), static_path=str(ROOT / "static"))
    server = tornado.httpserver.HTTPServer(app)
    server.add_sockets(sockets)
    try:
        yield world
    finally:
        server.stop()
        await sim.close()
        await http.close()


def no(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:20]


async def v2_order(world: World, client: WeChatPayV2, total: int = 100) -> tuple[str, str]:
    out_trade_no = no("T")
    placed = await v2(client.order.create, trade_type="NATIVE", body="silk fan", total_fee=total,
                      notify_url=world.base + "/merchant/v2", client_ip="127.0.0.1", product_id="p1",
                      out_trade_no=out_trade_no)
    return out_trade_no, placed["code_url"]


async def v2_paid(world: World, client: WeChatPayV2, total: int = 100) -> tuple[str, str, str]:
    """A paid v2 trade (its payment notify dropped): out_trade_no, transaction_id, code_url."""
    out_trade_no, code_url = await v2_order(world, client, total)
    paid = await world.phone_pay(code_url, notify={"drop": True})
    return out_trade_no, paid["transaction_id"], code_url


def apply(client: WeChatPayV2, out_refund_no: str, refund_fee: int, total_fee: int = 100,
          **kwargs: Any) -> Any:
    return client.refund.apply(total_fee=total_fee, refund_fee=refund_fee, out_refund_no=out_refund_no, **kwargs)


@pytest.mark.gen_test(timeout=60)
async def test_v2_refund_rules_as_wechatpy_sees_them(key_files: SandboxKeyFiles) -> None:
    async with refund_world(key_files) as world:
        client = world.wechatpy()
        unpaid, _ = await v2_order(world, client)
        assert await v2_refused(apply, client, no("R"), 100, out_trade_no=unpaid) == "TRADE_STATE_ERROR"
        assert await v2_refused(apply, client, no("R"), 100, out_trade_no=no("T")) == "INVALID_TRANSACTIONID"

        trade_no, transaction_id, _ = await v2_paid(world, client)
        first = no("R")
        answer = await v2(apply, client, first, 40, out_trade_no=trade_no)
        assert client.check_signature(answer), answer  # signed like every v2 answer
        assert (answer["out_refund_no"], answer["out_trade_no"], answer["transaction_id"]) == \
            (first, trade_no, transaction_id)
        assert (answer["refund_fee"], answer["total_fee"], answer["cash_fee"]) == ("40", "100", "100")
        assert len(answer["refund_id"]) == 29

        again = await v2(apply, client, first, 40, out_trade_no=trade_no)  # a retry is the same refund
        assert again["refund_id"] == answer["refund_id"]
        assert await v2_refused(apply, client, first, 41, out_trade_no=trade_no) == "PARAM_ERROR"
        assert await v2_refused(apply, client, no("R"), 61, out_trade_no=trade_no) == "NOTENOUGH"
        assert await v2_refused(apply, client, no("R"), 10, total_fee=99, out_trade_no=trade_no) == "PARAM_ERROR"
        assert await v2_refused(apply, client, no("R"), 0, out_trade_no=trade_no) == "PARAM_ERROR"
        second = no("R")
        await v2(apply, client, second, 60, transaction_id=transaction_id)  # exactly what is left
        assert await v2_refused(apply, client, no("R"), 1, out_trade_no=trade_no) == "NOTENOUGH"

        queried = await v2(client.order.query, out_trade_no=trade_no)
        assert client.check_signature(queried)
        assert (queried["trade_state"], queried["transaction_id"]) == ("REFUND", transaction_id)
        shown = await world.view("trades", trade_no)
        assert [r["out_refund_no"] for r in shown["refunds"]] == [first, second]

        async def settled() -> dict[str, Any] | None:
            found = await v2(client.refund.query, out_refund_no=first)
            return found if found["refund_status_0"] == "SUCCESS" else None

        found = await eventually(settled, message="the refund settled SUCCESS", within=10)
        assert client.check_signature(found)
        assert (found["refund_count"], found["out_refund_no_0"], found["refund_id_0"], found["refund_fee_0"]) == \
            ("1", first, answer["refund_id"], "40")
        assert time.strptime(found["refund_success_time_0"], "%Y-%m-%d %H:%M:%S")
        by_order = await v2(client.refund.query, out_trade_no=trade_no)
        assert (by_order["refund_count"], by_order["out_refund_no_1"], by_order["refund_fee"]) == ("2", second, "100")
        assert await v2_refused(client.refund.query, out_refund_no=no("R")) == "REFUNDNOTEXIST"


@pytest.mark.gen_test(timeout=60)
async def test_v2_systemerror_then_a_retry_with_the_same_number_gives_one_refund(
        key_files: SandboxKeyFiles) -> None:
    async with refund_world(key_files) as world:
        client = world.wechatpy()
        trade_no, _, _ = await v2_paid(world, client)
        state = await world.control(refund={"systemerror": 2})
        assert state["refund"]["systemerror"] == 2
        refund_no = no("R")
        assert await v2_refused(apply, client, refund_no, 100, out_trade_no=trade_no) == "SYSTEMERROR"
        # WeChat may have taken it all the same: so a new number now would refund twice.
        assert (await world.view("refunds", refund_no))["refund_fee"] == 100
        assert await v2_refused(apply, client, refund_no, 100, out_trade_no=trade_no) == "SYSTEMERROR"
        answer = await v2(apply, client, refund_no, 100, out_trade_no=trade_no)
        assert answer["out_refund_no"] == refund_no
        shown = await world.view("trades", trade_no)
        assert [r["out_refund_no"] for r in shown["refunds"]] == [refund_no]
        assert await v2_refused(apply, client, no("R"), 1, out_trade_no=trade_no) == "NOTENOUGH"


@pytest.mark.gen_test(timeout=60)
async def test_v2_refund_notify_is_decrypted_by_wechatpy_and_retried(key_files: SandboxKeyFiles) -> None:
    async with refund_world(key_files) as world:
        client = world.wechatpy()
        world.refuse_notifies = 1  # the merchant fails the first: WeChat sends it again
        trade_no, transaction_id, _ = await v2_paid(world, client, total=300)
        refund_no = no("R")
        answer = await v2(apply, client, refund_no, 120, total_fee=300, out_trade_no=trade_no,
                          notify_url=world.base + "/merchant/v2")

        async def acknowledged() -> dict[str, Any] | None:
            shown = await world.view("refunds", refund_no)
            return shown if "SUCCESS" in shown["notify_replies"] else None

        shown = await eventually(acknowledged, message="the refund notify acknowledged", within=10)
        assert shown["notify_replies"] == ["FAIL", "SUCCESS"] and shown["status"] == "SUCCESS"
        envelope = xmltodict.parse(world.v2_raw[-1])["xml"]
        assert set(envelope) == {"return_code", "appid", "mch_id", "nonce_str", "req_info"}  # no sign
        (_, first), (_, second) = world.v2_notifies
        assert first == second  # the retry says the same
        assert (second["out_refund_no"], second["refund_id"], second["out_trade_no"], second["transaction_id"]) == \
            (refund_no, answer["refund_id"], trade_no, transaction_id)
        assert (second["total_fee"], second["refund_fee"], second["settlement_refund_fee"]) == (300, 120, 120)
        assert second["refund_status"] == "SUCCESS" and second["refund_request_source"] == "API"
        assert time.strptime(second["success_time"], "%Y-%m-%d %H:%M:%S")


@pytest.mark.gen_test(timeout=60)
async def test_refund_outcomes_and_notify_knobs(key_files: SandboxKeyFiles) -> None:
    async with refund_world(key_files) as world:
        client = world.wechatpy()
        notify_url = world.base + "/merchant/v2"
        trade_no, _, _ = await v2_paid(world, client)

        await world.control(refund={"outcome": "closed", "delay": 0.05, "notify": {"drop": True}})
        closed = no("R")
        await v2(apply, client, closed, 100, out_trade_no=trade_no, notify_url=notify_url)
        found = await eventually(
            lambda: _status(client, closed, "REFUNDCLOSE"), message="the refund closed", within=10)
        assert "refund_success_time_0" not in found
        # A closed refund gave nothing back: the whole amount can be refunded again.
        await world.control(refund={"outcome": "abnormal", "notify": {"drop": False, "copies": 3}})
        abnormal = no("R")
        await v2(apply, client, abnormal, 100, out_trade_no=trade_no, notify_url=notify_url)
        await eventually(lambda: len(world.v2_notifies) >= 3, message="three copies of the notify", within=10)
        # The dropped notify of the earlier refund was due first and never came.
        assert {n["out_refund_no"] for _, n in world.v2_notifies} == {abnormal}
        assert {n["refund_status"] for _, n in world.v2_notifies} == {"CHANGE"}
        assert "success_time" not in world.v2_notifies[0][1]
        assert (await _status(client, abnormal, "CHANGE")) is not None
        assert (await world.view("refunds", closed))["notify_replies"] == []


async def _status(client: WeChatPayV2, out_refund_no: str, status: str) -> dict[str, Any] | None:
    found = await v2(client.refund.query, out_refund_no=out_refund_no)
    return found if found["refund_status_0"] == status else None


@pytest.mark.gen_test(timeout=60)
async def test_a_duplicate_payment_is_its_own_transaction_and_refunded_on_its_own(
        key_files: SandboxKeyFiles) -> None:
    async with refund_world(key_files) as world:
        client = world.wechatpy()
        trade_no, first_transaction, code_url = await v2_paid(world, client, total=250)
        again = await world.phone_pay(code_url, duplicate=True)
        duplicate = again["transaction_id"]
        assert duplicate != first_transaction and again["out_trade_no"] == trade_no
        await eventually(lambda: world.v2_notifies, message="the duplicate's payment notify", within=10)
        kind, paid = world.v2_notifies[0]  # wechatpy checked its sign
        assert (kind, paid["transaction_id"], paid["out_trade_no"], paid["total_fee"]) == \
            ("payment", duplicate, trade_no, 250)
        shown = await world.view("trades", trade_no)
        assert [t["transaction_id"] for t in shown["extra_transactions"]] == [duplicate]
        assert shown["transaction_id"] == first_transaction

        refund = await v2(apply, client, no("R"), 250, total_fee=250, transaction_id=duplicate)
        assert refund["transaction_id"] == duplicate
        assert await v2_refused(apply, client, no("R"), 1, total_fee=250, transaction_id=duplicate) == "NOTENOUGH"
        # The order's own payment is untouched: its state and its whole amount are still there.
        assert (await v2(client.order.query, out_trade_no=trade_no))["trade_state"] == "SUCCESS"
        own = await v2(apply, client, no("R"), 250, total_fee=250, out_trade_no=trade_no)
        assert own["transaction_id"] == first_transaction
        assert (await v2(client.order.query, out_trade_no=trade_no))["trade_state"] == "REFUND"


# -- v3 ---------------------------------------------------------------------------

async def v3_paid(world: World, client: WeChatPay, total: int = 100) -> tuple[str, str]:
    out_trade_no = no("V3")
    code, placed = await v3(client.pay, description="silk fan", out_trade_no=out_trade_no,
                            amount={"total": total})
    assert code == 200, placed
    paid = await world.phone_pay(placed["code_url"], notify={"drop": True})
    return out_trade_no, paid["transaction_id"]


@pytest.mark.gen_test(timeout=60)
async def test_wechatpayv3_refunds_queries_and_reads_the_refund_notify(key_files: SandboxKeyFiles) -> None:
    async with refund_world(key_files) as world:
        client = world.wechatpayv3()  # verifies every 2xx answer's signature itself
        unpaid = no("V3")
        code, placed = await v3(client.pay, description="fan", out_trade_no=unpaid, amount={"total": 100})
        assert code == 200, placed
        code, refused = await v3(client.refund, out_refund_no=no("R"), amount={"refund": 1, "total": 100,
                                 "currency": "CNY"}, out_trade_no=unpaid)
        assert (code, refused["code"]) == (400, "INVALID_REQUEST")
        code, refused = await v3(client.refund, out_refund_no=no("R"), amount={"refund": 1, "total": 100},
                                 out_trade_no=no("V3"))
        assert (code, refused["code"]) == (404, "RESOURCE_NOT_EXISTS")

        trade_no, transaction_id = await v3_paid(world, client, total=500)
        refund_no = no("R")
        request = {"out_refund_no": refund_no, "amount": {"refund": 200, "total": 500, "currency": "CNY"},
                   "out_trade_no": trade_no, "reason": "out of stock"}
        code, made = await v3(client.refund, **request)
        assert code == 200, made
        assert (made["status"], made["out_refund_no"], made["transaction_id"], made["channel"]) == \
            ("PROCESSING", refund_no, transaction_id, "ORIGINAL")
        assert made["amount"]["refund"] == 200 and made["amount"]["total"] == 500 and "success_time" not in made
        assert (await v3(client.refund, **request)) == (200, made)  # the same refund again
        code, too_much = await v3(client.refund, out_refund_no=no("R"), amount={"refund": 301, "total": 500},
                                  out_trade_no=trade_no)
        assert (code, too_much["code"]) == (403, "NOT_ENOUGH")
        code, trade = await v3(client.query, out_trade_no=trade_no)
        assert code == 200 and trade["trade_state"] == "REFUND" and trade["transaction_id"] == transaction_id

        async def succeeded() -> dict[str, Any] | None:
            code, found = await v3(client.query_refund, refund_no)
            return found if code == 200 and found["status"] == "SUCCESS" else None

        found = await eventually(succeeded, message="the v3 refund succeeded", within=10)
        assert found["refund_id"] == made["refund_id"] and found["success_time"].endswith("+08:00")
        code, missing = await v3(client.query_refund, no("R"))
        assert (code, missing["code"]) == (404, "RESOURCE_NOT_EXISTS")
        # wechatpayv3 sends its own notify_url with every refund: the outcome went there.
        notice = await eventually(lambda: world.v3_notifies, message="the v3 refund notify", within=10)
        parsed = notice[0]
        assert parsed is not None and parsed["event_type"] == "REFUND.SUCCESS"
        assert parsed["resource"]["success_time"] == found["success_time"]
        assert parsed["resource"]["refund_status"] == "SUCCESS" and parsed["resource"]["amount"]["refund"] == 200


@pytest.mark.gen_test(timeout=60)
async def test_v3_refund_notifies_and_a_system_error_retried(key_files: SandboxKeyFiles) -> None:
    async with refund_world(key_files) as world:
        client = world.wechatpayv3()
        trade_no, transaction_id = await v3_paid(world, client, total=300)
        await world.control(refund={"systemerror": 1, "outcome": "abnormal", "delay": 0})
        refund_no = no("R")
        request = {"out_refund_no": refund_no, "amount": {"refund": 300, "total": 300, "currency": "CNY"},
                   "transaction_id": transaction_id, "notify_url": world.base + "/merchant/v3"}
        code, failed = await v3(client.refund, **request)
        assert (code, failed["code"]) == (500, "SYSTEM_ERROR")
        code, made = await v3(client.refund, **request)  # the retry with the same number
        assert code == 200 and made["out_refund_no"] == refund_no
        assert len((await world.view("trades", trade_no))["refunds"]) == 1

        notice = await eventually(lambda: world.v3_notifies, message="the v3 refund notify", within=10)
        parsed = notice[0]
        assert parsed is not None  # wechatpayv3 verified its signature and decrypted it
        assert (parsed["event_type"], parsed["resource_type"]) == ("REFUND.ABNORMAL", "encrypt-resource")
        resource = parsed["resource"]
        assert (resource["out_refund_no"], resource["refund_id"], resource["transaction_id"], resource["mchid"],
                resource["out_trade_no"], resource["refund_status"]) == \
            (refund_no, made["refund_id"], transaction_id, MCHID, trade_no, "ABNORMAL")
        assert resource["amount"] == {"total": 300, "refund": 300, "payer_total": 300, "payer_refund": 300}
        headers, raw = world.v3_raw[0]
        envelope = json.loads(raw)["resource"]
        assert (envelope["original_type"], envelope["associated_data"], envelope["algorithm"]) == \
            ("refund", "refund", "AEAD_AES_256_GCM")
        assert headers["Wechatpay-Serial"] == key_files.public_key_id
        code, found = await v3(client.query_refund, refund_no)
        assert code == 200 and found["status"] == "ABNORMAL"
