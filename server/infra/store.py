"""MongoDB: the client, the collections paypush uses, and their indexes.

Only single-document atomic operations are used anywhere, so the same code
runs on a standalone MongoDB, a replica set and the embedded nx-27017.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from dataclasses import dataclass
from functools import cached_property

from pymongo import ASCENDING, AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError


@dataclass(frozen=True)
class Store:
    """The collections are made once (``cached_property``): pymongo builds a new
    collection object, with its options, at every ``db[name]``, and the orders
    collection is asked for several times per notify."""

    client: AsyncMongoClient
    db: AsyncDatabase

    @cached_property
    def users(self) -> AsyncCollection:
        return self.db["users"]

    @cached_property
    def skus(self) -> AsyncCollection:
        return self.db["skus"]

    @cached_property
    def orders(self) -> AsyncCollection:
        return self.db["orders"]

    @cached_property
    def meta(self) -> AsyncCollection:
        return self.db["meta"]

    @cached_property
    def sku_changes(self) -> AsyncCollection:
        """Operators' changes to the catalog (stock, name, price), one document each: the audit trail."""
        return self.db["sku_changes"]

    @cached_property
    def reconciliations(self) -> AsyncCollection:
        """One report per bill date (``_id`` yyyy-mm-dd): the last run's."""
        return self.db["reconciliations"]

    async def ping(self) -> None:
        await self.db.command("ping")

    async def close(self) -> None:
        await self.client.close()


def connect(url: str, db_name: str, timeout_ms: int = 3000) -> Store:
    client: AsyncMongoClient = AsyncMongoClient(
        url,
        serverSelectionTimeoutMS=timeout_ms,
        connectTimeoutMS=timeout_ms,
        socketTimeoutMS=max(timeout_ms * 3, 10000),
        tz_aware=True,
    )
    return Store(client, client[db_name])


async def create_indexes(store: Store) -> None:
    await store.orders.create_index([("user", ASCENDING), ("created_at", ASCENDING)])
    await store.orders.create_index([("status", ASCENDING), ("created_at", ASCENDING)])
    # Counting a user's unpaid orders on every new one (MAX_UNPAID_ORDERS_PER_USER).
    await store.orders.create_index([("user", ASCENDING), ("status", ASCENDING)])
    # nx-27017 uses single-field indexes only (see README): without this one
    # the count above reads every order (43 ms at 50,000), on every placement.
    await store.orders.create_index([("user", ASCENDING)])
    # One entry per (order, kind): what makes every side effect's log idempotent.
    await store.orders.create_index([("pending_event", ASCENDING)], sparse=True)
    await store.orders.create_index([("refunds_open", ASCENDING)], sparse=True)  # the refund backstop
    await store.orders.create_index([("transaction_id", ASCENDING)], sparse=True)  # operators' search
    await store.orders.create_index([("pay_time", ASCENDING)], sparse=True)  # reconciliation: a day's payments
    await store.sku_changes.create_index([("at", ASCENDING)])  # the console's latest changes


async def deployment_id(store: Store) -> str:
    """The identity of the deployment this database belongs to: made by the
    first process to ask, then the same for every process and restart. It
    tells this deployment's deadline messages from another's on a shared broker."""
    # update_one then find_one: nx-27017's find_one_and_update ignores $setOnInsert on an upsert.
    with contextlib.suppress(DuplicateKeyError):  # another process made it at the same moment
        await store.meta.update_one(
            {"_id": "deployment"},
            {"$setOnInsert": {"id": secrets.token_hex(8), "created_at": time.time()}}, upsert=True)
    doc = await store.meta.find_one({"_id": "deployment"})
    if doc is None or not doc.get("id"):
        raise RuntimeError("cannot read or create this deployment's id in MongoDB (meta collection)")
    return str(doc["id"])
