"""Stock moves survive a crash at every step between their writes.

Placing an order, giving its stock back and taking it again after a
compensation each write the SKU and then the order (no transactions). Each
test stops the path at one step, as a process dying there would: the
``checkpoint`` the stock module passes at every step raises, so nothing after
it runs (a lost clean-up batch is a crash in ``tidy``). Then the recovery
paths run, several at once as they may in production: the timeout worker's
``Timeouts.settle``, the sweeper's ``sweep_once``, a replayed close or
compensation. Exactly-once is checked through the invariant (on hand + what
every order holds is what it was) and the count on hand, and in the end the
SKU carries nothing of the order.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest

from server.composition.container import Services
from server.domain.catalog import add_sku
from server.domain.order_request import Line
from server.domain.stock import GIVING, LAYOUT, Released
from tests.support.timeout_helpers import markers_left, stock_total
from workers.sweeper import sweep_once

A, B = "crash-a", "crash-b"
START = 20
LINES = [Line(A, 2), Line(B, 3)]


class Crash(Exception):
    """The process died here."""


def crash_at(services: Services, step: str) -> None:
    def checkpoint(reached: str) -> None:
        if reached == step:
            raise Crash(step)

    services.orders.stock.checkpoint = checkpoint


def restarted(services: Services) -> None:
    """The recovery runs in a process that does not crash."""
    services.orders.stock.checkpoint = lambda step: None


async def stocked(services: Services) -> dict[str, int]:
    for sku_id in (A, B):
        assert await add_sku(services.store, sku_id, "Crash test item", 100, START)
    return await stock_total(services)


async def on_hand(services: Services) -> dict[str, int]:
    return {d["_id"]: int(d["stock"]) for d in await services.store.skus.find({"_id": {"$in": [A, B]}}).to_list(None)}


async def the_order(services: Services) -> dict[str, Any]:
    order = await services.store.orders.find_one({"user": "crash"})
    assert order is not None
    return order


async def overdue(services: Services, order_id: str) -> None:
    """Old enough for every recovery path to act on it."""
    await services.store.orders.update_one(
        {"_id": order_id}, {"$set": {"created_at": time.time() - 3600, "expires_at": time.time() - 600}})


async def all_tidy(services: Services, order_id: str) -> None:
    """What the sweeper and the clean-up batches leave: no marker of the order."""
    await services.orders.finish_bookkeeping()
    await sweep_once(services.orders, services.timeouts, grace=0)
    assert await markers_left(services, [order_id]) == {}


async def placed(services: Services) -> dict[str, Any]:
    order = await services.orders.create("crash", LINES)
    await services.orders.finish_bookkeeping()
    return order


# --- placement ----------------------------------------------------------------

@pytest.mark.parametrize("step", ["order inserted", f"taken {A}", f"taken {B}"])
@pytest.mark.gen_test(timeout=60)
async def test_a_placement_cut_short_is_released_once(services: Services, step: str) -> None:
    before = await stocked(services)
    crash_at(services, step)
    with pytest.raises(Crash):
        await services.orders.create("crash", LINES)
    assert await stock_total(services) == before  # what it took counts as held by the reserving order
    order = await the_order(services)
    assert order["status"] == "reserving"
    restarted(services)
    await overdue(services, order["_id"])
    await asyncio.gather(services.timeouts.settle(order["_id"]), services.timeouts.settle(order["_id"]),
                         sweep_once(services.orders, services.timeouts, grace=0))
    assert (await the_order(services))["status"] == "rejected"
    assert await on_hand(services) == {A: START, B: START}  # all back, once
    assert await stock_total(services) == before
    await all_tidy(services, order["_id"])
    assert await on_hand(services) == {A: START, B: START}


@pytest.mark.parametrize("then", ["paid", "closed"])
@pytest.mark.parametrize("step", ["order placed", "tidy"])
@pytest.mark.gen_test(timeout=60)
async def test_a_placement_whose_markers_were_not_tidied_settles_once(services: Services, step: str,
                                                                      then: str) -> None:
    before = await stocked(services)
    crash_at(services, step)
    if step == "tidy":  # the order is placed; the batch that would tidy its markers is lost
        order = await services.orders.create("crash", LINES)
        await services.orders.finish_bookkeeping()
    else:
        with pytest.raises(Crash):
            await services.orders.create("crash", LINES)
        order = await the_order(services)
    restarted(services)
    assert (await the_order(services))["stock_held"] == {A: 2, B: 3}
    assert await markers_left(services, [order["_id"]]) != {}
    assert await stock_total(services) == before
    if then == "paid":
        won, _ = await services.orders.mark_paid(order["_id"], "4200000000000000000000000101", time.time(), "test")
        assert won
        await services.timeouts.settle(order["_id"])  # its deadline, after the payment
        expected = {A: START - 2, B: START - 3}
    else:
        await asyncio.gather(*(services.orders.close(order["_id"], "test") for _ in range(3)))
        expected = {A: START, B: START}
    assert await on_hand(services) == expected
    assert await stock_total(services) == before
    await all_tidy(services, order["_id"])
    assert await on_hand(services) == expected


@pytest.mark.gen_test(timeout=60)
async def test_a_stalled_creator_cannot_take_after_its_reservation_was_released(services: Services) -> None:
    """Not dead, only slow: the sweeper released the reservation meanwhile.
    The creator's next take is refused, before and after the tombstone is tidied."""
    before = await stocked(services)
    skus = {d["_id"]: d for d in await services.store.skus.find({}).to_list(None)}
    order: dict[str, Any] = {"_id": "20261130" + "ab" * 12, "user": "crash", "status": "reserving", "stock_v": LAYOUT,
             "items": [{"sku_id": s, "name": "x", "price": 100, "num": n} for s, n in ((A, 2), (B, 3))],
             "pay_money": 500, "created_at": time.time(), "expires_at": time.time() + 600}
    await services.store.orders.insert_one(order)

    async def still_reserving() -> bool:
        return (await services.orders.get(order["_id"]) or {}).get("status") == "reserving"

    assert await services.orders.stock.take(order["_id"], A, 2, skus[A].get("epoch"), still_reserving)
    await services.orders.abandon_reservation(order)  # the recovery, while the creator stalls
    assert (await the_order(services))["status"] == "rejected"
    with pytest.raises(Released):  # B's tombstone is still there
        await services.orders.stock.take(order["_id"], B, 3, skus[B].get("epoch"), still_reserving)
    await services.orders.finish_bookkeeping()  # the tombstone goes, the epoch moves on
    assert await markers_left(services, [order["_id"]]) == {}
    with pytest.raises(Released):  # fenced by the epoch it read before the release
        await services.orders.stock.take(order["_id"], B, 3, skus[B].get("epoch"), still_reserving)
    assert await on_hand(services) == {A: START, B: START}
    assert await stock_total(services) == before


# --- giving back ----------------------------------------------------------------

@pytest.mark.parametrize("step", ["closed", f"giving {A}", f"giving {B}", "stock_returned recorded", "tidy"])
@pytest.mark.gen_test(timeout=60)
async def test_a_give_back_cut_short_is_finished_once(services: Services, step: str) -> None:
    before = await stocked(services)
    order = await placed(services)
    crash_at(services, step)
    with contextlib.suppress(Crash):  # a crash in "tidy" is in the background: close returns
        await services.orders.close(order["_id"], "timed out")
    await services.orders.finish_bookkeeping()
    restarted(services)
    assert (await the_order(services))["status"] == "closed"
    assert await stock_total(services) == before
    # Every recovery path at once, twice: the timeout worker (the deadline
    # message is redelivered), a repeated close, the sweeper.
    await asyncio.gather(*(f() for f in (lambda: services.timeouts.settle(order["_id"]),
                                         lambda: services.orders.close(order["_id"], "again"),
                                         lambda: sweep_once(services.orders, services.timeouts, grace=0))
                           for _ in range(2)))
    assert await on_hand(services) == {A: START, B: START}
    assert (await the_order(services))["stock_returned"] == {A: 2, B: 3}
    assert await stock_total(services) == before
    await all_tidy(services, order["_id"])
    assert await on_hand(services) == {A: START, B: START}


@pytest.mark.gen_test(timeout=60)
async def test_a_stale_replay_of_a_give_back_is_fenced(services: Services) -> None:
    """A replay that read the order before the give-back was recorded, and
    sends its update after the marker was tidied away, moves nothing."""
    before = await stocked(services)
    order = await placed(services)
    crash_at(services, "closed")
    with pytest.raises(Crash):
        await services.orders.close(order["_id"], "timed out")
    restarted(services)
    # The replay reads the SKU (its epoch), then the order: nothing given back yet...
    stale_sku = await services.store.skus.find_one({"_id": A})
    stale_order = await services.orders.get(order["_id"])
    assert stale_sku is not None and stale_order is not None and "stock_returned" not in stale_order
    # ...and stalls, while the timeout worker gives back, records it, and the markers are tidied.
    await services.timeouts.settle(order["_id"])
    await services.orders.finish_bookkeeping()
    assert await markers_left(services, [order["_id"]]) == {}
    assert stale_order is not None
    assert await services.orders.stock._try_move(stale_order, stale_sku, GIVING) is None
    assert await on_hand(services) == {A: START, B: START}
    assert await stock_total(services) == before


# --- paid after close (compensation) ---------------------------------------------

@pytest.mark.parametrize("step", ["compensated", f"retaking {A}", f"retaking {B}", "stock_retaken recorded", "tidy"])
@pytest.mark.gen_test(timeout=60)
async def test_a_compensation_cut_short_takes_again_once(services: Services, step: str) -> None:
    before = await stocked(services)
    order = await placed(services)
    assert (await services.orders.close(order["_id"], "timed out"))[0]
    crash_at(services, step)
    with contextlib.suppress(Crash):
        await services.orders.mark_paid_after_close(order["_id"], "4200000000000000000000000102", time.time())
    await services.orders.finish_bookkeeping()
    restarted(services)
    assert (await the_order(services))["status"] == "paid"
    assert await stock_total(services) == before
    await asyncio.gather(
        services.timeouts.settle(order["_id"]), services.timeouts.settle(order["_id"]),
        services.orders.mark_paid_after_close(order["_id"], "4200000000000000000000000102", time.time()),
        sweep_once(services.orders, services.timeouts, grace=0))
    assert await on_hand(services) == {A: START - 2, B: START - 3}  # sold: taken again once
    assert await stock_total(services) == before
    await all_tidy(services, order["_id"])
    assert await on_hand(services) == {A: START - 2, B: START - 3}


@pytest.mark.gen_test(timeout=60)
async def test_a_payment_arriving_while_the_close_was_giving_back_ends_sold_once(services: Services) -> None:
    """The close died half-way through its give-back; then WeChat reports the
    payment: the give-back is finished first and everything taken again."""
    before = await stocked(services)
    order = await placed(services)
    crash_at(services, f"giving {A}")
    with pytest.raises(Crash):
        await services.orders.close(order["_id"], "timed out")
    restarted(services)
    await services.orders.mark_paid_after_close(order["_id"], "4200000000000000000000000103", time.time())
    await services.timeouts.settle(order["_id"])
    assert await on_hand(services) == {A: START - 2, B: START - 3}
    assert await stock_total(services) == before
    await all_tidy(services, order["_id"])


@pytest.mark.parametrize("step", ["paid"])
@pytest.mark.gen_test(timeout=60)
async def test_a_payment_cut_short_moves_no_stock(services: Services, step: str) -> None:
    before = await stocked(services)
    order = await placed(services)
    crash_at(services, step)
    with pytest.raises(Crash):
        await services.orders.mark_paid(order["_id"], "4200000000000000000000000104", time.time(), "test")
    restarted(services)
    await asyncio.gather(services.timeouts.settle(order["_id"]), sweep_once(services.orders, services.timeouts, 0))
    assert await on_hand(services) == {A: START - 2, B: START - 3}
    assert await stock_total(services) == before
    await all_tidy(services, order["_id"])


# --- orders from before the upgrade ------------------------------------------------

@pytest.mark.gen_test(timeout=60)
async def test_orders_holding_stock_the_old_way_still_settle(services: Services) -> None:
    """An upgrade mid-sale: orders whose holds are ``holds.<order>`` on the SKU."""
    for sku_id in (A, B):
        assert await add_sku(services.store, sku_id, "Crash test item", 100, START)
    legacy = []
    for n in range(3):
        order_id = f"20261130legacy{n:018d}"
        await services.store.orders.insert_one(
            {"_id": order_id, "user": "old", "status": "unpaid", "pay_money": 200, "created_at": time.time(),
             "expires_at": time.time() + 600, "items": [{"sku_id": A, "name": "x", "price": 100, "num": 2}]})
        await services.store.skus.update_one({"_id": A}, {"$inc": {"stock": -2}, "$set": {f"holds.{order_id}": 2}})
        legacy.append(order_id)
    before = await stock_total(services)
    assert before[A] == START
    assert (await services.orders.close(legacy[0], "timed out"))[0]
    await services.orders.close(legacy[0], "again")
    assert (await services.orders.mark_paid(legacy[1], "4200000000000000000000000105", time.time(), "t"))[0]
    assert (await services.orders.close(legacy[2], "timed out"))[0]
    await services.orders.mark_paid_after_close(legacy[2], "4200000000000000000000000106", time.time())
    await services.orders.mark_paid_after_close(legacy[2], "4200000000000000000000000106", time.time())
    await services.orders.finish_bookkeeping()
    sku = await services.store.skus.find_one({"_id": A})
    assert sku is not None
    assert sku["stock"] == START - 4 and not sku.get("holds")  # 1 given back, 1 sold, 1 sold after close
    assert await stock_total(services) == before


@pytest.mark.gen_test(timeout=60)
async def test_an_old_way_close_cut_short_then_paid_after_close_loses_nothing(services: Services) -> None:
    """A pre-upgrade order wins its close, and the process dies before the hold
    goes back; the payment after the close must finish that give-back before
    taking the stock again, or the hold would be taken twice and kept once."""
    assert await add_sku(services.store, A, "Crash test item", 100, START)
    order_id = "20261130legacyclosecut00000001"
    await services.store.orders.insert_one(
        {"_id": order_id, "user": "old", "status": "closed", "pay_money": 200, "created_at": time.time(),
         "expires_at": time.time(), "items": [{"sku_id": A, "name": "x", "price": 100, "num": 2}]})
    # The close won, its give-back never ran: the hold is still on the SKU.
    await services.store.skus.update_one({"_id": A}, {"$inc": {"stock": -2}, "$set": {f"holds.{order_id}": 2}})
    await services.orders.mark_paid_after_close(order_id, "4200000000000000000000000107", time.time())
    await services.timeouts.settle(order_id)  # the deadline message again: sees it paid, settles
    await services.orders.finish_bookkeeping()
    sku = await services.store.skus.find_one({"_id": A})
    assert sku is not None
    assert sku["stock"] == START - 2, "sold once: 2 units, not 4"
    assert not sku.get("holds")
