"""``paypush`` command line: serve, create-user, simulator."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import logging
import signal
import sys
import time
from collections.abc import Iterator

import aiohttp

import settings as settings_mod
from server import logs
from server.app import make_app, make_simulator_app
from server.catalog import DEMO_PASSWORD, DEMO_USER
from server.embedded_mongo import EmbeddedMongo
from server.services import open_services
from server.simulator.app import Simulator
from server.store import connect
from server.users import InvalidUser, create_user

log = logging.getLogger(__name__)

# Orchestrators kill 10 s after SIGTERM: the whole stop takes at most
# STOP_SECONDS, of which in-flight work gets SHUTDOWN_GRACE_SECONDS and closing
# connections (each with its own deadline) the rest.
STOP_SECONDS = 8.5
SHUTDOWN_GRACE_SECONDS = 5.0


@contextlib.contextmanager
def mongo_url_for(settings: settings_mod.Settings) -> Iterator[str]:
    """MONGO_URL, or the embedded server's URL (started here unless already running)."""
    if settings.mongo_url:
        yield settings.mongo_url
        return
    embedded = EmbeddedMongo(settings.var_dir / "mongo").attach_or_start()
    try:
        yield embedded.url
    finally:
        embedded.stop()  # only stops what this process started


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


async def serve(settings: settings_mod.Settings, mongo_url: str) -> None:
    services = await open_services(settings, mongo_url)
    await services.start_workers()
    app = make_app(services)
    server = app.listen(settings.port, settings.host, xheaders=True)
    log.info("paypush listening on http://%s:%d (public URL %s)", settings.host, settings.port,
             settings.public_url)
    if settings.sandbox:
        log.warning("SANDBOX MODE: WeChat Pay is the built-in simulator at %s; no real money moves",
                    settings.simulator_base)
        log.warning("SANDBOX MODE: demo login is %s / %s", DEMO_USER, DEMO_PASSWORD)
    log.info("WeChat Pay API base: %s, notify_url: %s", settings.wxpay_api_base, settings.notify_url)
    name = await wait_for_shutdown_signal()
    started = time.monotonic()
    log.info("%s received: shutting down", name)
    services.stop_taking_work()  # first, with no await before it: no new sweep, query, drain or deadline
    server.stop()  # no new connections
    services.hub.close_all()  # 1001: pages reconnect to another process
    await services.finish_in_flight(within=SHUTDOWN_GRACE_SECONDS)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(server.close_all_connections(), 1.0)
    await services.close(within=STOP_SECONDS - (time.monotonic() - started))
    log.info("paypush stopped in %.1fs", time.monotonic() - started)


async def run_simulator(settings: settings_mod.Settings, host: str, port: int) -> None:
    async with aiohttp.ClientSession() as http:
        sim = Simulator.create(http, appid=settings.wxpay_appid, mch_id=settings.wxpay_mch_id,
                               key=settings.wxpay_key,
                               close_min_age_seconds=settings.sim_close_min_age_seconds,
                               notify_speed=settings.sim_notify_speed)
        server = make_simulator_app(sim).listen(port, host)
        log.info("WeChat Pay simulator on http://%s:%d (appid %s, mch_id %s)", host, port,
                 settings.wxpay_appid, settings.wxpay_mch_id)
        await wait_for_shutdown_signal()
        server.stop()
        await sim.close()


async def add_user(settings: settings_mod.Settings, mongo_url: str, name: str, password: str,
                   replace: bool) -> bool:
    store = connect(mongo_url, settings.mongo_db, settings.mongo_timeout_ms)
    try:
        return await create_user(store, name, password, replace=replace)
    finally:
        await store.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="paypush", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the shop, API, notify endpoint and workers")
    user = sub.add_parser("create-user", help="create a shop user (or --replace a password)")
    user.add_argument("name")
    user.add_argument("--password", help="the password (prompted for when omitted)")
    user.add_argument("--replace", action="store_true", help="reset the password of an existing user")
    sim = sub.add_parser("simulator", help="run the WeChat Pay simulator on its own")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8899)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings_mod.from_environ()
    except settings_mod.ConfigError as exc:
        print(f"paypush: configuration error: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_format)
    try:
        if args.command == "serve":
            with mongo_url_for(settings) as url:
                asyncio.run(serve(settings, url))
        elif args.command == "create-user":
            password = args.password or getpass.getpass(f"password for {args.name}: ")
            with mongo_url_for(settings) as url:
                created = asyncio.run(add_user(settings, url, args.name, password, args.replace))
            print(f"user {args.name} {'created' if created else 'password replaced'}")
        elif args.command == "simulator":
            asyncio.run(run_simulator(settings, args.host, args.port))
    except InvalidUser as exc:
        print(f"paypush: {exc}", file=sys.stderr)
        return 1
    except (RuntimeError, OSError) as exc:
        print(f"paypush: {exc}", file=sys.stderr)
        return 1
    return 0
