"""A flash sale: does placing and paying stay flat as unpaid orders pile up on one SKU?

One SKU with plenty of stock. At each level of outstanding holds (unpaid
orders holding that SKU: 0 -> 50,000) the bench measures, in one run against
one server:

- placement: ``POST /api/orders`` for one item of that SKU at concurrency 8
  for ``--seconds``, each request as another shopper (a signed cookie of its
  own, so the per-user unpaid-order cap is never the thing measured);
- notify: WeChat's v2 payment notify for orders placed at that level, at
  concurrency 8.

The holds between levels are seeded in bulk, straight into MongoDB: copies of
an order placed through the API at the start (same fields: ``stock_held``,
``stock_v``, the created log, ``unpaid``), with new ids and owners, and the
SKU's stock taken down by as many, which is exactly what that many placements
leave behind. Placing 50,000 through the API would take minutes and measure
nothing more. The orders placed during the levels add to the count.

Also reported per level: the SKU document's size (BSON bytes): it must not grow.
At the end the invariant is checked: on hand + what every order holds = the
stock the SKU started with.
Run: python bench/hot_sku.py [--levels 0,10000,25000,50000 --seconds 8 --notifies 800]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import bson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import cookie, new_plot, notify_body, percentiles, running_stack, save, save_plot, table
from server.domain.stock import held_by

SKU = "hot-sku"
START_STOCK = 10_000_000
CONCURRENCY = 8


async def place(base_url: str, seconds: float, tag: str) -> tuple[list[str], list[float], int]:
    """Orders placed in ``seconds`` at CONCURRENCY; (ids, latencies ms, errors)."""
    ids: list[str] = []
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def worker(w: int) -> None:
            nonlocal errors
            n = 0
            while time.perf_counter() < stop_at:
                n += 1
                xsrf = secrets.token_hex(16)
                headers = {"Cookie": f"{cookie(f'shopper-{tag}-{w}-{n}')}; _xsrf={xsrf}", "X-XSRFToken": xsrf}
                t0 = time.perf_counter()
                async with http.post(base_url + "/api/orders", headers=headers,
                                     json={"items": [{"sku_id": SKU, "num": 1}]}) as resp:
                    body = await resp.json()
                latencies.append((time.perf_counter() - t0) * 1000)
                if resp.status == 201:
                    ids.append(body["id"])
                else:
                    errors += 1

        await asyncio.gather(*(worker(w) for w in range(CONCURRENCY)))
    return ids, latencies, errors


async def notify(base_url: str, bodies: list[bytes]) -> tuple[float, list[float], int]:
    """Notifies at CONCURRENCY; (rate, latencies ms, errors)."""
    queue = list(reversed(bodies))
    latencies: list[float] = []
    errors = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def worker() -> None:
            nonlocal errors
            while queue:
                body = queue.pop()
                t0 = time.perf_counter()
                async with http.post(base_url + "/wxpay/notify", data=body,
                                     headers={"Content-Type": "text/xml"}) as resp:
                    ok = resp.status == 200 and b"SUCCESS" in await resp.read()
                latencies.append((time.perf_counter() - t0) * 1000)
                errors += not ok

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        elapsed = time.perf_counter() - started
    return len(latencies) / elapsed, latencies, errors


def seed(db: Any, template: dict[str, Any], n: int) -> None:
    """``n`` more unpaid orders holding one of the SKU each, as placement leaves them."""
    now = time.time()
    for start in range(0, n, 2000):
        docs = [{**template, "_id": time.strftime("%Y%m%d") + secrets.token_hex(12),
                 "user": f"seed-{(start + i) % 20000}", "created_at": now, "expires_at": now + 3600}
                for i in range(min(2000, n - start))]
        db.orders.insert_many(docs)
        db.skus.update_one({"_id": SKU}, {"$inc": {"stock": -len(docs)}})


def outstanding(db: Any) -> int:
    return START_STOCK - int(db.skus.find_one({"_id": SKU})["stock"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--levels", default="0,10000,25000,50000")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--notifies", type=int, default=800, help="notifies per level (at most the orders placed)")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    rows: list[dict[str, Any]] = []
    with running_stack() as stack:
        db = stack.db
        db.skus.insert_one({"_id": SKU, "name": "Flash sale item", "price": 100, "stock": START_STOCK})
        ids, _, _ = asyncio.run(place(stack.base_url, 1.0, "warm-up"))
        template = {k: v for k, v in db.orders.find_one({"_id": ids[0]}).items()
                    if k not in ("_id", "user", "created_at", "expires_at")}
        for level in levels:
            missing = level - outstanding(db)
            if missing > 0:
                t0 = time.perf_counter()
                seed(db, template, missing)
                print(f"seeded {missing} holds in {time.perf_counter() - t0:.1f}s", flush=True)
            at_start = outstanding(db)
            sku_bytes = len(bson.encode(db.skus.find_one({"_id": SKU})))
            placed, latencies, errors = asyncio.run(place(stack.base_url, args.seconds, str(level)))
            rate = len(placed) / args.seconds
            bodies = [notify_body(order_id, 100) for order_id in placed[:args.notifies]]
            notify_rate, notify_latencies, notify_errors = asyncio.run(notify(stack.base_url, bodies))
            row = {"holds": at_start, "placed_per_s": rate, "place_ms": percentiles(latencies),
                   "place_errors": errors, "notifies_per_s": notify_rate, "notify_ms": percentiles(notify_latencies),
                   "notify_errors": notify_errors, "notifies": len(bodies), "sku_doc_bytes": sku_bytes}
            rows.append(row)
            print(f"holds {at_start}: {rate:.0f} placed/s (p50 {row['place_ms'].get('p50', 0):.1f} ms), "
                  f"{notify_rate:.0f} notifies/s, SKU document {sku_bytes} B", flush=True)
        time.sleep(2)  # the markers of the last level's orders are tidied just after their replies
        sku = db.skus.find_one({"_id": SKU})
        held = sum(held_by(order, SKU, sku) for order in db.orders.find({}))
        invariant = {"on_hand": int(sku["stock"]), "held_by_orders": held, "started_with": START_STOCK,
                     "holds": int(sku["stock"]) + held == START_STOCK,
                     "markers_left": sum(len(sku.get(k) or {}) for k in ("taking", "giving", "retaking"))}

    base = rows[0]["placed_per_s"]
    for row in rows:
        row["placement_vs_zero"] = row["placed_per_s"] / base if base else 0.0
    print(table([[r["holds"], r["placed_per_s"], r["place_ms"].get("p50", 0.0), r["place_ms"].get("p99", 0.0),
                  f"{r['placement_vs_zero']:.0%}", r["notifies_per_s"], r["notify_ms"].get("p50", 0.0),
                  r["sku_doc_bytes"], r["place_errors"] + r["notify_errors"]] for r in rows],
                ["holds on the SKU", "placed/s", "p50 ms", "p99 ms", "vs 0 holds", "notifies/s", "notify p50 ms",
                 "SKU doc B", "errors"]))
    print("invariant:", invariant)
    save("hot_sku", {"levels": rows, "seconds": args.seconds, "concurrency": CONCURRENCY, "invariant": invariant})
    plot(rows)


def plot(rows: list[dict[str, Any]]) -> None:
    fig, ax = new_plot()
    holds = [r["holds"] for r in rows]
    ax.plot(holds, [r["placed_per_s"] for r in rows], "o-", color="tab:blue", label="orders placed / s")
    ax.plot(holds, [r["notifies_per_s"] for r in rows], "s-", color="tab:green", label="notifies / s")
    ax.axhline(0.8 * rows[0]["placed_per_s"], color="grey", ls="--", lw=1, label="80% of placement at 0 holds")
    ax.set_xlabel("unpaid orders holding the SKU")
    ax.set_ylabel("per second (concurrency 8)")
    ax.set_ylim(bottom=0)
    ax.set_title("Hot SKU: placement and notify against outstanding holds")
    ax.legend()
    save_plot(fig, "hot_sku")


if __name__ == "__main__":
    main()
