"""The browser's STOMP user can listen to its order and nothing else."""

from __future__ import annotations

import asyncio

import aio_pika
import pytest

from tests.stomp import StompSession, prepare_broker


@pytest.fixture(scope="module")
def passcode() -> str:
    return prepare_broker()


async def listening(passcode: str, destination: str) -> StompSession:
    session = await StompSession.connect("webguest", passcode)
    await session.send("SUBSCRIBE", {"id": "sub-0", "destination": destination, "receipt": "r1"})
    command, headers, _ = await session.receive()
    assert (command, headers.get("receipt-id")) == ("RECEIPT", "r1"), headers
    return session


@pytest.mark.gen_test(timeout=30)
async def test_webguest_hears_its_order_on_paynotify(passcode: str) -> None:
    session = await listening(passcode, "/exchange/paynotify/order.abc123")
    connection = await aio_pika.connect("amqp://guest:guest@127.0.0.1:5672/")
    try:
        channel = await connection.channel()
        exchange = await channel.declare_exchange("paynotify", aio_pika.ExchangeType.TOPIC, durable=True)
        await exchange.publish(aio_pika.Message(b'{"status": "paid"}'), routing_key="order.other")
        await exchange.publish(aio_pika.Message(b'{"status": "paid"}'), routing_key="order.abc123")
        command, headers, body = await session.receive()
        assert command == "MESSAGE" and body == '{"status": "paid"}'
        assert headers["destination"] == "/exchange/paynotify/order.abc123"
        with pytest.raises(asyncio.TimeoutError):
            await session.receive(within=0.5)  # order.other never arrives
    finally:
        await connection.close()
        session.close()


@pytest.mark.gen_test(timeout=30)
async def test_webguest_cannot_publish_a_fake_paid(passcode: str) -> None:
    connection = await aio_pika.connect("amqp://guest:guest@127.0.0.1:5672/")
    try:
        channel = await connection.channel()
        exchange = await channel.declare_exchange("paynotify", aio_pika.ExchangeType.TOPIC, durable=True)
        listener = await channel.declare_queue(exclusive=True)
        await listener.bind(exchange, "order.victim")
        session = await StompSession.connect("webguest", passcode)
        await session.send("SEND", {"destination": "/exchange/paynotify/order.victim", "receipt": "r2",
                                    "content-type": "application/json"}, '{"status": "paid"}')
        command, _, _ = await session.receive()
        # The broker refuses it: an ERROR frame, or the STOMP connection is closed.
        assert command in ("ERROR", "CLOSED")
        session.close()
        await asyncio.sleep(0.5)
        assert await listener.get(fail=False) is None  # nothing reached paynotify
    finally:
        await connection.close()


@pytest.mark.parametrize("destination", ["/queue/evil", "/amq/queue/orders", "/exchange/amq.topic/x",
                                         "/topic/anything"])
@pytest.mark.gen_test(timeout=30)
async def test_webguest_cannot_declare_or_read_anything_else(passcode: str, destination: str) -> None:
    session = await StompSession.connect("webguest", passcode)
    await session.send("SUBSCRIBE", {"id": "sub-1", "destination": destination, "receipt": "r3"})
    command, headers, _ = await session.receive()
    # Refused: an ERROR frame, or the broker ends the STOMP session ("STOMP died").
    assert command in ("ERROR", "CLOSED"), (command, headers)
    session.close()
    if destination == "/queue/evil":
        connection = await aio_pika.connect("amqp://guest:guest@127.0.0.1:5672/")
        try:
            channel = await connection.channel()
            with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
                await channel.declare_queue("evil", passive=True)
        finally:
            await connection.close()


@pytest.mark.gen_test(timeout=30)
async def test_wrong_passcode_is_refused() -> None:
    with pytest.raises(ConnectionError):
        await StompSession.connect("webguest", "not-the-passcode")
