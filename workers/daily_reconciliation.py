"""Every day at RECONCILE_AT (Beijing time): yesterday's bill against our books.

One process of however many runs it: the day's run is claimed in MongoDB
(``meta``, ``reconcile:<date>``) by a conditional update, and marked done once
its report is kept. While WeChat has no bill yet it is tried again every
RETRY_SECONDS; a process that dies mid-run leaves a claim that runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections import Counter
from dataclasses import dataclass, field

from pymongo.errors import DuplicateKeyError, PyMongoError

from server.domain.reconciliation import Reconciler, yesterday_in_beijing
from server.gateway.abc import BEIJING
from server.gateway.errors import BillNotReady, GatewayError
from server.infra.store import Store
from server.lifecycle import InFlight, every

log = logging.getLogger(__name__)

RETRY_SECONDS = 600.0
CLAIM_SECONDS = 900.0
PASS_SECONDS = 60.0


@dataclass
class Outcome:
    """What the runs came to, for /metrics."""

    runs: Counter[str] = field(default_factory=Counter)
    last_agreed: float = 0.0
    mismatches: int = 0


async def reconcile_if_due(reconciler: Reconciler, store: Store, at: dt.time, outcome: Outcome,
                           now: float | None = None) -> bool:
    """Run yesterday's reconciliation if it is time and nobody has; True if this call ran it."""
    now = time.time() if now is None else now
    if dt.datetime.fromtimestamp(now, BEIJING).time() < at:
        return False
    date = yesterday_in_beijing(now)
    key = f"reconcile:{date.isoformat()}"
    with contextlib.suppress(DuplicateKeyError):
        await store.meta.insert_one({"_id": key, "done": False, "claimed_until": 0.0, "next_try": 0.0})
    claimed = await store.meta.find_one_and_update(
        {"_id": key, "done": False, "claimed_until": {"$lt": now}, "next_try": {"$lte": now}},
        {"$set": {"claimed_until": now + CLAIM_SECONDS}})
    if claimed is None:
        return False
    try:
        report = await reconciler.run(date)
    except Exception as exc:
        # Not ready, WeChat or the store failing, or a fault of ours: the day
        # is not lost, it is tried again (and the fault is in the log).
        kind = "not_ready" if isinstance(exc, BillNotReady) else "failed"
        outcome.runs[kind] += 1
        if isinstance(exc, (GatewayError, PyMongoError)):
            log.warning("reconciliation %s: %s (%s); trying again in %d s", date, kind, exc, RETRY_SECONDS)
        else:
            log.exception("reconciliation %s failed; trying again in %d s", date, RETRY_SECONDS)
        await store.meta.update_one({"_id": key}, {"$set": {"claimed_until": 0.0, "next_try": now + RETRY_SECONDS}})
        return True
    outcome.runs["agreed" if report.agrees else "differences"] += 1
    outcome.mismatches = len(report.mismatches)
    if report.agrees:
        outcome.last_agreed = now
    else:
        log.error("reconciliation %s: %d difference(s) need a person: see /admin", date, len(report.mismatches))
    await store.meta.update_one({"_id": key}, {"$set": {"done": True, "claimed_until": 0.0}})
    return True


async def run(reconciler: Reconciler, store: Store, at: dt.time, outcome: Outcome,
              stopping: asyncio.Event, passes: InFlight) -> None:
    await every(PASS_SECONDS, lambda: reconcile_if_due(reconciler, store, at, outcome), stopping, passes,
                "reconciliation", swallow=(PyMongoError,))
