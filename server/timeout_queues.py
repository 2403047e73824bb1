"""The order-timeout topology: a TTL delay queue dead-lettering into the queue
the timeout worker consumes, plus fixed-delay retry queues.

    publish -> queue.ordercreate (x-message-ttl = timeout)
            -> dead-lettered via exchange.ordertimeout (exchange.ordertimeout.key)
            -> queue.ordertimeout -> worker (manual ack)
    retry   -> queue.ordertimeout.retry.<N>s (x-message-ttl = N s) -> same exchange

RabbitMQ refuses to re-declare a queue with other arguments
(PRECONDITION_FAILED). When ``queue.ordercreate`` already exists with another
TTL, new messages go to ``queue.ordercreate.ttl<ms>`` instead: the old queue
keeps dead-lettering what it holds into the same exchange, so a changed
ORDER_TIMEOUT_SECONDS neither crashes start-up nor loses an order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue

from server.bus import Bus

log = logging.getLogger(__name__)

DELAY_QUEUE = "queue.ordercreate"
TIMEOUT_EXCHANGE = "exchange.ordertimeout"
TIMEOUT_KEY = "exchange.ordertimeout.key"
TIMEOUT_QUEUE = "queue.ordertimeout"
ATTEMPT_HEADER = "x-paypush-attempt"


def _dead_letter_args(ttl_ms: int) -> dict[str, object]:
    return {"x-message-ttl": ttl_ms, "x-dead-letter-exchange": TIMEOUT_EXCHANGE,
            "x-dead-letter-routing-key": TIMEOUT_KEY}


class TimeoutQueues:
    def __init__(self, bus: Bus, delay_queue: str, retry_delays: tuple[int, ...]):
        self.bus = bus
        self.delay_queue = delay_queue
        self.retry_delays = retry_delays
        self.in_flight = 0  # messages being handled, so shutdown can let them finish
        # False from SIGTERM on: a message that still arrives (the cancel did
        # not reach the broker, or a reconnect restored the consumer) is handed back.
        self.accepting = True
        self._consumer: tuple[AbstractQueue, str] | None = None

    @staticmethod
    def retry_queue(seconds: int) -> str:
        return f"{TIMEOUT_QUEUE}.retry.{seconds}s"

    @classmethod
    async def declare(cls, bus: Bus, timeout_seconds: int, retry_delays: tuple[int, ...]) -> TimeoutQueues:
        channel = await bus.connection.channel()
        exchange = await channel.declare_exchange(TIMEOUT_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True)
        queue = await channel.declare_queue(TIMEOUT_QUEUE, durable=True)
        await queue.bind(exchange, TIMEOUT_KEY)
        for seconds in retry_delays:
            await channel.declare_queue(cls.retry_queue(seconds), durable=True,
                                        arguments=_dead_letter_args(seconds * 1000))
        await channel.close()
        delay_queue = await cls._declare_delay_queue(bus, timeout_seconds * 1000)
        log.info("order timeout: %s (TTL %ds) -> %s", delay_queue, timeout_seconds, TIMEOUT_QUEUE)
        return cls(bus, delay_queue, retry_delays)

    @staticmethod
    async def _declare_delay_queue(bus: Bus, ttl_ms: int) -> str:
        for name in (DELAY_QUEUE, f"{DELAY_QUEUE}.ttl{ttl_ms}"):
            # A throwaway channel: PRECONDITION_FAILED closes the channel it happens on.
            channel = await bus.connection.channel()
            try:
                await channel.declare_queue(name, durable=True, arguments=_dead_letter_args(ttl_ms))
                return name
            except aio_pika.exceptions.ChannelPreconditionFailed:
                log.warning("%s exists with another x-message-ttl (ORDER_TIMEOUT_SECONDS changed); "
                            "its messages still expire into %s, new ones use %s.ttl%d",
                            name, TIMEOUT_QUEUE, DELAY_QUEUE, ttl_ms)
            finally:
                if not channel.is_closed:
                    await channel.close()
        raise RuntimeError(f"cannot declare {DELAY_QUEUE}.ttl{ttl_ms}: delete it (rabbitmqctl "
                           f"delete_queue {DELAY_QUEUE}.ttl{ttl_ms}) once it is empty")

    async def schedule(self, order_id: str) -> None:
        """The order's deadline message; raises BusUnavailable when not confirmed."""
        await self.bus.publish_to_queue(self.delay_queue, order_id.encode("utf-8"))

    async def retry(self, order_id: str, attempt: int, delay: int | None = None) -> None:
        """Look at the order again after a while (longer each attempt, unless ``delay``)."""
        if delay is None:
            delay = self.retry_delays[min(attempt, len(self.retry_delays)) - 1]
        else:  # the shortest level that waits at least ``delay``
            delay = next((d for d in self.retry_delays if d >= delay), self.retry_delays[-1])
        await self.bus.publish_to_queue(self.retry_queue(delay), order_id.encode("utf-8"),
                                        {ATTEMPT_HEADER: attempt})

    async def consume(self, handle: Callable[[AbstractIncomingMessage], Awaitable[None]],
                      prefetch: int = 16) -> None:
        channel = await self.bus.connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        queue = await channel.declare_queue(TIMEOUT_QUEUE, durable=True)
        self._consumer = (queue, await queue.consume(handle))

    def stop_taking(self) -> None:
        """Handle no further message (shutdown); those under way finish."""
        self.accepting = False

    async def stop_consuming(self, within: float = 1.0) -> None:
        """Stop taking messages, and ask RabbitMQ to stop sending them for at
        most ``within`` seconds: with the broker unreachable or silent the
        cancel would wait for ever, and what it would save (prefetched messages
        going back at once rather than when the connection closes) is not worth a hang."""
        self.stop_taking()
        if self._consumer is None:
            return
        queue, tag = self._consumer
        self._consumer = None
        try:
            await asyncio.wait_for(queue.cancel(tag), within)
        except TimeoutError:
            log.warning("order timeout: RabbitMQ did not confirm the consumer cancel within %.1fs", within)
        except (aio_pika.exceptions.AMQPError, RuntimeError, ConnectionError) as exc:
            log.info("order timeout: consumer cancel failed (%s); the connection close ends it", exc)
