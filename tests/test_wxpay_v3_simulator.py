"""The WeChat Pay v3 face of the simulator, checked by a client no one here wrote.

``wechatpayv3`` (PyPI, a test dependency only) places, queries and closes Native
orders against the simulator over real HTTP, in public-key mode and in
platform-certificate mode, and parses the simulator's notifies with its own
callback code. The simulator shares no crypto with paypush's v3 client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import stat
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import tornado.httpserver
import tornado.netutil
import tornado.web
from wechatpayv3 import WeChatPay, WeChatPayType
from wechatpayv3.utils import build_authorization, load_certificate, load_private_key, rsa_sign, rsa_verify

from server.simulator import app as simulator_app
from server.simulator.v3_crypto import new_private_key, private_key_pem
from server.simulator.v3_keys import (
    CERTIFICATE_MODE,
    PUBLIC_KEY_MODE,
    SandboxKeyFiles,
    generate_sandbox_keys,
)
from tests.support.waiting import eventually

MCHID, APPID = "1900000109", "wxd678efh567hg6787"
PREFIX = "/sandbox/wxpay"
ROOT = Path(__file__).resolve().parent.parent
MODES = [PUBLIC_KEY_MODE, CERTIFICATE_MODE]


@pytest.fixture(scope="module")
def key_files(tmp_path_factory: pytest.TempPathFactory) -> SandboxKeyFiles:
    return generate_sandbox_keys(tmp_path_factory.mktemp("wxpay_v3"))


@dataclass
class World:
    """The simulator on a real port, and a merchant's notify endpoint beside it
    that hands every notify to wechatpayv3's own callback parser."""

    files: SandboxKeyFiles
    sim: simulator_app.Simulator
    http: aiohttp.ClientSession
    base: str  # http://127.0.0.1:port
    tmp: Path
    parser: WeChatPay | None = None
    refuse_notifies: int = 0  # answer this many notifies 500 FAIL first
    notifies: list[dict[str, Any] | None] = field(default_factory=list)  # as wechatpayv3 parsed them
    raw_notifies: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    @property
    def api_base(self) -> str:
        return self.base + PREFIX

    def wechatpay(self, mode: str) -> WeChatPay:
        """A wechatpayv3 merchant client pointed at the simulator.

        Certificate mode: its certificate directory starts with a certificate
        that signs nothing (the merchant's own, so the library has one and
        does not call the real WeChat while it is being built); the simulator's
        first answer then carries a serial it does not know, and it fetches
        /v3/certificates from the simulator, decrypts and stores them."""
        public = mode == PUBLIC_KEY_MODE
        cert_dir = self.tmp / f"platform-certs-{uuid.uuid4().hex[:6]}"
        if not public:
            cert_dir.mkdir()
            (cert_dir / "seed.pem").write_text(self.files.merchant_certificate.read_text())
        client = WeChatPay(wechatpay_type=WeChatPayType.NATIVE, mchid=MCHID,
                           private_key=self.files.merchant_private_key.read_text(),
                           cert_serial_no=self.files.merchant_serial, appid=APPID,
                           apiv3_key=self.files.apiv3_key, notify_url=self.base + "/merchant/notify",
                           cert_dir=None if public else str(cert_dir),
                           public_key=self.files.public_key.read_text() if public else None,
                           public_key_id=self.files.public_key_id if public else None, timeout=(3, 10))
        client._core._gate_way = self.api_base  # the library's only way to another host
        return client

    async def call(self, fn: Any, *args: Any, **kwargs: Any) -> tuple[int, Any]:
        """wechatpayv3 is synchronous (requests): run it beside the event loop."""
        code, text = await asyncio.to_thread(fn, *args, **kwargs)
        return code, json.loads(text) if text else None

    async def phone(self, action: str, code_url: str, **knobs: Any) -> dict[str, Any]:
        async with self.http.post(f"{self.api_base}/{action}", json={"code_url": code_url, "notify": knobs}) as r:
            assert r.status == 200, await r.text()
            return await r.json()

    async def trade(self, no: str) -> dict[str, Any]:
        async with self.http.get(f"{self.api_base}/trades/{no}") as r:
            return await r.json()

    async def control(self, **knobs: Any) -> dict[str, Any]:
        async with self.http.post(f"{self.api_base}/control", json=knobs) as r:
            assert r.status == 200, await r.text()
            return await r.json()


class MerchantNotify(tornado.web.RequestHandler):
    def initialize(self, world: World) -> None:
        self.world = world

    def check_xsrf_cookie(self) -> None:
        """Server-to-server."""

    async def post(self) -> None:
        assert self.world.parser is not None
        self.world.raw_notifies.append((dict(self.request.headers), self.request.body))
        parsed = await asyncio.to_thread(self.world.parser.callback, self.request.headers, self.request.body)
        self.world.notifies.append(parsed)
        if self.world.refuse_notifies > 0 or not parsed:
            self.world.refuse_notifies -= 1
            self.set_status(500)
            self.finish({"code": "FAIL", "message": "not now"})
            return
        self.set_status(204)


@contextlib.asynccontextmanager
async def v3_world(files: SandboxKeyFiles, tmp: Path, mode: str, *,
                   close_min_age_seconds: float = 0.0) -> AsyncIterator[World]:
    http = aiohttp.ClientSession()
    sim = simulator_app.Simulator.create(http, appid=APPID, mch_id=MCHID, key="k" * 32,
                                         close_min_age_seconds=close_min_age_seconds, notify_speed=1000.0,
                                         v3=files.v3_keys(MCHID, APPID, mode))
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    world = World(files, sim, http, f"http://127.0.0.1:{sockets[0].getsockname()[1]}", tmp)
    app = tornado.web.Application([*simulator_app.routes(PREFIX, sim),
                                   (r"/merchant/notify", MerchantNotify, {"world": world})],
                                  template_path=str(ROOT / "templates"), static_path=str(ROOT / "static"))
    server = tornado.httpserver.HTTPServer(app)
    server.add_sockets(sockets)
    try:
        yield world
    finally:
        server.stop()
        await sim.close()
        await http.close()


async def signed_request(world: World, method: str, path: str, body: str = "", *,
                         key_pem: str | None = None, serial: str | None = None,
                         url_to_sign: str | None = None) -> tuple[int, dict[str, str], str]:
    """A request signed by wechatpayv3's own build_authorization, raw answer back."""
    key = load_private_key(key_pem or world.files.merchant_private_key.read_text())
    auth = build_authorization(url_to_sign or path, method, MCHID, serial or world.files.merchant_serial, key,
                               data=body or None)
    async with world.http.request(method, world.api_base + path, data=body.encode(),
                                  headers={"Authorization": auth, "Content-Type": "application/json",
                                           "Accept": "application/json"}) as r:
        return r.status, dict(r.headers), await r.text()


def signed_by(world: World, headers: dict[str, str], body: str) -> str:
    """Which of the simulator's keys signed this answer (wechatpayv3's rsa_verify)."""
    keys = world.sim.v3
    assert keys is not None
    candidates = [*keys.certificates, *([keys.public_key] if keys.public_key else [])]
    for signer in candidates:
        if signer.serial == headers["Wechatpay-Serial"] and rsa_verify(
                headers["Wechatpay-Timestamp"], headers["Wechatpay-Nonce"], body, headers["Wechatpay-Signature"],
                signer.private_key.public_key()):
            return signer.serial
    raise AssertionError(f"answer not signed by any simulator key: {headers}")


def stored_certificates(tmp: Path) -> dict[str, str]:
    """The platform certificates wechatpayv3 fetched and kept, by serial."""
    return {p.stem: p.read_text() for p in tmp.glob("platform-certs-*/*.pem") if p.stem != "seed"}


def order_no() -> str:
    return "V3" + uuid.uuid4().hex[:20]


def test_sandbox_keys_are_made_once_private_and_consistent(tmp_path: Path) -> None:
    first = generate_sandbox_keys(tmp_path / "keys")
    again = generate_sandbox_keys(tmp_path / "keys")
    assert again == first  # reused, not regenerated
    for path in first.directory.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert len(first.apiv3_key) == 32 and first.apiv3_key.isascii()
    assert first.public_key_id.startswith("PUB_KEY_ID_")
    # The merchant's files as a third party reads them: its key is the certificate's.
    key = load_private_key(first.merchant_private_key.read_text())
    cert = load_certificate(first.merchant_certificate.read_text())
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    assert int(first.merchant_serial, 16) == cert.serial_number and len(first.merchant_serial) == 40
    platform = load_certificate(first.platform_certificate.read_text())
    assert int(first.platform_serial, 16) == platform.serial_number != cert.serial_number


def test_sandbox_keys_take_the_apiv3_key_settings_made(tmp_path: Path) -> None:
    files = generate_sandbox_keys(tmp_path, apiv3_key="k" * 32)
    assert files.apiv3_key == "k" * 32 and not files.apiv3_key_file.exists()
    assert files.v3_keys("1900000109", "wxd678efh567hg6787").apiv3_key == b"k" * 32


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.gen_test(timeout=60)
async def test_wechatpayv3_places_queries_and_closes_a_native_order(mode: str, key_files: SandboxKeyFiles,
                                                                    tmp_path: Path) -> None:
    async with v3_world(key_files, tmp_path, mode) as world:
        client, no = world.wechatpay(mode), order_no()
        pay = {"description": "silk fan", "out_trade_no": no, "amount": {"total": 150, "currency": "CNY"},
               "scene_info": {"payer_client_ip": "203.0.113.7"},
               "time_expire": time.strftime("%Y-%m-%dT%H:%M:%S+08:00", time.gmtime(time.time() + 8 * 3600 + 600))}
        code, placed = await world.call(client.pay, **pay)
        assert code == 200 and placed["code_url"].startswith("weixin://wxpay/bizpayurl?pr=")
        assert await world.call(client.pay, **pay) == (200, placed)  # same order, same QR
        code, changed = await world.call(client.pay, **{**pay, "amount": {"total": 151}})
        assert code == 403 and changed["code"] == "OUT_TRADE_NO_USED"

        code, trade = await world.call(client.query, out_trade_no=no)
        assert code == 200
        assert (trade["trade_state"], trade["amount"]["total"], trade["mchid"], trade["appid"]) == \
            ("NOTPAY", 150, MCHID, APPID)
        await world.phone("scan", placed["code_url"])
        assert (await world.call(client.query, out_trade_no=no))[1]["trade_state"] == "USERPAYING"
        assert await world.call(client.close, no) == (204, None)
        assert (await world.call(client.query, out_trade_no=no))[1]["trade_state"] == "CLOSED"
        code, again = await world.call(client.close, no)
        assert code == 400 and again["code"] == "ORDER_CLOSED"
        code, missing = await world.call(client.query, out_trade_no=order_no())
        assert code == 404 and missing["code"] == "ORDER_NOT_EXIST"
        shown = await world.trade(no)
        assert shown["api"] == "v3" and shown["spbill_create_ip"] == "203.0.113.7"
        if mode == CERTIFICATE_MODE:
            # wechatpayv3 learnt the platform certificate from /v3/certificates itself
            assert stored_certificates(tmp_path)[key_files.platform_serial] == \
                key_files.platform_certificate.read_text()


async def place(world: World, client: WeChatPay, total: int = 100) -> tuple[str, str]:
    no = order_no()
    code, placed = await world.call(client.pay, description="silk fan", out_trade_no=no, amount={"total": total})
    assert code == 200, placed
    return no, placed["code_url"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.gen_test(timeout=60)
async def test_notify_of_a_paid_trade_is_read_by_wechatpayv3s_callback(mode: str, key_files: SandboxKeyFiles,
                                                                       tmp_path: Path) -> None:
    async with v3_world(key_files, tmp_path, mode) as world:
        client = world.parser = world.wechatpay(mode)
        world.refuse_notifies = 1  # the merchant fails the first one: WeChat sends it again
        no, code_url = await place(world, client, total=250)
        paid = await world.phone("pay", code_url, coupons=3)

        async def acknowledged() -> dict[str, Any] | None:
            trade = await world.trade(no)
            return trade if "SUCCESS" in trade["notify_replies"] else None

        trade = await eventually(acknowledged, message="the notify acknowledged", within=10, every=0.05)
        assert trade["notify_replies"] == ["FAIL", "SUCCESS"]
        first, second = world.notifies
        assert first is not None and second is not None  # wechatpayv3 verified and decrypted both
        assert first["id"] == second["id"]  # a retry is the same event
        assert (second["event_type"], second["resource_type"]) == ("TRANSACTION.SUCCESS", "encrypt-resource")
        resource = second["resource"]
        assert (resource["out_trade_no"], resource["trade_state"], resource["mchid"], resource["appid"]) == \
            (no, "SUCCESS", MCHID, APPID)
        assert resource["transaction_id"] == paid["transaction_id"]
        assert resource["amount"]["total"] == 250 and resource["amount"]["payer_total"] == 247
        assert len(resource["promotion_detail"]) == 3
        headers, raw = world.raw_notifies[-1]
        envelope = json.loads(raw)["resource"]
        assert (envelope["original_type"], envelope["associated_data"], envelope["algorithm"]) == \
            ("transaction", "transaction", "AEAD_AES_256_GCM")
        assert headers["Content-Type"] == "application/json"
        assert headers["Wechatpay-Serial"] == (key_files.public_key_id if mode == PUBLIC_KEY_MODE
                                               else key_files.platform_serial)
        code, queried = await world.call(client.query, out_trade_no=no)
        assert code == 200 and queried["success_time"] == resource["success_time"]
        assert queried["transaction_id"] == paid["transaction_id"] and queried["amount"]["total"] == 250
        code, refused = await world.call(client.close, no)
        assert code == 403 and refused["code"] == "ORDERPAID"


@pytest.mark.gen_test(timeout=60)
async def test_requests_wechat_would_not_believe_are_refused_401(key_files: SandboxKeyFiles, tmp_path: Path) -> None:
    async with v3_world(key_files, tmp_path, PUBLIC_KEY_MODE) as world:
        path = f"/v3/pay/transactions/out-trade-no/{order_no()}?mchid={MCHID}"
        status, headers, body = await signed_request(world, "GET", path)
        assert status == 404 and json.loads(body)["code"] == "ORDER_NOT_EXIST"  # the control: well signed
        assert signed_by(world, headers, body) == key_files.public_key_id  # error answers are signed too
        # the full path behind the sandbox prefix is an honest reading of "the URL" as well
        status, _, _ = await signed_request(world, "GET", path, url_to_sign=PREFIX + path)
        assert status == 404
        stranger = private_key_pem(new_private_key()).decode()
        for kwargs in ({"key_pem": stranger},                      # not the merchant's key
                       {"serial": "ABCDEF0123456789"},             # no such merchant certificate
                       {"url_to_sign": path.replace("V3", "V4")}):  # signed for another URL
            status, headers, body = await signed_request(world, "GET", path, **kwargs)
            assert status == 401 and json.loads(body)["code"] == "SIGN_ERROR", kwargs
            assert signed_by(world, headers, body) == key_files.public_key_id
        async with world.http.post(world.api_base + "/v3/pay/transactions/native", json={"mchid": MCHID}) as r:
            assert r.status == 401 and (await r.json())["code"] == "SIGN_ERROR"  # no Authorization at all
        # a signed body changed on the way
        order = json.dumps({"appid": APPID, "mchid": MCHID, "description": "x", "out_trade_no": order_no(),
                            "notify_url": "https://example.com/n", "amount": {"total": 1}})
        key = load_private_key(key_files.merchant_private_key.read_text())
        auth = build_authorization("/v3/pay/transactions/native", "POST", MCHID, key_files.merchant_serial, key,
                                   data=order)
        async with world.http.post(world.api_base + "/v3/pay/transactions/native",
                                   data=order.replace('"total": 1', '"total": 2'),
                                   headers={"Authorization": auth, "Content-Type": "application/json"}) as r:
            assert r.status == 401 and (await r.json())["code"] == "SIGN_ERROR"
        async with world.http.post(world.api_base + "/v3/pay/transactions/native", data=order,
                                   headers={"Authorization": auth, "Content-Type": "application/json"}) as r:
            assert r.status == 200 and (await r.json())["code_url"]  # the control: the untouched body


@pytest.mark.gen_test(timeout=60)
async def test_close_of_a_young_trade_is_refused(key_files: SandboxKeyFiles, tmp_path: Path) -> None:
    async with v3_world(key_files, tmp_path, PUBLIC_KEY_MODE, close_min_age_seconds=300) as world:
        client = world.wechatpay(PUBLIC_KEY_MODE)
        no, _ = await place(world, client)
        code, refused = await world.call(client.close, no)
        assert code == 400 and refused["code"] == "CLOSE_TOO_EARLY"
        assert (await world.call(client.query, out_trade_no=no))[1]["trade_state"] == "NOTPAY"


@pytest.mark.gen_test(timeout=60)
async def test_rotation_lists_both_certificates_and_the_newer_signs(key_files: SandboxKeyFiles,
                                                                    tmp_path: Path) -> None:
    async with v3_world(key_files, tmp_path, CERTIFICATE_MODE) as world:
        client = world.parser = world.wechatpay(CERTIFICATE_MODE)
        no, code_url = await place(world, client)  # wechatpayv3 now knows the first certificate
        assert set(stored_certificates(tmp_path)) == {key_files.platform_serial}
        state = await world.control(v3_rotate=True)
        newer = state["v3_serial"]
        assert newer != key_files.platform_serial and state["v3_certificates"] == [key_files.platform_serial, newer]

        status, headers, body = await signed_request(world, "GET", "/v3/certificates")
        assert status == 200 and signed_by(world, headers, body) == newer
        listed = json.loads(body)["data"]
        assert [c["serial_no"] for c in listed] == [key_files.platform_serial, newer]
        # answers now come signed by a serial wechatpayv3 has not seen: it fetches again and believes them
        code, trade = await world.call(client.query, out_trade_no=no)
        assert code == 200 and trade["trade_state"] == "NOTPAY"
        assert set(stored_certificates(tmp_path)) == {key_files.platform_serial, newer}
        await world.phone("pay", code_url)
        await eventually(lambda: world.notifies, message="the notify after the rotation", within=10, every=0.05)
        assert world.notifies[0] is not None and world.notifies[0]["resource"]["trade_state"] == "SUCCESS"


@pytest.mark.gen_test(timeout=60)
async def test_migration_from_certificates_to_the_public_key(key_files: SandboxKeyFiles, tmp_path: Path) -> None:
    """WeChat's migration: the simulator switches signer while the merchant knows both."""
    async with v3_world(key_files, tmp_path, CERTIFICATE_MODE) as world:
        status, headers, body = await signed_request(world, "GET", "/v3/certificates")
        assert signed_by(world, headers, body) == key_files.platform_serial
        state = await world.control(v3_mode=PUBLIC_KEY_MODE)
        assert state["v3_serial"] == key_files.public_key_id
        status, headers, body = await signed_request(world, "GET", "/v3/certificates")
        assert status == 200 and signed_by(world, headers, body) == key_files.public_key_id
        async with world.http.post(world.api_base + "/control", json={"v3_mode": "neither"}) as r:
            assert r.status == 400


@pytest.mark.gen_test(timeout=60)
async def test_a_request_signed_six_minutes_ago_is_refused(key_files: SandboxKeyFiles, tmp_path: Path) -> None:
    async with v3_world(key_files, tmp_path, PUBLIC_KEY_MODE) as world:
        key = load_private_key(key_files.merchant_private_key.read_text())
        path = f"/v3/pay/transactions/out-trade-no/{order_no()}?mchid={MCHID}"
        for age, expected in ((360, 401), (0, 404)):  # the fresh one is the control
            timestamp, nonce = str(int(time.time()) - age), uuid.uuid4().hex
            signature = rsa_sign(key, f"GET\n{path}\n{timestamp}\n{nonce}\n\n")
            auth = (f'WECHATPAY2-SHA256-RSA2048 mchid="{MCHID}",nonce_str="{nonce}",signature="{signature}",'
                    f'timestamp="{timestamp}",serial_no="{key_files.merchant_serial}"')
            async with world.http.get(world.api_base + path, headers={"Authorization": auth}) as r:
                assert r.status == expected, age


@pytest.mark.gen_test(timeout=60)
async def test_the_phone_page_pays_a_v3_trade_and_its_notify_is_v3(key_files: SandboxKeyFiles,
                                                                    tmp_path: Path) -> None:
    async with v3_world(key_files, tmp_path, PUBLIC_KEY_MODE) as world:
        client = world.parser = world.wechatpay(PUBLIC_KEY_MODE)
        no, code_url = await place(world, client, total=1234)
        async with world.http.get(world.api_base + "/phone", params={"code_url": code_url}) as r:
            assert r.status == 200 and "12.34" in await r.text()
        async with world.http.post(world.api_base + "/phone", data={"code_url": code_url}) as r:
            assert r.status == 200
        await eventually(lambda: world.notifies, message="the phone's payment notified", within=10, every=0.05)
        parsed = world.notifies[0]
        assert parsed is not None and parsed["resource"]["out_trade_no"] == no
        assert parsed["resource"]["amount"]["total"] == 1234
