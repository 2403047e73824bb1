"""Daily bills over real HTTP: the simulator's ``/pay/downloadbill`` and
``/v3/bill/tradebill`` + download URL, read by paypush's v2 and v3 gateways
(plain and gzip) and by two clients no one here wrote (wechatpy for v2,
wechatpayv3 for v3, the file's SHA1 checked as WeChat's docs ask); a day with
no trade, the not-ready knob, a file that does not match its hash, and a
download URL off the API's host."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gzip
import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import tornado.httpserver
import tornado.netutil
import tornado.web
from wechatpayv3 import WeChatPay, WeChatPayType
from wechatpy.exceptions import WeChatPayException
from wechatpy.pay import WeChatPay as WeChatPyV2

from server.gateway import bills
from server.gateway.abc import BILL_PAYMENT, BILL_REFUND, Bill, BillLine, BillSummary, NativeOrder, RefundRequest
from server.gateway.errors import BillNotReady, GatewayError, GatewayUnavailable
from server.gateway.wxpay_v2.client import Merchant, WxPayClient
from server.gateway.wxpay_v2.gateway import WxPayV2Gateway
from server.gateway.wxpay_v3 import crypto
from server.gateway.wxpay_v3.client import WxPayV3Client
from server.gateway.wxpay_v3.gateway import WxPayV3Gateway
from server.gateway.wxpay_v3.verifier import Verifier
from server.simulator import app as simulator_app
from server.simulator.v3_keys import PUBLIC_KEY_MODE, SandboxKeyFiles, generate_sandbox_keys
from tests.support.waiting import eventually

MCHID, APPID, KEY = "1900000109", "wxd678efh567hg6787", "k" * 32
PREFIX = "/sandbox/wxpay"
ROOT = Path(__file__).resolve().parent.parent
BEIJING = dt.timezone(dt.timedelta(hours=8))
EMPTY_DAY = dt.date(2001, 1, 1)


@pytest.fixture(scope="module")
def key_files(tmp_path_factory: pytest.TempPathFactory) -> SandboxKeyFiles:
    return generate_sandbox_keys(tmp_path_factory.mktemp("wxpay_v3_bills"))


class Acknowledge(tornado.web.RequestHandler):
    """The merchant's notify URL: every notify acknowledged (bills are the subject here)."""

    def check_xsrf_cookie(self) -> None:
        """Server-to-server."""

    def post(self) -> None:
        self.finish("<xml><return_code><![CDATA[SUCCESS]]></return_code></xml>")


@dataclass
class World:
    files: SandboxKeyFiles
    sim: simulator_app.Simulator
    http: aiohttp.ClientSession
    base: str

    @property
    def api_base(self) -> str:
        return self.base + PREFIX

    def v2(self, *, gzip: bool = True, key: str = KEY) -> WxPayV2Gateway:
        return WxPayV2Gateway(WxPayClient(self.http, self.api_base, Merchant(APPID, MCHID, key)), bill_gzip=gzip)

    def v3(self, *, gzip: bool = True) -> WxPayV3Gateway:
        verifier = Verifier(public_key_id=self.files.public_key_id,
                            public_key=crypto.load_public_key(self.files.public_key.read_bytes()))
        client = WxPayV3Client(self.http, self.api_base, MCHID, APPID, self.files.merchant_serial,
                               crypto.load_private_key(self.files.merchant_private_key.read_bytes()),
                               self.files.apiv3_key, verifier)
        return WxPayV3Gateway(client, bill_gzip=gzip)

    async def paid_trade(self, gateway: WxPayV2Gateway | WxPayV3Gateway, total: int) -> str:
        no = "B" + uuid.uuid4().hex[:20]
        checkout = await gateway.create_native(NativeOrder(
            no, "茶, 龙井", total, self.base + "/merchant/notify", "sku-1",
            dt.datetime.now(dt.UTC) + dt.timedelta(minutes=10), "127.0.0.1"))
        await self.phone(checkout.code_url)
        return no

    async def phone(self, code_url: str, **extra: Any) -> dict[str, Any]:
        async with self.http.post(f"{self.api_base}/pay", json={"code_url": code_url, **extra}) as r:
            assert r.status == 200, await r.text()
            return dict(await r.json())

    async def control(self, **knobs: Any) -> dict[str, Any]:
        async with self.http.post(f"{self.api_base}/control", json=knobs) as r:
            assert r.status == 200, await r.text()
            return dict(await r.json())


@contextlib.asynccontextmanager
async def bill_world(files: SandboxKeyFiles) -> AsyncIterator[World]:
    http = aiohttp.ClientSession()
    sim = simulator_app.Simulator.create(http, appid=APPID, mch_id=MCHID, key=KEY, notify_speed=1000.0,
                                         v3=files.v3_keys(MCHID, APPID, PUBLIC_KEY_MODE))
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    world = World(files, sim, http, f"http://127.0.0.1:{sockets[0].getsockname()[1]}")
    app = tornado.web.Application([*simulator_app.routes(PREFIX, sim), (r"/merchant/notify", Acknowledge)],
                                  template_path=str(ROOT / "templates"), static_path=str(ROOT / "static"))
    server = tornado.httpserver.HTTPServer(app)
    server.add_sockets(sockets)
    try:
        yield world
    finally:
        server.stop()
        await sim.close()
        await http.close()


async def read(bill: Bill) -> tuple[list[BillLine], BillSummary]:
    lines = [line async for line in bill.lines]
    return lines, bill.summary


def fee(total: int) -> int:
    """The simulator's documented fee: 0.6%, rounded half up to the fen."""
    return int((Decimal(total) * Decimal("0.006")).quantize(Decimal(1), rounding=ROUND_HALF_UP))


@dataclass
class Day:
    """What the test did at WeChat today, to check every reading against."""

    date: dt.date
    payments: dict[str, tuple[str, int, str]]  # transaction_id -> (out_trade_no, amount, trade state)
    refunds: dict[str, tuple[str, int]]  # out_refund_no -> (out_trade_no, amount)


async def make_a_day(world: World) -> Day:
    """Two trades (one placed over v2, one over v3), the first paid twice, the
    second partly refunded: every kind of line."""
    first = await world.paid_trade(world.v2(), 880)
    second = await world.paid_trade(world.v3(), 1999)
    trade_one = world.sim.trades.get(first)
    extra = await world.phone(trade_one.code_url, duplicate=True)
    refund_no = "RF" + uuid.uuid4().hex[:16]
    await world.v3().refund(RefundRequest(second, refund_no, 1999, 500, "customer asked",
                                          world.base + "/merchant/notify"))
    await eventually(lambda: world.sim.trades.get_refund(refund_no).status == "SUCCESS",
                     message="the refund settled")
    trade_two = world.sim.trades.get(second)
    days = {trade_one.time_end[:8], trade_two.time_end[:8], extra["extra_transactions"][0]["time_end"][:8],
            dt.datetime.now(BEIJING).strftime("%Y%m%d")}
    if len(days) > 1:
        pytest.skip("the trades straddle midnight in Beijing")
    return Day(date=dt.datetime.strptime(days.pop(), "%Y%m%d").date(),
               payments={trade_one.transaction_id: (first, 880, "SUCCESS"),
                         extra["transaction_id"]: (first, 880, "SUCCESS"),
                         trade_two.transaction_id: (second, 1999, "REFUND")},
               refunds={refund_no: (second, 500)})


def check(day: Day, lines: list[BillLine], summary: BillSummary) -> None:
    paid = [b for b in lines if b.kind == BILL_PAYMENT]
    refunded = [b for b in lines if b.kind == BILL_REFUND]
    assert {b.transaction_id: (b.out_trade_no, b.amount, b.trade_state) for b in paid} == day.payments
    assert {b.out_refund_no: (b.out_trade_no, b.amount) for b in refunded} == day.refunds
    assert all(b.refund_status == "SUCCESS" and b.refund_id for b in refunded)
    assert all(b.trade_time.date() == day.date for b in lines)
    assert [b.fee for b in paid] == [fee(b.amount) for b in paid]
    assert [b.fee for b in refunded] == [0] * len(refunded)
    assert summary == BillSummary(trades=4, paid=880 + 880 + 1999, refunded=500,
                                  fees=fee(880) * 2 + fee(1999))


# -- our gateways ---------------------------------------------------------------------------

@pytest.mark.gen_test(timeout=60)
async def test_both_versions_read_the_day_the_simulator_saw_plain_and_gzip(key_files: SandboxKeyFiles) -> None:
    async with bill_world(key_files) as world:
        day = await make_a_day(world)
        readings = []
        for gateway in (world.v2(gzip=True), world.v2(gzip=False), world.v3(gzip=True), world.v3(gzip=False)):
            lines, summary = await read(await gateway.download_bill(day.date))
            check(day, lines, summary)
            readings.append((lines, summary))
        assert all(r == readings[0] for r in readings)  # one book, one bill, whatever the version


@pytest.mark.gen_test(timeout=60)
async def test_a_day_without_trades_and_the_not_ready_knob_are_not_ready(key_files: SandboxKeyFiles) -> None:
    async with bill_world(key_files) as world:
        for gateway in (world.v2(), world.v3()):
            with pytest.raises(BillNotReady) as none:
                await gateway.download_bill(EMPTY_DAY)
            assert none.value.code in ("20002", "NO_STATEMENT_EXIST")
        await world.paid_trade(world.v2(), 100)
        today = dt.datetime.now(BEIJING).date()
        assert (await world.control(bill={"not_ready": True}))["bill"] == {"not_ready": True}
        for gateway in (world.v2(), world.v3()):
            with pytest.raises(BillNotReady) as creating:
                await gateway.download_bill(today)
            assert creating.value.code in ("NO_BILL", "STATEMENT_CREATING")
        await world.control(bill={"not_ready": False})
        for gateway in (world.v2(), world.v3()):
            lines, summary = await read(await gateway.download_bill(today))
            assert summary.trades == len(lines) >= 1


@pytest.mark.gen_test(timeout=60)
async def test_a_file_that_is_not_the_one_hashed_is_not_believed(key_files: SandboxKeyFiles,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    async with bill_world(key_files) as world:
        await world.paid_trade(world.v3(), 100)
        served = world.sim.bills.fetch

        def altered(token: str) -> bytes | None:
            data = served(token)
            return None if data is None else gzip.compress(gzip.decompress(data).replace(b"`0.60%", b"`0.61%"))

        monkeypatch.setattr(world.sim.bills, "fetch", altered)
        with pytest.raises(GatewayError) as caught:
            await world.v3().download_bill(dt.datetime.now(BEIJING).date())
        assert caught.value.code == "BILL_HASH_MISMATCH" and not caught.value.retryable


@pytest.mark.gen_test(timeout=30)
async def test_a_download_url_off_the_api_host_gets_no_signed_request(key_files: SandboxKeyFiles) -> None:
    async with bill_world(key_files) as world:
        client = world.v3().client
        for url in ("http://evil.example/v3/billdownload/file?token=x", "/v3/billdownload/file?token=x",
                    world.api_base.replace("http:", "https:") + "/v3/billdownload/file?token=x"):
            with pytest.raises(GatewayUnavailable, match="not on"):
                async with client.open_download(url):
                    pass


@pytest.mark.gen_test(timeout=30)
async def test_a_v2_request_wechat_refuses_is_a_failure_not_not_ready(key_files: SandboxKeyFiles) -> None:
    async with bill_world(key_files) as world:
        with pytest.raises(GatewayError) as caught:
            await world.v2(key="x" * 32).download_bill(EMPTY_DAY)
        assert not isinstance(caught.value, BillNotReady) and "签名错误" in str(caught.value)


# -- clients no one here wrote ------------------------------------------------------------------

@pytest.mark.gen_test(timeout=60)
async def test_wechatpayv3_downloads_the_file_whose_sha1_tradebill_named(key_files: SandboxKeyFiles) -> None:
    # wechatpayv3 2.0.4 always sends tar_type (its default GZIP; None goes out as "tar_type=None",
    # which WeChat and the simulator refuse): the gzip file it is.
    tar_type = "GZIP"
    async with bill_world(key_files) as world:
        day = await make_a_day(world)
        peer = WeChatPay(wechatpay_type=WeChatPayType.NATIVE, mchid=MCHID,
                         private_key=key_files.merchant_private_key.read_text(),
                         cert_serial_no=key_files.merchant_serial, appid=APPID, apiv3_key=key_files.apiv3_key,
                         public_key=key_files.public_key.read_text(), public_key_id=key_files.public_key_id,
                         timeout=(3, 10))
        peer._core._gate_way = world.api_base  # the library's only way to another host
        code, answer = await asyncio.to_thread(peer.trade_bill, day.date.isoformat(), tar_type=tar_type)
        assert code == 200, answer  # wechatpayv3 verified the tradebill answer's signature itself
        named = json.loads(answer)
        assert named["hash_type"] == "SHA1"
        code, content = await asyncio.to_thread(peer.download_bill, named["download_url"])
        assert code == 200 and isinstance(content, bytes)
        assert hashlib.sha1(content, usedforsecurity=False).hexdigest() == named["hash_value"]
        text = gzip.decompress(content)
        reader = bills.BillReader(mch_id=MCHID)
        lines = reader.feed(text)
        summary = reader.finish()
        check(day, lines, summary)
        assert (lines, summary) == await read(await world.v3(gzip=True).download_bill(day.date))


@pytest.mark.gen_test(timeout=60)
async def test_wechatpy_downloads_the_v2_bill_and_hears_no_bill_exist(key_files: SandboxKeyFiles) -> None:
    async with bill_world(key_files) as world:
        day = await make_a_day(world)
        peer = WeChatPyV2(APPID, KEY, MCHID)
        peer.API_BASE_URL = world.api_base + "/"
        text = await asyncio.to_thread(peer.tools.download_bill, day.date)  # signed by wechatpy (MD5)
        assert isinstance(text, str) and text.startswith("交易时间,")
        reader = bills.BillReader(mch_id=MCHID)
        lines = reader.feed(text.encode())
        summary = reader.finish()
        check(day, lines, summary)
        with pytest.raises(WeChatPayException) as none:
            await asyncio.to_thread(peer.tools.download_bill, EMPTY_DAY)
        assert none.value.return_msg == "No Bill Exist"
