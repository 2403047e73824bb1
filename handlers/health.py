"""Probes for load balancers and orchestrators: liveness, readiness, metrics."""

from __future__ import annotations

from handlers.base import BaseHandler
from server.infra.metrics import CONTENT_TYPE
from server.infra.probes import Probes
from server.lifecycle import InFlight


class ProbeHandler(BaseHandler):
    def initialize(self, requests: InFlight, probes: Probes) -> None:  # type: ignore[override]
        super().initialize(requests)
        self.probes = probes


class HealthzHandler(ProbeHandler):
    def get(self) -> None:
        failure = self.probes.liveness_failure()
        if failure:
            self.set_status(503)
            self.finish({"status": "down", "reason": failure})
            return
        self.finish({"status": "ok"})


class ReadyzHandler(ProbeHandler):
    async def get(self) -> None:
        checks = await self.probes.readiness()
        ready = all(v == "ok" for v in checks.values())
        self.set_status(200 if ready else 503)
        self.finish({"status": "ready" if ready else "not ready", **checks})


class MetricsHandler(ProbeHandler):
    async def get(self) -> None:
        text = await self.probes.metrics_text()
        self.set_header("Content-Type", CONTENT_TYPE)
        self.finish(text)
