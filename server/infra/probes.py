"""What the health endpoints report: is this process alive, can it reach its
stores, and what has it counted. Built by the composition root from the
connections it opened; the handlers only ask."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from pymongo.errors import PyMongoError

from server.infra.bus import Bus
from server.infra.embedded_mongo import EmbeddedMongo
from server.infra.metrics import Metrics
from server.infra.store import Store


class Probes:
    def __init__(self, store: Store, bus: Bus, metrics: Metrics, embedded_mongo: EmbeddedMongo | None,
                 outbox_backlog: Callable[[], Awaitable[int]]):
        self.store = store
        self.bus = bus
        self.metrics = metrics
        self.embedded_mongo = embedded_mongo
        self.outbox_backlog = outbox_backlog

    def liveness_failure(self) -> str | None:
        """Why this process should be restarted, or None. External services are
        readiness's business, but an embedded MongoDB this process uses is part
        of it: once that is gone only a restart brings a database back."""
        return self.embedded_mongo.failure() if self.embedded_mongo is not None else None

    async def readiness(self) -> dict[str, str]:
        """Each dependency: "ok" or what is wrong with it."""
        checks = {"mongodb": "ok", "rabbitmq": "ok" if self.bus.is_open else "down"}
        try:
            await asyncio.wait_for(self.store.ping(), timeout=2)
        except (TimeoutError, PyMongoError) as exc:
            checks["mongodb"] = f"down: {type(exc).__name__}"
        return checks

    async def metrics_text(self) -> bytes:
        # Store down: keep the last value; /readyz says what is wrong.
        with contextlib.suppress(PyMongoError):
            self.metrics.outbox_backlog.set(await self.outbox_backlog())
        return self.metrics.render()
