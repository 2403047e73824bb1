"""How long does reconciling a 10,000-line bill take, and how much memory?

A sandbox stack per API: N orders are placed through the API and paid at the
simulator (1 % with the notify dropped, so reconciliation has payments to
fix); 5 % are refunded by an operator. Then ``paypush reconcile --json``
runs as its own process, as an operator would run it, and is timed: the wall
time of the whole command (start-up, bill download, streaming parse,
comparison, fixes) and its peak resident memory (the kernel's ru_maxrss for
that process, from wait4). The same is run again: the second run has nothing
to fix.
Run: python bench/reconcile_bill.py [--orders 10000 --api v2,v3]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import BENCH_USER, ROOT, cookie, running_stack, save, table
from server.gateway.abc import BEIJING

SKUS = 200


async def place_and_pay(base_url: str, pay_url: str, n: int, price: int = 100) -> list[dict[str, Any]]:
    xsrf = secrets.token_hex(16)
    headers = {"Cookie": f"{cookie()}; _xsrf={xsrf}", "X-XSRFToken": xsrf}
    gate = asyncio.Semaphore(16)
    orders: list[dict[str, Any]] = []
    async with aiohttp.ClientSession(headers=headers) as http:

        async def one(i: int) -> None:
            async with gate:
                # Spread over SKUS: one SKU holding 10,000 orders is issue 17's subject, not this bench's.
                async with http.post(base_url + "/api/orders",
                                     json={"items": [{"sku_id": f"bench-sku-{i % SKUS}", "num": 1}]}) as resp:
                    assert resp.status == 201, await resp.text()
                    order = await resp.json()
                async with http.get(base_url + f"/wxpay/createNative?orderId={order['id']}") as resp:
                    assert resp.status == 200, await resp.text()
                    code_url = (await resp.json())["code_url"]
                dropped = i % 100 == 0
                async with http.post(pay_url, json={"code_url": code_url, "notify": {"drop": dropped}}) as resp:
                    assert resp.status == 200, await resp.text()
                orders.append({**order, "notify_dropped": dropped})

        await asyncio.gather(*(one(i) for i in range(n)))
    return orders


async def refund_some(base_url: str, orders: list[dict[str, Any]], share: float = 0.05) -> int:
    xsrf = secrets.token_hex(16)
    headers = {"Cookie": f"{cookie()}; _xsrf={xsrf}", "X-XSRFToken": xsrf}
    gate = asyncio.Semaphore(8)
    notified = [o for o in orders if not o["notify_dropped"]]  # the others are unpaid here until reconciled
    picked = notified[::int(1 / share)]
    async with aiohttp.ClientSession(headers=headers) as http:

        async def one(order: dict[str, Any]) -> None:
            async with gate, http.post(base_url + f"/api/orders/{order['id']}/refunds",
                                       json={"amount": order["pay_money"] // 2, "reason": "bench"}) as resp:
                assert resp.status == 201, await resp.text()

        await asyncio.gather(*(one(o) for o in picked))
    return len(picked)


def reconcile(env: dict[str, str], date: dt.date) -> dict[str, Any]:
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "server", "reconcile", "--date", date.isoformat(), "--json"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = proc.stdout.read() if proc.stdout else b""
    err = proc.stderr.read() if proc.stderr else b""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if proc.returncode not in (0, 1):
        raise SystemExit(f"reconcile failed ({proc.returncode}): {err.decode()[-2000:]}")
    report = json.loads(out)
    return {"seconds": seconds, "peak_rss_mib": usage.ru_maxrss / 1024, "exit": proc.returncode,
            "lines": report["wechat"]["payments"] + report["wechat"]["refunds"],
            "fixed": len(report["fixed"]), "mismatches": len(report["mismatches"])}


def run_api(api: str, n: int) -> dict[str, Any]:
    with running_stack(api=api, ACTIVE_QUERY_AFTER_SECONDS="100000", SWEEP_INTERVAL_SECONDS="100000",
                       REFUND_CHECK_DELAYS="1,2") as stack:
        stack.db.skus.insert_many([{"_id": f"bench-sku-{k}", "name": "Bench item", "price": 100, "stock": 10 * n,
                                    "holds": {}} for k in range(SKUS)])
        stack.db.users.update_one({"_id": BENCH_USER}, {"$set": {"role": "operator"}})
        pay_url = (stack.base_url + "/sandbox/wxpay/pay" if api == "v3"
                   else stack.started_env["WXPAY_API_BASE"] + "/pay")
        started = time.perf_counter()
        orders = asyncio.run(place_and_pay(stack.base_url, pay_url, n))
        expected_paid = sum(not o["notify_dropped"] for o in orders)
        deadline = time.time() + 300
        while stack.db.orders.count_documents({"status": "paid"}) < expected_paid and time.time() < deadline:
            time.sleep(1)  # the last notifies are still on their way
        refunded = asyncio.run(refund_some(stack.base_url, orders))
        print(f"  {api}: {len(orders)} orders paid, {refunded} refunded in {time.perf_counter() - started:.0f} s",
              flush=True)
        deadline = time.time() + 120
        while stack.db.orders.find_one({"refunds_open": {"$gt": 0}}, {"_id": 1}) and time.time() < deadline:
            time.sleep(0.5)
        date = dt.datetime.now(BEIJING).date()
        env = {**stack.started_env}
        first = reconcile(env, date)
        second = reconcile(env, date)
    return {"api": api, "orders": n, "refunds": refunded, "first": first, "second": second}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=10_000)
    parser.add_argument("--api", default="v2,v3")
    args = parser.parse_args()
    results = [run_api(api.strip(), args.orders) for api in args.api.split(",") if api.strip()]
    rows = [[r["api"], run, r[run]["lines"], r[run]["seconds"], r[run]["peak_rss_mib"], r[run]["fixed"],
             r[run]["mismatches"], r[run]["exit"]] for r in results for run in ("first", "second")]
    print(table(rows, ["api", "run", "bill lines", "wall s", "peak RSS MiB", "fixed", "left for a person",
                       "exit"]))
    save("reconcile_bill", {"results": results})


if __name__ == "__main__":
    main()
