"""Does each process's bridge work grow with the number of processes?

``n`` paypush processes (1, 2, 4, 8) share ``--pages`` waiting pay pages
(bare WebSockets, bench/ws_fleet.py), the same pages and events at every count. One more process takes every notify
(``--rate``/s for random ones of those orders) and holds no page, so what the
page-holding processes do while the notifies flow is their bridges' work
(and keep-alive). Measured on this checkout and on ``--before`` (default: the
last commit whose bridge queue was bound with ``#``, so that every process
received every event), same machine, same run.
Run: python bench/bridge_fanout.py [--counts 1,2,4,8 --pages 2400 --rate 100 --seconds 20 --before a4376c9]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import ROOT, cookie, cpu_seconds, new_plot, notify_body, running_stack, save, save_plot, table
from bench.ws_fleet import Fleets, jobs_for


def checkout(commit: str) -> Path:
    """A worktree of ``commit`` beside this one (kept for later runs)."""
    sha = subprocess.run(["git", "rev-parse", "--short", commit], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    path = Path("/tmp") / f"paypush-{sha}"
    if not (path / "server").is_dir():
        subprocess.run(["git", "worktree", "add", "--detach", str(path), sha], cwd=ROOT, check=True,
                       capture_output=True)
    return path


async def send(base_url: str, orders: list[tuple[str, int]], rate: float, seconds: float) -> tuple[int, int]:
    """Notifies at ``rate``/s for random orders; returns how many were sent and refused."""
    rng = random.Random(7)
    refused = 0
    async with aiohttp.ClientSession() as http:

        async def one(order_id: str, fee: int) -> None:
            nonlocal refused
            async with http.post(base_url + "/wxpay/notify", data=notify_body(order_id, fee)) as resp:
                refused += b"SUCCESS" not in await resp.read()

        started = time.perf_counter()
        tasks = []
        chosen = rng.sample(orders, min(len(orders), int(rate * seconds)))
        for i, (order_id, fee) in enumerate(chosen):
            await asyncio.sleep(max(0.0, started + i / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(one(order_id, fee)))
        await asyncio.gather(*tasks)
    return len(chosen), refused


def measure(code: Path, count: int, pages: int, rate: float, seconds: float) -> dict[str, Any]:
    with running_stack(code=code) as stack:
        holders = [stack.spawn_server() for _ in range(count)]
        ports = [int(url.rsplit(":", 1)[1]) for _, url in holders]
        orders = stack.seed_orders(pages)
        ids = [o for o, _ in orders]
        fleets = Fleets([job for n, port in enumerate(ports)
                         for job in jobs_for("127.0.0.1", port, cookie(), ids[n::count])])
        try:
            deadline = time.monotonic() + 300
            while (live := fleets.report()["live"]) < len(ids):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {live} of {len(ids)} pages live")
                time.sleep(0.5)
            fleets.freeze()
            time.sleep(2)  # the last pages' bindings and first reads settle
            pids = [proc.pid for proc, _ in holders]
            before = [cpu_seconds(pid) for pid in pids]
            started = time.monotonic()
            notified, refused = asyncio.run(send(stack.base_url, orders, rate, seconds))
            elapsed = time.monotonic() - started
            shares = [(cpu_seconds(pid) - b) / elapsed for pid, b in zip(pids, before, strict=True)]
            deadline = time.monotonic() + 30
            while len(heard := fleets.report()["heard"]) < notified - refused and time.monotonic() < deadline:
                time.sleep(0.5)
        finally:
            fleets.stop()
    return {"processes": count, "pages": pages, "notifies": notified, "refused": refused,
            "heard": len(heard), "cpu_per_process_mean": sum(shares) / len(shares), "cpu_per_process_max": max(shares),
            "cpu_all_holders": sum(shares)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", default="1,2,4,8")
    parser.add_argument("--pages", type=int, default=2400, help="waiting pages, shared among the processes")
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--before", default="a4376c9", help="the commit to compare with ('' to skip)")
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    codes = {"now": ROOT, **({f"before ({args.before})": checkout(args.before)} if args.before else {})}
    results: list[dict[str, Any]] = []
    for name, code in codes.items():
        for count in counts:
            r = {"code": name, **measure(code, count, args.pages, args.rate, args.seconds)}
            results.append(r)
            print(f"  {name}: {count} processes: CPU per page-holding process {r['cpu_per_process_mean']:.3f} "
                  f"(max {r['cpu_per_process_max']:.3f}), all of them {r['cpu_all_holders']:.3f}; "
                  f"{r['heard']} of {r['notifies']} payments heard", flush=True)
    print(table([[r["code"], r["processes"], r["cpu_per_process_mean"], r["cpu_per_process_max"], r["cpu_all_holders"],
                  r["heard"], r["notifies"]] for r in results],
                ["code", "processes", "CPU/process", "max", "all processes", "heard", "notifies"]))
    save("bridge_fanout", {"rate": args.rate, "pages": args.pages, "levels": results})
    fig, ax = new_plot()
    for name in codes:
        rows = [r for r in results if r["code"] == name]
        ax.plot([r["processes"] for r in rows], [r["cpu_per_process_mean"] for r in rows], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("page-holding processes")
    ax.set_ylabel("CPU per process (1.0 = one core)")
    ax.set_title(f"Bridge work per process, {args.rate:.0f} notifies/s taken by another process, "
                 f"{args.pages} pages in all", fontsize=10)
    ax.legend()
    save_plot(fig, "bridge_fanout")


if __name__ == "__main__":
    main()
