"""A pay page on a process cut off from RabbitMQ still hears its order's
final state: the order was paid (or closed) by another process, whose event
never reaches this one, and the backstop that looks up waiting pages sends it."""

from __future__ import annotations

import dataclasses
import time

import pytest

from server.composition.container import Services, open_services
from tests.support.shopper import Shopper
from tests.support.sockets import PageSocket
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import eventually


@pytest.fixture
def extra_settings(rabbit_proxy: TcpProxy, amqp_url: str) -> dict[str, object]:
    return {"amqp_url": rabbit_proxy.url_for(amqp_url),
            "active_query_after_seconds": 1.0}


@pytest.mark.parametrize("final", ["paid", "closed"])
@pytest.mark.gen_test(timeout=60)
async def test_page_on_a_process_cut_off_from_rabbitmq_hears_the_final_state(
        final: str, shopper: Shopper, base_url: str, services: Services, rabbit_proxy: TcpProxy,
        amqp_url: str, mongo_url: str) -> None:
    # Another process: same MongoDB, its own (uncut) RabbitMQ link, no pages of its own.
    elsewhere = await open_services(dataclasses.replace(services.settings, amqp_url=amqp_url), mongo_url)
    try:
        order = await shopper.order([("mug-celadon", 1)])  # no QR asked for: no WeChat trade
        sock = await PageSocket.open(base_url, order["id"], shopper)
        assert await sock.next() == {"type": "status", "order_id": order["id"], "status": "unpaid",
                                     "total_fee": order["pay_money"]}
        await rabbit_proxy.cut()
        await eventually(lambda: not services.bus.is_open, message="paypush sees its RabbitMQ link cut")

        if final == "paid":
            won, _ = await elsewhere.orders.mark_paid(order["id"], "4200000000202611280000000042", time.time(),
                                                      "test: paid on another process", order["pay_money"])
        else:
            won, _ = await elsewhere.orders.close(order["id"], "test: closed on another process")
        assert won
        assert (await shopper.get_order(order["id"]))["status"] == final  # the API knows

        event = await sock.next(within=20)  # and so does the page, with no broker in between
        assert event == {"type": final, "order_id": order["id"], "status": final,
                         "total_fee": order["pay_money"]}
        assert not services.bus.is_open  # still cut off: it was not RabbitMQ that brought it
    finally:
        await rabbit_proxy.restore()
        await elsewhere.close()
