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

Deployments sharing a vhost. The names above belong to the default
deployment; one started with DEPLOYMENT=<name> gets its own
``queue.ordercreate.<name>``, ``queue.ordertimeout.<name>`` (and retry
queues), routed by ``exchange.ordertimeout.key.<name>`` through the same
exchange, so the two never see each other's deadlines. Two deployments left on
the same names (both without DEPLOYMENT) would take each other's messages and
drop them as "unknown order": every message therefore carries its
deployment's id (kept in its MongoDB), and a worker that gets another
deployment's message puts it back into circulation for its owner, and says
loudly what to set.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue

from server.infra.bus import Bus, cancel_consumer

log = logging.getLogger(__name__)

DELAY_QUEUE = "queue.ordercreate"
TIMEOUT_EXCHANGE = "exchange.ordertimeout"
TIMEOUT_KEY = "exchange.ordertimeout.key"
TIMEOUT_QUEUE = "queue.ordertimeout"
ATTEMPT_HEADER = "x-paypush-attempt"
DEPLOYMENT_HEADER = "x-paypush-deployment"  # the id of the deployment whose order it is
PASSES_HEADER = "x-paypush-passed-on"  # times another deployment handed it back
# A message no worker of its deployment takes after this many rounds (about
# MAX_PASSES x the first retry delay) is dropped: its owner is gone, or its
# sweeper settled the order long ago.
MAX_PASSES = 100


@dataclass(frozen=True)
class Names:
    """One deployment's queue names and routing key (the exchange is shared)."""

    delay_queue: str
    timeout_key: str
    timeout_queue: str

    @classmethod
    def for_deployment(cls, deployment: str = "") -> Names:
        suffix = f".{deployment}" if deployment else ""
        return cls(DELAY_QUEUE + suffix, TIMEOUT_KEY + suffix, TIMEOUT_QUEUE + suffix)

    def retry_queue(self, seconds: int) -> str:
        return f"{self.timeout_queue}.retry.{seconds}s"

    def dead_letter_args(self, ttl_ms: int) -> dict[str, object]:
        return {"x-message-ttl": ttl_ms, "x-dead-letter-exchange": TIMEOUT_EXCHANGE,
                "x-dead-letter-routing-key": self.timeout_key}


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


class TimeoutQueues:
    def __init__(self, bus: Bus, delay_queue: str, retry_delays: tuple[int, ...],
                 names: Names | None = None, deployment_id: str = ""):
        self.bus = bus
        self.delay_queue = delay_queue
        self.retry_delays = retry_delays
        self.names = names or Names.for_deployment()
        self.deployment_id = deployment_id
        # False from SIGTERM on: a message that still arrives (the cancel did
        # not reach the broker, or a reconnect restored the consumer) is left
        # unacked, for another process.
        self.accepting = True
        self._consumer: tuple[AbstractQueue, str] | None = None
        self._foreign_seen: set[str] = set()

    @property
    def timeout_queue(self) -> str:
        return self.names.timeout_queue

    def retry_queue(self, seconds: int) -> str:
        return self.names.retry_queue(seconds)

    @classmethod
    async def declare(cls, bus: Bus, timeout_seconds: int, retry_delays: tuple[int, ...],
                      deployment: str = "", deployment_id: str = "") -> TimeoutQueues:
        names = Names.for_deployment(deployment)
        channel = await bus.connection.channel()
        exchange = await channel.declare_exchange(TIMEOUT_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True)
        queue = await channel.declare_queue(names.timeout_queue, durable=True)
        await queue.bind(exchange, names.timeout_key)
        for seconds in retry_delays:
            await channel.declare_queue(names.retry_queue(seconds), durable=True,
                                        arguments=names.dead_letter_args(seconds * 1000))
        await channel.close()
        delay_queue = await cls._declare_delay_queue(bus, names, timeout_seconds * 1000)
        log.info("order timeout: %s (TTL %ds) -> %s (deployment id %s)", delay_queue, timeout_seconds,
                 names.timeout_queue, deployment_id or "-")
        return cls(bus, delay_queue, retry_delays, names, deployment_id)

    @staticmethod
    async def _declare_delay_queue(bus: Bus, names: Names, ttl_ms: int) -> str:
        base = names.delay_queue
        for name in (base, f"{base}.ttl{ttl_ms}"):
            # A throwaway channel: PRECONDITION_FAILED closes the channel it happens on.
            channel = await bus.connection.channel()
            try:
                await channel.declare_queue(name, durable=True, arguments=names.dead_letter_args(ttl_ms))
                return name
            except aio_pika.exceptions.ChannelPreconditionFailed:
                log.warning("%s exists with another x-message-ttl (ORDER_TIMEOUT_SECONDS changed); "
                            "its messages still expire into %s, new ones use %s.ttl%d",
                            name, names.timeout_queue, base, ttl_ms)
            finally:
                if not channel.is_closed:
                    await channel.close()
        raise RuntimeError(f"cannot declare {base}.ttl{ttl_ms}: delete it (rabbitmqctl "
                           f"delete_queue {base}.ttl{ttl_ms}) once it is empty")

    def _headers(self, **extra: Any) -> dict[str, Any]:
        headers: dict[str, Any] = {DEPLOYMENT_HEADER: self.deployment_id} if self.deployment_id else {}
        return {**headers, **extra}

    async def schedule(self, order_id: str) -> None:
        """The order's deadline message; raises BusUnavailable when not confirmed."""
        await self.bus.publish_to_queue(self.delay_queue, order_id.encode("utf-8"), self._headers())

    async def retry(self, order_id: str, attempt: int, delay: int | None = None) -> None:
        """Look at the order again after a while (longer each attempt, unless ``delay``)."""
        if delay is None:
            delay = self.retry_delays[min(attempt, len(self.retry_delays)) - 1]
        else:  # the shortest level that waits at least ``delay``
            delay = next((d for d in self.retry_delays if d >= delay), self.retry_delays[-1])
        await self.bus.publish_to_queue(self.retry_queue(delay), order_id.encode("utf-8"),
                                        self._headers(**{ATTEMPT_HEADER: attempt}))

    def owner(self, headers: Mapping[str, Any] | None) -> str | None:
        """The id of the other deployment a message belongs to; None if it is
        ours (or carries no id: published before ids existed, taken as ours)."""
        owner = _text((headers or {}).get(DEPLOYMENT_HEADER))
        if not owner or not self.deployment_id or owner == self.deployment_id:
            return None
        return owner

    async def pass_on(self, order_id: str, headers: Mapping[str, Any]) -> bool:
        """Another deployment's deadline reached us (both use the same queue
        names): back into circulation after the first retry delay, untouched,
        until a worker of its own deployment takes it. False when it has gone
        round MAX_PASSES times and is dropped. Raises BusUnavailable."""
        owner = self.owner(headers) or "?"
        if owner not in self._foreign_seen:
            self._foreign_seen.add(owner)
            log.error("%s is shared with another paypush deployment (id %s; this one is %s): give each "
                      "deployment on this RabbitMQ vhost its own DEPLOYMENT name (or its own vhost); "
                      "meanwhile its deadlines are passed back to it", self.timeout_queue, owner,
                      self.deployment_id)
        passes = headers.get(PASSES_HEADER, 0)
        passes = (passes if isinstance(passes, int) else 0) + 1
        if passes > MAX_PASSES:
            log.warning("deadline for %s of deployment %s dropped after %d passes: no worker of its own "
                        "took it; its sweeper settles the order", order_id, owner, MAX_PASSES)
            return False
        # Only our own headers travel on (RabbitMQ's x-death is its own business).
        ours = {k: headers[k] for k in (DEPLOYMENT_HEADER, ATTEMPT_HEADER) if k in headers}
        await self.bus.publish_to_queue(self.retry_queue(self.retry_delays[0]), order_id.encode("utf-8"),
                                        {**ours, PASSES_HEADER: passes})
        return True

    async def consume(self, handle: Callable[[AbstractIncomingMessage], Awaitable[None]],
                      prefetch: int = 16) -> None:
        channel = await self.bus.connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        queue = await channel.declare_queue(self.timeout_queue, durable=True)
        self._consumer = (queue, await queue.consume(handle))

    def stop_taking(self) -> None:
        """Handle no further message (shutdown); those under way finish."""
        self.accepting = False

    async def stop_consuming(self, within: float = 1.0) -> None:
        """Stop taking messages, and ask RabbitMQ to stop sending them (at most ``within`` seconds)."""
        self.stop_taking()
        if self._consumer is None:
            return
        queue, tag = self._consumer
        self._consumer = None
        await cancel_consumer(queue, tag, within, "order timeout")
