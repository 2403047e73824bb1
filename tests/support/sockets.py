"""A pay page's socket, from the test's side: real WebSocket over real HTTP."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import tornado.httpclient
import tornado.websocket

from tests.support.shopper import Shopper


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

    async def next(self, within: float = 5.0) -> dict[str, Any] | None:
        """The next event, or None when the server closed the socket."""
        message = await asyncio.wait_for(self.conn.read_message(), within)
        return None if message is None else json.loads(message)

    async def nothing_for(self, seconds: float) -> bool:
        try:
            message = await asyncio.wait_for(self.conn.read_message(), seconds)
        except TimeoutError:
            return True
        raise AssertionError(f"unexpected message {message!r}")

    @property
    def close_code(self) -> int | None:
        return self.conn.close_code

    def close(self) -> None:
        self.conn.close()
