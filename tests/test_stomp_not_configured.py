"""No STOMP_PASSCODE (allowed outside sandbox when PUSH_ROUTE=ws): the STOMP route is not offered."""

from __future__ import annotations

import pytest

from tests.support.shopper import Shopper


@pytest.fixture
def extra_settings() -> dict[str, object]:
    return {"stomp_passcode": ""}


@pytest.mark.gen_test(timeout=30)
async def test_create_native_offers_only_the_websocket(shopper: Shopper) -> None:
    order = await shopper.order([("tea-longjing", 1)])
    native = await shopper.create_native(order["id"])
    # Credentials with an empty passcode would only send pages to a login that fails.
    assert list(native["push"]) == ["ws"]
    assert native["push"]["ws"].endswith(f"/ws/pay?orderId={order['id']}")
