"""Operators changing the catalog while shoppers order: over HTTP
(``PUT /api/admin/skus/{id}``) and with ``paypush sku set`` as a real process
against the same database, at the same moment as ``POST /api/orders``.

Nothing is lost or invented: the stock on hand at the end is what it was at
the start, plus what each operator's change moved it by (the audit trail
records the value each change replaced, read by the change itself), minus
every unit an accepted order took."""

from __future__ import annotations

import asyncio
import itertools
import random
import sys
from typing import Any

import pytest

from server.composition.container import Services
from tests.support.processes import ROOT, base_env
from tests.support.shopper import Shopper

FLASH = "flash-sale"


@pytest.fixture
def extra_settings() -> dict[str, object]:
    return {"max_unpaid_orders_per_user": 100_000}  # one shopper stands in for a crowd



async def put_sku(operator: Shopper, sku_id: str, body: Any) -> tuple[int, Any]:
    return await operator.request("PUT", f"/api/admin/skus/{sku_id}", body)


async def on_hand(services: Services, sku_id: str) -> int:
    doc = await services.store.skus.find_one({"_id": sku_id}, projection={"stock": 1})
    assert doc is not None, sku_id
    return int(doc["stock"])


async def cli_sku_set(services: Services, mongo_url: str, *args: str) -> tuple[int, str, str]:
    """``paypush sku set`` as an operator runs it, on the database the server uses."""
    env = base_env(services.settings.var_dir, MONGO_URL=mongo_url, MONGO_DB=services.settings.mongo_db)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", "sku", "set", *args, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return int(proc.returncode or 0), out.decode(), err.decode()


@pytest.mark.gen_test(timeout=180)
async def test_stock_set_while_orders_take_it_loses_and_invents_nothing(
        services: Services, shopper: Shopper, operator: Shopper, mongo_url: str) -> None:
    status, created = await put_sku(operator, FLASH, {"stock": 3000, "name": "Flash sale item", "price": 990})
    assert status == 201 and created["created"], created
    rng = random.Random(17)
    taken: list[int] = []  # units of every accepted order
    refused = 0
    sets_done = asyncio.Event()
    orders_after_last_set = 0

    async def crowd() -> None:
        nonlocal refused, orders_after_last_set
        while not sets_done.is_set() or orders_after_last_set < 30:
            num = rng.randint(1, 3)
            status, reply = await shopper.request("POST", "/api/orders", {"items": [{"sku_id": FLASH, "num": num}]})
            if status == 201:
                taken.append(num)
                if sets_done.is_set():
                    orders_after_last_set += 1
            else:
                assert status == 409, (status, reply)  # sold out: nothing taken
                refused += 1

    async def operators() -> None:
        try:
            for _round in range(3):
                for _ in range(3):
                    status, reply = await put_sku(operator, FLASH, {"stock": rng.randint(2000, 4000)})
                    assert status == 200, reply
                code, out, err = await cli_sku_set(services, mongo_url, FLASH, "--stock",
                                                   str(rng.randint(2000, 4000)))
                assert code == 0 and out.startswith(f"SKU {FLASH}: stock "), (code, out, err)
        finally:
            sets_done.set()

    await asyncio.gather(operators(), *(crowd() for _ in range(6)))

    changes = [c async for c in services.store.sku_changes.find({"sku_id": FLASH}).sort("at", 1)]
    assert [c["created"] for c in changes] == [True] + [False] * 12
    assert sum(c["by"].startswith("cli:") for c in changes) == 3
    assert sum(c["by"] == "olga" for c in changes) == 10
    moved = sum(c["after"]["stock"] - (c["before"]["stock"] if c["before"] else 0) for c in changes)
    final = await on_hand(services, FLASH)
    assert final == moved - sum(taken), (final, moved, sum(taken), refused)
    # It was a race, not a queue: orders took stock between the changes, and after the last one.
    between = [c for prev, c in itertools.pairwise(changes)
               if c["before"]["stock"] != prev["after"]["stock"]]
    assert between, "no order landed between two changes: the test raced nothing"
    assert final < changes[-1]["after"]["stock"]
    # And each order was charged what the SKU cost when it was placed.
    docs = await services.store.orders.find({"items.sku_id": FLASH, "status": "unpaid"}).to_list(None)
    assert sum(d["items"][0]["num"] for d in docs) == sum(taken)


@pytest.mark.gen_test(timeout=60)
async def test_a_new_sku_is_for_sale_at_once_and_changes_show_to_shoppers(
        services: Services, shopper: Shopper, operator: Shopper) -> None:
    status, reply = await put_sku(operator, "lantern-red", {"stock": 2})
    assert status == 400 and "needs a stock, a name and a price" in reply["error"], reply
    status, reply = await put_sku(operator, "lantern-red", {"stock": 2, "name": "  Red lantern ", "price": 4500})
    assert status == 201 and reply["after"] == {"stock": 2, "name": "Red lantern", "price": 4500}, reply
    assert reply["before"] is None and reply["by"] == "olga"
    status, skus = await shopper.request("GET", "/api/skus")
    assert {"id": "lantern-red", "name": "Red lantern", "price": 4500, "stock": 2, "max_per_order": 99} in skus

    order = await shopper.order([("lantern-red", 1)])
    assert order["pay_money"] == 4500
    status, reply = await put_sku(operator, "lantern-red", {"price": 5000, "name": "Red silk lantern"})
    assert status == 200, reply
    assert reply["before"] == {"stock": 1, "name": "Red lantern", "price": 4500}
    assert reply["after"] == {"stock": 1, "name": "Red silk lantern", "price": 5000}
    assert (await shopper.order([("lantern-red", 1)]))["pay_money"] == 5000
    assert (await shopper.get_order(order["id"]))["pay_money"] == 4500  # a placed order keeps its price
    status, reply = await shopper.request("POST", "/api/orders", {"items": [{"sku_id": "lantern-red", "num": 1}]})
    assert status == 409, reply

    status, reply = await put_sku(operator, "lantern-red", {"stock": 10})
    assert status == 200 and reply["before"]["stock"] == 0 and reply["after"]["stock"] == 10
    status, listing = await operator.request("GET", "/api/admin/skus")
    assert status == 200
    assert next(s for s in listing["skus"] if s["id"] == "lantern-red")["stock"] == 10
    assert [(c["sku_id"], c["created"]) for c in listing["changes"][:3]] == [
        ("lantern-red", False), ("lantern-red", False), ("lantern-red", True)]


BAD_BODIES: list[tuple[str, Any, str]] = [
    ("tea-longjing", {"stock": -1}, "stock"),
    ("tea-longjing", {"stock": "5"}, "stock"),
    ("tea-longjing", {"stock": 1.5}, "stock"),
    ("tea-longjing", {"stock": True}, "stock"),
    ("tea-longjing", {"stock": 10**9}, "stock"),
    ("tea-longjing", {"price": 0}, "price"),
    ("tea-longjing", {"price": 12.5}, "price"),
    ("tea-longjing", {"name": ""}, "name"),
    ("tea-longjing", {"name": "   "}, "name"),
    ("tea-longjing", {"name": "x" * 65}, "name"),
    ("tea-longjing", {"name": "two\nlines"}, "name"),
    ("tea-longjing", {}, "nothing to change"),
    ("tea-longjing", {"stock": 5, "holds": {}}, "body must be"),
    ("tea-longjing", [5], "body must be"),
    ("tea.longjing", {"stock": 5, "name": "Dotted", "price": 100}, "SKU id"),
    ("$where", {"stock": 5, "name": "Dollar", "price": 100}, "SKU id"),
]


@pytest.mark.gen_test(timeout=60)
async def test_bad_changes_are_400_and_change_nothing(services: Services, operator: Shopper) -> None:
    before = await services.store.skus.find_one({"_id": "tea-longjing"})
    for sku_id, body, says in BAD_BODIES:
        status, reply = await put_sku(operator, sku_id, body)
        assert status == 400 and says in reply["error"], (sku_id, body, status, reply)
    status, reply = await operator.request("PUT", "/api/admin/skus/tea-longjing", data=b"{not json")
    assert status == 400 and reply["error"] == "body must be JSON"
    assert await services.store.skus.find_one({"_id": "tea-longjing"}) == before
    assert await services.store.skus.count_documents({"_id": {"$in": ["tea.longjing", "$where"]}}) == 0
    assert await services.store.sku_changes.find_one({}) is None


@pytest.mark.gen_test(timeout=60)
async def test_shoppers_and_strangers_cannot_touch_the_catalog(
        services: Services, shopper: Shopper, operator: Shopper, base_url: str) -> None:
    before = await on_hand(services, "tea-longjing")
    assert (await shopper.request("GET", "/api/admin/skus"))[0] == 403
    status, reply = await put_sku(shopper, "tea-longjing", {"stock": 0})
    assert status == 403 and reply["error"] == "operators only"
    status, reply = await put_sku(shopper, "new-thing", {"stock": 1, "name": "New", "price": 1})
    assert status == 403
    # The operator's own session, minus the XSRF token: a forged cross-site request.
    status, _ = await operator.request("PUT", "/api/admin/skus/tea-longjing", {"stock": 0},
                                       headers={"X-XSRFToken": "forged"})
    assert status == 403
    stranger = Shopper(base_url)
    try:
        assert (await stranger.request("GET", "/api/admin/skus"))[0] == 401
    finally:
        await stranger.close()
    assert await on_hand(services, "tea-longjing") == before
    assert await services.store.skus.find_one({"_id": "new-thing"}) is None
    assert await services.store.sku_changes.find_one({}) is None
