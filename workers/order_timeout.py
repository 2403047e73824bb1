"""queue.ordertimeout -> close (or compensate) the order.

Manual acks: a message is acked only once its order reached a final state, or
once a retry message is safely in a retry queue (published with confirms).
Retries wait in RabbitMQ, never in a sleep holding the message. A message of
another deployment sharing the queue is not ours to judge: it is acked once
it is back in circulation for its owner (see server.infra.timeout_queues).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable

from aio_pika.abc import AbstractIncomingMessage

from server.domain.timeouts import Outcome, Timeouts
from server.infra.bus import BusUnavailable
from server.infra.timeout_queues import ATTEMPT_HEADER, TimeoutQueues
from server.lifecycle import InFlight

log = logging.getLogger(__name__)


def make_handler(timeouts: Timeouts, queues: TimeoutQueues, stats: Counter[str],
                 messages: InFlight) -> Callable[[AbstractIncomingMessage], Awaitable[None]]:
    async def handle(message: AbstractIncomingMessage) -> None:
        if not queues.accepting:
            # Shutting down. Left unacked, the message goes back to the queue
            # when this connection closes, for another process; rejecting it
            # would have RabbitMQ hand it straight back to us, over and over.
            stats["left_at_shutdown"] += 1
            return
        stats["received"] += 1
        if message.redelivered:
            stats["redelivered"] += 1
        with messages.running():
            await _handle(message)

    async def _handle(message: AbstractIncomingMessage) -> None:
        # requeue on an unexpected failure (nothing acked it), after a pause so a
        # poison message cannot spin.
        async with message.process(requeue=True, ignore_processed=True):
            order_id = message.body.decode("utf-8", "replace").strip()[:64]
            headers = message.headers or {}
            raw_attempt = headers.get(ATTEMPT_HEADER, 0)
            attempt = raw_attempt if isinstance(raw_attempt, int) else 0
            try:
                if queues.owner(headers) is not None:
                    # Another deployment's order: "unknown" here, but not to its owner.
                    stats["foreign"] += 1
                    await queues.pass_on(order_id, headers)
                else:
                    await _settle(order_id, attempt)
            except Exception:
                # A fault of ours: looked at again after the retry delay, not at
                # once (the message back on the queue would come straight back
                # and, a few of them, hold every prefetch slot).
                log.exception("timeout %s: unexpected failure; looked at again later", order_id)
                try:
                    await queues.retry(order_id, attempt + 1)
                except BusUnavailable:
                    await asyncio.sleep(1)
                    raise  # unacked: back to the queue
            await message.ack()

    async def _settle(order_id: str, attempt: int) -> None:
        outcome, wait = await timeouts.settle(order_id)
        if outcome is Outcome.NOT_DUE:
            await queues.retry(order_id, attempt, delay=max(1, int(wait + 0.999)))
        elif outcome is Outcome.LATER:
            await queues.retry(order_id, attempt + 1, delay=queues.retry_delays[0])
        elif outcome is Outcome.RETRY:
            await queues.retry(order_id, attempt + 1)

    return handle


async def start(timeouts: Timeouts, queues: TimeoutQueues, stats: Counter[str], messages: InFlight) -> None:
    """``messages``: counts the deadline messages being handled, so a stop can let them finish."""
    await queues.consume(make_handler(timeouts, queues, stats, messages))
