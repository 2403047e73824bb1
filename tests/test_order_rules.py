"""The money rules, below HTTP: orders, stock and payments on the real
MongoDB, driven through the domain objects the handlers and workers use
(``services.orders``, ``services.payments``, ``services.timeouts``), with
no shopper, no pages and no WeChat.

Stock on hand is counted on the SKU document (``stock``); what each order
holds, on the order (``stock_held``, ``stock_returned``, ``stock_retaken``),
with the SKU carrying only markers of moves in flight. A paid order keeps its
holding as its sale; a closed order's goes back to stock exactly once, however
many times or however concurrently it is driven.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from server.composition.container import Services
from server.domain.catalog import add_sku
from server.domain.order_request import Line, parse_lines
from server.domain.orders import OutOfStock, TooManyUnpaidOrders, order_logs
from server.domain.payments import NotifyRejected
from server.domain.timeouts import Outcome
from server.gateway.abc import Payment
from tests.support.notify_client import signed_notify
from tests.support.timeout_helpers import holdings, markers_left

SKU = "rule-sku"


async def sku(services: Services, sku_id: str = SKU) -> dict[str, Any]:
    doc = await services.store.skus.find_one({"_id": sku_id})
    assert doc is not None, sku_id
    return doc


async def on_hand_and_holds(services: Services, sku_id: str = SKU) -> tuple[int, dict[str, int]]:
    """On hand, and what each order not paid for holds (a paid order's holding is its sale)."""
    on_hand, held = await holdings(services)
    paid = {o["_id"] async for o in services.store.orders.find({"status": {"$in": ["paid", "refunded"]}})}
    return on_hand[sku_id], {oid: n for oid, n in held.get(sku_id, {}).items() if oid not in paid}


async def stocked(services: Services, stock: int, sku_id: str = SKU) -> None:
    assert await add_sku(services.store, sku_id, "Rule test item", 100, stock)


async def an_order(services: Services, num: int = 1, user: str = "demo") -> dict[str, Any]:
    return await services.orders.create(user, [Line(SKU, num)])


async def kinds(services: Services, order_id: str) -> list[str]:
    doc = await services.orders.get(order_id)
    assert doc is not None
    return [e["kind"] for e in order_logs(doc)]


async def pay(services: Services, order: dict[str, Any], transaction_id: str = "4200000000000000000000000001",
              total_fee: int | None = None) -> tuple[bool, dict[str, Any] | None]:
    return await services.orders.mark_paid(order["_id"], transaction_id, time.time(), transaction_id,
                                           total_fee=order["pay_money"] if total_fee is None else total_fee)


def notify_for(order: dict[str, Any], **overrides: str) -> bytes:
    """WeChat's signed payment notify for ``order`` (the sandbox merchant's key)."""
    return signed_notify({"id": order["_id"], "pay_money": order["pay_money"]}, declare=None, **overrides)


# --- reserving stock ----------------------------------------------------------

@pytest.mark.gen_test(timeout=30)
async def test_concurrent_orders_never_oversell_and_hold_exactly_what_they_took(services: Services) -> None:
    await stocked(services, 5)
    results = await asyncio.gather(*(services.orders.create(f"user{i}", [Line(SKU, 1)]) for i in range(20)),
                                   return_exceptions=True)
    placed = [r for r in results if isinstance(r, dict)]
    refused = [r for r in results if not isinstance(r, dict)]
    assert len(placed) == 5
    assert all(isinstance(r, OutOfStock) and r.sku_id == SKU for r in refused), refused
    on_hand, holds = await on_hand_and_holds(services)
    assert on_hand == 0
    assert holds == {o["_id"]: 1 for o in placed}  # one hold per placed order, none for a refused one
    assert await services.store.orders.count_documents({"status": "unpaid"}) == 5
    assert await services.store.orders.count_documents({"status": "rejected"}) == 15


@pytest.mark.gen_test(timeout=30)
async def test_a_sku_named_twice_is_one_hold_of_the_sum(services: Services) -> None:
    await stocked(services, 10)
    lines = parse_lines({"items": [{"sku_id": SKU, "num": 1}, {"sku_id": SKU, "num": 2}]})
    order = await services.orders.create("demo", lines)
    assert await on_hand_and_holds(services) == (7, {order["_id"]: 3})
    assert order["pay_money"] == 300


@pytest.mark.gen_test(timeout=30)
async def test_an_order_short_of_a_later_sku_gives_back_what_it_held(services: Services) -> None:
    await stocked(services, 10)
    await stocked(services, 1, "rule-scarce")
    with pytest.raises(OutOfStock) as refused:
        await services.orders.create("demo", [Line(SKU, 2), Line("rule-scarce", 2)])
    assert refused.value.sku_id == "rule-scarce"
    assert await on_hand_and_holds(services) == (10, {})
    assert await on_hand_and_holds(services, "rule-scarce") == (1, {})
    assert await services.store.orders.count_documents({"status": "rejected"}) == 1


# --- the unpaid-order cap -----------------------------------------------------

@pytest.mark.gen_test(timeout=30)
async def test_unpaid_orders_per_user_are_capped_even_in_parallel(services: Services) -> None:
    cap = services.orders.max_unpaid_per_user
    assert cap == 5
    await stocked(services, 100)
    results = await asyncio.gather(*(an_order(services) for _ in range(12)), return_exceptions=True)
    placed = [r["_id"] for r in results if isinstance(r, dict)]
    refused = [r for r in results if not isinstance(r, dict)]
    # Near the cap parallel orders may all be refused; never more than the cap placed.
    assert len(placed) <= cap
    assert all(isinstance(r, TooManyUnpaidOrders) for r in refused), refused
    assert await on_hand_and_holds(services) == (100 - len(placed), {i: 1 for i in placed})  # refused: no hold

    while len(placed) < cap:  # one at a time, exactly up to the cap
        placed.append((await an_order(services))["_id"])
    with pytest.raises(TooManyUnpaidOrders):
        await an_order(services)
    assert (await an_order(services, user="someone-else"))["status"] == "unpaid"  # per user

    won, _ = await pay(services, await services.orders.get(placed[0]) or {})
    assert won
    closed, _ = await services.orders.close(placed[1], "test: closed")
    assert closed
    await an_order(services)  # the paid and the closed order no longer count
    await an_order(services)
    with pytest.raises(TooManyUnpaidOrders):
        await an_order(services)


# --- paying -------------------------------------------------------------------

@pytest.mark.gen_test(timeout=30)
async def test_unpaid_becomes_paid_once_under_concurrent_payments(services: Services) -> None:
    await stocked(services, 10)
    order = await an_order(services, num=2)
    results = await asyncio.gather(*(pay(services, order, f"42000000000000000000000000{i:02d}") for i in range(20)))
    winners = [after for won, after in results if won and after is not None]
    assert len(winners) == 1
    paid = await services.orders.get(order["_id"])
    assert paid is not None and paid["status"] == "paid"
    assert paid["transaction_id"] == winners[0]["transaction_id"]
    assert all(after is not None and after["status"] == "paid" for won, after in results if not won)
    assert await kinds(services, order["_id"]) == ["created", "paid"]
    await services.orders.finish_bookkeeping()  # markers are tidied off the payer's path
    assert await on_hand_and_holds(services) == (8, {})  # the hold became the sale: taken once, not given back
    assert (await services.orders.get(order["_id"]) or {})["stock_held"] == {SKU: 2}
    assert await markers_left(services) == {}  # the SKU carries nothing of the order


@pytest.mark.gen_test(timeout=30)
async def test_a_payment_of_another_amount_is_refused(services: Services) -> None:
    await stocked(services, 10)
    order = await an_order(services)
    won, after = await pay(services, order, total_fee=order["pay_money"] - 1)
    assert not won and after is not None and after["status"] == "unpaid"
    with pytest.raises(NotifyRejected, match=f"total_fee 1 is not the order's {order['pay_money']}"):
        await services.payments.handle_notify(notify_for(order, total_fee="1", cash_fee="1"))
    queried = Payment(order["_id"], "4200000000000000000000000009", 1, time.time())
    assert not await services.payments.record_queried_payment(queried)
    assert await kinds(services, order["_id"]) == ["created"]
    assert (await services.orders.get(order["_id"]) or {})["status"] == "unpaid"
    assert await on_hand_and_holds(services) == (9, {order["_id"]: 1})


@pytest.mark.gen_test(timeout=30)
async def test_repeated_notifies_record_one_payment(services: Services) -> None:
    await stocked(services, 10)
    order = await an_order(services)
    body = notify_for(order)
    assert await asyncio.gather(*(services.payments.handle_notify(body) for _ in range(10))) == [order["_id"]] * 10
    assert await kinds(services, order["_id"]) == ["created", "paid"]


# --- closing ------------------------------------------------------------------

@pytest.mark.gen_test(timeout=30)
async def test_a_paid_order_is_never_closed(services: Services) -> None:
    await stocked(services, 10)
    order = await an_order(services, num=3)
    assert (await pay(services, order))[0]
    won, after = await services.orders.close(order["_id"], "test: too late")
    assert not won and after is not None and after["status"] == "paid"
    outcome, _ = await services.timeouts.settle(order["_id"])  # its deadline, arriving after the payment
    assert outcome is Outcome.FINAL
    assert (await services.orders.get(order["_id"]) or {})["status"] == "paid"
    assert await kinds(services, order["_id"]) == ["created", "paid"]
    await services.orders.finish_bookkeeping()
    assert await on_hand_and_holds(services) == (7, {})  # sold: nothing given back


@pytest.mark.gen_test(timeout=30)
async def test_payment_and_close_racing_end_paid_xor_closed(services: Services) -> None:
    await stocked(services, 100)
    orders = [await services.orders.create(f"user{i}", [Line(SKU, 2)]) for i in range(20)]
    await asyncio.gather(*(f for o in orders for f in (pay(services, o), services.orders.close(o["_id"], "race"))))
    await services.orders.finish_bookkeeping()
    sold = 0
    for o in orders:
        logged = await kinds(services, o["_id"])
        status = (await services.orders.get(o["_id"]) or {})["status"]
        assert logged == ["created", status], logged  # one transition, the one it ended in
        sold += 2 if status == "paid" else 0
    assert await on_hand_and_holds(services) == (100 - sold, {})  # closed gave back, paid kept: nothing held


@pytest.mark.gen_test(timeout=30)
async def test_close_gives_stock_back_exactly_once_however_often_it_runs(services: Services) -> None:
    await stocked(services, 10)
    order = await an_order(services, num=4)
    assert await on_hand_and_holds(services) == (6, {order["_id"]: 4})
    results = await asyncio.gather(*(services.orders.close(order["_id"], f"close {i}") for i in range(10)))
    assert [won for won, _ in results].count(True) == 1
    closed = await services.orders.get(order["_id"])
    assert closed is not None
    # Re-driven as after a crash: the give-back itself, the timeout worker, the sweeper's close.
    await services.orders.stock.give_back(closed)
    await services.timeouts.settle(order["_id"])
    await services.orders.close(order["_id"], "once more")
    assert await on_hand_and_holds(services) == (10, {})
    assert await kinds(services, order["_id"]) == ["created", "closed"]
    await services.orders.finish_bookkeeping()
    assert await markers_left(services) == {}


# --- paid after close ---------------------------------------------------------

@pytest.mark.gen_test(timeout=30)
async def test_paid_after_close_takes_the_stock_again_once_and_says_why(
        services: Services, caplog: pytest.LogCaptureFixture) -> None:
    await stocked(services, 10)
    order = await an_order(services, num=3)
    assert (await services.orders.close(order["_id"], "timed out"))[0]
    assert await on_hand_and_holds(services) == (10, {})
    with caplog.at_level(logging.WARNING):
        # WeChat took the money anyway: its notify, repeated, and the order query, all at once.
        body = notify_for(order, transaction_id="4200000000000000000000000077")
        queried = Payment(order["_id"], "4200000000000000000000000077", int(order["pay_money"]), time.time())
        await asyncio.gather(*(services.payments.handle_notify(body) for _ in range(5)),
                             services.payments.record_queried_payment(queried),
                             services.orders.mark_paid_after_close(order["_id"], "4200000000000000000000000077",
                                                                   time.time()))
    paid = await services.orders.get(order["_id"])
    assert paid is not None and paid["status"] == "paid"
    assert paid["compensated"] == "paid after close"
    logs = order_logs(paid)
    assert [e["kind"] for e in logs] == ["created", "closed", "paid"]
    assert "paid after close: compensation, stock taken again" in logs[2]["remarks"]
    assert await on_hand_and_holds(services) == (7, {})  # taken again once, not five times
    compensated = [r for r in caplog.records if "paid after it was closed" in r.getMessage()]
    assert len(compensated) == 1 and order["_id"] in compensated[0].getMessage()


@pytest.mark.gen_test(timeout=30)
async def test_paid_after_close_with_the_stock_sold_meanwhile_shows_the_oversell(
        services: Services, caplog: pytest.LogCaptureFixture) -> None:
    await stocked(services, 3)
    order = await an_order(services, num=3)
    assert (await services.orders.close(order["_id"], "timed out"))[0]
    other = await an_order(services, num=3, user="someone-else")  # the stock given back is sold again
    with caplog.at_level(logging.WARNING):
        await services.orders.mark_paid_after_close(order["_id"], "4200000000000000000000000078", time.time())
    # The sale happened: the stock goes negative for someone to see, not silently clamped.
    assert await on_hand_and_holds(services) == (-3, {other["_id"]: 3})
    assert any(f"SKU {SKU} oversold by 3 after compensating order {order['_id']}" == r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
