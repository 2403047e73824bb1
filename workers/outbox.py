"""Publishes order events whose first publish did not go through (RabbitMQ was down)."""

from __future__ import annotations

import asyncio
import logging

from pymongo.errors import PyMongoError

from server.push.events import OrderEvents
from workers import rest

log = logging.getLogger(__name__)


async def run(events: OrderEvents, stop: asyncio.Event, interval: float = 1.0) -> None:
    while not stop.is_set():
        try:
            sent = await events.drain(stop=stop)
            if sent:
                log.info("outbox: published %d delayed event(s)", sent)
        except PyMongoError as exc:
            log.warning("outbox: storage unavailable: %s", type(exc).__name__)
        await rest(stop, interval)
