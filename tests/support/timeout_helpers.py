"""Shared by the timeout tests: their settings, final states, stock accounting, simulator look-ups."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from server.composition.container import Services
from server.domain.orders import order_logs
from server.domain.stock import MARKERS, held_by
from tests.support.shopper import Shopper
from tests.support.waiting import eventually

SETTINGS = {"order_timeout_seconds": 2, "sim_close_min_age_seconds": 0.0, "timeout_retry_delays": (1, 2),
            "active_query_after_seconds": 1000.0,
            "max_unpaid_orders_per_user": 1000}  # one shopper stands in for many


async def final_order(shopper: Shopper, order_id: str, within: float = 20.0) -> dict[str, Any]:
    """The order once it has left unpaid (paid or closed), as its owner sees it."""
    async def settled() -> dict[str, Any] | None:
        order = await shopper.get_order(order_id)
        return order if order["status"] != "unpaid" else None

    return await eventually(settled, message=f"order {order_id} paid or closed", within=within)


async def holdings(services: Services) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """Per SKU: the count on hand, and what each order holds of it now
    (``server.domain.stock.held_by``: the order's records, and the SKU's
    markers for moves not recorded yet; a paid order's holding is its sale)."""
    skus = {sku["_id"]: sku async for sku in services.store.skus.find({})}
    on_hand = {sku_id: int(sku["stock"]) for sku_id, sku in skus.items()}
    held: dict[str, dict[str, int]] = {sku_id: {} for sku_id in skus}
    async for order in services.store.orders.find({}):
        for sku_id in {item["sku_id"] for item in order["items"]}:
            n = held_by(order, sku_id, skus.get(sku_id))
            if n:
                held.setdefault(sku_id, {})[order["_id"]] = n
    return on_hand, held


async def stock_total(services: Services) -> dict[str, int]:
    """Per SKU: on hand + held by every order (reserving, unpaid, releasing,
    or sold to a paid one). A refund gives money back, not stock: a refunded
    order's items stay sold. Constant whatever happens, at any moment."""
    on_hand, held = await holdings(services)
    return {sku_id: n + sum(held.get(sku_id, {}).values()) for sku_id, n in on_hand.items()}


async def markers_left(services: Services, order_ids: Iterable[str] | None = None) -> dict[str, list[str]]:
    """Per SKU, the in-flight markers still there (of ``order_ids``, or any)."""
    wanted = set(order_ids) if order_ids is not None else None
    left: dict[str, list[str]] = {}
    async for sku in services.store.skus.find({}):
        found = [f"{kind}.{oid}" for kind in MARKERS for oid in (sku.get(kind) or {})
                 if wanted is None or oid in wanted]
        if found:
            left[sku["_id"]] = found
    return left


async def no_markers_of(services: Services, order_ids: Iterable[str]) -> bool:
    return await markers_left(services, order_ids) == {}


async def trade(shopper: Shopper, order_id: str) -> dict[str, Any]:
    status, body = await shopper.request("GET", f"/sandbox/wxpay/trades/{order_id}")
    return body if status == 200 else {"trade_state": "NONE", "notify_replies": []}


async def log_kinds(services: Services, order_id: str) -> list[str]:
    doc = await services.store.orders.find_one({"_id": order_id})
    return [e["kind"] for e in order_logs(doc)] if doc else []
