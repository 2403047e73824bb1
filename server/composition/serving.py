"""``paypush serve``: start the services, listen, and on SIGTERM stop in order
(no new connections, 1001 to the pages, in-flight work finished, connections
closed) within the time an orchestrator allows."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
import time

import tornado.httpserver

import settings as settings_mod
from server.composition.container import open_services
from server.composition.demo import DEMO_PASSWORD, DEMO_USER
from server.composition.listening import Listener, raise_open_file_limit
from server.composition.startup import check_mongo
from server.composition.web import make_app, make_metrics_app
from server.infra.embedded_mongo import EmbeddedMongo
from server.infra.gc_freezer import Freezer

log = logging.getLogger(__name__)

# Orchestrators kill 10 s after SIGTERM: the whole stop takes at most
# STOP_SECONDS, of which in-flight work gets SHUTDOWN_GRACE_SECONDS and closing
# connections (each with its own deadline) the rest.
STOP_SECONDS = 8.5
SHUTDOWN_GRACE_SECONDS = 5.0


async def wait_for_shutdown_signal() -> str:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    received: list[str] = []

    def on_signal(sig: signal.Signals) -> None:
        # Handlers stay installed: a second SIGTERM (orchestrators repeat
        # themselves) must not kill a shutdown that is finishing in-flight work.
        if received:
            log.info("%s received again: already shutting down", sig.name)
        received.append(sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    await stop.wait()
    return received[0]


async def serve(settings: settings_mod.Settings, mongo_url: str, embedded: EmbeddedMongo | None = None) -> None:
    raise_open_file_limit()
    await check_mongo(settings, mongo_url)
    services = await open_services(settings, mongo_url, embedded)  # /healthz fails when it dies
    await services.start_workers()
    app = make_app(services)
    server = tornado.httpserver.HTTPServer(app)  # proxy headers: TRUSTED_PROXIES (web.py)
    listener = Listener(server)
    app.connection_opened.add(listener.done)
    services.metrics.gauge("paypush_connections_opening", "Connections accepted whose page is not open yet "
                           "(new ones wait in the kernel's queue past the limit)", lambda: listener.opening)
    services.metrics.gauge("paypush_accept_pauses", "Times this process stopped accepting since start: "
                           "too many pages opening at once", lambda: listener.paused)
    try:
        listener.listen(settings.port, settings.host, reuse_port=settings.reuse_port)
    except OSError as exc:
        await services.close()
        hint = "" if settings.reuse_port else " (paypush processes share a port with REUSE_PORT=1 on each)"
        raise RuntimeError(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror}{hint}") from None
    freezer = Freezer()
    freezing = asyncio.get_running_loop().create_task(freezer.run(services.stopping, services.passes),
                                                      name="gc-freezer")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    log.info("paypush listening on http://%s:%d (public URL %s%s); open-file limit %d (hard %d): each waiting "
             "pay page holds one, and past %d pages new ones are sent elsewhere (1013)", settings.host, settings.port,
             settings.public_url, ", port shared with other processes" if settings.reuse_port else "", soft, hard,
             services.hub.max_sockets)
    metrics_server = None
    if not settings.sandbox:  # sandbox: /metrics is on the main listener
        metrics_server = make_metrics_app(services).listen(settings.metrics_port, settings.metrics_host)
        log.info("metrics on http://%s:%d/metrics", settings.metrics_host, settings.metrics_port)
    if settings.sandbox:
        log.warning("SANDBOX MODE: WeChat Pay is the built-in simulator at %s; no real money moves",
                    settings.simulator_base)
        log.warning("SANDBOX MODE: demo login is %s / %s", DEMO_USER, DEMO_PASSWORD)
    log.info("WeChat Pay API base: %s, notify_url: %s", settings.wxpay_api_base, settings.notify_url)
    name = await wait_for_shutdown_signal()
    started = time.monotonic()
    log.info("%s received: shutting down", name)
    services.stop_taking_work()  # first, with no await before it: no new sweep, query, drain or deadline
    listener.stop()  # no new connections
    if metrics_server is not None:
        metrics_server.stop()
    services.hub.close_all()  # 1001: pages reconnect to another process
    await services.finish_in_flight(within=SHUTDOWN_GRACE_SECONDS)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(server.close_all_connections(), 1.0)
    await services.close(within=STOP_SECONDS - (time.monotonic() - started))
    # Over once stopping is set. Nothing is unfrozen: the process is about to
    # exit, and the interpreter's last collection then skips what is frozen.
    await freezing
    log.info("paypush stopped in %.1fs", time.monotonic() - started)
