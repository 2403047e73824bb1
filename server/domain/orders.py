"""Orders: the order model, its validation, creation with its stock holds
(server/domain/stock.py), reads, and its state transitions.

State machine (``status``): reserving -> unpaid -> paid | closed, paid ->
refunded once successful refunds cover the whole amount (server/domain/refunds.py),
and reserving -> releasing -> rejected when stock is short or the reservation
was abandoned (what it took goes back while it is releasing). Every transition is one conditional
single-document update that also writes the order's log entry and marks its
event pending (the outbox); every other side effect runs only for the caller
that won it, through one method (``_transitioned``), and is idempotent, so it
can be driven again by a repeat.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any

from pymongo import DESCENDING, ReturnDocument
from pymongo.errors import PyMongoError

from server.domain.errors import Conflict, LimitReached, NotFound
from server.domain.order_request import BadOrder, Line
from server.domain.stock import LAYOUT, Released, Stock, max_per_order
from server.infra.bus import BusUnavailable
from server.infra.store import Store
from server.infra.timeout_queues import TimeoutQueues
from server.lifecycle import Batches, Callbacks
from server.push.events import ROOM_WAIT, OrderEvents, outbox_fields

log = logging.getLogger(__name__)

RESERVING, UNPAID, PAID, CLOSED, REJECTED = "reserving", "unpaid", "paid", "closed", "rejected"
RELEASING = "releasing"  # a reservation giving back what it took, on its way to rejected
REFUNDED = "refunded"  # paid, and given back in full
COMPENSATED = "compensated"  # the transition closed -> paid (the status is then paid)
VISIBLE = (UNPAID, PAID, CLOSED, REFUNDED)
PAID_FOR = (PAID, REFUNDED)  # WeChat took the money (some or all may be back)


class OutOfStock(Conflict):
    def __init__(self, sku_id: str):
        super().__init__(f"not enough stock for {sku_id}")
        self.sku_id = sku_id


class TooManyUnpaidOrders(LimitReached):
    def __init__(self, limit: int):
        super().__init__(f"you already have {limit} unpaid orders: pay one or let it expire first")


class OrderNotFound(NotFound):
    def __init__(self) -> None:
        super().__init__("no such order")


def new_order_id() -> str:
    """A valid WeChat ``out_trade_no`` (<= 32 chars) with 96 random bits.

    The date prefix helps a human matching WeChat's bill to ours.
    """
    return time.strftime("%Y%m%d", time.gmtime()) + secrets.token_hex(12)


def log_entry(kind: str, who: str, remarks: str) -> dict[str, Any]:
    """``$set`` fields for the order's one log entry of ``kind``."""
    return {f"logs.{kind}": {"who": who, "remarks": remarks[:200], "at": time.time()}}


def order_logs(order: dict[str, Any]) -> list[dict[str, Any]]:
    entries = [{"kind": kind, **entry} for kind, entry in (order.get("logs") or {}).items()]
    return sorted(entries, key=lambda e: e["at"])


class Orders:
    def __init__(self, store: Store, timeout_seconds: int, events: OrderEvents,
                 deadlines: TimeoutQueues | None = None, max_unpaid_per_user: int = 5):
        self.store = store
        self.timeout_seconds = timeout_seconds
        self.max_unpaid_per_user = max_unpaid_per_user
        self.events = events
        self.deadlines = deadlines
        self.stock = Stock(store)
        # A legacy order's hold (on the SKU) becomes a sale after the notify is
        # answered, many orders to one update per SKU; what does not fit or
        # fails is redone by the timeout worker at the order's deadline. An
        # order that records its own holds needs nothing: the notify path does
        # not touch the SKU.
        self._sold: Batches[dict[str, Any]] = Batches("stock.keep_as_sold", self.stock.keep_as_sold,
                                                      swallow=(PyMongoError,))
        self.on_transition: Callbacks[[str]] = Callbacks("orders.on_transition")

    async def create(self, user: str, lines: list[Line]) -> dict[str, Any]:
        skus = {d["_id"]: d for d in await self.store.skus.find(
            {"_id": {"$in": [ln.sku_id for ln in lines]}},
            projection={"name": 1, "price": 1, "max_per_order": 1, "epoch": 1}).to_list(None)}
        for ln in lines:
            if ln.sku_id not in skus:
                raise BadOrder(f"unknown sku_id {ln.sku_id}")
            limit = max_per_order(skus[ln.sku_id])
            if ln.num > limit:
                raise BadOrder(f"at most {limit} of {ln.sku_id} per order")
        now = time.time()
        items = [{"sku_id": ln.sku_id, "name": skus[ln.sku_id]["name"],
                  "price": int(skus[ln.sku_id]["price"]), "num": ln.num} for ln in lines]
        order = {
            "_id": new_order_id(),
            "user": user,
            "items": items,
            "pay_money": sum(i["price"] * i["num"] for i in items),
            "status": RESERVING,
            "created_at": now,
            "expires_at": now + self.timeout_seconds,
            "stock_v": LAYOUT,
        }
        # The order exists before any stock moves, so a crash part-way leaves a
        # "reserving" order whose takes (marked on the SKUs) can be given back.
        await self.store.orders.insert_one(order)
        self.stock.checkpoint("order inserted")
        # Counted after our own insert: of two parallel orders each sees the
        # other (or one of them sees it), so the cap holds without a
        # transaction; near the cap both may be refused, never both accepted.
        # Refused before any stock is held, so there is nothing to give back.
        # A bounded read, not count_documents (see README, "nx-27017"): a
        # user's thousands of unpaid orders must not slow each placement.
        held = len(await self.store.orders.find(
            {"user": user, "status": {"$in": [RESERVING, UNPAID]}}, projection={"_id": 1}).to_list(
                self.max_unpaid_per_user + 1))
        if held > self.max_unpaid_per_user:
            await self.store.orders.update_one({"_id": order["_id"], "status": RESERVING},
                                               {"$set": {"status": REJECTED}})
            log.info("order by %s refused: %d unpaid orders already", user, held - 1)
            raise TooManyUnpaidOrders(self.max_unpaid_per_user)
        async def still_reserving() -> bool:
            return await self.store.orders.find_one(
                {"_id": order["_id"], "status": RESERVING}, projection={"_id": 1}) is not None

        for ln in lines:
            try:
                taken = await self.stock.take(order["_id"], ln.sku_id, ln.num, skus[ln.sku_id].get("epoch"),
                                              still_reserving)
            except Released:
                raise OrderNotFound() from None  # released by a sweep while we were reserving
            if not taken:
                await self.abandon_reservation(order)
                raise OutOfStock(ln.sku_id)
        holding = {ln.sku_id: ln.num for ln in lines}
        # One update records every hold and makes the order unpaid.
        placed = await self.store.orders.find_one_and_update(
            {"_id": order["_id"], "status": RESERVING},
            {"$set": {"status": UNPAID, "stock_held": holding,
                      **log_entry("created", user, f"{len(items)} lines, {order['pay_money']} fen")}},
            return_document=ReturnDocument.AFTER)
        if placed is None:
            raise OrderNotFound()  # released by a sweep while we were reserving
        self.stock.checkpoint("order placed")
        self.stock.taken(order["_id"], holding)
        self.on_transition("created")
        log.info("order %s created by %s: %d fen", order["_id"], user, order["pay_money"])
        if self.deadlines is not None:
            try:
                await self.deadlines.schedule(order["_id"])
            except BusUnavailable as exc:
                # Not lost: the sweeper closes overdue orders that have no message.
                log.warning("order %s: deadline message not published (%s); the sweeper will see to it",
                            order["_id"], exc)
        return placed

    async def abandon_reservation(self, order: dict[str, Any]) -> None:
        """A reservation that will not become an order (short of stock, or its
        process died half-way): ``releasing`` first, so its creator can no
        longer make it unpaid, then everything it took back, then ``rejected``.
        A crash part-way leaves it releasing, for the sweeper to finish."""
        await self.store.orders.update_one({"_id": order["_id"], "status": RESERVING},
                                           {"$set": {"status": RELEASING}})
        current = await self.get(order["_id"])
        if current is None or current["status"] not in (RELEASING, REJECTED):
            return  # it became an order after all
        self.stock.checkpoint("releasing")
        await self.stock.give_back(current)
        await self.store.orders.update_one({"_id": order["_id"], "status": RELEASING},
                                           {"$set": {"status": REJECTED}})

    async def get(self, order_id: str) -> dict[str, Any] | None:
        return await self.store.orders.find_one({"_id": order_id})

    async def visible(self, order_ids: list[str]) -> list[dict[str, Any]]:
        """Those of the orders that exist in a visible state, in one query."""
        return await self.store.orders.find(
            {"_id": {"$in": order_ids}, "status": {"$in": list(VISIBLE)}}).to_list(None)

    async def exists(self, order_id: str) -> bool:
        return await self.store.orders.find_one(
            {"_id": order_id, "status": {"$in": list(VISIBLE)}}, projection={"_id": 1}) is not None

    async def get_owned(self, user: str, order_id: str, *, any_owner: bool = False) -> dict[str, Any]:
        """The user's own order in a visible state; anyone else's looks absent
        (``any_owner``: an operator's look, at everyone's orders)."""
        order = await self.get(order_id) if isinstance(order_id, str) and len(order_id) <= 32 else None
        if order is None or (order["user"] != user and not any_owner) or order["status"] not in VISIBLE:
            raise OrderNotFound()
        return order

    async def search(self, status: str | None = None, query: str | None = None, before: tuple[float, str] | None = None,
                     limit: int = 50) -> list[dict[str, Any]]:
        """Orders for an operator, newest first: by status, by order id or
        WeChat transaction id (exact), from before a (created_at, id) cursor."""
        condition: dict[str, Any] = {"status": status if status in VISIBLE else {"$in": list(VISIBLE)}}
        if query:
            # Two exact look-ups rather than one $or (see README, "nx-27017").
            found = [o for field in ("_id", "transaction_id")
                     for o in await self.store.orders.find({**condition, field: query}).to_list(limit)]
            unique = {o["_id"]: o for o in found}
            return sorted(unique.values(), key=lambda o: (o["created_at"], o["_id"]), reverse=True)[:limit]
        if before is not None:
            at, order_id = before
            condition = {"$and": [condition, {"$or": [{"created_at": {"$lt": at}},
                                                      {"created_at": at, "_id": {"$lt": order_id}}]}]}
        return await self.store.orders.find(condition).sort(
            [("created_at", DESCENDING), ("_id", DESCENDING)]).limit(limit).to_list(limit)

    async def mark_refunded(self, order_id: str, pay_money: int) -> dict[str, Any] | None:
        """paid -> refunded, once successful refunds add up to the whole amount
        (the condition says so, so a partial refund can never win it)."""
        order = await self.store.orders.find_one_and_update(
            {"_id": order_id, "status": PAID, "pay_money": pay_money, "refunded": pay_money},
            {"$set": {"status": REFUNDED, "refunded_at": time.time(), **outbox_fields(REFUNDED),
                      **log_entry(REFUNDED, "system", f"{pay_money} fen given back in full")}},
            return_document=ReturnDocument.AFTER)
        if order is not None:
            log.info("order %s refunded in full", order_id)
            await self._transitioned(order, REFUNDED)
        return order

    async def add_log(self, order_id: str, kind: str, who: str, remarks: str = "") -> bool:
        """Record the order's one entry of ``kind`` (a second attempt is a no-op); True if written."""
        result = await self.store.orders.update_one(
            {"_id": order_id, f"logs.{kind}": {"$exists": False}}, {"$set": log_entry(kind, who, remarks)})
        return result.modified_count == 1

    async def mark_paid(self, order_id: str, transaction_id: str, pay_time: float, remarks: str,
                        total_fee: int | None = None) -> tuple[bool, dict[str, Any] | None]:
        """unpaid -> paid, with its log entry in the same update. Returns (won, order after).

        With ``total_fee`` the amount is part of the condition, so the common
        case (the first notify) costs this one round trip and nothing else.
        """
        condition: dict[str, Any] = {"_id": order_id, "status": UNPAID}
        if total_fee is not None:
            condition["pay_money"] = total_fee
        order = await self.store.orders.find_one_and_update(
            condition,
            {"$set": {"status": PAID, "transaction_id": transaction_id, "pay_time": pay_time,
                      "paid_at": time.time(), **outbox_fields(PAID), **log_entry(PAID, "system", remarks)}},
            return_document=ReturnDocument.AFTER)
        if order is not None:
            log.info("order %s paid: %s", order_id, remarks)
            await self._transitioned(order, PAID)
            return True, order
        return False, await self.get(order_id)

    async def _transitioned(self, order: dict[str, Any], transition: str) -> None:
        """Every side effect of a transition this caller won, in one place.

        Each is idempotent and is driven again after a crash (stock by the
        timeout worker and the sweeper, the event by the outbox), so a winner
        that dies half-way loses nothing. The stock moves before anyone is told
        of a close or a compensation; a payment's holds become sales off the
        caller's path, so a notify's reply does not wait for them.
        """
        self.on_transition(transition)
        self.stock.checkpoint(transition)
        if transition == CLOSED:
            await self.stock.give_back(order)
        elif transition == COMPENSATED:
            await self.stock.take_again(order)
        await self.events.flush_soon(order)
        if transition == PAID and "stock_held" not in order:
            await self._sold.put(order, wait=ROOM_WAIT)

    async def finish_bookkeeping(self, within: float = 5.0) -> None:
        """Let stock bookkeeping under way in the background finish (shutdown)."""
        await self._sold.drain(within)
        await self._sold.close()
        await self.stock.finish(within)

    async def close(self, order_id: str, remarks: str) -> tuple[bool, dict[str, Any] | None]:
        """unpaid -> closed, with its log entry; stock given back. Returns (won, order after)."""
        order = await self.store.orders.find_one_and_update(
            {"_id": order_id, "status": UNPAID},
            {"$set": {"status": CLOSED, "closed_at": time.time(), **outbox_fields(CLOSED),
                      **log_entry(CLOSED, "system", remarks)}},
            return_document=ReturnDocument.AFTER)
        if order is not None:
            log.info("order %s closed: %s", order_id, remarks)
            await self._transitioned(order, CLOSED)
            return True, order
        order = await self.get(order_id)
        if order is not None and order["status"] == CLOSED:
            await self.stock.give_back(order)  # finish what a crash may have cut short
        return False, order

    async def mark_paid_after_close(self, order_id: str, transaction_id: str, pay_time: float,
                                    found_by: str = "notify") -> dict[str, Any] | None:
        """closed -> paid: WeChat took the money after we closed (compensation).

        The stock given back at the close is taken again, once per SKU, even if
        that leaves it negative: the sale happened and someone must see the oversell.
        """
        order = await self.store.orders.find_one_and_update(
            {"_id": order_id, "status": CLOSED},
            {"$set": {"status": PAID, "transaction_id": transaction_id, "pay_time": pay_time,
                      "paid_at": time.time(), "compensated": "paid after close", **outbox_fields(PAID),
                      **log_entry(PAID, "system",
                                  f"{transaction_id} (paid after close: compensation, stock taken again; "
                                  f"found by {found_by})")}},
            return_document=ReturnDocument.AFTER)
        if order is not None:
            log.warning("order %s paid after it was closed: compensated", order_id)
            await self._transitioned(order, COMPENSATED)
            return order
        order = await self.get(order_id)
        if (order is not None and order["status"] == PAID and order.get("compensated")
                and order.get("transaction_id") == transaction_id):
            await self.stock.take_again(order)  # finish what a crash may have cut short
        return order

    async def overdue(self, before: float, limit: int = 500) -> list[str]:
        """Unpaid orders past ``before`` and reservations abandoned before it."""
        docs = await self.store.orders.find(
            {"status": {"$in": [UNPAID, RESERVING, RELEASING]}, "expires_at": {"$lt": before}},
            projection={"_id": 1}).to_list(limit)
        return [d["_id"] for d in docs]

    async def remember_code_url(self, order_id: str, code_url: str, prepay_id: str) -> None:
        await self.store.orders.update_one(
            {"_id": order_id, "status": UNPAID},
            {"$set": {"wx": {"code_url": code_url, "prepay_id": prepay_id, "at": time.time()}}})
