"""RabbitMQ: one robust connection, the topology, and confirmed publishing.

Knows exchanges, queues and bytes, not orders. Opened once at start-up and
passed in; aio-pika's robust connection re-opens channels and re-declares
queues, bindings and consumers after a reconnect.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
    AbstractRobustExchange,
)

from server.infra.routed_queue import RoutedQueue

log = logging.getLogger(__name__)

PAYNOTIFY = "paynotify"
# Every paynotify event, by exact key, to the processes holding that order's pages.
PAGES = "paypush.pages"
BINDING_CHANNELS = 4  # bindings made at once (measured: 1.7k/s on 4, 0.7k/s on one)
PUBLISH_TIMEOUT = 5.0
PERSISTENT = int(aio_pika.DeliveryMode.PERSISTENT)


# What aio-pika raises when the broker is gone or going: an AMQP error, a
# socket error, or RuntimeError from a channel or connection already closed.
BROKER_ERRORS: tuple[type[BaseException], ...] = (
    aio_pika.exceptions.AMQPError, ConnectionError, OSError, RuntimeError, TimeoutError)


class BusUnavailable(Exception):
    """A publish could not be confirmed by the broker."""


class Bus:
    def __init__(self, connection: AbstractRobustConnection, channel: AbstractRobustChannel,
                 paynotify: AbstractRobustExchange):
        self.connection = connection
        self._channel = channel
        self._paynotify = paynotify
        self.reconnects = 0
        self._on_reconnect: list[Callable[[], Awaitable[None]]] = []
        connection.reconnect_callbacks.add(self._reconnected)

    @classmethod
    async def connect(cls, url: str) -> Bus:
        try:
            connection = await aio_pika.connect_robust(url, timeout=10, reconnect_interval=1)
        except BROKER_ERRORS as exc:
            raise RuntimeError(
                f"RabbitMQ is not reachable at AMQP_URL ({type(exc).__name__}: {exc}); "
                "start it (rabbitmq-server -detached) or set AMQP_URL") from None
        channel = await connection.channel(publisher_confirms=True)
        paynotify = await channel.declare_exchange(PAYNOTIFY, aio_pika.ExchangeType.TOPIC, durable=True)
        log.info("RabbitMQ connected; exchange %s declared", PAYNOTIFY)
        return cls(connection, channel, paynotify)  # type: ignore[arg-type]

    @property
    def is_open(self) -> bool:
        return not self.connection.is_closed and self.connection.connected.is_set()

    def on_reconnect(self, callback: Callable[[], Awaitable[None]]) -> None:
        self._on_reconnect.append(callback)

    async def _reconnected(self, *_: Any) -> None:
        self.reconnects += 1
        log.info("RabbitMQ reconnected (%d reconnects so far)", self.reconnects)
        for callback in self._on_reconnect:
            try:
                await callback()
            except Exception:
                log.exception("reconnect callback failed")

    async def publish_events(self, events: Sequence[tuple[str, dict[str, Any], dict[str, Any]]]
                             ) -> list[BusUnavailable | None]:
        """Publish many (routing key, payload, headers) to ``paynotify`` at once,
        persistent and confirmed; one result per event, None when the broker
        confirmed it.

        Straight on the channel, without aio-pika's message objects, a timer
        per message or waiting for each one's write: a notify's event costs its
        frames and its confirm, and one timeout covers the batch (a batch that
        runs out is published again from the outbox: at least once). Not
        mandatory: an event no page listens for is dropped by the broker, since
        a page that opens later reads its order's state anyway."""
        if not self.is_open:
            return [BusUnavailable("RabbitMQ connection is down")] * len(events)
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT):
                channel = await self._channel.get_underlay_channel()
                results = await asyncio.gather(
                    *(channel.basic_publish(
                        json.dumps(payload).encode("utf-8"), exchange=PAYNOTIFY, routing_key=key,
                        properties=aiormq.spec.Basic.Properties(content_type="application/json",
                                                                delivery_mode=PERSISTENT, headers=headers),
                        mandatory=False, wait=False)  # type: ignore[call-arg]  # aiormq.Channel has it, its abc not
                      for key, payload, headers in events),
                    return_exceptions=True)
        except BROKER_ERRORS as exc:
            return [BusUnavailable(f"{type(exc).__name__}: {exc}")] * len(events)
        return [BusUnavailable(f"{type(r).__name__}: {r}") if isinstance(r, BaseException) else None
                for r in results]

    async def publish_to_queue(self, queue: str, body: bytes, headers: dict[str, Any] | None = None) -> None:
        """Publish a persistent message straight to ``queue`` (default exchange), confirmed."""
        await self._publish(self._channel.default_exchange, queue, body, "text/plain", headers)

    async def _publish(self, exchange: Any, routing_key: str, body: bytes, content_type: str,
                       headers: dict[str, Any] | None = None) -> None:
        if not self.is_open:
            raise BusUnavailable("RabbitMQ connection is down")
        message = aio_pika.Message(body, content_type=content_type, headers=headers or {},
                                   delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        try:
            await asyncio.wait_for(exchange.publish(message, routing_key=routing_key), PUBLISH_TIMEOUT)
        except BROKER_ERRORS as exc:
            raise BusUnavailable(f"{type(exc).__name__}: {exc}") from None

    async def consume_paynotify(self, handle: Callable[[AbstractIncomingMessage], Awaitable[None]],
                                prefetch: int = 256) -> RoutedQueue:
        """This process's exclusive queue for ``paynotify``'s events, bound to
        the keys it is asked for (``RoutedQueue.want``) and to nothing else.

        The keys are bound on ``paypush.pages``, a direct exchange that
        ``paynotify`` feeds with every event (see routed_queue.py for why)."""
        channel = await self.connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        paynotify = await channel.declare_exchange(PAYNOTIFY, aio_pika.ExchangeType.TOPIC, durable=True)
        pages = await channel.declare_exchange(PAGES, aio_pika.ExchangeType.DIRECT, durable=True)
        await pages.bind(paynotify, routing_key="#")
        # Named by us: aio-pika re-declares it after a reconnect, and RabbitMQ
        # refuses a client declaring a server-generated "amq.gen-" name.
        name = f"paypush.bridge.{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(4)}"
        queue = await channel.declare_queue(name, exclusive=True, auto_delete=True)
        await queue.consume(handle)
        binders: list[AbstractChannel] = [await self.connection.channel() for _ in range(BINDING_CHANNELS)]
        return RoutedQueue(queue, PAGES, binders, errors=BROKER_ERRORS)

    async def close(self, within: float = 2.0) -> None:
        """Close the connection, waiting at most ``within`` seconds for the
        broker to agree: a black-holed or refused link must not hold up an exit
        (the broker drops a vanished connection itself and requeues its unacked messages)."""
        try:
            await asyncio.wait_for(self.connection.close(), max(0.01, within))
        except TimeoutError:
            log.warning("RabbitMQ did not answer the connection close within %.1fs; leaving anyway", within)
        except BROKER_ERRORS as exc:
            log.info("RabbitMQ connection close: %s", exc)


async def cancel_consumer(queue: AbstractQueue, tag: str, within: float, what: str) -> None:
    """Ask RabbitMQ to stop sending to a consumer, for at most ``within`` seconds:
    with the broker unreachable or silent the cancel would wait for ever, and what
    it saves (prefetched messages going back at once rather than when the
    connection closes) is not worth a hang."""
    try:
        await asyncio.wait_for(queue.cancel(tag), within)
    except TimeoutError:
        log.warning("%s: RabbitMQ did not confirm the consumer cancel within %.1fs", what, within)
    except BROKER_ERRORS as exc:
        log.info("%s: consumer cancel failed (%s); the connection close ends it", what, exc)
