"""RabbitMQ unreachable (a cut TCP path) while a payment lands: the notify is
still acknowledged, the pages on this process hear it at once, and the event
goes out on RabbitMQ (to pages elsewhere) when the broker is reachable again."""

from __future__ import annotations

import aio_pika
import pytest

from server.composition.container import Services
from tests.support.notify_client import post_notify, signed_notify
from tests.support.shopper import Shopper
from tests.support.sockets import PageSocket, events_before_control
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import eventually


@pytest.fixture
def extra_settings(rabbit_proxy: TcpProxy, amqp_url: str) -> dict[str, object]:
    return {"amqp_url": rabbit_proxy.url_for(amqp_url)}


@pytest.mark.gen_test(timeout=60)
async def test_payment_recorded_while_rabbitmq_is_unreachable_is_pushed_when_it_returns(
        shopper: Shopper, base_url: str, services: Services, rabbit_proxy: TcpProxy, amqp_url: str) -> None:
    order = await shopper.order([("mug-celadon", 1)])
    sock = await PageSocket.open(base_url, order["id"], shopper)
    assert (await sock.next_event())["status"] == "unpaid"
    # Another process's view of paynotify, on a path that is not cut.
    elsewhere = await aio_pika.connect(amqp_url)
    channel = await elsewhere.channel()
    queue = await channel.declare_queue(exclusive=True)
    await queue.bind("paynotify", routing_key=services.push_tokens.routing_key(order["id"]))
    await rabbit_proxy.cut()
    await eventually(lambda: not services.bus.is_open, message="paypush sees its RabbitMQ link cut")

    status, reply = await post_notify(base_url, signed_notify(order))
    assert (status, reply["return_code"]) == (200, "SUCCESS")  # the database is the record
    status, ready = await shopper.request("GET", "/readyz")
    assert status == 503 and ready["rabbitmq"] == "down"
    assert await services.events.backlog() == 1
    assert (await sock.next_event(within=5))["type"] == "paid"  # this process's own page: no broker needed
    assert await queue.get(fail=False) is None

    await rabbit_proxy.restore()
    message = await eventually(lambda: queue.get(fail=False, no_ack=True),
                               message="the payment's event on RabbitMQ once it is reachable again")
    assert b'"paid"' in message.body
    await elsewhere.close()
    assert await events_before_control(sock, services, order["id"]) == [], "the bridge's copy is a repeat, not news"

    async def outbox_empty() -> bool:
        return await services.events.backlog() == 0

    await eventually(outbox_empty, message="the outbox entry cleared once its publish was confirmed")
    assert services.events.published >= 1
