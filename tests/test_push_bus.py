"""Push across processes and through RabbitMQ trouble."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import pytest

from server.composition.container import Services
from tests.support.notify_client import post_notify, signed_notify
from tests.support.processes import ServerProcess, base_env
from tests.support.rabbit import close_connections_on, vhost_of
from tests.support.shopper import Shopper
from tests.support.sockets import PageSocket, events_before_control
from tests.support.waiting import eventually


@pytest.fixture
def two_servers(tmp_path: Path, mongo_url: str, amqp_url: str) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    env = base_env(tmp_path / "var", MONGO_URL=mongo_url, MONGO_DB=f"t{uuid.uuid4().hex[:12]}", AMQP_URL=amqp_url,
                   COOKIE_SECRET="shared-secret-" + uuid.uuid4().hex, SANDBOX="1")
    a = ServerProcess(env).start()
    b = ServerProcess(env).start()
    yield a, b
    for server in (a, b):
        assert server.stop() == 0, server.output
        assert "Traceback" not in server.output, server.output


@pytest.mark.gen_test(timeout=60)
async def test_notify_on_a_reaches_the_browser_on_b(two_servers: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = two_servers
    shopper = await Shopper.logged_in(b.base_url, "demo", "demo-pass-123")
    try:
        order = await shopper.order([("tea-longjing", 1)])
        sock = await PageSocket.open(b.base_url, order["id"], shopper)
        assert (await sock.next_event())["status"] == "unpaid"
        status, reply = await post_notify(a.base_url, signed_notify(order))
        assert (status, reply["return_code"]) == (200, "SUCCESS")
        assert await sock.next() == {"type": "paid", "order_id": order["id"], "status": "paid", "total_fee": 8800}
        sock.close()
    finally:
        await shopper.close()


@pytest.mark.gen_test(timeout=60)
async def test_bridge_recovers_after_rabbitmq_drops_every_connection(
        shopper: Shopper, base_url: str, services: Services) -> None:
    order = await shopper.order([("fan-silk", 1)])
    sock = await PageSocket.open(base_url, order["id"], shopper)
    assert (await sock.next_event())["status"] == "unpaid"
    reconnects = services.bus.reconnects
    closed = await asyncio.get_running_loop().run_in_executor(
        None, close_connections_on, vhost_of(services.settings.amqp_url))
    assert closed >= 1
    await eventually(lambda: services.bus.reconnects > reconnects and services.bus.is_open,
                     message="paypush reconnected to RabbitMQ")
    # The bridge's queue, binding and consumer are restored after the channel:
    # the bridge is back once a control event comes through it.
    assert await events_before_control(sock, services, order["id"]) == []
    # Published by hand, so that only the bridge can bring it to the page (a
    # notify on this process would also be handed to the socket directly).
    paid = {"type": "paid", "order_id": order["id"], "status": "paid", "total_fee": order["pay_money"]}
    assert await services.bus.publish_events([(services.push_tokens.routing_key(order["id"]), paid, {})]) == [None]
    heard = await sock.next(within=10, skip_controls=True)
    if heard is not None and heard["type"] == "status" and heard["status"] == "unpaid":
        # The rebind's catch-up read may land after the control: to the hub a
        # control is a status of its own, so the page's real state is news
        # again. Only a repeat of that state may come before the payment.
        heard = await sock.next(within=10, skip_controls=True)
    assert heard == paid


async def routed(amqp_url: str, routing_key: str) -> bool:
    """Whether RabbitMQ routes ``routing_key`` on paynotify to any queue: a
    mandatory publish that nothing is bound for comes back (basic.return).
    The body is JSON but no event, so a page that hears it ignores it."""
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await channel.get_exchange("paynotify")
        try:
            await exchange.publish(aio_pika.Message(b"[]"), routing_key, mandatory=True)
        except aio_pika.exceptions.DeliveryError:
            return False
        return True
    finally:
        await connection.close()


@pytest.mark.gen_test(timeout=60)
async def test_the_bridge_hears_exactly_the_pages_this_process_holds(
        shopper: Shopper, base_url: str, services: Services) -> None:
    """Each process's queue is bound to the keys of its own pages, not ``#``:
    its share of the events does not grow with the number of processes."""
    amqp_url = services.settings.amqp_url
    order = await shopper.order([("tea-longjing", 1)])
    key = services.push_tokens.routing_key(order["id"])
    assert not await routed(amqp_url, key), "no page waits for this order, yet its events reach a queue"

    sock = await PageSocket.open(base_url, order["id"], shopper)
    assert (await sock.next_event())["status"] == "unpaid"

    async def bound() -> bool:
        return await routed(amqp_url, key)

    await eventually(bound, message="the page's key bound to this process's queue")
    paid = {"type": "paid", "order_id": order["id"], "status": "paid", "total_fee": order["pay_money"]}
    # As another process would: only the bridge can bring it.
    assert await services.bus.publish_events([(key, paid, {})]) == [None]
    assert await sock.next(within=10, skip_controls=True) == paid

    assert services.bridge.queue is not None
    services.bridge.queue.grace = 0.2
    sock.close()

    async def unbound() -> bool:
        return not await routed(amqp_url, key)

    await eventually(unbound, message="the binding goes once the page has left", within=15)


@pytest.mark.gen_test(timeout=60)
async def test_a_page_is_caught_up_from_the_store_when_its_key_is_bound_again(
        shopper: Shopper, base_url: str, services: Services) -> None:
    """After a reconnect the queue is new and bound to nothing: each key bound
    again brings its pages their order's state, read from the store, so an
    event that passed while nothing was bound is not lost. Here the order
    becomes paid in the store with no event at all: only that read can tell the page."""
    order = await shopper.order([("fan-silk", 1)])
    sock = await PageSocket.open(base_url, order["id"], shopper)
    assert (await sock.next_event())["status"] == "unpaid"
    await services.store.orders.update_one({"_id": order["id"]}, {"$set": {"status": "paid"}})
    assert services.bridge.queue is not None
    binds = services.bridge.queue.binds
    services.bridge.queue.rebind_all()
    caught_up = await sock.next(within=10, skip_controls=True)
    assert caught_up is not None and caught_up["status"] == "paid"
    assert services.bridge.queue.binds > binds


@pytest.mark.gen_test(timeout=60)
async def test_a_stopping_process_leaves_its_pages_keys_to_go_with_its_queue(
        shopper: Shopper, base_url: str, services: Services) -> None:
    """Closing 14,000 pages on SIGTERM must not cost a timer and an unbind
    each: the queue is deleted with the connection, bindings and all."""
    order = await shopper.order([("tea-longjing", 1)])
    sock = await PageSocket.open(base_url, order["id"], shopper)
    assert (await sock.next_event())["status"] == "unpaid"
    queue = services.bridge.queue
    assert queue is not None and len(queue) == 1
    services.stop_taking_work()
    services.hub.close_all()
    assert await sock.next() is None and sock.close_code == 1001
    assert queue.unbinding == 0 and len(queue) == 1  # given up by nobody: nothing to unbind, no timer
