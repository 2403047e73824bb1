"""Stock: what an order holds of each SKU, and what becomes of it.

A hold is recorded on the SKU document itself (``holds.<order_id>``), in the
same conditional update that takes the stock. That makes every movement
exactly-once: a hold is taken only if absent and given back (or kept as a
sale) only if present, whoever retries, races or restarts. A compensated
order (paid after it was closed) takes its stock again once per SKU,
recorded as ``retaken.<order_id>``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from pymongo import ReturnDocument, UpdateOne

from server.infra.store import Store

log = logging.getLogger(__name__)

# Per SKU per order; a SKU document's ``max_per_order`` can lower it (scarce items).
MAX_NUM = 99


def max_per_order(sku: dict[str, Any]) -> int:
    """How many of this SKU one order may take."""
    limit = sku.get("max_per_order")
    return min(int(limit), MAX_NUM) if isinstance(limit, int) and limit > 0 else MAX_NUM


class Stock:
    def __init__(self, store: Store):
        self.store = store

    async def hold(self, order_id: str, sku_id: str, num: int) -> bool:
        """Take ``num`` for the order, unless it holds this SKU already; False when short."""
        held = await self.store.skus.find_one_and_update(
            {"_id": sku_id, "stock": {"$gte": num}, f"holds.{order_id}": {"$exists": False}},
            {"$inc": {"stock": -num}, "$set": {f"holds.{order_id}": num}},
            projection={"_id": 1})
        return held is not None

    async def give_back(self, order: dict[str, Any]) -> None:
        """Every hold of the order back on the shelf (each at most once)."""
        for item in order["items"]:
            await self.store.skus.update_one(
                {"_id": item["sku_id"], f"holds.{order['_id']}": {"$exists": True}},
                {"$inc": {"stock": int(item["num"])}, "$unset": {f"holds.{order['_id']}": ""}})

    async def keep_as_sold(self, orders: Iterable[dict[str, Any]]) -> None:
        """Paid orders' holds become sales: the stock stays taken, the holds go.

        One update per SKU for all the orders given, sent together in one
        round trip: unsetting a hold moves no stock, so a hold already gone (a
        repeat) changes nothing."""
        by_sku: dict[str, dict[str, str]] = {}
        for order in orders:
            for item in order["items"]:
                by_sku.setdefault(item["sku_id"], {})[f"holds.{order['_id']}"] = ""
        if by_sku:
            await self.store.skus.bulk_write(
                [UpdateOne({"_id": sku_id}, {"$unset": holds}) for sku_id, holds in by_sku.items()], ordered=False)

    async def take_again(self, order: dict[str, Any]) -> None:
        """A closed order was paid after all: what the close gave back is taken
        again, once per SKU, even if that leaves the stock negative: the sale
        happened, and someone must see the oversell."""
        order_id = order["_id"]
        for item in order["items"]:
            sku = await self.store.skus.find_one_and_update(
                {"_id": item["sku_id"], f"retaken.{order_id}": {"$exists": False}},
                {"$inc": {"stock": -int(item["num"])}, "$set": {f"retaken.{order_id}": int(item["num"])}},
                return_document=ReturnDocument.AFTER)
            if sku is not None and sku["stock"] < 0:
                log.warning("SKU %s oversold by %d after compensating order %s",
                            item["sku_id"], -sku["stock"], order_id)
