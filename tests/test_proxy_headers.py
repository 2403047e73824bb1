"""X-Real-IP and X-Forwarded-For are believed only from TRUSTED_PROXIES: the
client address lands in logs and in unifiedorder's spbill_create_ip."""

from __future__ import annotations

import ipaddress
import uuid
from pathlib import Path

import pytest

from tests.support.processes import ServerProcess, base_env
from tests.support.shopper import Shopper

SPOOF = {"X-Real-IP": "203.0.113.7", "X-Forwarded-For": "198.51.100.8"}


async def ip_wechat_was_given(shopper: Shopper, headers: dict[str, str]) -> str:
    order = await shopper.order([("fan-silk", 1)])
    status, _ = await shopper.request("GET", f"/wxpay/createNative?orderId={order['id']}", headers=headers)
    assert status == 200
    status, trade = await shopper.request("GET", f"/sandbox/wxpay/trades/{order['id']}")
    assert status == 200
    return str(trade["spbill_create_ip"])


@pytest.mark.gen_test(timeout=60)
async def test_paypush_serve_ignores_proxy_headers_from_anyone(tmp_path: Path, mongo_url: str,
                                                             amqp_url: str) -> None:
    """The real ``paypush serve`` (it ran with Tornado's xheaders=True)."""
    env = base_env(tmp_path / "var", MONGO_URL=mongo_url, MONGO_DB=f"t{uuid.uuid4().hex[:12]}",
                   AMQP_URL=amqp_url, SANDBOX="1")
    server = ServerProcess(env).start()
    try:
        shopper = await Shopper.logged_in(server.base_url, "demo", "demo-pass-123")
        try:
            assert await ip_wechat_was_given(shopper, SPOOF) == "127.0.0.1"
        finally:
            await shopper.close()
    finally:
        assert server.stop() == 0
    assert "GET /wxpay/createNative" in server.output and "(127.0.0.1)" in server.output
    for spoofed in SPOOF.values():
        assert spoofed not in server.output


LOCAL = ipaddress.ip_network("127.0.0.1/32")
INNER = ipaddress.ip_network("10.0.0.0/8")


@pytest.mark.parametrize("extra_settings, headers, client", [
    ({"trusted_proxies": (LOCAL,)}, {"X-Real-IP": "203.0.113.7"}, "203.0.113.7"),
    # nginx appends what it saw: what the client wrote to the left of it is not believed.
    ({"trusted_proxies": (LOCAL,)}, {"X-Forwarded-For": "10.1.1.1, 203.0.113.7", "X-Real-IP": "203.0.113.7"},
     "203.0.113.7"),
    # Two proxies of ours (a load balancer, then nginx): the first hop that is not ours.
    ({"trusted_proxies": (LOCAL, INNER)}, {"X-Forwarded-For": "192.0.2.1, 203.0.113.7, 10.0.0.2"},
     "203.0.113.7"),
    ({"trusted_proxies": (LOCAL,)}, {"X-Forwarded-For": "not-an-address"}, "127.0.0.1"),
    ({"trusted_proxies": (INNER,)}, SPOOF, "127.0.0.1"),  # this peer is not a proxy of ours
])
@pytest.mark.gen_test(timeout=30)
async def test_trusted_proxy_headers_name_the_client(extra_settings: dict[str, object], headers: dict[str, str],
                                                     client: str, shopper: Shopper) -> None:
    assert await ip_wechat_was_given(shopper, headers) == client
