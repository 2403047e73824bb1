"""The SKU catalog."""

from __future__ import annotations

import logging
from typing import Any

from pymongo.errors import DuplicateKeyError

from server.domain.stock import max_per_order
from server.infra.store import Store

log = logging.getLogger(__name__)

def sku_json(doc: dict[str, Any]) -> dict[str, Any]:
    return {"id": doc["_id"], "name": doc["name"], "price": int(doc["price"]),
            "stock": int(doc["stock"]), "max_per_order": max_per_order(doc)}


class Catalog:
    """The SKUs shoppers choose from."""

    def __init__(self, store: Store):
        self.store = store

    async def skus(self) -> list[dict[str, Any]]:
        return await list_skus(self.store)


async def list_skus(store: Store) -> list[dict[str, Any]]:
    docs = await store.skus.find({}, projection={"holds": 0}).sort("_id", 1).to_list(1000)
    return [sku_json(d) for d in docs]


async def add_sku(store: Store, sku_id: str, name: str, price: int, stock: int,
                  max_per_order: int | None = None) -> bool:
    """Insert a SKU unless one with that id exists (stock is never reset by a re-seed)."""
    doc: dict[str, Any] = {"_id": sku_id, "name": name, "price": price, "stock": stock, "holds": {}}
    if max_per_order is not None:
        doc["max_per_order"] = max_per_order
    try:
        await store.skus.insert_one(doc)
        return True
    except DuplicateKeyError:
        return False
