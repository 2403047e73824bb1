"""Publishes order events whose first publish did not go through (RabbitMQ was down)."""

from __future__ import annotations

import asyncio
import logging

from pymongo.errors import PyMongoError

from server.lifecycle import InFlight, every
from server.push.events import OrderEvents

log = logging.getLogger(__name__)


async def drain_once(events: OrderEvents, stopping: asyncio.Event) -> int:
    sent = await events.publish_pending(stop=stopping)
    if sent:
        log.info("outbox: published %d delayed event(s)", sent)
    return sent


async def run(events: OrderEvents, stopping: asyncio.Event, passes: InFlight, interval: float = 1.0) -> None:
    # At once at start-up: a process that died may have left events behind.
    await every(interval, lambda: drain_once(events, stopping), stopping, passes, "outbox",
                swallow=(PyMongoError,), wait_first=False)
