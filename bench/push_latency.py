"""How fast does "paid" reach the waiting browser?

N orders, each watched by one native /ws/pay socket and one Web STOMP
subscriber (clients in separate processes). Signed notifies are sent at a
steady rate for random orders; latency is from the notify request being sent
to each client hearing "paid". Both routes, same orders, same rate, same run.
With ``--notify-to other`` the notifies go to a second paypush process, so the
native route's event crosses RabbitMQ and the first process's bridge (as for
most pages when several processes share the load); by default they go to the
process holding the sockets, which hands the event to them directly.
Run: python bench/push_latency.py [--sockets 10000 --rate 100 --seconds 20 --notify-to same|other]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
import urllib.request
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.clients import ClientFleet, Job, split
from bench.harness import (
    cookie,
    cpu_seconds,
    ensure_rabbitmq_sockets,
    gc_pauses,
    new_plot,
    notify_body,
    percentiles,
    rabbitmq_pid,
    running_stack,
    save,
    save_plot,
    table,
)
from server.push.tokens import PushTokens

PROCS = 2  # per route


async def send_notifies(base_url: str, orders: list[tuple[str, int]], rate: float,
                        seconds: float) -> tuple[dict[str, float], list[float], int]:
    """Fire notifies at ``rate``/s; returns send time per order, each notify's
    round trip (ms) and how many failed."""
    sent: dict[str, float] = {}
    round_trips: list[float] = []
    failures = 0
    chosen = random.Random(1).sample(orders, min(len(orders), int(rate * seconds)))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def one(order_id: str, fee: int) -> None:
            nonlocal failures
            body = notify_body(order_id, fee)
            sent[order_id] = time.time()
            async with http.post(base_url + "/wxpay/notify", data=body) as resp:
                if b"SUCCESS" not in await resp.read():
                    failures += 1
            round_trips.append((time.time() - sent[order_id]) * 1000)

        start = time.perf_counter()
        tasks = []
        for i, (order_id, fee) in enumerate(chosen):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(order_id, fee)))
        await asyncio.gather(*tasks)
    return sent, round_trips, failures


def bindings_settled(base_url: str, within: float = 300) -> None:
    """Wait until the process has bound the keys of all its pages (it binds
    them as they open, about 1.5k a second): a sale's pages arrive over
    minutes, not in the ten seconds before the first notify."""
    deadline = time.monotonic() + within
    while True:
        with urllib.request.urlopen(base_url + "/metrics", timeout=10) as resp:
            text = resp.read().decode()
        pending = next((float(line.split()[-1]) for line in text.splitlines()
                        if line.startswith("paypush_bridge_keys_pending ")), 0.0)
        if not pending:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{pending:.0f} keys still unbound")
        time.sleep(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sockets", type=int, default=10000)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--routes", default="native,stomp", help="native, stomp or both (default)")
    parser.add_argument("--notify-to", choices=("same", "other"), default="same",
                        help="the process holding the sockets, or a second paypush process")
    args = parser.parse_args()
    routes = args.routes.split(",")
    ensure_rabbitmq_sockets(args.sockets + 500)
    with running_stack() as stack:
        orders = stack.seed_orders(args.sockets)
        ids = [o for o, _ in orders]
        tokens = PushTokens(stack.env()["COOKIE_SECRET"])
        dest = {o: f"/exchange/paynotify/{tokens.routing_key(o)}" for o in ids}
        passcode = stack.env()["STOMP_PASSCODE"]
        fleets = {}
        if "native" in routes:
            fleets["native"] = ClientFleet([Job("ws", part, base_url=stack.base_url, cookie=cookie())
                                            for part in split(ids, PROCS)])
        if "stomp" in routes:
            fleets["stomp"] = ClientFleet([Job("stomp", part, destinations=dest, passcode=passcode)
                                           for part in split(ids, PROCS)])
        opened = sum(f.start() for f in fleets.values())
        notify_url = stack.base_url if args.notify_to == "same" else stack.add_server()
        print(f"{opened} sockets open ({args.sockets} per route: {', '.join(fleets)}); sending "
              f"{args.rate:.0f} notifies/s for {args.seconds:.0f}s to the {args.notify_to} process", flush=True)
        bindings_settled(stack.base_url)
        pids = {"paypush": stack.server_pid, "nx-27017 (MongoDB)": stack.mongo_pid, "RabbitMQ": rabbitmq_pid()}
        if args.notify_to == "other":
            pids["paypush taking the notifies"] = stack.procs[-1].pid
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        gc_before = gc_pauses(stack.base_url)
        started = time.monotonic()
        sent, round_trips, failures = asyncio.run(send_notifies(notify_url, orders, args.rate, args.seconds))
        elapsed = time.monotonic() - started
        cpu = {name: (cpu_seconds(pid) - before[name]) / elapsed for name, pid in pids.items()}
        time.sleep(3)
        gc_after = gc_pauses(stack.base_url)
        with urllib.request.urlopen(stack.base_url + "/metrics", timeout=10) as resp:
            server_side = [line for line in resp.read().decode().splitlines()
                           if line.startswith("paypush_push_latency_seconds_bucket")]
        buckets = [(line.split('le="')[1].split('"')[0], line.split()[-1]) for line in server_side]
        print("server side, transition -> socket write (all pushes since start): "
              + ", ".join(f"le {le}: {n}" for le, n in buckets))
        heard = {route: fleet.stop() for route, fleet in fleets.items()}
    gc_while = {gen: {k: v - gc_before.get(gen, {}).get(k, 0) for k, v in stats.items()}
                for gen, stats in gc_after.items()}

    result: dict[str, object] = {"sockets": args.sockets, "rate": args.rate, "notify_to": args.notify_to,
                                 "notifies": len(sent),
                                 "notify_failures": failures, "cpu_share_while_sending": cpu,
                                 "server_gc_pauses": gc_while,
                                 "notify_round_trip": percentiles(round_trips)}
    rows, series = [], {}
    for route, times in heard.items():
        lat = [(times[o] - t) * 1000 for o, t in sent.items() if o in times]
        series[route] = lat
        stats = percentiles(lat)
        missed = len(sent) - len(lat)
        result[route] = {**stats, "missed": missed}
        rows.append([route, stats.get("n", 0), missed, stats.get("p50", 0.0), stats.get("p95", 0.0),
                     stats.get("p99", 0.0), stats.get("max", 0.0)])
    print(table(rows, ["route", "heard", "missed", "p50 ms", "p95 ms", "p99 ms", "max ms"]))
    print("CPU while sending (1.0 = one core): " + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items()))
    rt = percentiles(round_trips)
    print(f"notify round trip (part of the above): p50 {rt.get('p50', 0):.1f} ms, p99 {rt.get('p99', 0):.1f} ms, "
          f"max {rt.get('max', 0):.1f} ms")
    print("paypush GC pauses while sending: " + ", ".join(
        f"gen{g} {s['count']:.0f} ({s['total_ms']:.0f} ms in all, {s['over_10ms']:.0f} over 10 ms)"
        for g, s in sorted(gc_while.items())))
    name = "push_latency" if args.notify_to == "same" else "push_latency_via_bridge"
    save(name, result)
    plot(series, args, name)


def plot(series: dict[str, list[float]], args: argparse.Namespace, name: str) -> None:
    fig, ax = new_plot()
    for route, lat in series.items():
        ordered = sorted(lat)
        if ordered:
            ax.plot(ordered, [i / len(ordered) * 100 for i in range(len(ordered))], label=route)
    ax.axvline(20, color="grey", ls="--", lw=1, label="target p99: 20 ms")
    ax.set_xscale("log")
    ax.set_xlabel("notify sent -> browser hears paid (ms, log)")
    ax.set_ylabel("percent of payments")
    ax.set_title(f"Push latency, {args.sockets} pages per route, {args.rate:.0f} notifies/s "
                 f"to the {args.notify_to} process", fontsize=10)
    ax.legend()
    save_plot(fig, name)


if __name__ == "__main__":
    main()
