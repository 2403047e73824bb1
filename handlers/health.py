"""Probes for load balancers: liveness and readiness."""

from __future__ import annotations

import asyncio

from pymongo.errors import PyMongoError

from handlers.base import BaseHandler


class HealthzHandler(BaseHandler):
    def get(self) -> None:
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
