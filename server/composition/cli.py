"""``paypush`` command line: serve, create-user, reconcile, sku, simulator."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import getpass
import json
import logging
import ssl
import sys

import aiohttp

import settings as settings_mod
from server.accounts.users import InvalidUser, create_user
from server.composition.container import open_services
from server.composition.serving import serve, wait_for_shutdown_signal
from server.composition.startup import StartupError, check_mongo, mongo_url_for
from server.composition.web import make_simulator_app
from server.domain.catalog import InvalidSku, check_sku_fields, list_skus, set_sku
from server.domain.money import yuan
from server.domain.reconciliation import yesterday_in_beijing
from server.gateway.errors import BillNotReady, GatewayError
from server.infra import logs
from server.infra.store import connect
from server.simulator.app import Simulator

log = logging.getLogger(__name__)


def mutual_tls_context(cert: str, key: str, client_ca: str) -> ssl.SSLContext:
    """HTTPS that, like WeChat's /secapi/, refuses a client without a certificate signed by ``client_ca``."""
    try:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=client_ca)
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(f"simulator TLS files cannot be used ({exc}): check --tls-cert, --tls-key "
                           "and --client-ca") from None
    context.verify_mode = ssl.CERT_REQUIRED
    return context


async def run_simulator(settings: settings_mod.Settings, host: str, port: int,
                        tls: ssl.SSLContext | None = None) -> None:
    async with aiohttp.ClientSession() as http:
        sim = Simulator.create(http, appid=settings.wxpay_appid, mch_id=settings.wxpay_mch_id,
                               key=settings.wxpay_key,
                               close_min_age_seconds=settings.sim_close_min_age_seconds,
                               notify_speed=settings.sim_notify_speed)
        server = make_simulator_app(sim).listen(port, host, ssl_options=tls)
        log.info("WeChat Pay simulator on %s://%s:%d (appid %s, mch_id %s%s)", "https" if tls else "http",
                 host, port, settings.wxpay_appid, settings.wxpay_mch_id,
                 ", client certificate required" if tls else "")
        await wait_for_shutdown_signal()
        server.stop()
        await sim.close()


async def add_user(settings: settings_mod.Settings, mongo_url: str, name: str, password: str,
                   replace: bool, operator: bool = False) -> bool:
    await check_mongo(settings, mongo_url)
    store = connect(mongo_url, settings.mongo_db, settings.mongo_timeout_ms)
    try:
        return await create_user(store, name, password, replace=replace, operator=operator)
    finally:
        await store.close()


async def change_sku(settings: settings_mod.Settings, mongo_url: str, sku_id: str, stock: int,
                     name: str | None, price: int | None) -> str:
    """Create or change one SKU; what it was and what it is now, on one line."""
    await check_mongo(settings, mongo_url)
    store = connect(mongo_url, settings.mongo_db, settings.mongo_timeout_ms)
    try:
        change = await set_sku(store, sku_id, by=f"cli:{_os_user()}", stock=stock, name=name, price=price)
    finally:
        await store.close()
    now = f"stock {change.after['stock']}, price {change.after['price']} fen, name {change.after['name']!r}"
    return f"SKU {sku_id} created: {now}" if change.created else f"SKU {sku_id}: {change.describe()}; now {now}"


async def show_skus(settings: settings_mod.Settings, mongo_url: str) -> str:
    await check_mongo(settings, mongo_url)
    store = connect(mongo_url, settings.mongo_db, settings.mongo_timeout_ms)
    try:
        skus = await list_skus(store)
    finally:
        await store.close()
    width = max([len(s["id"]) for s in skus] + [2])
    lines = [f"{'id':{width}}  {'stock':>8}  {'price':>10}  name"]
    lines += [f"{s['id']:{width}}  {s['stock']:>8}  {'¥' + yuan(s['price']):>10}  {s['name']}" for s in skus]
    return "\n".join(lines)


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a bare container)
        return "unknown"


def bill_date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date as YYYY-MM-DD: {text!r}") from None


async def reconcile(settings: settings_mod.Settings, mongo_url: str, date: dt.date | None, as_json: bool) -> int:
    """One reconciliation, printed; 0 both sides agree, 1 differences left for a person, 2 could not run."""
    try:
        services = await open_services(settings, mongo_url)
    except Exception as exc:  # whatever keeps it from starting: it did not run
        print(f"paypush: reconcile could not start: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    try:
        report = await services.reconciler.run(date or yesterday_in_beijing())
    except GatewayError as exc:
        print(f"paypush: reconcile: {exc}" + (" (WeChat publishes a day's bill the next morning)"
                                              if isinstance(exc, BillNotReady) else ""), file=sys.stderr)
        return 2
    finally:
        await services.close(within=5.0)
    if as_json:
        print(json.dumps(report.as_json(), ensure_ascii=False, indent=2))
    else:
        print(report.as_text())
    return 0 if report.agrees else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="paypush", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the shop, API, notify endpoint and workers")
    user = sub.add_parser("create-user", help="create a shop user (or --replace a password)")
    user.add_argument("name")
    user.add_argument("--password", help="the password (prompted for when omitted)")
    user.add_argument("--replace", action="store_true", help="reset the password of an existing user")
    user.add_argument("--operator", action="store_true",
                      help="an operator: sees every order, refunds (with --replace: promote)")
    rec = sub.add_parser("reconcile", help="compare WeChat's daily bill with our orders and refunds")
    rec.add_argument("--date", type=bill_date, help="the bill's day, YYYY-MM-DD, Beijing time (default: yesterday)")
    rec.add_argument("--json", action="store_true", help="one JSON document instead of the summary")
    sku = sub.add_parser("sku", help="the catalog: list SKUs, create or change one")
    sku_sub = sku.add_subparsers(dest="sku_command", required=True)
    sku_sub.add_parser("list", help="every SKU with its stock on hand and price")
    sku_set = sku_sub.add_parser("set", help="create a SKU or change it; safe while orders are being placed",
                                 description="Sets the stock on hand to N at one instant: orders placed "
                                             "after it take from N, units held by unpaid orders are not "
                                             "part of N. A new SKU needs --name and --price.")
    sku_set.add_argument("id", help="the SKU id: 1-64 letters, digits, '-' or '_'")
    sku_set.add_argument("--stock", type=int, required=True, metavar="N", help="units on hand for sale from now")
    sku_set.add_argument("--name", help="the name shoppers see (1-64 characters)")
    sku_set.add_argument("--price", type=int, metavar="FEN", help="the price of one unit in fen (100 = ¥1.00)")
    sim = sub.add_parser("simulator", help="run the WeChat Pay simulator on its own")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8899)
    sim.add_argument("--tls-cert", help="serve HTTPS with this certificate (PEM); needs --tls-key and --client-ca")
    sim.add_argument("--tls-key", help="the private key of --tls-cert (PEM)")
    sim.add_argument("--client-ca", help="require client certificates signed by this CA (PEM), as WeChat's "
                                         "refund API does")
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
            with mongo_url_for(settings) as (url, embedded):
                asyncio.run(serve(settings, url, embedded))
        elif args.command == "create-user":
            password = args.password or getpass.getpass(f"password for {args.name}: ")
            with mongo_url_for(settings) as (url, _):
                created = asyncio.run(add_user(settings, url, args.name, password, args.replace, args.operator))
            role = " (operator)" if args.operator else ""
            print(f"user {args.name}{role} {'created' if created else 'password replaced'}")
        elif args.command == "reconcile":
            with mongo_url_for(settings) as (url, _):
                return asyncio.run(reconcile(settings, url, args.date, args.json))
        elif args.command == "sku":
            if args.sku_command == "set":  # refused before any database is started
                check_sku_fields(args.id, args.stock, args.name, args.price)
            with mongo_url_for(settings) as (url, _):
                if args.sku_command == "set":
                    print(asyncio.run(change_sku(settings, url, args.id, args.stock, args.name, args.price)))
                else:
                    print(asyncio.run(show_skus(settings, url)))
        elif args.command == "simulator":
            tls_args = (args.tls_cert, args.tls_key, args.client_ca)
            if any(tls_args) and not all(tls_args):
                raise StartupError("--tls-cert, --tls-key and --client-ca go together")
            tls = mutual_tls_context(*tls_args) if all(tls_args) else None
            asyncio.run(run_simulator(settings, args.host, args.port, tls))
    except (StartupError, settings_mod.ConfigError) as exc:  # keys and certificates are read at start-up
        print(f"paypush: {exc}", file=sys.stderr)
        return 2
    except InvalidUser as exc:
        print(f"paypush: {exc}", file=sys.stderr)
        return 1
    except InvalidSku as exc:  # bad input, like argparse's own refusals
        print(f"paypush: sku: {exc}", file=sys.stderr)
        return 2
    except (RuntimeError, OSError) as exc:
        print(f"paypush: {exc}", file=sys.stderr)
        return 1
    return 0
