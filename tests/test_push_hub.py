"""PushHub: a browser that cannot keep up is dropped; the others never wait for it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from server.push.hub import QUEUE_SIZE, PushHub, Subscriber
from tests.support.pages import Page, PingBursts
from tests.support.waiting import eventually

# Not a status the hub knows, so always news: a control event that shows a
# page's queue has been worked through up to the point where it was sent.
MARKER = {"type": "control", "status": "control-marker"}


def event(n: int, status: str = "unpaid") -> dict[str, Any]:
    return {"type": "status", "order_id": "o1", "status": f"{status}{n}", "total_fee": 1}


@pytest.mark.gen_test(timeout=10)
async def test_a_stuck_page_is_disconnected_and_the_others_get_everything() -> None:
    hub = PushHub(max_sockets_per_user=8)
    stuck, healthy = Page(stuck=True), Page()
    subs = [Subscriber("u", "o1", "tok", p) for p in (stuck, healthy)]
    for sub in subs:
        hub.subscribe(sub)
    await asyncio.gather(*(sub.start(event(0)) for sub in subs[1:]))
    stuck_start = asyncio.get_running_loop().create_task(subs[0].start(event(0)))
    await asyncio.sleep(0)

    total = QUEUE_SIZE + 5
    for n in range(1, total + 1):
        hub.dispatch("tok", event(n))
        await asyncio.sleep(0)  # a turn of the loop between events, as when they arrive from the network
    assert stuck.closed == (1013, "too slow")  # decided inside dispatch, when its queue overflowed
    await eventually(lambda: len(healthy.received) == total + 1, message="every event written to the healthy page")
    assert healthy.statuses() == [f"unpaid{n}" for n in range(total + 1)]
    assert healthy.closed is None
    hub.close_all()
    stuck_start.cancel()
    await asyncio.sleep(0)


@pytest.mark.gen_test(timeout=10)
async def test_repeats_of_a_known_status_are_not_sent_again() -> None:
    page = Page()
    sub = Subscriber("u", "o1", "tok", page)
    hub = PushHub(8)
    hub.subscribe(sub)
    hub.dispatch("tok", {"status": "paid"})  # arrives while the state is being read
    await sub.start({"status": "paid"})
    hub.dispatch("tok", {"status": "paid"})
    # A control sent after the repeat: once it is through, so is anything sent before it.
    hub.dispatch("tok", MARKER)
    await eventually(lambda: MARKER in page.received, message="the control event written to the page")
    assert page.received == [{"status": "paid"}, MARKER]
    hub.close_all()
    await asyncio.sleep(0)


def test_per_user_cap_and_bookkeeping() -> None:
    hub = PushHub(max_sockets_per_user=2)
    pages = [Page() for _ in range(3)]
    subs = [Subscriber("u", "o1", f"t{i}", p) for i, p in enumerate(pages)]
    hub.subscribe(subs[0])
    hub.subscribe(subs[1])
    assert not hub.can_open("u") and hub.can_open("other")
    hub.unsubscribe(subs[0])
    hub.unsubscribe(subs[0])  # twice is harmless
    assert hub.can_open("u") and len(hub) == 1
    hub.close_all()
    assert pages[1].closed == (1001, "server shutting down") and len(hub) == 0


@pytest.mark.gen_test(timeout=10)
async def test_keep_alive_pings_the_live_and_closes_the_silent() -> None:
    hub = PushHub(8)
    live, dead = Page(), Page(answers=False)
    subs = [live.subscriber("u", "o1", "a"), dead.subscriber("u", "o2", "b")]
    for s in subs:
        hub.subscribe(s)
    subs[1].last_seen -= 60  # no pong for a minute
    task = asyncio.get_running_loop().create_task(hub.keep_alive(0.05, tick=0.01))
    try:
        # A second round's ping: the live page was kept after the silent one was closed.
        await eventually(lambda: dead.closed is not None and live.pings >= 2, every=0.01,
                         message="the silent page closed and the live one pinged in two rounds")
    finally:
        task.cancel()
    assert live.closed is None
    assert dead.closed == (1001, "ping timeout") and dead.pings == 0
    assert len(hub) == 1


@pytest.mark.gen_test(timeout=10)
async def test_keep_alive_spreads_its_pings_over_the_interval() -> None:
    """A round pings a few sockets per tick, not all at once, and each socket
    once. (How the ticks fall in time is measured by bench/keep_alive_spread.py.)"""
    hub = PushHub(100)
    bursts = PingBursts()
    pages = [Page(on_ping=bursts) for _ in range(20)]
    for i, page in enumerate(pages):
        hub.subscribe(page.subscriber("u", f"o{i}", f"t{i}"))
    task = asyncio.get_running_loop().create_task(hub.keep_alive(0.25, tick=0.05))  # 5 ticks of 4 pings
    try:
        await eventually(lambda: bursts.total() >= 20, every=0.01, message="a whole round of pings")
    finally:
        task.cancel()
    first_round = bursts.bursts[:5]
    assert [len(b) for b in first_round] == [4] * 5
    assert sorted(pages.index(p) for b in first_round for p in b) == list(range(20))  # each socket once
    hub.close_all()


@pytest.mark.gen_test(timeout=10)
async def test_only_progress_reaches_the_page() -> None:
    """Copies arrive from this process and from RabbitMQ, from several processes
    in no set order: a page never goes back from paid, and closed -> paid
    (paid after close) still gets through."""
    page = Page()
    sub = Subscriber("u", "o1", "tok", page)
    hub = PushHub(8)
    hub.subscribe(sub)
    await sub.start({"status": "unpaid"})
    for status in ("closed", "unpaid", "paid", "closed", "paid", "unpaid"):
        hub.dispatch("tok", {"status": status})
    hub.dispatch("tok", MARKER)  # sent last: once it is through, so is everything before it
    await eventually(lambda: MARKER in page.received, message="the control event written to the page")
    assert page.statuses() == ["unpaid", "closed", "paid", MARKER["status"]]
    hub.close_all()


class DyingPage(Page):
    """A socket that is found closed on its second write: it drops itself from
    the hub on the spot, as PaySocket does."""

    def __init__(self, hub: PushHub):
        super().__init__()
        self.hub = hub
        self.sub: Subscriber | None = None

    def send_event(self, event: dict[str, Any]) -> asyncio.Future[None]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        if self.received:
            assert self.sub is not None
            self.hub.unsubscribe(self.sub)
        else:
            self.received.append(event)
        return done


@pytest.mark.gen_test(timeout=10)
async def test_a_page_found_closed_while_dispatching_does_not_disturb_the_others() -> None:
    hub = PushHub(8)
    dying, healthy = DyingPage(hub), Page()
    subs = [Subscriber("u", "o1", "tok", p) for p in (dying, healthy)]
    dying.sub = subs[0]
    for sub in subs:
        hub.subscribe(sub)
        await sub.start({"status": "unpaid"})
    assert hub.dispatch("tok", {"status": "paid"}) == 2
    await eventually(lambda: len(healthy.received) == 2, message="paid written to the healthy page")
    assert healthy.statuses() == ["unpaid", "paid"]
    assert len(hub) == 1
    hub.close_all()
