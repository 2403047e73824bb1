"""What operators do: find orders, look at one, give money back, keep the
catalog. Every endpoint here answers 403 to anyone logged in who is not an operator."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Awaitable, Callable
from typing import Any

import tornado.web

from handlers.base import JsonHandler
from handlers.pages import PageDeps, PageHandler
from handlers.views import admin_order_json, refund_json
from server.domain.catalog import Catalog
from server.domain.errors import Forbidden, InvalidRequest
from server.domain.orders import VISIBLE, Orders
from server.domain.refund_request import parse_amount, parse_idempotency_key, parse_reason
from server.domain.refunds import Refunds
from server.lifecycle import InFlight

PAGE_SIZE = 50
IsOperator = Callable[[str], Awaitable[bool]]


class NotAnOperator(Forbidden):
    def __init__(self) -> None:
        super().__init__("operators only")


class BadCursor(InvalidRequest):
    pass


def encode_cursor(order: dict[str, Any]) -> str:
    raw = json.dumps([order["created_at"], order["_id"]]).encode("utf-8")
    return base64.urlsafe_b64encode(raw).decode("ascii")


def decode_cursor(text: str) -> tuple[float, str]:
    try:
        at, order_id = json.loads(base64.urlsafe_b64decode(text.encode("ascii")))
    except (ValueError, TypeError, binascii.Error, UnicodeError):
        raise BadCursor("cursor is not one this server handed out") from None
    if not isinstance(at, (int, float)) or isinstance(at, bool) or not isinstance(order_id, str):
        raise BadCursor("cursor is not one this server handed out")
    return float(at), order_id[:64]


class OperatorJsonHandler(JsonHandler):
    def initialize(self, requests: InFlight, is_operator: IsOperator) -> None:  # type: ignore[override]
        super().initialize(requests)
        self.is_operator = is_operator

    async def prepare(self) -> None:  # type: ignore[override]
        super().prepare()
        if not await self.is_operator(self.user):
            raise NotAnOperator()


class RefundsHandler(OperatorJsonHandler):
    def initialize(self, requests: InFlight, is_operator: IsOperator,  # type: ignore[override]
                   refunds: Refunds) -> None:
        super().initialize(requests, is_operator)
        self.refunds = refunds

    async def post(self, order_id: str) -> None:
        body = self.json_body()
        if not isinstance(body, dict):
            raise InvalidRequest('body must be {"amount": fen, "reason": "..."}')
        amount, reason = parse_amount(body.get("amount")), parse_reason(body.get("reason"))
        key = parse_idempotency_key(self.request.headers.get("Idempotency-Key"))
        refund, created = await self.refunds.request(order_id, amount, reason, self.user, key)
        self.set_header("Location", f"/api/orders/{order_id}")
        self.send_json(refund_json(refund), status=201 if created else 200)


class AdminOrdersHandler(OperatorJsonHandler):
    def initialize(self, requests: InFlight, is_operator: IsOperator,  # type: ignore[override]
                   orders: Orders) -> None:
        super().initialize(requests, is_operator)
        self.orders = orders

    async def get(self) -> None:
        status = self.get_query_argument("status", "") or None
        if status is not None and status not in VISIBLE:
            raise InvalidRequest(f"status: one of {', '.join(VISIBLE)}")
        query = self.get_query_argument("q", "").strip()[:64] or None
        cursor = self.get_query_argument("cursor", "")
        found = await self.orders.search(status, query, decode_cursor(cursor) if cursor else None, PAGE_SIZE + 1)
        page = found[:PAGE_SIZE]
        self.send_json({"orders": [admin_order_json(o) for o in page],
                        "next_cursor": encode_cursor(page[-1]) if len(found) > PAGE_SIZE else None})


class ReconciliationsHandler(OperatorJsonHandler):
    """The last reports of the daily reconciliation, newest first."""

    def initialize(self, requests: InFlight, is_operator: IsOperator,  # type: ignore[override]
                   reports: Callable[[], Awaitable[list[dict[str, Any]]]]) -> None:
        super().initialize(requests, is_operator)
        self.reports = reports

    async def get(self) -> None:
        self.send_json({"reports": [{k: v for k, v in r.items() if k != "_id"} for r in await self.reports()]})


class AdminSkusHandler(OperatorJsonHandler):
    """Every SKU as operators see it, and the latest changes made to them."""

    def initialize(self, requests: InFlight, is_operator: IsOperator,  # type: ignore[override]
                   catalog: Catalog) -> None:
        super().initialize(requests, is_operator)
        self.catalog = catalog

    async def get(self) -> None:
        self.send_json({"skus": await self.catalog.skus(), "changes": await self.catalog.recent_changes()})


class AdminSkuHandler(AdminSkusHandler):
    """``PUT {"stock", "name", "price"}``: create the SKU (all three needed) or change any of them."""

    async def put(self, sku_id: str) -> None:
        body = self.json_body()
        if not isinstance(body, dict) or not body.keys() <= {"stock", "name", "price"}:
            raise InvalidRequest('body must be {"stock": units, "name": "...", "price": fen}, each optional '
                                 "for an existing SKU")
        change = await self.catalog.set(sku_id, by=self.user, stock=body.get("stock"), name=body.get("name"),
                                        price=body.get("price"))
        self.send_json(change.as_json(), status=201 if change.created else 200)


class AdminPage(PageHandler):
    """The console: a server-rendered shell; static/js/admin.js fills it from the API above."""

    def initialize(self, requests: InFlight, pages: PageDeps,  # type: ignore[override]
                   is_operator: IsOperator) -> None:
        super().initialize(requests, pages)
        self.is_operator = is_operator

    @tornado.web.authenticated
    async def get(self) -> None:
        if not await self.is_operator(self.user):
            self.set_status(403)
            self.render_page("admin_forbidden.html")
            return
        self.render_page("admin.html", statuses=VISIBLE)
