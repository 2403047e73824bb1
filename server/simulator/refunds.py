"""The simulator's refund desk: takes refunds into the shared book, lets each
one process for a while, then settles it and sends its notify.

Knobs (``POST control`` ``{"refund": {...}}``) say how the next refunds go:
their outcome, how long they process, how many calls fail with SYSTEMERROR
first, and how their notify is delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from server.simulator.notifier import Notifier, NotifyPlan
from server.simulator.trades import REFUND_OUTCOMES, Refund, TradeBook, TradeError

log = logging.getLogger(__name__)


@dataclass
class RefundKnobs:
    outcome: str = "success"   # success | abnormal | closed
    delay: float = 0.2         # seconds a refund stays PROCESSING
    notify: NotifyPlan = field(default_factory=NotifyPlan)

    @classmethod
    def parse(cls, knobs: dict[str, Any], current: RefundKnobs) -> tuple[RefundKnobs, int | None]:
        """The knobs a control request leaves, and its ``systemerror`` count (if any).
        Raises ValueError/TypeError/AttributeError on nonsense."""
        outcome = str(knobs.get("outcome", current.outcome))
        if outcome not in REFUND_OUTCOMES:
            raise ValueError(outcome)
        delay = float(knobs.get("delay", current.delay))
        if not 0 <= delay <= 3600:
            raise ValueError(delay)
        plan = current.notify
        if "notify" in knobs:
            n = knobs["notify"] or {}
            plan = NotifyPlan(drop=bool(n.get("drop", False)), copies=max(1, min(int(n.get("copies", 1)), 50)),
                              delay=max(0.0, float(n.get("delay", 0))))
        errors = knobs.get("systemerror")
        count = None if errors is None else int(errors)
        if count is not None and not 0 <= count <= 1000:
            raise ValueError(count)
        return cls(outcome, delay, plan), count

    def as_json(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "delay": self.delay,
                "notify": {"drop": self.notify.drop, "copies": self.notify.copies, "delay": self.notify.delay}}


class RefundDesk:
    def __init__(self, book: TradeBook, notifier: Notifier):
        self.book = book
        self.notifier = notifier
        self.knobs = RefundKnobs()
        self.systemerrors_left = 0
        self._failure_records = False  # the first failing call still takes the refund
        self._tasks: set[asyncio.Task[None]] = set()

    def set_knobs(self, knobs: RefundKnobs, systemerrors: int | None) -> None:
        self.knobs = knobs
        if systemerrors is not None:
            self.systemerrors_left = systemerrors
            self._failure_records = systemerrors > 0

    def apply(self, **request: Any) -> Refund:
        """A refund call (``TradeBook.refund``'s arguments but ``api`` first among
        them and no outcome): the refund, new or the same one again."""
        if self.systemerrors_left > 0:
            self.systemerrors_left -= 1
            if self._failure_records:
                # WeChat can fail after taking the refund: only a retry with the
                # same out_refund_no is safe, a new number would refund twice.
                self._failure_records = False
                with contextlib.suppress(TradeError):
                    self._take(request)
            log.info("simulator: refund %s answered SYSTEMERROR on purpose", request.get("out_refund_no"))
            raise TradeError("SYSTEMERROR", "系统超时，请使用相同参数再次调用")
        return self._take(request)

    def _take(self, request: dict[str, Any]) -> Refund:
        refund, new = self.book.refund(**request, outcome=REFUND_OUTCOMES[self.knobs.outcome])
        if new:
            log.info("simulator: refund %s of %s for %d fen processing", refund.out_refund_no,
                     refund.out_trade_no, refund.refund_fee)
            task = asyncio.get_running_loop().create_task(self._settle(refund, self.knobs))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return refund

    async def _settle(self, refund: Refund, knobs: RefundKnobs) -> None:
        await asyncio.sleep(knobs.delay)
        refund.settle()
        log.info("simulator: refund %s settled %s", refund.out_refund_no, refund.status)
        self.notifier.schedule_refund(refund, knobs.notify)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
