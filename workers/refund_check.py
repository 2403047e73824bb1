"""queue.refundcheck -> ask WeChat where a refund stands, until it is final.

Manual acks: a message is acked once its refund is final, or once the next
check is safely in a delay queue (published with confirms). A message the
worker cannot read is dropped with a log line: the sweeper's backstop finds
any refund still processing.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Awaitable, Callable

from aio_pika.abc import AbstractIncomingMessage
from pymongo.errors import PyMongoError

from server.domain.refund_checks import Check, RefundChecker
from server.infra.refund_queues import RefundQueues
from server.lifecycle import InFlight

log = logging.getLogger(__name__)


def parse(body: bytes) -> tuple[str, str, int] | None:
    try:
        message = json.loads(body)
        order_id, no, attempt = message["order_id"], message["out_refund_no"], message["attempt"]
    except (ValueError, TypeError, KeyError):
        return None
    if not (isinstance(order_id, str) and isinstance(no, str) and isinstance(attempt, int)):
        return None
    return order_id[:64], no[:64], attempt


def make_handler(refunds: RefundChecker, queues: RefundQueues, stats: Counter[str],
                 messages: InFlight) -> Callable[[AbstractIncomingMessage], Awaitable[None]]:
    async def handle(message: AbstractIncomingMessage) -> None:
        if not queues.accepting:
            stats["left_at_shutdown"] += 1  # back to the queue when the connection closes
            return
        stats["received"] += 1
        with messages.running():
            async with message.process(requeue=True, ignore_processed=True):
                parsed = parse(message.body)
                if parsed is None:
                    log.warning("refund check: unreadable message dropped: %r", message.body[:100])
                    stats["unreadable"] += 1
                    await message.ack()
                    return
                order_id, no, attempt = parsed
                try:
                    outcome = await refunds.check(order_id, no)
                except PyMongoError as exc:
                    log.warning("refund check %s: storage unavailable (%s); will look again", no,
                                type(exc).__name__)
                    outcome = Check.AGAIN
                except Exception:
                    log.exception("refund check %s: unexpected failure; message goes back to the queue", no)
                    await asyncio.sleep(1)
                    raise
                stats[outcome.value] += 1
                if outcome is Check.AGAIN:
                    await queues.schedule(order_id, no, attempt + 1)  # raises: unacked, comes back
                await message.ack()

    return handle


async def start(refunds: RefundChecker, queues: RefundQueues, stats: Counter[str], messages: InFlight) -> None:
    await queues.consume(make_handler(refunds, queues, stats, messages))
