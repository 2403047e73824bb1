"""API v2 refunds over mutual TLS for real: paypush's gateway talks HTTPS to a
standalone ``paypush simulator --tls... --client-ca`` process that refuses any
client without the merchant certificate. Order, payment, an operator's full
refund through secapi/pay/refund, the refund notify, the order refunded."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server.accounts.users import create_user
from server.composition.container import Services
from server.gateway.abc import RefundRequest
from server.gateway.errors import GatewayError
from tests.support.shopper import Shopper
from tests.support.tls_simulator import TlsSimulator, running_tls_simulator
from tests.support.waiting import eventually


@pytest.fixture
def tls_simulator(tmp_path: Path) -> Iterator[TlsSimulator]:
    with running_tls_simulator(tmp_path / "sim") as sim:
        yield sim


@pytest.fixture
def extra_settings(tls_simulator: TlsSimulator) -> dict[str, object]:
    tls = tls_simulator.tls
    return {"wxpay_api_base": tls_simulator.base, "wxpay_cert_path": str(tls.client_cert),
            "wxpay_private_key_path": str(tls.client_key), "wxpay_ca_path": str(tls.ca_cert),
            "refund_check_delays": (1, 2)}


@pytest.mark.gen_test(timeout=90)
async def test_a_v2_refund_goes_over_mutual_tls_and_reaches_success(
        shopper: Shopper, services: Services, base_url: str, tls_simulator: TlsSimulator) -> None:
    await create_user(services.store, "olga", "olga-pass-123", operator=True)
    operator = await Shopper.logged_in(base_url, "olga", "olga-pass-123")
    order = await shopper.order([("tea-longjing", 1)])
    native = await shopper.create_native(order["id"])  # unifiedorder, over the same TLS
    paid = await asyncio.to_thread(tls_simulator.post, "/pay", json={"code_url": native["code_url"]})
    assert paid.status_code == 200, paid.text

    async def order_in(status: str) -> dict[str, Any] | None:
        now = await operator.get_order(order["id"])
        return now if now["status"] == status else None

    await eventually(lambda: order_in("paid"), message="paid through the TLS simulator's notify")
    status, refund = await operator.request("POST", f"/api/orders/{order['id']}/refunds",
                                            {"amount": order["pay_money"], "reason": "mTLS"})
    assert status == 201, refund
    after = await eventually(lambda: order_in("refunded"), message="refunded in full", within=20)
    [done] = after["refunds"]
    assert (done["out_refund_no"], done["status"]) == (refund["out_refund_no"], "success")
    wechat = await asyncio.to_thread(tls_simulator.get, f"/refunds/{refund['out_refund_no']}",
                                     cert=(str(tls_simulator.tls.client_cert), str(tls_simulator.tls.client_key)))
    assert wechat.json()["status"] == "SUCCESS"
    await operator.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_certificate_wechat_does_not_trust_is_a_gateway_error_not_a_refund(
        services: Services, tls_simulator: TlsSimulator) -> None:
    """The same client with another CA's certificate: the handshake fails, and
    the gateway says so as an error the refund's check retries."""
    import dataclasses

    import aiohttp

    from server.composition.gateways import build_gateway

    async with aiohttp.ClientSession() as http:
        tls = tls_simulator.tls
        stranger = dataclasses.replace(services.settings, wxpay_cert_path=str(tls.stranger_cert),
                                       wxpay_private_key_path=str(tls.stranger_key))
        gateway = build_gateway(stranger, http).gateway
        with pytest.raises(GatewayError) as failed:
            await gateway.refund(RefundRequest(out_trade_no="20261129" + "0" * 24, out_refund_no="RF" + "0" * 30,
                                               total_fee=100, refund_fee=100, reason="", notify_url=""))
        assert failed.value.retryable, "a refused handshake: the same refund may be asked again"
