"""The refund-check topology: delay queues dead-lettering into the queue the
refund checker consumes, on the same TTL + dead-letter pattern as the order
timeout (server/infra/timeout_queues.py).

    schedule(attempt n) -> queue.refundcheck.wait.<N>s (x-message-ttl = N s)
                        -> dead-lettered via exchange.refundcheck (exchange.refundcheck.key)
                        -> queue.refundcheck -> worker (manual ack)

N grows with the attempt (REFUND_CHECK_DELAYS, the last one repeating), so a
refund WeChat keeps processing for days is looked at less and less often, and
a check survives any restart: it waits in RabbitMQ, not in a sleep. A
deployment with DEPLOYMENT=<name> gets its own queues and key (``.<name>``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue

from server.infra.bus import Bus, cancel_consumer

log = logging.getLogger(__name__)

CHECK_EXCHANGE = "exchange.refundcheck"
CHECK_KEY = "exchange.refundcheck.key"
CHECK_QUEUE = "queue.refundcheck"


class RefundQueues:
    def __init__(self, bus: Bus, delays: tuple[int, ...], deployment: str = ""):
        suffix = f".{deployment}" if deployment else ""
        self.bus = bus
        self.delays = delays
        self.key = CHECK_KEY + suffix
        self.queue = CHECK_QUEUE + suffix
        self.accepting = True
        self._consumer: tuple[AbstractQueue, str] | None = None

    def wait_queue(self, seconds: int) -> str:
        return f"{self.queue}.wait.{seconds}s"

    @classmethod
    async def declare(cls, bus: Bus, delays: tuple[int, ...], deployment: str = "") -> RefundQueues:
        queues = cls(bus, delays, deployment)
        channel = await bus.connection.channel()
        exchange = await channel.declare_exchange(CHECK_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True)
        queue = await channel.declare_queue(queues.queue, durable=True)
        await queue.bind(exchange, queues.key)
        for seconds in delays:
            await channel.declare_queue(queues.wait_queue(seconds), durable=True, arguments={
                "x-message-ttl": seconds * 1000, "x-dead-letter-exchange": CHECK_EXCHANGE,
                "x-dead-letter-routing-key": queues.key})
        await channel.close()
        log.info("refund checks: %s after %s s", queues.queue, ", ".join(map(str, delays)))
        return queues

    def delay(self, attempt: int) -> int:
        return self.delays[min(max(attempt, 1), len(self.delays)) - 1]

    async def schedule(self, order_id: str, out_refund_no: str, attempt: int) -> None:
        """Look at the refund again after the attempt's delay; raises BusUnavailable
        when RabbitMQ does not confirm."""
        body = json.dumps({"order_id": order_id, "out_refund_no": out_refund_no, "attempt": attempt})
        await self.bus.publish_to_queue(self.wait_queue(self.delay(attempt)), body.encode("utf-8"))

    async def consume(self, handle: Callable[[AbstractIncomingMessage], Awaitable[None]],
                      prefetch: int = 8) -> None:
        channel = await self.bus.connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        queue = await channel.declare_queue(self.queue, durable=True)
        self._consumer = (queue, await queue.consume(handle))

    async def stop_consuming(self, within: float = 1.0) -> None:
        """Take no further message; ask RabbitMQ to stop sending (at most ``within`` seconds)."""
        self.accepting = False
        if self._consumer is None:
            return
        queue, tag = self._consumer
        self._consumer = None
        await cancel_consumer(queue, tag, within, "refund checks")
