"""JSON API: catalog, orders, Native checkout."""

from __future__ import annotations

import tornado.web

from handlers.base import JsonHandler
from server.domain import catalog
from server.domain.orders import order_json, parse_lines


class SkusHandler(JsonHandler):
    async def get(self) -> None:
        self.send_json(await catalog.list_skus(self.services.store))


class OrdersHandler(JsonHandler):
    async def post(self) -> None:
        lines = parse_lines(self.json_body())
        order = await self.services.orders.create(self.user, lines)
        self.set_header("Location", f"/api/orders/{order['_id']}")
        self.send_json(order_json(order), status=201)


class OrderHandler(JsonHandler):
    async def get(self, order_id: str) -> None:
        self.send_json(order_json(await self.services.orders.get_owned(self.user, order_id), with_logs=True))


class CreateNativeHandler(JsonHandler):
    async def get(self) -> None:
        order_id = self.get_query_argument("orderId", "")
        if not order_id:
            raise tornado.web.HTTPError(400, reason="orderId is required")
        self.send_json(await self.services.payments.create_native(
            self.user, order_id, self.request.remote_ip or "127.0.0.1"))
