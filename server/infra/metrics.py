"""Prometheus metrics: one registry per process, counters fed where things happen,
gauges read from the live objects when scraped."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

log = logging.getLogger(__name__)

# A pause this long delays every push queued behind it past the 50 ms a page
# is promised, so each one is worth a line of its own.
LOGGED_GC_PAUSE = 0.1

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.notifies = Counter("paypush_notifies", "WeChat notifies by outcome", ["outcome"], registry=r)
        self.pushes = Counter("paypush_pushes", "Events written to pay-page sockets", registry=r)
        self.push_latency = Histogram(
            "paypush_push_latency_seconds", "From the order's transition to the socket write", registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.orders = Counter("paypush_orders", "Orders by transition", ["transition"], registry=r)
        self.outbox_backlog = Gauge("paypush_outbox_backlog", "Order events not yet published", registry=r)
        # A full collection walks every live object: with 10k sockets open it
        # is the one stall in this process that no await can interleave with.
        self.gc_pause = Histogram(
            "paypush_gc_pause_seconds", "Garbage collector pauses by generation", ["generation"], registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25))
        for generation in range(3):  # series exist from the start, so rates work
            self.gc_pause.labels(str(generation))
        self._gc_started = 0.0

    def watch_gc(self) -> None:
        """Time every collection (``gc.callbacks``); undone by ``unwatch_gc``."""
        if self._on_gc not in gc.callbacks:
            gc.callbacks.append(self._on_gc)

    def unwatch_gc(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            paused = time.perf_counter() - self._gc_started
            self.gc_pause.labels(str(info["generation"])).observe(paused)
            if paused >= LOGGED_GC_PAUSE:
                log.warning("garbage collection of generation %d paused this process for %.0f ms (%d collected)",
                            info["generation"], paused * 1000, info["collected"])

    def gauge(self, name: str, doc: str, read: Callable[[], float]) -> None:
        Gauge(name, doc, registry=self.registry).set_function(read)

    def counter_from(self, name: str, doc: str, label: str, read: Callable[[], dict[str, int]]) -> None:
        """Expose a dict of running totals kept elsewhere as a labelled counter."""
        registry = self.registry

        class _Collector:
            def collect(self):  # type: ignore[no-untyped-def]
                from prometheus_client.core import CounterMetricFamily

                family = CounterMetricFamily(name, doc, labels=[label])
                for key, value in sorted(read().items()):
                    family.add_metric([key], value)
                yield family

        registry.register(_Collector())  # type: ignore[arg-type]

    def render(self) -> bytes:
        return generate_latest(self.registry)
