"""Backstop: overdue unpaid orders whose deadline message never reached
RabbitMQ (broker down at creation, a crash) are settled by the same code as the
queue's, at a low frequency. Meeting the queue worker on an order is harmless:
the transitions are conditional."""

from __future__ import annotations

import asyncio
import logging
import time

from pymongo.errors import PyMongoError

from server.orders import Orders
from server.timeouts import Outcome, Timeouts

log = logging.getLogger(__name__)


async def sweep_once(orders: Orders, timeouts: Timeouts, grace: float) -> int:
    """Settle what is overdue by more than ``grace``; returns how many reached a final state."""
    settled = 0
    for order_id in await orders.overdue(time.time() - grace):
        outcome, _ = await timeouts.settle(order_id)
        settled += outcome is Outcome.FINAL
    if settled:
        log.info("sweeper: settled %d overdue order(s)", settled)
    return settled


async def run(orders: Orders, timeouts: Timeouts, interval: float, grace: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await sweep_once(orders, timeouts, grace)
        except PyMongoError as exc:
            log.warning("sweeper: storage unavailable: %s", type(exc).__name__)
