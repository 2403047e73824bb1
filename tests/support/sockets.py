"""A pay page's socket, from the test's side: real WebSocket over real HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from typing import Any

import tornado.httpclient
import tornado.websocket

from server.composition.container import Services
from tests.support.shopper import Shopper
from tests.support.waiting import eventually

CONTROL = "control"


def control_event(order_id: str) -> dict[str, Any]:
    """An event no order ever has: its status is new to every page, so the hub
    always passes it on, and it cannot be mistaken for a real one."""
    return {"type": CONTROL, "order_id": order_id, "status": f"control-{uuid.uuid4().hex[:8]}"}


async def events_before_control(sock: PageSocket, services: Services, order_id: str,
                                within: float = 20.0) -> list[dict[str, Any]]:
    """What the page hears before a control event sent now through RabbitMQ
    and this process's bridge, controls left out.

    Sent after something the page must not hear (a repeat, a stale copy), the
    control proves the negative: this process hands its own events to its
    pages before it answers, and the bridge delivers in order, so anything
    sent before the control has arrived by the time it does. A control lost because the
    bridge's queue is not bound again yet (after a reconnect) is sent again."""
    before: list[dict[str, Any]] = []

    async def control_came_back() -> bool:
        key = services.push_tokens.routing_key(order_id)
        if await services.bus.publish_events([(key, control_event(order_id), {})]) != [None]:
            return False  # the link is not back yet
        with contextlib.suppress(TimeoutError):
            while (event := await sock.next(within=0.5)) is not None:
                if event.get("type") == CONTROL:
                    return True
                before.append(event)
        return False

    await eventually(control_came_back, within=within, every=0.0,
                     message=f"a control event back on the page of {order_id} through this process's bridge")
    return before


class PageSocket:
    def __init__(self, conn: tornado.websocket.WebSocketClientConnection):
        self.conn = conn

    @classmethod
    async def open(cls, base_url: str, order_id: str, shopper: Shopper | None = None,
                   origin: str | None = None) -> PageSocket:
        ws_url = "ws" + base_url[len("http"):] + f"/ws/pay?orderId={order_id}"
        headers = {"Origin": origin or base_url}
        if shopper is not None:
            headers["Cookie"] = shopper.cookie_header()
        request = tornado.httpclient.HTTPRequest(ws_url, headers=headers)
        return cls(await tornado.websocket.websocket_connect(request))

    async def next(self, within: float = 5.0, skip_controls: bool = False) -> dict[str, Any] | None:
        """The next event, or None when the server closed the socket;
        ``skip_controls``: passing over control events (see :func:`events_before_control`)."""
        while True:
            message = await asyncio.wait_for(self.conn.read_message(), within)
            event = None if message is None else json.loads(message)
            if not (skip_controls and event is not None and event.get("type") == CONTROL):
                return event

    async def next_event(self, within: float = 5.0) -> dict[str, Any]:
        """The next event, which the test expects: the server closing the socket instead fails it."""
        event = await self.next(within)
        assert event is not None, "the server closed the socket where an event was expected"
        return event

    @property
    def close_code(self) -> int | None:
        return self.conn.close_code

    def close(self) -> None:
        self.conn.close()
