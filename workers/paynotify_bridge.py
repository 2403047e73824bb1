"""paynotify -> this process's pay-page sockets.

One exclusive queue per process, bound to ``paynotify`` with ``#``; each
message goes to the sockets watching its routing key's push token. After a
reconnect every socket is offered its order's state again, so an event that
passed while this process was cut off is not lost to its pages.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aio_pika.abc import AbstractIncomingMessage
from pymongo.errors import PyMongoError

from server.domain.orders import VISIBLE, Orders
from server.infra.bus import Bus
from server.push.events import TRANSITION_AT, event_for
from server.push.hub import PushHub
from server.push.tokens import token_of_routing_key

log = logging.getLogger(__name__)


def make_handler(hub: PushHub) -> Callable[[AbstractIncomingMessage], Awaitable[None]]:
    async def handle(message: AbstractIncomingMessage) -> None:
        async with message.process(requeue=False):
            key = message.routing_key or ""
            token = token_of_routing_key(key)
            if token is None:
                return
            try:
                event = json.loads(message.body)
            except ValueError:
                log.warning("paynotify message on %s is not JSON; dropped", key)
                return
            at = (message.headers or {}).get(TRANSITION_AT)
            if isinstance(event, dict):
                hub.dispatch(token, event, at if isinstance(at, float) else None)

    return handle


def make_current_event(orders: Orders) -> Callable[[str], Awaitable[dict[str, Any] | None]]:
    async def current_event(order_id: str) -> dict[str, Any] | None:
        try:
            order = await orders.get(order_id)
        except PyMongoError:
            return None
        return event_for(order) if order and order["status"] in VISIBLE else None

    return current_event


async def start(bus: Bus, hub: PushHub, orders: Orders) -> None:
    await bus.consume_paynotify(make_handler(hub))

    async def resync() -> None:
        await hub.resync(make_current_event(orders))

    bus.on_reconnect(resync)
