"""The SKU catalog: what shoppers choose from, and operators' changes to it."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from server.domain.errors import InvalidRequest
from server.domain.order_request import SKU_ID
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

    async def set(self, sku_id: str, *, by: str, stock: int | None = None, name: str | None = None,
                  price: int | None = None) -> SkuChange:
        return await set_sku(self.store, sku_id, by=by, stock=stock, name=name, price=price)

    async def recent_changes(self) -> list[dict[str, Any]]:
        return await recent_changes(self.store)


async def list_skus(store: Store) -> list[dict[str, Any]]:
    # Only what a shopper sees: not the moves in flight or pre-upgrade holds a SKU document carries.
    docs = await store.skus.find({}, projection={"name": 1, "price": 1, "stock": 1, "max_per_order": 1}
                                 ).sort("_id", 1).to_list(1000)
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


# -- operators' changes --------------------------------------------------------

MAX_NAME = 64
# Per unit, in fen (¥100,000): far above any shop item, far below what would overflow a total.
MAX_PRICE = 10_000_000
MAX_STOCK = 10_000_000
CHANGES_KEPT_ON_SCREEN = 20
SKU_FIELDS = ("stock", "name", "price")


class InvalidSku(InvalidRequest):
    pass


@dataclass(frozen=True)
class SkuChange:
    """One operator's change to one SKU: what it was at the very moment of the
    change (None when it was created) and what it became."""

    sku_id: str
    by: str
    at: float
    before: dict[str, Any] | None
    after: dict[str, Any]

    @property
    def created(self) -> bool:
        return self.before is None

    def as_json(self) -> dict[str, Any]:
        return {"sku_id": self.sku_id, "by": self.by, "at": self.at, "created": self.created,
                "before": self.before, "after": self.after}

    def describe(self) -> str:
        if self.before is None:
            a = self.after
            return f"created: {a['name']!r}, price {a['price']} fen, stock {a['stock']}"
        parts = [f"{field} {self.before[field]!r} -> {self.after[field]!r}"
                 for field in ("stock", "name", "price") if self.before[field] != self.after[field]]
        return ", ".join(parts) or "unchanged"


def check_sku_fields(sku_id: Any, stock: Any, name: Any, price: Any) -> None:
    """The shapes an operator may give; InvalidSku says which one is wrong."""
    if not isinstance(sku_id, str) or not SKU_ID.match(sku_id):
        raise InvalidSku("SKU id: 1-64 letters, digits, '-' or '_'")
    if stock is not None and (isinstance(stock, bool) or not isinstance(stock, int)
                              or not 0 <= stock <= MAX_STOCK):
        raise InvalidSku(f"stock: a whole number from 0 to {MAX_STOCK}")
    if name is not None and (not isinstance(name, str) or not 1 <= len(name.strip()) <= MAX_NAME
                             or not name.isprintable()):
        raise InvalidSku(f"name: 1-{MAX_NAME} printable characters")
    if price is not None and (isinstance(price, bool) or not isinstance(price, int)
                              or not 1 <= price <= MAX_PRICE):
        raise InvalidSku(f"price: a whole number of fen from 1 to {MAX_PRICE}")


async def set_sku(store: Store, sku_id: str, *, by: str, stock: int | None = None, name: str | None = None,
                  price: int | None = None) -> SkuChange:
    """Create a SKU, or change its stock on hand, name or price, in one atomic update.

    ``stock`` is absolute: what is for sale from this moment. Orders take
    stock with a conditional ``$inc`` on the same document, so the ``$set``
    lands between two of them: what orders took before it is replaced, what
    they take after it comes off the new figure, and the value it replaced
    is handed back by the same update (``ReturnDocument.BEFORE``) for the
    record. No read-then-write, so no unit is lost or invented; no retry
    loop either, which a flash sale's stream of orders could keep losing
    (a compare-and-set on ``stock`` would). Units held by unpaid orders are
    not on hand: they come back on top of the new figure if those orders close.
    """
    check_sku_fields(sku_id, stock, name, price)
    name = name.strip() if name is not None else None
    changes = {k: v for k, v in (("stock", stock), ("name", name), ("price", price)) if v is not None}
    if not changes:
        raise InvalidSku("nothing to change: give a stock, a name or a price")
    for _attempt in range(2):
        before = await store.skus.find_one_and_update(
            {"_id": sku_id}, {"$set": changes}, projection=dict.fromkeys(SKU_FIELDS, 1),
            return_document=ReturnDocument.BEFORE)
        if before is not None:
            was = {f: before.get(f) for f in SKU_FIELDS}
            return await _record(store, SkuChange(sku_id, by, time.time(), was, {**was, **changes}))
        if stock is None or name is None or price is None:
            raise InvalidSku(f"no SKU {sku_id!r} yet: creating one needs a stock, a name and a price")
        if await add_sku(store, sku_id, name, price, stock):
            return await _record(store, SkuChange(sku_id, by, time.time(), None,
                                                  {"stock": stock, "name": name, "price": price}))
        # Created by someone else between the two writes: theirs is there now, change it.
    raise RuntimeError(f"SKU {sku_id} neither found nor created")  # it would have to vanish in between


async def _record(store: Store, change: SkuChange) -> SkuChange:
    # After the change, not with it (no multi-document transactions): a crash
    # in between loses this entry, never the change itself, and the log line
    # below is the second witness.
    log.info("SKU %s %s (by %s)", change.sku_id, change.describe(), change.by)
    await store.sku_changes.insert_one(change.as_json())
    return change


async def recent_changes(store: Store, limit: int = CHANGES_KEPT_ON_SCREEN) -> list[dict[str, Any]]:
    """The latest operators' changes, newest first."""
    docs = await store.sku_changes.find({}, projection={"_id": 0}).sort("at", -1).to_list(limit)
    return list(docs)
