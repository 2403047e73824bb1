"""Shared by the timeout tests: their settings, final states, stock accounting, simulator look-ups."""

from __future__ import annotations

from typing import Any

from server.composition.container import Services
from server.domain.orders import order_logs
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


async def stock_total(services: Services) -> dict[str, int]:
    """Per SKU: on hand + held by orders not yet paid + sold to paid orders
    (a paid order's hold is its sale until it is settled, so it counts once).
    A refund gives money back, not stock: a refunded order's items stay sold."""
    paid: dict[str, dict[str, Any]] = {
        o["_id"]: o async for o in services.store.orders.find({"status": {"$in": ["paid", "refunded"]}})}
    totals: dict[str, int] = {}
    async for sku in services.store.skus.find({}):
        totals[sku["_id"]] = int(sku["stock"]) + sum(
            int(n) for oid, n in (sku.get("holds") or {}).items() if oid not in paid)
    for order in paid.values():
        for item in order["items"]:
            totals[item["sku_id"]] += int(item["num"])
    return totals


async def trade(shopper: Shopper, order_id: str) -> dict[str, Any]:
    status, body = await shopper.request("GET", f"/sandbox/wxpay/trades/{order_id}")
    return body if status == 200 else {"trade_state": "NONE", "notify_replies": []}


async def log_kinds(services: Services, order_id: str) -> list[str]:
    doc = await services.store.orders.find_one({"_id": order_id})
    return [e["kind"] for e in order_logs(doc)] if doc else []
