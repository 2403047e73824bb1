"""A waiting pay page whose notify was lost still turns to paid: orderquery."""

from __future__ import annotations

import time

import pytest

from server.composition.container import Services
from server.push.hub import PushHub, Subscriber
from tests.support.pages import Page
from tests.support.shopper import Shopper
from tests.support.sockets import PageSocket
from workers.active_query import PER_PASS, ActiveQuery


@pytest.fixture
def extra_settings() -> dict[str, object]:
    return {"active_query_after_seconds": 1.0}


@pytest.mark.gen_test(timeout=60)
async def test_open_page_with_lost_notify_gets_paid(shopper: Shopper, base_url: str) -> None:
    order = await shopper.order([("fan-silk", 1)])
    native = await shopper.create_native(order["id"])
    sock = await PageSocket.open(base_url, order["id"], shopper)
    assert (await sock.next_event())["status"] == "unpaid"
    status, _ = await shopper.request("POST", "/sandbox/wxpay/pay",
                                      {"code_url": native["code_url"], "notify": {"drop": True}})
    assert status == 200
    assert (await sock.next_event(within=20))["type"] == "paid"
    paid = await shopper.get_order(order["id"])
    assert [e["kind"] for e in paid["logs"]] == ["created", "paid"]
    assert "found by order query" in paid["logs"][1]["remarks"]


@pytest.mark.gen_test(timeout=60)
async def test_no_page_no_query(shopper: Shopper, base_url: str) -> None:
    """Without a waiting page nobody asks: the order stays unpaid until its
    deadline. The control is a second order paid the same way a moment later
    with its page open: once the backstop has found that one paid, it has had
    its chance at the first (whose QR is older, so due earlier)."""
    unwatched = await shopper.order([("fan-silk", 1)])
    watched = await shopper.order([("fan-silk", 1)])
    for order in (unwatched, watched):
        native = await shopper.create_native(order["id"])
        status, _ = await shopper.request("POST", "/sandbox/wxpay/pay",
                                          {"code_url": native["code_url"], "notify": {"drop": True}})
        assert status == 200
    sock = await PageSocket.open(base_url, watched["id"], shopper)
    assert (await sock.next_event())["status"] == "unpaid"
    assert (await sock.next_event(within=20))["type"] == "paid"  # found by the backstop's order query
    still = await shopper.get_order(unwatched["id"])
    assert still["status"] == "unpaid"
    assert [e["kind"] for e in still["logs"]] == ["created"]


@pytest.mark.gen_test(timeout=30)
async def test_a_pass_looks_only_at_due_pages_still_waiting(services: Services) -> None:
    """Bookkeeping of the backstop, as the pages see it: new pages are learnt
    from the hub as they open, a pass looks at PER_PASS orders at most (an
    order with two pages is one look), a page that already knows the outcome
    is not looked for, and an order whose page left is looked at again when a
    page reopens. Every order here is settled in MongoDB, so a look shows as
    the settled state offered to the order's pages (``last_status``)."""
    ids = [f"q{i:03d}" for i in range(PER_PASS + 6)]
    now = time.time()
    await services.store.orders.insert_many(
        [{"_id": "q000", "status": "paid", "pay_money": 100, "paid_at": now}]  # its page knows "closed"
        + [{"_id": i, "status": "closed", "pay_money": 100, "closed_at": now} for i in ids[1:]])
    hub = PushHub(1000)
    active = ActiveQuery(hub, services.orders, services.payments, after=0.0)

    async def open_page(order_id: str, knows: str = "unpaid") -> Subscriber:
        sub = Page().subscriber("u", order_id, f"tok-{order_id}")
        hub.subscribe(sub)
        await sub.start({"status": knows})
        return sub

    def heard(status: str) -> set[str]:
        return {sub.order_id for sub in hub.subscribers() if sub.last_status == status}

    # Opened in id order: the look-ups fall due in that order.
    await open_page("q000", knows="closed")  # not waiting any more
    twice = [await open_page("q001"), await open_page("q001")]
    left = await open_page("q002")
    for order_id in ids[3:]:
        await open_page(order_id)
    hub.unsubscribe(left)  # q002: its only page left

    await active.tick()
    first_pass = {"q001", *ids[3:PER_PASS]}  # the first PER_PASS due, less q000 and q002
    assert heard("closed") == {"q000", *first_pass}
    assert [sub.last_status for sub in twice] == ["closed", "closed"]
    await active.tick()
    assert heard("closed") == {"q000", *first_pass, *ids[PER_PASS:]}  # the rest, in the next pass
    assert heard("paid") == set()  # q000 was never looked at: it would have been told "paid"

    reopened = await open_page("q002")
    await active.tick()
    assert reopened.last_status == "closed"
