"""``/ws/pay?orderId=``: the pay page's socket.

Login cookie and ownership are checked after the upgrade, so a refusal is a
close code the page can act on: 4401 log in, 4404 not your order, 4429 too many
sockets. The socket subscribes, waits (briefly) until this process hears its
order's events from RabbitMQ, then reads the order, sends the state, then each
change; when the binding comes later than the wait, the bridge reads the order
again once it is made: no event can fall between the two.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import tornado.websocket
from pymongo.errors import PyMongoError
from tornado.httputil import HTTPHeaders
from tornado.iostream import IOStream

from handlers.base import user_from_cookie_header
from server.domain.errors import NotFound
from server.domain.orders import Orders
from server.push.events import event_for
from server.push.hub import CLOSE_TRY_AGAIN_LATER, PushHub, Subscriber
from server.push.tokens import PushTokens

log = logging.getLogger(__name__)

# Shared by every open socket once its handshake is forgotten; nothing writes to them.
_NO_HEADERS = HTTPHeaders()
_NO_ARGUMENTS: dict[str, list[bytes]] = {}

CLOSE_UNEXPECTED = 4400
CLOSE_LOGIN = 4401
CLOSE_NOT_FOUND = 4404
CLOSE_TOO_MANY = 4429
CLOSE_UNAVAILABLE = 1011


@dataclass(frozen=True)
class SocketDeps:
    """What a pay-page socket needs; one object shared by every socket."""

    hub: PushHub
    orders: Orders
    tokens: PushTokens
    cookie_secret: str
    public_netloc: str  # host[:port] of PUBLIC_URL: an accepted Origin behind a proxy
    on_delivered: Callable[[float | None], None]  # an event reached the page (``at``: its transition)
    # Returns once this process hears the token's events from RabbitMQ (or has waited long enough).
    heard: Callable[[str], Awaitable[None]]
    # The socket's opening is over (its state sent, or it was refused): given the connection's stream.
    opened: Callable[[IOStream | None], None]


class PaySocket(tornado.websocket.WebSocketHandler):
    # Slots, not the instance dict: more attributes there would turn Tornado's
    # key-sharing dict into a combined one, which every waiting page pays for.
    __slots__ = ("_current_user", "deps", "sub")

    def initialize(self, deps: SocketDeps) -> None:
        self.deps = deps
        self.sub: Subscriber | None = None

    def get_current_user(self) -> str | None:
        return user_from_cookie_header(self.request.headers.get("Cookie", ""),
                                       self.deps.cookie_secret)

    def check_origin(self, origin: str) -> bool:
        # Same host as the request (Tornado's rule), or the configured public host
        # when a proxy rewrites Host.
        netloc = urlsplit(origin).netloc.lower()
        return netloc in (self.request.host.lower(), self.deps.public_netloc)

    async def open(self) -> None:  # type: ignore[override]
        try:
            await self._open_page()
        finally:
            self.deps.opened(self.ws_connection.stream if self.ws_connection is not None else None)

    async def _open_page(self) -> None:
        user = self.current_user
        if not user:
            self.close(CLOSE_LOGIN, "log in first")
            return
        hub = self.deps.hub
        if not hub.can_open(user):
            self.close(CLOSE_TOO_MANY, "too many pay pages open")
            return
        if not hub.has_room():
            # Turned away while files are left to say so: at the open-file
            # limit the kernel would queue connections nobody accepts, and
            # those pages would wait on a handshake that never comes.
            self.close(CLOSE_TRY_AGAIN_LATER, "this server is full, try again")
            return
        order_id = self.get_query_argument("orderId", "")[:64]
        self._forget_handshake()
        self.sub = Subscriber(user, order_id, self.deps.tokens.token(order_id), self, self.deps.on_delivered)
        hub.subscribe(self.sub)
        try:
            await self.deps.heard(self.sub.token)
            order = await self.deps.orders.get_owned(user, order_id)
            await self.sub.start(event_for(order, "status"))
        except NotFound:
            self._drop(CLOSE_NOT_FOUND, "no such order")
        except PyMongoError:
            self._drop(CLOSE_UNAVAILABLE, "storage unavailable")
        except tornado.websocket.WebSocketClosedError:
            self._drop(1000, "")

    def _forget_handshake(self) -> None:
        """Drop what only the upgrade needed: the request's headers and
        arguments, the response headers, the template namespace. A waiting page
        holds its socket for minutes, and these were a quarter of what it cost
        (BENCHMARKS.md). Called once the user and the order id are read: the
        101 has been sent before open() runs. Tornado keeps no public way to
        do this; every socket the tests open runs it, so an upgrade that breaks
        it fails them."""
        request = self.request
        # Emptied in place, not replaced: Tornado's own get() keeps this object
        # in its frame for as long as the socket is open.
        request.headers.__init__()  # type: ignore[misc]
        request.arguments = request.query_arguments = request.body_arguments = _NO_ARGUMENTS
        request.files = {}
        self._headers = _NO_HEADERS
        self.ui = None  # type: ignore[assignment]

    def send_event(self, event: dict[str, Any]) -> Awaitable[None]:
        """Written to the socket now (Tornado writes what the kernel takes at
        once); the result completes when all of it is out."""
        try:
            return self.write_message(json.dumps(event))
        except tornado.websocket.WebSocketClosedError:
            self._drop(1000, "")
            nothing_to_wait_for: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            nothing_to_wait_for.set_result(None)
            return nothing_to_wait_for

    def ping_peer(self) -> None:
        try:
            self.ping()
        except tornado.websocket.WebSocketClosedError:
            self._drop(1000, "")

    def on_pong(self, data: bytes) -> None:
        if self.sub is not None:
            self.sub.last_seen = time.monotonic()

    def close_from_hub(self, code: int, reason: str) -> None:
        self.close(code, reason)

    def _drop(self, code: int, reason: str) -> None:
        if self.sub is not None:
            self.deps.hub.unsubscribe(self.sub)
        self.close(code, reason)

    def on_message(self, message: str | bytes) -> None:
        if self.sub is not None:
            self.sub.last_seen = time.monotonic()
        # The page only ever sends {"type": "ping"}; anything else is a broken client.
        try:
            ok = isinstance(message, str) and json.loads(message) == {"type": "ping"}
        except (ValueError, RecursionError):
            ok = False
        if ok:
            self.write_message('{"type": "pong"}')
        else:
            self._drop(CLOSE_UNEXPECTED, "unexpected message")

    def on_close(self) -> None:
        if self.sub is not None:
            self.deps.hub.unsubscribe(self.sub)
            # The subscriber points back at this socket: left as a cycle, a
            # closed page (handler, connection, stream, ~22 objects) waits for
            # the cyclic collector instead of going at once, and the
            # collector's full passes are what stall a process holding
            # thousands of pages (server/infra/gc_freezer.py).
            self.sub = None
