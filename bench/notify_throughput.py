"""How many WeChat notifies per second does one process absorb?

Each notify is for a fresh unpaid order, fully checked (XML, signature, appid,
mch_id, amount), recorded through the conditional update with its log entry,
and its "paid" event published to RabbitMQ with publisher confirms. Load runs
at rising concurrency until errors or latency blow up. A second pass samples
the server with py-spy to name where the time goes, and reads the CPU time of
the server and of the embedded MongoDB (nx-27017) process.
Run: python bench/notify_throughput.py [--levels 1,2,4,8,16,32,64 --seconds 6]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (
    RESULTS,
    cpu_seconds,
    new_plot,
    notify_body,
    percentiles,
    running_stack,
    save,
    save_plot,
    table,
)


async def load(base_url: str, orders: list[tuple[str, int]], concurrency: int,
               seconds: float) -> dict[str, float]:
    queue = collections.deque(orders)
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < stop_at and queue:
                order_id, fee = queue.popleft()
                body = notify_body(order_id, fee)
                t0 = time.perf_counter()
                try:
                    async with http.post(base_url + "/wxpay/notify", data=body,
                                         timeout=aiohttp.ClientTimeout(total=10)) as resp:
                        ok = b"SUCCESS" in await resp.read()
                except (TimeoutError, aiohttp.ClientError):
                    ok = False
                latencies.append((time.perf_counter() - t0) * 1000)
                errors += not ok

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    stats = percentiles(latencies)
    return {"concurrency": concurrency, "rate": len(latencies) / elapsed, "errors": errors, **stats}


def profile(stack, orders: list[tuple[str, int]], concurrency: int, seconds: float) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """py-spy samples the server while it is under load; returns where the samples fall."""
    out = RESULTS / "notify_profile.txt"
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    spy = subprocess.Popen([pyspy, "record", "--pid", str(stack.server_pid), "--duration", str(int(seconds)),
                            "--rate", "200", "--format", "raw", "--output", str(out), "--nonblocking"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server_cpu, nx_cpu = cpu_seconds(stack.server_pid), cpu_seconds(stack.mongo_pid)
    started = time.perf_counter()
    asyncio.run(load(stack.base_url, orders, concurrency, seconds))
    elapsed = time.perf_counter() - started
    server_cpu, nx_cpu = cpu_seconds(stack.server_pid) - server_cpu, cpu_seconds(stack.mongo_pid) - nx_cpu
    spy.wait(60)
    return {"server_cpu_share": server_cpu / elapsed, "mongo_cpu_share": nx_cpu / elapsed,
            **summarise(out)}


# py-spy names a frame "function (path:line)", with paths relative to sys.path.
OWN_CODE = ("(server/", "(handlers/", "(workers/", "(settings.py")
CATEGORIES = (
    ("idle (waiting on sockets)", ("select.py", "selectors.py", "epoll")),
    ("pymongo (client side of the store)", ("pymongo/", "bson/")),
    ("aio-pika / aiormq / pamqp", ("aio_pika/", "aiormq/", "pamqp/")),
    ("aiohttp", ("aiohttp/",)),
    ("tornado", ("tornado/",)),
    ("paypush code", OWN_CODE),
    ("xmltodict / expat", ("xmltodict", "expat")),
    ("logging", ("logging/",)),
    ("asyncio", ("asyncio/",)),
)


def summarise(raw: Path) -> dict[str, object]:
    """Leaf-frame samples by library, and the hottest leaf functions."""
    by_cat: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    total = own = 0
    if not raw.exists():
        return {"profile": "py-spy produced nothing (is ptrace allowed?)"}
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        own += n if any(k in stack for k in OWN_CODE) else 0
        leaf = stack.split(";")[-1]
        leaves[leaf] += n
        cat = next((name for name, keys in CATEGORIES if any(k in leaf for k in keys)), "other")
        by_cat[cat] += n
    return {"samples": total,
            "own_code_on_stack": round(own / total * 100, 1) if total else 0.0,
            "by_library": {k: round(v / total * 100, 1) for k, v in by_cat.most_common()} if total else {},
            "hottest": [(leaf, round(n / total * 100, 1)) for leaf, n in leaves.most_common(12)] if total else []}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--levels", default="1,2,4,8,16,32,64")
    parser.add_argument("--seconds", type=float, default=6.0)
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    rows, results = [], []
    with running_stack() as stack:
        # Up to 1000/s per level, then the profile pass, then the warm-up.
        orders = stack.seed_orders(int(1000 * args.seconds * (len(levels) + 1)) + 200)
        pool = collections.deque(orders)
        asyncio.run(load(stack.base_url, [pool.popleft() for _ in range(200)], 8, 2))  # warm-up
        for c in levels:
            batch = [pool.popleft() for _ in range(min(len(pool), int(1000 * args.seconds)))]
            r = asyncio.run(load(stack.base_url, batch, c, args.seconds))
            results.append(r)
            rows.append([c, r["rate"], r["errors"], r.get("p50", 0.0), r.get("p99", 0.0)])
            print(f"  concurrency {c}: {r['rate']:.0f}/s, p99 {r.get('p99', 0):.1f} ms, errors {r['errors']}",
                  flush=True)
        best = max(results, key=lambda r: r["rate"] if not r["errors"] else 0)
        batch = [pool.popleft() for _ in range(min(len(pool), int(1000 * args.seconds)))]
        prof = profile(stack, batch, int(best["concurrency"]), args.seconds)
    print(table(rows, ["concurrency", "notifies/s", "errors", "p50 ms", "p99 ms"]))
    print(f"profile at concurrency {best['concurrency']}: server process CPU "
          f"{prof.get('server_cpu_share', 0):.0%}, nx-27017 (MongoDB) CPU {prof.get('mongo_cpu_share', 0):.0%}")
    print(f"  paypush code is on the stack in {prof.get('own_code_on_stack', 0)}% of samples "
          "(inclusive); by library of the leaf frame:")
    for cat, share in dict(prof.get("by_library", {})).items():  # type: ignore[call-overload]
        print(f"  {share:5.1f}%  {cat}")
    print("  hottest leaf functions:")
    for leaf, share in prof.get("hottest", []):  # type: ignore[attr-defined]
        print(f"  {share:5.1f}%  {leaf}")
    save("notify_throughput", {"levels": results, "profile": prof})
    plot(results)


def plot(results: list[dict[str, float]]) -> None:
    fig, ax = new_plot()
    c = [r["concurrency"] for r in results]
    ax.plot(c, [r["rate"] for r in results], "o-", color="tab:green", label="notifies/s")
    ax.axhline(300, color="grey", ls="--", lw=1, label="target: 300/s")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent notifies in flight")
    ax.set_ylabel("notifies recorded per second")
    ax2 = ax.twinx()
    ax2.plot(c, [r.get("p99", 0) for r in results], "s--", color="tab:red", label="p99 latency (ms)")
    ax2.set_ylabel("p99 latency (ms)")
    fig.legend(loc="upper left", fontsize=8)
    ax.set_title("Notify throughput, one process, embedded MongoDB")
    save_plot(fig, "notify_throughput")


if __name__ == "__main__":
    main()
