"""Probes for load balancers: liveness and readiness."""

from __future__ import annotations

import asyncio
import contextlib

from pymongo.errors import PyMongoError

from handlers.base import BaseHandler
from server.infra.metrics import CONTENT_TYPE


class HealthzHandler(BaseHandler):
    """Liveness. External dependencies are /readyz's business, but an embedded
    MongoDB this process uses is part of it: once that is gone only a restart
    brings a database back, so the probe fails and the orchestrator restarts us."""

    def get(self) -> None:
        embedded = self.services.embedded_mongo
        failure = embedded.failure() if embedded is not None else None
        if failure:
            self.set_status(503)
            self.finish({"status": "down", "reason": failure})
            return
        self.finish({"status": "ok"})


class ReadyzHandler(BaseHandler):
    async def get(self) -> None:
        checks = {"mongodb": "ok", "rabbitmq": "ok" if self.services.bus.is_open else "down"}
        try:
            await asyncio.wait_for(self.services.store.ping(), timeout=2)
        except (TimeoutError, PyMongoError) as exc:
            checks["mongodb"] = f"down: {type(exc).__name__}"
        ready = all(v == "ok" for v in checks.values())
        self.set_status(200 if ready else 503)
        self.finish({"status": "ready" if ready else "not ready", **checks})


class MetricsHandler(BaseHandler):
    async def get(self) -> None:
        metrics = self.services.metrics
        # Store down: keep the last value; /readyz says what is wrong.
        with contextlib.suppress(PyMongoError):
            metrics.outbox_backlog.set(await self.services.events.backlog())
        self.set_header("Content-Type", CONTENT_TYPE)
        self.finish(metrics.render())
