"""MongoDB: the client, the collections paypush uses, and their indexes.

Only single-document atomic operations are used anywhere, so the same code
runs on a standalone MongoDB, a replica set and the embedded nx-27017.
"""

from __future__ import annotations

from dataclasses import dataclass

from pymongo import ASCENDING, AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase


@dataclass(frozen=True)
class Store:
    client: AsyncMongoClient
    db: AsyncDatabase

    @property
    def users(self) -> AsyncCollection:
        return self.db["users"]

    @property
    def skus(self) -> AsyncCollection:
        return self.db["skus"]

    @property
    def orders(self) -> AsyncCollection:
        return self.db["orders"]

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
    # One entry per (order, kind): what makes every side effect's log idempotent.
    await store.orders.create_index([("pending_event", ASCENDING)], sparse=True)
