"""The container: every long-lived object, built once from the settings and
the connections opened at start-up, wired together here and nowhere else, and
closed once. With web.py and the command line this is the composition root: the only
code that imports workers/ (and, in web.py, handlers/)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import resource
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp

from server.accounts.login_throttle import LoginLimits, LoginThrottle
from server.accounts.users import Roles
from server.composition import demo
from server.composition.gateways import Gateway, build_gateway
from server.domain.orders import Orders
from server.domain.payments import Payments
from server.domain.reconciliation import Reconciler
from server.domain.refund_checks import RefundChecker
from server.domain.refunds import Refunds
from server.domain.timeouts import Timeouts
from server.infra import store as store_mod
from server.infra.bus import Bus
from server.infra.embedded_mongo import EmbeddedMongo
from server.infra.metrics import Metrics
from server.infra.probes import Probes
from server.infra.refund_queues import RefundQueues
from server.infra.store import Store
from server.infra.timeout_queues import TimeoutQueues
from server.lifecycle import InFlight
from server.push.events import OrderEvents
from server.push.hub import PushHub
from server.push.routes import PushRoutes, ws_base
from server.push.tokens import PushTokens
from server.simulator.app import Simulator
from settings import Settings
from workers import active_query, daily_reconciliation, order_timeout, outbox, paynotify_bridge, refund_check, sweeper

log = logging.getLogger(__name__)

# Each ping costs a write, a pong read and an epoll re-registration, which
# pushes wait behind (BENCHMARKS.md, "Why the code is as it is"); 45 s stays
# under proxies' 60 s idle timeouts.
KEEPALIVE_SECONDS = 45.0


# Files a process keeps for everything but pay pages: MongoDB and RabbitMQ
# connections, requests, the notify traffic, log and data files.
FILES_KEPT = 1000


def socket_room() -> int:
    """Pay-page sockets this process takes: its open-file limit less FILES_KEPT."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(100, soft - FILES_KEPT) if soft != resource.RLIM_INFINITY else 1_000_000


@dataclass
class Services:
    settings: Settings
    store: Store
    bus: Bus
    http: aiohttp.ClientSession
    events: OrderEvents
    orders: Orders
    payments: Payments
    push_tokens: PushTokens
    hub: PushHub
    timeout_queues: TimeoutQueues
    timeouts: Timeouts
    refunds: Refunds
    refund_queues: RefundQueues
    simulator: Simulator | None
    metrics: Metrics = field(default_factory=Metrics)
    embedded_mongo: EmbeddedMongo | None = None  # the one this process uses, when MONGO_URL is empty
    login_throttle: LoginThrottle = field(default_factory=LoginThrottle)
    requests: InFlight = field(default_factory=lambda: InFlight("requests"))
    passes: InFlight = field(default_factory=lambda: InFlight("worker passes"))
    deadline_messages: InFlight = field(default_factory=lambda: InFlight("timeout messages"))
    refund_messages: InFlight = field(default_factory=lambda: InFlight("refund check messages"))
    timeout_stats: Counter[str] = field(default_factory=Counter)
    refund_stats: Counter[str] = field(default_factory=Counter)
    gateway: Gateway | None = None  # which WeChat Pay API, and what it needs running
    # Set at shutdown: workers start no new pass, the timeout consumer takes no new message.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _workers: list[asyncio.Task[None]] = field(default_factory=list)
    _keep_alive: asyncio.Task[None] | None = None
    _background: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.roles = Roles(self.store)
        self.refund_checker = RefundChecker(self.refunds)
        self.reconciler = Reconciler(self.store, self.orders, self.payments, self.refunds, self.payments.gateway)
        self.reconcile_stats = daily_reconciliation.Outcome()
        self.bridge = paynotify_bridge.Bridge(self.hub, self.orders)
        self._wire_hooks()
        self._expose_metrics()
        self.probes = Probes(self.store, self.bus, self.metrics, self.embedded_mongo, self.events.backlog)

    def _wire_hooks(self) -> None:
        """Who hears what: the only place listeners are added to the hooks."""
        self.orders.on_transition.add(lambda name: self.metrics.orders.labels(name).inc())
        # A transition made here reaches this process's pages at once, not
        # only after the round trip through RabbitMQ.
        self.events.deliver_locally.add(self.hub.dispatch)
        # This process hears from RabbitMQ the events of the pages it holds, and only those.
        self.hub.on_watched.add(self.bridge.watch)
        self.hub.on_unwatched.add(self.bridge.unwatch)

    def _expose_metrics(self) -> None:
        """Gauges and counters read from the live objects when /metrics is scraped."""
        m = self.metrics
        m.gauge("paypush_open_sockets", "Pay-page sockets open on this process", lambda: len(self.hub))
        m.gauge("paypush_gc_frozen_objects", "Objects out of the garbage collector's full passes "
                "(server/infra/gc_freezer.py)", gc.get_freeze_count)
        m.gauge("paypush_bridge_keys", "Order keys this process's bridge queue is bound to",
                lambda: len(self.bridge.queue) if self.bridge.queue is not None else 0)
        m.gauge("paypush_bridge_keys_pending", "Order keys wanted by pages here and not bound yet",
                lambda: self.bridge.queue.pending if self.bridge.queue is not None else 0)
        m.gauge("paypush_rabbitmq_reconnects", "RabbitMQ reconnects since start", lambda: self.bus.reconnects)
        m.gauge("paypush_events_published", "Order events published since start", lambda: self.events.published)
        m.counter_from("paypush_timeout_outcomes", "Timeout worker decisions", "outcome",
                       lambda: self.timeouts.outcomes)
        m.counter_from("paypush_timeout_messages", "Timeout queue messages", "kind",
                       lambda: dict(self.timeout_stats))
        m.counter_from("paypush_refund_checks", "Refund check messages by outcome", "outcome",
                       lambda: dict(self.refund_stats))
        m.gauge("paypush_reconcile_last_agreed_timestamp", "When the last reconciliation found both sides agreeing",
                lambda: self.reconcile_stats.last_agreed)
        m.gauge("paypush_reconcile_mismatches", "Differences left for a person by the last reconciliation",
                lambda: self.reconcile_stats.mismatches)
        m.counter_from("paypush_reconcile_runs", "Reconciliation runs by outcome", "outcome",
                       lambda: dict(self.reconcile_stats.runs))
        m.counter_from("paypush_logins", "Login attempts by outcome (ok, failed, refused, busy)", "outcome",
                       lambda: dict(self.login_throttle.outcomes))

    @property
    def requests_in_flight(self) -> int:
        return self.requests.count

    def pushed(self, transition_at: float | None) -> None:
        """A socket got an event: count it, and time it from the order's transition."""
        self.metrics.pushes.inc()
        if transition_at is not None:
            self.metrics.push_latency.observe(max(0.0, time.time() - transition_at))

    async def start_workers(self) -> None:
        self.metrics.watch_gc()
        await self.bridge.start(self.bus)
        await order_timeout.start(self.timeouts, self.timeout_queues, self.timeout_stats, self.deadline_messages)
        await refund_check.start(self.refund_checker, self.refund_queues, self.refund_stats, self.refund_messages)
        cfg = self.settings
        active = active_query.ActiveQuery(self.hub, self.orders, self.payments, cfg.active_query_after_seconds)
        loop = asyncio.get_running_loop()
        stop = self.stopping
        self._workers += [
            loop.create_task(outbox.run(self.events, stop, self.passes), name="outbox"),
            loop.create_task(sweeper.run(self.orders, self.timeouts, self.refund_checker, cfg.sweep_interval_seconds,
                                         cfg.sweep_grace_seconds, 2 * max(cfg.refund_check_delays), stop,
                                         self.passes), name="sweeper"),
            loop.create_task(active_query.run(active, stop, self.passes), name="active-query"),
        ]
        if cfg.reconcile_at is not None:
            self._workers.append(loop.create_task(daily_reconciliation.run(
                self.reconciler, self.store, cfg.reconcile_at, self.reconcile_stats, stop, self.passes),
                name="reconciliation"))
        self._keep_alive = loop.create_task(self.hub.keep_alive(KEEPALIVE_SECONDS), name="keep-alive")
        if self.gateway is not None and self.gateway.background is not None:
            # Cancelled with the keep-alive at close; it holds no work a stop should wait for.
            self._background = loop.create_task(self.gateway.background(), name="wxpay-certificates")

    def stop_taking_work(self) -> None:
        """Shutdown, first step: the sweeper, the active query, the outbox
        drainer and the timeout consumer start nothing new from here on (what
        they are in the middle of finishes). Synchronous, so nothing can slip in
        between the signal and this."""
        self.stopping.set()
        self.timeout_queues.stop_taking()
        self.refund_queues.accepting = False
        self.bridge.stop_binding()


    async def finish_in_flight(self, within: float) -> int:
        """Shutdown: take no new work, ask RabbitMQ to stop sending deadline
        messages (unacked ones go back to it), and give running requests,
        timeout messages and worker passes ``within`` seconds. Returns how many
        were still running when the time was up."""
        self.stop_taking_work()
        deadline = time.monotonic() + within
        await asyncio.gather(self.timeout_queues.stop_consuming(within=min(1.0, within)),
                             self.refund_queues.stop_consuming(within=min(1.0, within)))
        work = (self.requests, self.deadline_messages, self.refund_messages, self.passes)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(w.idle() for w in work)),
                                   max(0.0, deadline - time.monotonic()))
        left = sum(w.count for w in work)
        if left:
            log.warning("shutdown: still running after %.1fs, cut off: %s", within,
                        ", ".join(f"{w.count} {w.name}" for w in work if w.count))
        return left

    async def close(self, within: float = 8.0) -> None:
        """Stop workers, then close connections (sockets are closed by the
        caller), all in about ``within`` seconds whatever state RabbitMQ is in."""
        deadline = time.monotonic() + within

        def remaining() -> float:
            return max(0.01, deadline - time.monotonic())

        self.stop_taking_work()
        self.metrics.unwatch_gc()
        tasks = [*self._workers, *(t for t in (self._keep_alive, self._background) if t is not None)]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # Bookkeeping left undone is redone by the timeout worker.
        await self.orders.finish_bookkeeping(within=remaining())
        # Publishes under way get a moment; their events stay in the outbox
        # until confirmed, so one cut off is only published again later.
        await self.events.close(within=min(3.0, remaining()))
        if self.simulator is not None:
            await self.simulator.close()
        await self.bridge.close()
        await self.bus.close(within=min(2.0, remaining()))
        await self.http.close()
        await self.store.close()


async def open_services(settings: Settings, mongo_url: str,
                        embedded_mongo: EmbeddedMongo | None = None) -> Services:
    """Connect to MongoDB (creating indexes) and RabbitMQ, and build the service layer.

    ``embedded_mongo``: the server behind ``mongo_url`` when this process runs one (liveness watches it)."""
    http = aiohttp.ClientSession()
    try:
        built = build_gateway(settings, http)  # keys and certificates first: refused before anything connects
    except BaseException:
        await http.close()
        raise
    gateway = built.gateway
    store = store_mod.connect(mongo_url, settings.mongo_db, settings.mongo_timeout_ms)
    await store_mod.create_indexes(store)
    bus = await Bus.connect(settings.amqp_url)
    timeout_queues = await TimeoutQueues.declare(bus, settings.order_timeout_seconds,
                                                 settings.timeout_retry_delays, settings.deployment,
                                                 await store_mod.deployment_id(store))
    refund_queues = await RefundQueues.declare(bus, settings.refund_check_delays, settings.deployment)
    tokens = PushTokens(settings.cookie_secret)
    events = OrderEvents(store, bus, tokens)
    orders = Orders(store, settings.order_timeout_seconds, events, timeout_queues,
                    max_unpaid_per_user=settings.max_unpaid_orders_per_user)
    push = PushRoutes(ws_base(settings.public_url), settings.stomp_url, settings.amqp_vhost,
                      settings.stomp_login, settings.stomp_passcode, tokens)
    refunds = Refunds(orders, gateway, settings.refund_notify_url, refund_queues)
    payments = Payments(orders, gateway, settings.notify_url, push, refunds)
    simulator = None
    if settings.sandbox:
        simulator = Simulator.create(http, appid=settings.wxpay_appid, mch_id=settings.wxpay_mch_id,
                                     key=settings.wxpay_key,
                                     close_min_age_seconds=settings.sim_close_min_age_seconds,
                                     notify_speed=settings.sim_notify_speed, v3=built.simulator_v3)
        await demo.seed_demo(store)
    return Services(settings, store, bus, http, events, orders, payments, tokens,
                    PushHub(settings.max_sockets_per_user, socket_room()), timeout_queues,
                    Timeouts(orders, payments, gateway), refunds, refund_queues, simulator,
                    login_throttle=LoginThrottle(LoginLimits(checks_per_second=settings.login_checks_per_second)),
                    embedded_mongo=embedded_mongo, gateway=built)
