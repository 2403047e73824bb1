"""Stock: what an order holds of each SKU, and what becomes of it.

The SKU document keeps the count on hand (``stock``) and nothing of the
orders that hold it: the order document is the record of what it holds
(``stock_held``), gave back (``stock_returned``) and took again after a
compensation (``stock_retaken``), each ``{sku_id: n}``. So the cost of a move
does not grow with the number of orders holding a SKU (a flash sale's tens of
thousands of unpaid orders).

Moving stock and recording it on the order are two documents and there are
no transactions, so the SKU document carries a marker of each move *in
flight* (``taking.<order>``, ``giving.<order>``, ``retaking.<order>``), set
in the same conditional update that moves the count. The marker says "this
order's move happened" until the order records it; then it is removed, off
the request path and many at a time (``tidy``). A replay (a retry, the
timeout worker, the sweeper, a racing close) reads the marker and the order
and never moves twice.

Removing a marker would let a replay that read the order *before* it was
recorded move again. The SKU's ``epoch`` fences that: every removal of a
``giving``/``retaking`` marker increments it, and every such move is
conditional on the epoch it read *before* reading the order. A replay that
passes the fence therefore read the order after the record, and stops there.
Takes are fenced the same way against a reservation released by recovery
while its (stalled, not dead) creator still takes.

Orders from before this layout (no ``stock_v``) keep theirs: a hold as
``holds.<order>`` on the SKU, given back or settled through the old path.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pymongo import ReturnDocument, UpdateOne
from pymongo.errors import PyMongoError

from server.infra.store import Store
from server.lifecycle import Batches

log = logging.getLogger(__name__)

# Per SKU per order; a SKU document's ``max_per_order`` can lower it (scarce items).
MAX_NUM = 99
# ``stock_v`` of orders whose holds the order document records.
LAYOUT = 2

TAKING, GIVING, RETAKING = "taking", "giving", "retaking"
MARKERS = (TAKING, GIVING, RETAKING)
RECORDS = {TAKING: "stock_held", GIVING: "stock_returned", RETAKING: "stock_retaken"}
# What a move reads of a SKU: the whole marker maps (moves in flight: small),
# not ``taking.<order>``: nx-27017 answers a dotted projection with a flat
# "taking.<order>" key.
MARKER_FIELDS = {"stock": 1, "epoch": 1, **dict.fromkeys(MARKERS, 1)}
# A replay that keeps losing to other moves on the same SKU gives up after this
# many rounds and is driven again by its recovery path.
MAX_ROUNDS = 50


def max_per_order(sku: dict[str, Any]) -> int:
    """How many of this SKU one order may take."""
    limit = sku.get("max_per_order")
    return min(int(limit), MAX_NUM) if isinstance(limit, int) and limit > 0 else MAX_NUM


def fence(epoch: Any) -> dict[str, Any]:
    """The condition that the SKU's epoch is still the one read."""
    return {"epoch": epoch} if epoch is not None else {"epoch": {"$exists": False}}


def is_legacy(order: dict[str, Any]) -> bool:
    return order.get("stock_v") != LAYOUT


def held_by(order: dict[str, Any], sku_id: str, sku: dict[str, Any] | None) -> int:
    """How much of ``sku_id`` the order holds now (taken - given back + taken
    again), from the order's records and, for a move not recorded yet, the
    SKU's markers. A paid order's holding is its sale."""
    if is_legacy(order):
        if order.get("status") in ("paid", "refunded"):
            return sum(int(i["num"]) for i in order["items"] if i["sku_id"] == sku_id)
        return int(((sku or {}).get("holds") or {}).get(order["_id"], 0))

    def marker(kind: str) -> int | None:
        value = ((sku or {}).get(kind) or {}).get(order["_id"])
        return None if value is None else int(value)

    def part(kind: str) -> int:
        recorded = order.get(RECORDS[kind]) or {}
        return int(recorded[sku_id]) if sku_id in recorded else marker(kind) or 0

    taken = part(TAKING)
    if sku_id not in (order.get("stock_held") or {}) and marker(TAKING) is None:
        # Released before its hold was recorded: the give-back moved the take marker's count.
        taken = marker(GIVING) or 0
    return taken - part(GIVING) + part(RETAKING)


class Released(Exception):
    """The reservation was released by recovery while its creator was still taking."""


@dataclass(frozen=True)
class Tidy:
    """A recorded move whose marker can go."""
    sku_id: str
    order_id: str
    kind: str


class Stock:
    def __init__(self, store: Store):
        self.store = store
        # Where a crash can fall between two writes: tests raise from it to
        # stop a path at each step and then run the recovery paths.
        self.checkpoint: Callable[[str], None] = lambda step: None
        self._tidy: Batches[Tidy] = Batches("stock.tidy", self.tidy, swallow=(PyMongoError,))

    # --- taking (placement) ------------------------------------------------------

    async def take(self, order_id: str, sku_id: str, num: int, epoch: Any,
                   still_reserving: Callable[[], Awaitable[bool]]) -> bool:
        """Take ``num`` for a reserving order; False when short.

        ``epoch``: the SKU's as read before the order was inserted. When it
        has moved on, the order is checked to be still reserving before the
        take is tried again (raises Released if not)."""
        for _ in range(MAX_ROUNDS):
            taken = await self.store.skus.find_one_and_update(
                {"_id": sku_id, "stock": {"$gte": num}, **fence(epoch),
                 f"{TAKING}.{order_id}": {"$exists": False}, f"{GIVING}.{order_id}": {"$exists": False}},
                {"$inc": {"stock": -num}, "$set": {f"{TAKING}.{order_id}": num}}, projection={"_id": 1})
            if taken is not None:
                self.checkpoint(f"taken {sku_id}")
                return True
            sku = await self.store.skus.find_one({"_id": sku_id}, projection=MARKER_FIELDS)
            if sku is None:
                return False
            if order_id in (sku.get(GIVING) or {}):
                raise Released(order_id)
            if order_id in (sku.get(TAKING) or {}):
                return True  # ours already: the reply of a write that went through was lost, and it was retried
            if sku.get("epoch") == epoch:
                if int(sku["stock"]) < num:
                    return False
                continue  # stock came back between the two reads
            # The epoch read first, the order second: see the module's docstring.
            epoch = sku.get("epoch")
            if not await still_reserving():
                raise Released(order_id)
        raise Released(order_id)

    def taken(self, order_id: str, held: Iterable[str]) -> None:
        """The order records its holds now: their take markers can go."""
        for sku_id in held:
            self._tidy.add(Tidy(sku_id, order_id, TAKING))

    # --- giving back, taking again -----------------------------------------------

    async def give_back(self, order: dict[str, Any]) -> None:
        """Everything the order holds back on the shelf, each at most once."""
        if is_legacy(order):
            await self._legacy_give_back(order)
        else:
            await self._move(order["_id"], [i["sku_id"] for i in order["items"]], GIVING)

    async def take_again(self, order: dict[str, Any]) -> None:
        """A closed order was paid after all: what the close gave back is taken
        again, once per SKU, even if that leaves the stock negative: the sale
        happened, and someone must see the oversell. A give-back the close left
        unfinished is finished first, so the two never miss each other."""
        if is_legacy(order):
            await self._legacy_take_again(order)
            return
        skus = [i["sku_id"] for i in order["items"]]
        if await self._move(order["_id"], skus, GIVING):
            await self._move(order["_id"], skus, RETAKING)

    async def keep_as_sold(self, orders: Iterable[dict[str, Any]]) -> None:
        """Paid orders keep what they hold: no stock moves. Only what is left
        on the SKUs goes: a legacy hold, or a take marker whose clean-up was lost.

        One update per SKU for all the orders given, in one round trip."""
        by_sku: dict[str, dict[str, str]] = {}
        for order in orders:
            kind = "holds" if is_legacy(order) else TAKING
            for item in order["items"]:
                by_sku.setdefault(item["sku_id"], {})[f"{kind}.{order['_id']}"] = ""
        if by_sku:
            await self.store.skus.bulk_write(
                [UpdateOne({"_id": sku_id}, {"$unset": gone}) for sku_id, gone in by_sku.items()], ordered=False)

    async def _move(self, order_id: str, sku_ids: list[str], kind: str) -> bool:
        """Give back (GIVING) or take again (RETAKING) what the order records,
        once per SKU, then record it on the order and let the markers go.
        False when it gave up (left to the recovery paths)."""
        record = RECORDS[kind]
        moved: dict[str, int] = {}
        order: dict[str, Any] | None = None
        for sku_id in sku_ids:
            for _ in range(MAX_ROUNDS):
                sku = await self.store.skus.find_one({"_id": sku_id}, projection=MARKER_FIELDS)
                order = await self.store.orders.find_one({"_id": order_id})  # after the epoch: the fence
                if order is None or sku_id in (order.get(record) or {}):
                    break
                mine = (sku or {}).get(kind) or {}
                if order_id in mine:
                    moved[sku_id] = int(mine[order_id])
                    break
                if sku is None:
                    moved[sku_id] = 0
                    break
                num = await self._try_move(order, sku, kind)
                if num is not None:
                    moved[sku_id] = num
                    self.checkpoint(f"{kind} {sku_id}")
                    break
            else:
                log.warning("order %s: %s %s lost %d rounds; left to recovery", order_id, kind, sku_id, MAX_ROUNDS)
                return False
        if not moved or order is None:
            return True
        fields = {f"{record}.{s}": n for s, n in moved.items()}
        if kind == GIVING:  # a released reservation records what it had taken too
            fields.update({f"stock_held.{s}": n for s, n in moved.items()
                           if s not in (order.get("stock_held") or {})})
        await self.store.orders.update_one({"_id": order_id}, {"$set": fields})
        self.checkpoint(f"{record} recorded")
        for sku_id in moved:
            self._tidy.add(Tidy(sku_id, order_id, kind))
        return True

    async def _try_move(self, order: dict[str, Any], sku: dict[str, Any], kind: str) -> int | None:
        """One conditional update moving the order's stock of this SKU; the
        amount moved, or None when the SKU changed under us (read again)."""
        order_id, sku_id = order["_id"], sku["_id"]
        held = order.get("stock_held") or {}
        condition: dict[str, Any] = {"_id": sku_id, **fence(sku.get("epoch")), f"{kind}.{order_id}": {"$exists": False}}
        if kind == RETAKING:
            num = int((order.get("stock_returned") or {}).get(sku_id, 0))
            after = await self.store.skus.find_one_and_update(
                condition, {"$inc": {"stock": -num}, "$set": {f"{RETAKING}.{order_id}": num}},
                projection={"stock": 1}, return_document=ReturnDocument.AFTER)
            if after is not None and after["stock"] < 0:
                log.warning("SKU %s oversold by %d after compensating order %s", sku_id, -after["stock"], order_id)
            return num if after is not None else None
        taking = (sku.get(TAKING) or {}).get(order_id)
        if sku_id in held:
            num = int(held[sku_id])
        elif taking is not None:  # a released reservation: its marker says what it took
            num = int(taking)
            condition[f"{TAKING}.{order_id}"] = {"$exists": True}
        else:  # took nothing: a tombstone, so a stalled creator cannot take it now
            num = 0
            condition[f"{TAKING}.{order_id}"] = {"$exists": False}
        update: dict[str, Any] = {"$set": {f"{GIVING}.{order_id}": num}, "$unset": {f"{TAKING}.{order_id}": ""}}
        if num:
            update["$inc"] = {"stock": num}
        result = await self.store.skus.update_one(condition, update)
        return num if result.modified_count == 1 else None

    # --- markers of recorded moves go ---------------------------------------------

    async def tidy(self, done: list[Tidy]) -> None:
        """Remove markers of moves their orders have recorded: one update per
        SKU; removing a give-back or take-again marker moves the epoch on."""
        self.checkpoint("tidy")
        by_sku: dict[str, tuple[dict[str, str], bool]] = {}
        for t in done:
            gone, fenced = by_sku.get(t.sku_id, ({}, False))
            gone[f"{t.kind}.{t.order_id}"] = ""
            by_sku[t.sku_id] = (gone, fenced or t.kind != TAKING)
        if by_sku:
            await self.store.skus.bulk_write(
                [UpdateOne({"_id": sku_id}, {"$unset": gone, **({"$inc": {"epoch": 1}} if fenced else {})})
                 for sku_id, (gone, fenced) in by_sku.items()], ordered=False)

    async def tidy_leftovers(self) -> int:
        """Markers whose clean-up was lost (a crash, a full batch): removed once
        their orders record the move. The sweeper's pass; returns how many."""
        leftovers: list[tuple[str, str, str]] = []
        async for sku in self.store.skus.find({}, projection={kind: 1 for kind in MARKERS}):
            leftovers += [(sku["_id"], order_id, kind) for kind in MARKERS for order_id in (sku.get(kind) or {})]
        if not leftovers:
            return 0
        orders = {o["_id"]: o async for o in self.store.orders.find(
            {"_id": {"$in": list({o for _, o, _ in leftovers})}},
            projection={record: 1 for record in RECORDS.values()})}
        done = [Tidy(sku_id, order_id, kind) for sku_id, order_id, kind in leftovers
                if sku_id in (orders.get(order_id, {}).get(RECORDS[kind]) or {})]
        await self.tidy(done)
        if done:
            log.info("stock: %d leftover marker(s) of recorded moves removed", len(done))
        return len(done)

    async def finish(self, within: float) -> None:
        await self._tidy.drain(within)
        await self._tidy.close()

    # --- orders placed before the order recorded its holds --------------------------

    async def _legacy_give_back(self, order: dict[str, Any]) -> None:
        for item in order["items"]:
            await self.store.skus.update_one(
                {"_id": item["sku_id"], f"holds.{order['_id']}": {"$exists": True}},
                {"$inc": {"stock": int(item["num"])}, "$unset": {f"holds.{order['_id']}": ""}})

    async def _legacy_take_again(self, order: dict[str, Any]) -> None:
        order_id = order["_id"]
        # Finish the close's give-back first (a crash may have cut it short):
        # its hold kept would otherwise be taken again on top, then settled
        # as sold, and n units would be gone.
        await self._legacy_give_back(order)
        for item in order["items"]:
            sku = await self.store.skus.find_one_and_update(
                {"_id": item["sku_id"], f"retaken.{order_id}": {"$exists": False}},
                {"$inc": {"stock": -int(item["num"])}, "$set": {f"retaken.{order_id}": int(item["num"])}},
                return_document=ReturnDocument.AFTER)
            if sku is not None and sku["stock"] < 0:
                log.warning("SKU %s oversold by %d after compensating order %s",
                            item["sku_id"], -sku["stock"], order_id)
