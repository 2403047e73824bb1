"""A waiting pay page whose notify was lost still turns to paid: orderquery."""

from __future__ import annotations

import pytest

from tests.support.pages import Page
from tests.support.shopper import Shopper
from tests.support.sockets import PageSocket


@pytest.fixture
def extra_settings() -> dict[str, object]:
    return {"active_query_after_seconds": 1.0}


@pytest.mark.gen_test(timeout=60)
async def test_open_page_with_lost_notify_gets_paid(shopper: Shopper, base_url: str) -> None:
    order = await shopper.order([("fan-silk", 1)])
    native = await shopper.create_native(order["id"])
    sock = await PageSocket.open(base_url, order["id"], shopper)
    assert (await sock.next())["status"] == "unpaid"
    status, _ = await shopper.request("POST", "/sandbox/wxpay/pay",
                                      {"code_url": native["code_url"], "notify": {"drop": True}})
    assert status == 200
    assert (await sock.next(within=20))["type"] == "paid"
    paid = await shopper.get_order(order["id"])
    assert [e["kind"] for e in paid["logs"]] == ["created", "paid"]
    assert "found by order query" in paid["logs"][1]["remarks"]


@pytest.mark.gen_test(timeout=60)
async def test_no_page_no_query(shopper: Shopper) -> None:
    """Without a waiting page nobody asks: the order stays unpaid until its deadline."""
    import asyncio

    order = await shopper.order([("fan-silk", 1)])
    native = await shopper.create_native(order["id"])
    await shopper.request("POST", "/sandbox/wxpay/pay", {"code_url": native["code_url"], "notify": {"drop": True}})
    await asyncio.sleep(4)
    assert (await shopper.get_order(order["id"]))["status"] == "unpaid"


@pytest.mark.gen_test(timeout=30)
async def test_a_pass_looks_only_at_due_pages_still_waiting(services) -> None:  # type: ignore[no-untyped-def]
    """Bookkeeping of the backstop: new pages are learnt from the hub as they
    open, a pass takes at most PER_PASS of them, and an order nobody waits on
    any more is forgotten (and learnt again if a page reopens)."""
    from server.push.hub import PushHub, Subscriber
    from workers.active_query import PER_PASS, ActiveQuery

    hub = PushHub(1000)
    active = ActiveQuery(hub, services.orders, services.payments, after=0.0)
    subs = [Subscriber("u", f"order{i}", f"tok{i}", Page()) for i in range(PER_PASS + 5)]
    for sub in subs:
        sub.last_status = "unpaid"
        hub.subscribe(sub)
    hub.subscribe(Subscriber("u", "order0", "tok0", Page()))  # a second page: still one entry
    assert len(active._due) == PER_PASS + 5
    subs[0].last_status = "paid"
    hub.unsubscribe(subs[1])
    await active.tick()
    # Every order had its look (none is in MongoDB, so no WeChat call); order1
    # has no page left: it is forgotten, the rest come back later.
    assert "order1" not in active._interval
    assert len(active._due) == PER_PASS + 4 - 1
    await active.tick()
    hub.unsubscribe(subs[2])
    hub.subscribe(subs[1])
    assert "order1" in active._interval
