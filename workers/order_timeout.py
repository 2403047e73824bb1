"""queue.ordertimeout -> close (or compensate) the order.

Manual acks: a message is acked only once its order reached a final state, or
once a retry message is safely in a retry queue (published with confirms).
Retries wait in RabbitMQ, never in a sleep holding the message.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable

from aio_pika.abc import AbstractIncomingMessage

from server.timeout_queues import ATTEMPT_HEADER, TimeoutQueues
from server.timeouts import Outcome, Timeouts

log = logging.getLogger(__name__)


def make_handler(timeouts: Timeouts, queues: TimeoutQueues,
                 stats: Counter[str]) -> Callable[[AbstractIncomingMessage], Awaitable[None]]:
    async def handle(message: AbstractIncomingMessage) -> None:
        if not queues.accepting:
            # Shutting down. Left unacked, the message goes back to the queue
            # when this connection closes, for another process; rejecting it
            # would have RabbitMQ hand it straight back to us, over and over.
            return
        stats["received"] += 1
        if message.redelivered:
            stats["redelivered"] += 1
        queues.in_flight += 1
        try:
            await _handle(message)
        finally:
            queues.in_flight -= 1

    async def _handle(message: AbstractIncomingMessage) -> None:
        # requeue on an unexpected failure (nothing acked it), after a pause so a
        # poison message cannot spin.
        async with message.process(requeue=True, ignore_processed=True):
            order_id = message.body.decode("utf-8", "replace").strip()[:64]
            raw_attempt = (message.headers or {}).get(ATTEMPT_HEADER, 0)
            attempt = raw_attempt if isinstance(raw_attempt, int) else 0
            try:
                outcome, wait = await timeouts.settle(order_id)
                if outcome is Outcome.NOT_DUE:
                    await queues.retry(order_id, attempt, delay=max(1, int(wait + 0.999)))
                elif outcome is Outcome.LATER:
                    await queues.retry(order_id, attempt + 1, delay=queues.retry_delays[0])
                elif outcome is Outcome.RETRY:
                    await queues.retry(order_id, attempt + 1)
            except Exception:
                log.exception("timeout %s: unexpected failure; message goes back to the queue", order_id)
                await asyncio.sleep(1)
                raise
            await message.ack()

    return handle


async def start(timeouts: Timeouts, queues: TimeoutQueues, stats: Counter[str]) -> None:
    await queues.consume(make_handler(timeouts, queues, stats))
