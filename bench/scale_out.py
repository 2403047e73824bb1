"""Many waiting pay pages on several paypush processes sharing one port.

``--processes`` paypush processes listen on one address with REUSE_PORT=1
(the kernel spreads the connections), on one nx-27017 and RabbitMQ. Client
processes (bench/ws_fleet.py) open ``--pages`` bare pay-page WebSockets from
several loopback source addresses, and come back by the page's own rules when
closed. Then:

1. memory: the server processes' RSS with every page open, against the
   same processes before the first page, per page;
2. push: ``--rate`` notifies/s for ``--seconds`` to the shared port (the
   kernel hands each to a random process, so most events cross RabbitMQ and
   another process's bridge), for orders that a native page and a Web STOMP
   subscriber (``--stomp`` of them) both watch: notify sent -> "paid" heard,
   both routes, same notifies;
3. restart storm (``--restart``): one process is stopped with SIGTERM (its
   pages get 1001) and started again at once while the notifies go on; how
   fast its pages are back, and whether every page heard its "paid".
Run: python bench/scale_out.py [--pages 100000 --processes 6 --stomp 10000 --rate 100 --seconds 20 --restart]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.clients import ClientFleet, Job, split
from bench.harness import (
    RESULTS,
    cookie,
    cores_since,
    cpu_sample,
    ensure_rabbitmq_sockets,
    new_plot,
    notify_body,
    percentiles,
    rabbitmq_memory_kib,
    rabbitmq_pid,
    rss_kib,
    running_stack,
    save,
    save_plot,
    table,
)
from bench.ws_fleet import FLEET_SOCKETS, Fleets, jobs_for
from server.push.tokens import PushTokens

PER_PROCESS = 17_000  # pages a process is sized for, under its 20,000-file limit


async def send_notifies(base_url: str, orders: list[tuple[str, int]], rate: float, seconds: float,
                        seed: int) -> tuple[dict[str, float], list[float], int]:
    """Notifies at ``rate``/s for random orders (each once); returns when each was
    sent, the round trips (ms) and how many were not acknowledged."""
    sent: dict[str, float] = {}
    round_trips: list[float] = []
    failures = 0
    chosen = random.Random(seed).sample(orders, min(len(orders), int(rate * seconds)))
    # A new connection per notify, as WeChat's senders come: each lands on a process the kernel picks.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True)) as http:

        async def one(order_id: str, fee: int) -> None:
            nonlocal failures
            body = notify_body(order_id, fee)
            t0 = time.time()
            sent[order_id] = t0
            for _ in range(5):  # WeChat retries a notify it got no answer to
                try:
                    async with http.post(base_url + "/wxpay/notify", data=body,
                                         timeout=aiohttp.ClientTimeout(total=10)) as resp:
                        if b"SUCCESS" in await resp.read():
                            round_trips.append((time.time() - t0) * 1000)
                            return
                except (aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(0.5)
            failures += 1

        start = time.perf_counter()
        tasks = []
        for i, (order_id, fee) in enumerate(chosen):
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(one(order_id, fee)))
        await asyncio.gather(*tasks)
    return sent, round_trips, failures


def wait_live(fleets: Fleets, want: int, within: float) -> float:
    """Wait until ``want`` pages are live; returns the seconds it took."""
    started = time.monotonic()
    while True:
        live = fleets.report()["live"]
        if live >= want:
            return time.monotonic() - started
        if time.monotonic() - started > within:
            raise RuntimeError(f"only {live} of {want} pages live after {within:.0f} s")
        time.sleep(1.0)


def bindings(vhost: str = "/") -> int:
    """Keys bound on paypush.pages to the processes' bridge queues, as RabbitMQ counts them."""
    out = subprocess.run(["rabbitmqctl", "list_bindings", "-q", "-p", vhost, "source_name", "destination_name"],
                         capture_output=True, text=True, timeout=300).stdout
    return sum(1 for line in out.splitlines() if line.startswith("paypush.pages\tpaypush.bridge."))


def wait_bound(want: int, within: float = 600) -> float:
    """Wait until RabbitMQ holds ``want`` page bindings; returns the seconds it took."""
    started = time.monotonic()
    while (bound := bindings()) < want:
        if time.monotonic() - started > within:
            raise RuntimeError(f"only {bound} of {want} page keys bound after {within:.0f} s")
        time.sleep(2)
    return time.monotonic() - started


def latencies(sent: dict[str, float], heard: dict[str, float]) -> tuple[dict[str, float], int]:
    lat = [(heard[o] - t) * 1000 for o, t in sent.items() if o in heard]
    return percentiles(lat), len(sent) - len(lat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=100_000)
    parser.add_argument("--processes", type=int, default=0, help=f"default: one per {PER_PROCESS} pages, and one more")
    parser.add_argument("--stomp", type=int, default=10_000, help="Web STOMP subscribers (RabbitMQ's own limit)")
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--restart", action="store_true", help="also stop and restart one process")
    args = parser.parse_args()
    # One more than the pages need: while one process restarts, the others hold its pages.
    processes = args.processes or max(1, -(-args.pages // PER_PROCESS)) + 1
    stomp = min(args.stomp, args.pages)
    ensure_rabbitmq_sockets(stomp + processes + 500)
    result: dict[str, Any] = {"pages": args.pages, "processes": processes, "stomp": stomp, "rate": args.rate}
    with running_stack(REUSE_PORT="1") as stack:
        servers = [(stack.server, stack.base_url)] + [stack.spawn_server(stack.port) for _ in range(processes - 1)]
        pids = [proc.pid for proc, _ in servers]
        time.sleep(3)  # start-up work done before the baseline
        rss_before = [rss_kib(pid) for pid in pids]
        rabbit_before = rabbitmq_memory_kib()
        orders = stack.seed_orders(args.pages)
        ids = [o for o, _ in orders]
        print(f"{processes} processes on port {stack.port}; opening {args.pages} pages "
              f"({-(-args.pages // FLEET_SOCKETS)} client processes)", flush=True)
        fleets = Fleets(jobs_for("127.0.0.1", stack.port, cookie(), ids))
        stomp_fleet: ClientFleet | None = None
        try:
            result["open_seconds"] = wait_live(fleets, args.pages, within=1800)
            result["bind_wait_seconds"] = wait_bound(args.pages)
            print(f"{args.pages} pages live in {result['open_seconds']:.0f} s, every key bound "
                  f"{result['bind_wait_seconds']:.0f} s later", flush=True)
            fleets.freeze()
            time.sleep(3)
            rss_after = [rss_kib(pid) for pid in pids]
            result["rss_kib"] = {"before": rss_before, "after": rss_after}
            result["server_kib_per_page"] = (sum(rss_after) - sum(rss_before)) / args.pages
            result["rabbitmq_kib_per_page"] = (rabbitmq_memory_kib() - rabbit_before) / args.pages
            print(f"server memory per page: {result['server_kib_per_page']:.2f} KiB (summed over {processes} "
                  f"processes); RabbitMQ {result['rabbitmq_kib_per_page']:.2f} KiB per page", flush=True)

            # Where the machine's two cores go with every page waiting and nothing paid yet.
            groups = {"paypush": pids, "page clients": [p.pid for p in fleets.procs], "RabbitMQ": [rabbitmq_pid()],
                      "MongoDB (nx-27017)": [stack.mongo_pid]}
            start = cpu_sample(groups)
            time.sleep(10)
            result["idle_cores"] = cores_since(start, groups)
            print("cores used with every page waiting: " + ", ".join(
                f"{name} {cores:.2f}" for name, cores in result["idle_cores"].items()), flush=True)

            watched = ids[:stomp]
            if stomp:
                tokens = PushTokens(stack.env()["COOKIE_SECRET"])
                dest = {o: f"/exchange/paynotify/{tokens.routing_key(o)}" for o in watched}
                stomp_fleet = ClientFleet([Job("stomp", part, destinations=dest,
                                               passcode=stack.env()["STOMP_PASSCODE"]) for part in split(watched, 2)])
                stomp_fleet.start()
                groups["STOMP clients"] = [p.pid for p in stomp_fleet.procs]
            by_id = dict(orders)
            pool = [(o, by_id[o]) for o in (watched or ids)]
            print(f"sending {args.rate:.0f} notifies/s for {args.seconds:.0f} s", flush=True)
            start = cpu_sample(groups)
            sent, round_trips, failures = asyncio.run(send_notifies(stack.base_url, pool, args.rate, args.seconds, 1))
            result["push_cores"] = cores_since(start, groups)
            print("cores used while notifies came: " + ", ".join(
                f"{name} {cores:.2f}" for name, cores in result["push_cores"].items()), flush=True)
            time.sleep(3)
            native, missed = latencies(sent, fleets.report()["heard"])
            result["push"] = {"native": {**native, "missed": missed}, "notify_failures": failures,
                              "notify_round_trip": percentiles(round_trips)}
            if stomp_fleet is not None:
                stomp_stats, stomp_missed = latencies(sent, stomp_fleet.stop())
                stomp_fleet = None
                result["push"]["stomp"] = {**stomp_stats, "missed": stomp_missed}
            print(table([[route, s.get("n", 0), s["missed"], s.get("p50", 0.0), s.get("p99", 0.0), s.get("max", 0.0)]
                         for route, s in result["push"].items() if isinstance(s, dict) and "missed" in s],
                        ["route", "heard", "missed", "p50 ms", "p99 ms", "max ms"]), flush=True)

            if args.restart:
                result["restart"] = restart_storm(stack, servers, fleets, orders, sent, args)
        finally:
            if stomp_fleet is not None:
                stomp_fleet.stop()
            fleets.stop()
    save(f"scale_out_{args.pages}", result)
    plot_all()


def restart_storm(stack: Any, servers: list[Any], fleets: Fleets, orders: list[tuple[str, int]],
                  already: dict[str, float], args: argparse.Namespace) -> dict[str, Any]:
    """SIGTERM one process and start it again at once, notifies going on throughout."""
    victim, _ = servers[-1]
    unpaid = [o for o in orders if o[0] not in already]
    stopped_at = time.time()
    print(f"restart storm: SIGTERM to process {victim.pid}", flush=True)
    victim.send_signal(signal.SIGTERM)
    loop_result: dict[str, Any] = {}

    async def during() -> None:
        sending = asyncio.create_task(asyncio.to_thread(
            lambda: loop_result.update(zip(("sent", "round_trips", "failures"), asyncio.run(
                send_notifies(stack.base_url, unpaid, args.rate, 30, 2)), strict=True))))
        await asyncio.to_thread(victim.wait, 120)
        loop_result["exit_code"] = victim.returncode
        loop_result["stopped_in"] = time.time() - stopped_at
        proc, _ = await asyncio.to_thread(stack.spawn_server, stack.port)
        loop_result["restarted_in"] = time.time() - stopped_at
        servers[-1] = (proc, stack.base_url)
        await sending

    curve: list[tuple[float, int]] = []
    runner = threading.Thread(target=lambda: asyncio.run(during()))
    runner.start()
    # Every page of the stopped process is counted from the SIGTERM until the
    # process has exited and every page is live again.
    while True:
        live = fleets.report()["live"]
        curve.append((time.time() - stopped_at, live))
        if "exit_code" in loop_result and live >= args.pages:
            break
        if curve[-1][0] > 300:
            raise RuntimeError(f"only {live} of {args.pages} pages live 300 s after the SIGTERM")
        time.sleep(1)
    back_in = max((t for t, live in curve if live < args.pages), default=0.0)
    runner.join()
    sent: dict[str, float] = loop_result["sent"]
    deadline = time.monotonic() + 60
    while (heard := fleets.report()["heard"]) and any(o not in heard for o in sent):
        if time.monotonic() > deadline:
            break
        time.sleep(1)
    report = fleets.report()
    missed = [o for o in sent if o not in report["heard"]]
    out = {"exit_code": loop_result["exit_code"], "stopped_in_s": loop_result["stopped_in"],
           "restarted_in_s": loop_result["restarted_in"], "all_back_in_s": back_in,
           "curve": curve, "drops": report["drops"], "failed_attempts": report["failures"], "notified": len(sent),
           "notify_failures": loop_result["failures"], "paid_missed": len(missed)}
    print(f"restart: stopped in {out['stopped_in_s']:.1f} s (exit {out['exit_code']}), started again at "
          f"{out['restarted_in_s']:.1f} s; all {args.pages} pages live again {back_in:.1f} s after the "
          f"SIGTERM; closes seen by pages: {report['drops']}; attempts that failed: {report['failures']}; "
          f"{len(sent)} payments during it, "
          f"{len(missed)} never heard", flush=True)
    return out


def plot_all() -> None:
    """Memory and p99 against waiting pages, from every size run so far; the restart curve."""
    runs = sorted((json.loads(p.read_text()) for p in RESULTS.glob("scale_out_*.json")), key=lambda r: r["pages"])
    if not runs:
        return
    fig, (left, right) = new_plot(ncols=2)
    pages = [r["pages"] for r in runs]
    left.plot(pages, [r["server_kib_per_page"] for r in runs], marker="o", label="paypush (all processes)")
    left.plot(pages, [r.get("rabbitmq_kib_per_page", 0) for r in runs], marker="o", label="RabbitMQ")
    left.axhline(16, color="grey", ls="--", lw=1, label="target 16 KiB")
    left.set_xscale("log")
    left.set_xlabel("waiting pages")
    left.set_ylabel("KiB per page")
    left.legend()
    for route in ("native", "stomp"):
        pts = [(r["pages"], r["push"][route]["p99"]) for r in runs if route in r.get("push", {})
               and "p99" in r["push"][route]]
        if pts:
            right.plot(*zip(*pts, strict=True), marker="o", label=f"{route} p99")
    right.axhline(50, color="grey", ls="--", lw=1, label="target 50 ms")
    right.set_xscale("log")
    right.set_xlabel("waiting pages")
    right.set_ylabel("notify sent -> page hears paid, p99 (ms)")
    right.legend()
    save_plot(fig, "scale_out")
    storms = [r for r in runs if "restart" in r]
    if storms:
        fig, ax = new_plot()
        for r in storms:
            t, live = zip(*r["restart"]["curve"], strict=True)
            ax.plot(t, live, label=f"{r['pages']} pages, {r['processes']} processes")
        ax.set_xlabel("seconds after SIGTERM to one process")
        ax.set_ylabel("pages live")
        ax.axvline(60, color="grey", ls="--", lw=1, label="target: all back within 60 s")
        ax.legend()
        save_plot(fig, "scale_out_restart")


if __name__ == "__main__":
    main()
