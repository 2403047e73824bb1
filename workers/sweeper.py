"""Backstop: overdue unpaid orders whose deadline message never reached
RabbitMQ (broker down at creation, a crash) are settled by the same code as the
queue's, at a low frequency, and so are refunds still processing whose check
message was lost. Meeting the queue workers on an order is harmless: the
transitions are conditional."""

from __future__ import annotations

import asyncio
import logging
import time

from pymongo.errors import PyMongoError

from server.domain.orders import Orders
from server.domain.refund_checks import Check, RefundChecker
from server.domain.timeouts import Outcome, Timeouts
from server.lifecycle import InFlight, every

log = logging.getLogger(__name__)


async def sweep_once(orders: Orders, timeouts: Timeouts, grace: float,
                     stop: asyncio.Event | None = None) -> int:
    """Settle what is overdue by more than ``grace``; returns how many reached a final state.

    Once ``stop`` is set no further order is started on (the one in hand is finished).
    """
    settled = 0
    await orders.stock.tidy_leftovers()
    due = await orders.overdue(time.time() - grace)
    for n, order_id in enumerate(due):
        if stop is not None and stop.is_set():
            log.info("sweeper: stopping; %d overdue order(s) left for the next process", len(due) - n)
            break
        outcome, _ = await timeouts.settle(order_id)
        settled += outcome is Outcome.FINAL
    if settled:
        log.info("sweeper: settled %d overdue order(s)", settled)
    return settled


async def check_stale_refunds(refunds: RefundChecker, older_than: float, stop: asyncio.Event | None = None) -> int:
    """Refunds processing and not looked at for ``older_than`` seconds; returns how many became final."""
    final = 0
    for order_id, no in await refunds.stale(older_than):
        if stop is not None and stop.is_set():
            break
        final += await refunds.check(order_id, no) is Check.FINAL
    if final:
        log.info("sweeper: %d refund(s) whose checks were lost are final now", final)
    return final


async def run(orders: Orders, timeouts: Timeouts, refunds: RefundChecker, interval: float, grace: float,
              refund_grace: float, stopping: asyncio.Event, passes: InFlight) -> None:
    async def one_pass() -> None:
        await sweep_once(orders, timeouts, grace, stopping)
        await check_stale_refunds(refunds, refund_grace, stopping)

    await every(interval, one_pass, stopping, passes, "sweeper", swallow=(PyMongoError,))
