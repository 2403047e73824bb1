"""JSON API: catalog, orders, Native checkout."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import tornado.web

from handlers import qr
from handlers.base import JsonHandler
from handlers.views import order_json
from server.domain.catalog import Catalog
from server.domain.order_request import parse_lines
from server.domain.orders import OrderNotFound, Orders
from server.domain.payments import Payments
from server.lifecycle import InFlight


class SkusHandler(JsonHandler):
    def initialize(self, requests: InFlight, catalog: Catalog) -> None:  # type: ignore[override]
        super().initialize(requests)
        self.catalog = catalog

    async def get(self) -> None:
        self.send_json(await self.catalog.skus())


class OrdersHandler(JsonHandler):
    def initialize(self, requests: InFlight, orders: Orders) -> None:  # type: ignore[override]
        super().initialize(requests)
        self.orders = orders

    async def post(self) -> None:
        lines = parse_lines(self.json_body())
        order = await self.orders.create(self.user, lines)
        self.set_header("Location", f"/api/orders/{order['_id']}")
        self.send_json(order_json(order), status=201)


class OrderHandler(JsonHandler):
    def initialize(self, requests: InFlight, orders: Orders,  # type: ignore[override]
                   is_operator: Callable[[str], Awaitable[bool]]) -> None:
        super().initialize(requests)
        self.orders = orders
        self.is_operator = is_operator

    async def get(self, order_id: str) -> None:
        try:
            order = await self.orders.get_owned(self.user, order_id)
        except OrderNotFound:
            # Operators see every order; anyone else's looks absent to a shopper.
            if not await self.is_operator(self.user):
                raise
            order = await self.orders.get_owned(self.user, order_id, any_owner=True)
        self.send_json(order_json(order, with_logs=True))


class CreateNativeHandler(JsonHandler):
    def initialize(self, requests: InFlight, payments: Payments) -> None:  # type: ignore[override]
        super().initialize(requests)
        self.payments = payments

    async def get(self) -> None:
        order_id = self.get_query_argument("orderId", "")
        if not order_id:
            raise tornado.web.HTTPError(400, reason="orderId is required")
        checkout = await self.payments.create_native(self.user, order_id, self.request.remote_ip or "127.0.0.1")
        self.send_json({**checkout, "qr_svg": qr.svg(checkout["code_url"])})
