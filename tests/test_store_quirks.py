"""The embedded store's quirks that the code works around (README, "nx-27017
quirks"). Each test states the quirk; if nx-27017 stops having it, the test
fails and the workaround can go. Against a real MongoDB (MONGO_URL) there is no
quirk to see, so these tests are skipped there."""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest
from pymongo import AsyncMongoClient, ReturnDocument

pytestmark = pytest.mark.skipif(bool(os.environ.get("MONGO_URL")), reason="quirks of the embedded nx-27017 only")


@pytest.mark.gen_test(timeout=60)
async def test_find_one_and_update_with_a_top_level_or_can_return_another_document(mongo_url: str) -> None:
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(mongo_url)
    orders = client[f"quirk{uuid.uuid4().hex[:8]}"]["orders"]
    await orders.insert_many([{"_id": f"o{i}", "reserved": 0} for i in range(40)])

    async def reserve(i: int, with_or: bool) -> bool:
        """True when the document handed back is the one asked for."""
        reserved: dict[str, object] = ({"$or": [{"reserved": {"$exists": False}}, {"reserved": {"$lte": 10_000}}]}
                                       if with_or else {"reserved": {"$lte": 10_000}})
        doc = await orders.find_one_and_update({"_id": f"o{i}", **reserved}, {"$inc": {"reserved": 1}},
                                               return_document=ReturnDocument.AFTER)
        return doc is not None and doc["_id"] == f"o{i}"

    without_or = await asyncio.gather(*(reserve(i % 40, False) for i in range(120)))
    assert all(without_or), "the plain condition always hands back the document it updated"
    with_or = await asyncio.gather(*(reserve(i % 40, True) for i in range(120)))
    assert not all(with_or), "nx-27017 no longer mixes up $or updates: the workaround can go"
    await client.drop_database(orders.database.name)
    await client.close()
