"""The native WebSocket route: owner only, state first, then each change, once."""

from __future__ import annotations

import gc
import weakref

import pytest
import tornado.httpclient

from server.composition.container import Services
from tests.support.notify_client import post_notify, signed_notify
from tests.support.shopper import Shopper
from tests.support.sockets import PageSocket, events_before_control
from tests.support.waiting import eventually


@pytest.mark.gen_test(timeout=30)
async def test_owner_gets_status_then_paid_and_a_repeat_sends_nothing(shopper: Shopper, base_url: str,
                                                                      services: Services) -> None:
    order = await shopper.order([("mug-celadon", 1)])
    sock = await PageSocket.open(base_url, order["id"], shopper)
    first = await sock.next()
    assert first == {"type": "status", "order_id": order["id"], "status": "unpaid", "total_fee": 3900}
    _, reply = await post_notify(base_url, signed_notify(order))
    assert reply["return_code"] == "SUCCESS"
    assert await sock.next() == {"type": "paid", "order_id": order["id"], "status": "paid", "total_fee": 3900}
    _status, reply = await post_notify(base_url, signed_notify(order))
    assert reply["return_code"] == "SUCCESS"
    # Neither the repeat nor RabbitMQ's copy of the first is news to the page.
    assert await events_before_control(sock, services, order["id"]) == []
    sock.close()


@pytest.mark.gen_test(timeout=30)
async def test_socket_opened_after_payment_gets_paid_at_once(shopper: Shopper, base_url: str,
                                                             services: Services) -> None:
    order = await shopper.order([("fan-silk", 2)])
    await post_notify(base_url, signed_notify(order))
    sock = await PageSocket.open(base_url, order["id"], shopper)
    assert await sock.next() == {"type": "status", "order_id": order["id"], "status": "paid", "total_fee": 5000}
    assert await events_before_control(sock, services, order["id"]) == []  # RabbitMQ's copy is no news
    sock.close()


@pytest.mark.gen_test(timeout=30)
async def test_only_the_owner_may_listen(shopper: Shopper, mallory: Shopper, base_url: str,
                                        services: Services) -> None:
    order = await shopper.order([("fan-silk", 1)])
    for who, code in ((mallory, 4404), (None, 4401)):
        sock = await PageSocket.open(base_url, order["id"], who)
        assert await sock.next() is None
        assert sock.close_code == code
    sock = await PageSocket.open(base_url, "no-such-order", shopper)
    assert await sock.next() is None and sock.close_code == 4404
    assert len(services.hub) == 0


@pytest.mark.gen_test(timeout=30)
async def test_foreign_origin_is_refused(shopper: Shopper, base_url: str) -> None:
    order = await shopper.order([("fan-silk", 1)])
    with pytest.raises(tornado.httpclient.HTTPClientError) as err:
        await PageSocket.open(base_url, order["id"], shopper, origin="https://evil.example")
    assert err.value.code == 403


@pytest.mark.parametrize("frame, code", [
    ("hello", 4400), ('{"type": "paid"}', 4400), (b"\x00\x01binary", 4400), ("x" * 10000, 1009),
    ("[" * 4000, 4400),  # deeper than json's recursion limit
])
@pytest.mark.gen_test(timeout=30)
async def test_malformed_frames_get_a_clean_close(frame: str | bytes, code: int, shopper: Shopper,
                                                  base_url: str, services: Services) -> None:
    order = await shopper.order([("fan-silk", 1)])
    sock = await PageSocket.open(base_url, order["id"], shopper)
    assert (await sock.next_event())["type"] == "status"
    await sock.conn.write_message(frame, binary=isinstance(frame, bytes))
    assert await sock.next() is None
    assert sock.close_code == code
    await eventually(lambda: len(services.hub) == 0, message="the closed socket gone from the hub")


@pytest.mark.gen_test(timeout=30)
async def test_ping_gets_pong(shopper: Shopper, base_url: str) -> None:
    order = await shopper.order([("fan-silk", 1)])
    sock = await PageSocket.open(base_url, order["id"], shopper)
    await sock.next()
    await sock.conn.write_message('{"type": "ping"}')
    assert await sock.next() == {"type": "pong"}
    sock.close()


@pytest.fixture
def extra_settings() -> dict[str, object]:
    return {"max_sockets_per_user": 2}


@pytest.mark.gen_test(timeout=30)
async def test_sockets_per_user_are_capped(shopper: Shopper, base_url: str, services: Services) -> None:
    order = await shopper.order([("fan-silk", 1)])
    socks = [await PageSocket.open(base_url, order["id"], shopper) for _ in range(2)]
    for s in socks:
        assert (await s.next_event())["type"] == "status"
    third = await PageSocket.open(base_url, order["id"], shopper)
    assert await third.next() is None and third.close_code == 4429
    socks[0].close()
    await eventually(lambda: services.hub.can_open("demo"), message="the closed socket's place freed")
    fourth = await PageSocket.open(base_url, order["id"], shopper)
    assert (await fourth.next_event())["type"] == "status"


@pytest.mark.gen_test(timeout=30)
async def test_every_socket_on_the_order_hears_the_payment(shopper: Shopper, base_url: str) -> None:
    order = await shopper.order([("fan-silk", 1)])
    socks = [await PageSocket.open(base_url, order["id"], shopper) for _ in range(2)]
    for s in socks:
        await s.next()
    await post_notify(base_url, signed_notify(order))
    for s in socks:
        assert (await s.next_event())["type"] == "paid"


@pytest.mark.gen_test(timeout=30)
async def test_a_full_process_turns_pages_away_to_try_again(shopper: Shopper, mallory: Shopper, base_url: str,
                                                            services: Services) -> None:
    """Past what its open-file limit leaves for pages, a process closes a new
    page's socket with 1013 (try again later): the page comes back, through
    the load balancer, to a process with room. At the file limit itself the
    kernel would queue connections nobody accepts, and those pages would hang."""
    assert services.hub.max_sockets > 1000  # derived from the open-file limit, less what the process keeps
    services.hub.max_sockets = 1
    order = await shopper.order([("fan-silk", 1)])
    first = await PageSocket.open(base_url, order["id"], shopper)
    assert (await first.next_event())["type"] == "status"
    other = await mallory.order([("fan-silk", 1)])
    turned_away = await PageSocket.open(base_url, other["id"], mallory)
    assert await turned_away.next() is None and turned_away.close_code == 1013
    first.close()
    await eventually(services.hub.has_room, message="the closed socket's room freed")
    again = await PageSocket.open(base_url, other["id"], mallory)
    assert (await again.next_event())["type"] == "status"


@pytest.mark.gen_test(timeout=30)
async def test_a_closed_page_goes_without_the_garbage_collector(shopper: Shopper, base_url: str,
                                                                services: Services) -> None:
    # A page left in a cycle waits for a full collection, and those stall a
    # process holding thousands of pages; frozen (server/infra/gc_freezer.py),
    # it would never go at all.
    order = await shopper.order([("fan-silk", 1)])
    sock = await PageSocket.open(base_url, order["id"], shopper)
    assert (await sock.next_event())["type"] == "status"
    [sub] = services.hub.subscribers()
    handler = weakref.ref(sub.peer)
    del sub
    gc.disable()
    try:
        sock.close()
        await eventually(lambda: handler() is None, message="the closed page's handler freed")
    finally:
        gc.enable()
