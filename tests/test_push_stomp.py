"""The STOMP route end to end on this session's vhost (not "/"): createNative's
push.stomp, used exactly as the pay page uses it, hears the order's "paid"."""

from __future__ import annotations

import json

import pytest

from tests.support.notify_client import post_notify, signed_notify
from tests.support.shopper import Shopper
from tests.support.stomp import BrowserUser, StompSession


@pytest.fixture
def extra_settings(stomp_user: BrowserUser) -> dict[str, object]:
    return {"stomp_login": stomp_user.login, "stomp_passcode": stomp_user.passcode}


@pytest.mark.gen_test(timeout=30)
async def test_page_hears_paid_over_stomp_on_the_vhost_it_was_handed(shopper: Shopper, base_url: str,
                                                                     stomp_user: BrowserUser) -> None:
    order = await shopper.order([("fan-silk", 1)])
    stomp = (await shopper.create_native(order["id"]))["push"]["stomp"]
    assert stomp["host"] == stomp_user.vhost != "/"
    session = await StompSession.connect(stomp["login"], stomp["passcode"], stomp["host"], url=stomp["url"])
    try:
        assert (await session.subscribe(stomp["destination"]))[0] == "RECEIPT"
        _, reply = await post_notify(base_url, signed_notify(order))
        assert reply["return_code"] == "SUCCESS"
        command, _, body = await session.receive()
        assert command == "MESSAGE", (command, body)
        event = json.loads(body)
        assert (event["order_id"], event["status"]) == (order["id"], "paid")
    finally:
        session.close()
