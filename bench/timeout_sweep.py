"""How soon after their deadline are unpaid orders closed?

K orders are created through the API, each given a WeChat trade (createNative)
so closing means orderquery + closeorder at the simulator; nobody pays. The
delay queue dead-letters them at ORDER_TIMEOUT_SECONDS and the timeout worker
closes them. Reported: closed_at - expires_at per order, and the time from the
last deadline until every order is closed.
Run: python bench/timeout_sweep.py [--orders 1000 --timeout 20]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import cookie, new_plot, percentiles, running_stack, save, save_plot, table


async def create_orders(base_url: str, n: int) -> list[str]:
    xsrf = secrets.token_hex(16)
    headers = {"Cookie": f"{cookie()}; _xsrf={xsrf}", "X-XSRFToken": xsrf}
    ids: list[str] = []
    gate = asyncio.Semaphore(16)
    async with aiohttp.ClientSession(headers=headers) as http:

        async def one() -> None:
            async with gate:
                async with http.post(base_url + "/api/orders",
                                     json={"items": [{"sku_id": "bench-sku", "num": 1}]}) as resp:
                    assert resp.status == 201, await resp.text()
                    order_id = (await resp.json())["id"]
                async with http.get(base_url + f"/wxpay/createNative?orderId={order_id}") as resp:
                    assert resp.status == 200, await resp.text()
                ids.append(order_id)

        await asyncio.gather(*(one() for _ in range(n)))
    return ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--orders", type=int, default=1000)
    parser.add_argument("--timeout", type=int, default=20, help="ORDER_TIMEOUT_SECONDS for the run")
    args = parser.parse_args()
    with running_stack(ORDER_TIMEOUT_SECONDS=str(args.timeout)) as stack:
        stack.db.skus.insert_one({"_id": "bench-sku", "name": "Bench item", "price": 100,
                                  "stock": 10 * args.orders, "holds": {}})
        started = time.time()
        ids = asyncio.run(create_orders(stack.base_url, args.orders))
        created = time.time() - started
        print(f"{len(ids)} orders created with WeChat trades in {created:.1f}s; waiting for their deadlines",
              flush=True)
        last_deadline = max(d["expires_at"] for d in stack.db.orders.find({"_id": {"$in": ids}}))
        while stack.db.orders.count_documents({"_id": {"$in": ids}, "status": "unpaid"}):
            time.sleep(0.2)
            if time.time() > last_deadline + 300:
                break
        done = time.time()
        docs = list(stack.db.orders.find({"_id": {"$in": ids}}, {"status": 1, "expires_at": 1, "closed_at": 1}))
        sku = stack.db.skus.find_one({"_id": "bench-sku"})

    lag = [d["closed_at"] - d["expires_at"] for d in docs if d.get("closed_at")]
    stats = percentiles(lag)
    result = {"orders": len(ids), "closed": len(lag), "creation_seconds": created, "lag_seconds": stats,
              "all_closed_after_last_deadline": done - last_deadline,
              "stock_back": sku["stock"] == 10 * args.orders and not sku.get("holds")}
    print(table([[len(ids), len(lag), stats.get("p50", 0.0), stats.get("p99", 0.0), stats.get("max", 0.0),
                  done - last_deadline, result["stock_back"]]],
                ["orders", "closed", "lag p50 s", "lag p99 s", "lag max s", "last deadline -> all closed s",
                 "stock all back"]))
    save("timeout_sweep", result)
    plot(lag)


def plot(lag: list[float]) -> None:
    fig, ax = new_plot()
    ax.hist(lag, bins=40, color="tab:blue")
    ax.axvline(30, color="grey", ls="--", lw=1, label="target: within 30 s")
    ax.set_xlabel("closed_at - deadline (s)")
    ax.set_ylabel("orders")
    ax.set_title(f"Timeout sweep: {len(lag)} expired orders")
    ax.legend()
    save_plot(fig, "timeout_sweep")


if __name__ == "__main__":
    main()
