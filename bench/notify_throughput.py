"""How many WeChat notifies per second does one process absorb, API v2 and v3?

Each notify is for a fresh unpaid order, fully checked, recorded through the
conditional update with its log entry, and its "paid" event published to
RabbitMQ with publisher confirms:

- v2 (``POST /wxpay/notify``): XML, MD5 signature, appid, mch_id, amount;
- v3 (``POST /wxpay/v3/notify``): RSA-SHA256 signature with WeChat's key over
  the raw body, the 5-minute window, AES-256-GCM decryption of the resource
  with the APIv3 key, mchid, appid, amount.

Each API gets its own stack, configured as production would be (v3: sandbox
``WXPAY_API=v3``, whose keys the server generates under its VAR_DIR; the
notifies here are built from the same key files by the simulator's code, signed
with the WeChat Pay public key's private half). Every notify body is built
before its level starts, so the generator's RSA signing does not take the
server's CPU while it is measured. Load runs at rising concurrency until errors
or latency blow up. A second pass samples the server with py-spy to name where
the time goes, and reads the CPU time of the server and of the embedded MongoDB
(nx-27017) process. Finally the orders are read back: each acknowledged notify
must have made its order paid and its event confirmed by RabbitMQ.
Run: python bench/notify_throughput.py [--api v2,v3 --levels 1,2,4,8,16,32,64 --seconds 6]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import multiprocessing
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (
    RESULTS,
    cpu_seconds,
    new_plot,
    notify_body,
    percentiles,
    rabbitmq_pid,
    running_stack,
    sandbox_v3_keys,
    save,
    save_plot,
    table,
    v3_notify,
)
from server.simulator.v3_keys import V3Keys

# Notifies prepared per second of a level: more than either API has reached on
# 2 cores. A level that runs out says so (its rate is then a lower bound).
PER_SECOND = 1000
CHUNK = 250  # orders per job for the v3 builders
SKUS = 256  # each order holds one item of one of these, settled as sold when paid

Order = tuple[str, int]
Notify = tuple[bytes, dict[str, str]]  # body, headers


@dataclass(frozen=True)
class Api:
    name: str
    path: str
    accepted: Callable[[int, bytes], bool]  # (status, body) -> recorded?
    colour: str


APIS = {
    # v2 answers 200 either way; only return_code SUCCESS means recorded.
    "v2": Api("v2", "/wxpay/notify", lambda status, body: status == 200 and b"SUCCESS" in body, "tab:green"),
    # v3: 204 is recorded; 4xx/5xx carry {"code": "FAIL"}.
    "v3": Api("v3", "/wxpay/v3/notify", lambda status, body: status == 204, "tab:blue"),
}


# -- building notifies (outside the timed part) -------------------------------------

_keys: V3Keys | None = None


def _load_keys(server_env: Mapping[str, str]) -> None:
    global _keys
    _keys = sandbox_v3_keys(server_env)


def _build_v3(orders: list[Order]) -> list[Notify]:
    assert _keys is not None  # set by the pool's initializer
    return [v3_notify(_keys, order_id, fee) for order_id, fee in orders]


class Builder:
    """Turns orders into notify bodies (and headers) as WeChat would send them.
    v3's RSA signing takes ~1 ms a notify, so it runs on every core, between
    levels, while the server is idle."""

    def __init__(self, api: str, server_env: Mapping[str, str]):
        self.api = api
        self.pool: ProcessPoolExecutor | None = None
        if api == "v3":
            # spawn: the bench process holds a MongoClient, which must not be forked.
            self.pool = ProcessPoolExecutor(initializer=_load_keys, initargs=(dict(server_env),),
                                            mp_context=multiprocessing.get_context("spawn"))

    def build(self, orders: list[Order]) -> list[Notify]:
        if self.pool is None:
            return [(notify_body(order_id, fee), {"Content-Type": "text/xml"}) for order_id, fee in orders]
        chunks = [orders[i:i + CHUNK] for i in range(0, len(orders), CHUNK)]
        return [notify for built in self.pool.map(_build_v3, chunks) for notify in built]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


# -- load -----------------------------------------------------------------------------

def encode_requests(base_url: str, api: Api, notifies: list[Notify]) -> list[bytes]:
    """Each notify as the bytes of one HTTP/1.1 request, built before the level
    starts: the generator then costs one write and one short read per notify,
    as near as this machine gets to WeChat's senders being elsewhere."""
    host = urlsplit(base_url).netloc
    out = []
    for body, headers in notifies:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        out.append(f"POST {api.path} HTTP/1.1\r\nHost: {host}\r\n{head}Content-Length: {len(body)}\r\n\r\n"
                   .encode("latin-1") + body)
    return out


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> tuple[int, bytes]:
    """One request on a kept-alive connection; (status, body)."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length) if length else b""


async def load(base_url: str, api: Api, notifies: list[Notify], concurrency: int,
               seconds: float) -> dict[str, Any]:
    """``concurrency`` kept-alive connections sending the level's notifies back
    to back; each answer is read and checked. A raw HTTP/1.1 client rather than
    aiohttp: it costs 0.06-0.08 of a core at these rates, so the server and
    the store keep the CPU a sender elsewhere would leave them (WeChat's
    senders are not on our machine)."""
    queue = collections.deque(encode_requests(base_url, api, notifies))
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds
    where = urlsplit(base_url)
    cpu0 = time.process_time()

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(where.hostname, where.port)
        try:
            while time.perf_counter() < stop_at and queue:
                request = queue.popleft()
                t0 = time.perf_counter()
                try:
                    status, body = await asyncio.wait_for(exchange(reader, writer, request), 10)
                    ok = api.accepted(status, body)
                except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
                    ok = False
                    writer.close()
                    reader, writer = await asyncio.open_connection(where.hostname, where.port)
                latencies.append((time.perf_counter() - t0) * 1000)
                errors += not ok
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    stats = percentiles(latencies)
    return {"api": api.name, "concurrency": concurrency, "rate": len(latencies) / elapsed, "errors": errors,
            "elapsed": elapsed, "generator_cpu_share": (time.process_time() - cpu0) / elapsed,
            "ran_out": not queue and elapsed < seconds * 0.95, **stats}


def profile(stack, api: Api, notifies: list[Notify], concurrency: int,  # type: ignore[no-untyped-def]
            seconds: float) -> dict[str, Any]:
    """py-spy samples the server while it is under load; returns where the samples fall."""
    out = RESULTS / f"notify_profile_{api.name}.txt"
    RESULTS.mkdir(parents=True, exist_ok=True)
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    spy = subprocess.Popen([pyspy, "record", "--pid", str(stack.server_pid), "--duration", str(int(seconds)),
                            "--rate", "200", "--format", "raw", "--output", str(out), "--nonblocking"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server_cpu, nx_cpu = cpu_seconds(stack.server_pid), cpu_seconds(stack.mongo_pid)
    started = time.perf_counter()
    run = asyncio.run(load(stack.base_url, api, notifies, concurrency, seconds))
    elapsed = time.perf_counter() - started
    server_cpu, nx_cpu = cpu_seconds(stack.server_pid) - server_cpu, cpu_seconds(stack.mongo_pid) - nx_cpu
    spy.wait(60)
    return {"concurrency": concurrency, "rate": run["rate"], "n": run["n"], "errors": run["errors"],
            "server_cpu_share": server_cpu / elapsed, "mongo_cpu_share": nx_cpu / elapsed, **summarise(out)}


# py-spy names a frame "function (path:line)", with paths relative to sys.path.
OWN_CODE = ("(server/", "(handlers/", "(workers/", "(settings.py")
CATEGORIES = (
    ("idle (waiting on sockets)", ("select.py", "selectors.py", "epoll")),
    ("pymongo (client side of the store)", ("pymongo/", "bson/")),
    ("aio-pika / aiormq / pamqp", ("aio_pika/", "aiormq/", "pamqp/")),
    ("aiohttp", ("aiohttp/",)),
    ("tornado", ("tornado/",)),
    # RSA verify and AES-GCM are native calls: py-spy shows their Python caller.
    ("v3 crypto (RSA verify, AES-GCM)", ("(server/gateway/wxpay_v3/crypto.py", "cryptography/")),
    ("paypush code", OWN_CODE),
    ("xmltodict / expat", ("xmltodict", "expat")),
    ("json", ("json/",)),
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


async def store_ceiling(mongo_url: str, db: str, order_ids: list[str], concurrency: int,
                        seconds: float) -> float:
    """The store's own rate for a notify's writes, at the same concurrency and
    through the same client: the ``find_one_and_update`` of one order
    conditioned on its status and amount, setting what a payment sets (paid
    fields, outbox, log entry) and answering the document; and its share of
    the outbox clears, which one task makes for whatever has piled up
    meanwhile (``update_many``, as the server's event batches do). A write is
    counted when its clear is done, as a notify is counted when it settles.
    The orders flip unpaid <-> paid, so the collection and the documents keep
    their size."""
    from pymongo import AsyncMongoClient, ReturnDocument

    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url)
    orders = client[db]["orders"]
    ids = collections.deque(order_ids)
    status = {order_id: "unpaid" for order_id in order_ids}
    status.update({d["_id"]: d["status"] async for d in orders.find({"_id": {"$in": order_ids}}, {"status": 1})})
    to_clear: list[tuple[str, str]] = []
    wake = asyncio.Event()
    writing = True
    done = 0
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < stop_at:
            order_id = ids.popleft()
            ids.append(order_id)
            now, to = status[order_id], "paid" if status[order_id] == "unpaid" else "unpaid"
            status[order_id] = to
            await orders.find_one_and_update(
                {"_id": order_id, "status": now, "pay_money": 100},
                {"$set": {"status": to, "transaction_id": "4200000000" + order_id[-20:], "pay_time": time.time(),
                          "paid_at": time.time(), "pending_event": to, "pending_claim_until": time.time() + 10,
                          "logs.ceiling": {"who": "bench", "remarks": order_id, "at": time.time()}}},
                return_document=ReturnDocument.AFTER)
            to_clear.append((order_id, to))
            wake.set()

    async def clearer() -> None:
        nonlocal done
        while writing or to_clear:
            await wake.wait()
            wake.clear()
            while to_clear:
                batch = to_clear[:256]
                del to_clear[:256]
                for kind in {k for _, k in batch}:
                    await orders.update_many(
                        {"_id": {"$in": [i for i, k in batch if k == kind]}, "pending_event": kind},
                        {"$unset": {"pending_event": "", "pending_claim_until": "", "pending_claimed_by": ""},
                         "$set": {f"published.{kind}": time.time()}})
                done += len(batch)

    async def writers() -> None:
        nonlocal writing
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        writing = False
        wake.set()

    started = time.perf_counter()
    await asyncio.gather(writers(), clearer())
    elapsed = time.perf_counter() - started
    await client.close()
    return done / elapsed


def cpu_by_process(stack) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """CPU seconds so far of everything that shares the 2 cores during a level."""
    return {"server": cpu_seconds(stack.server_pid), "nx-27017": cpu_seconds(stack.mongo_pid),
            "RabbitMQ": cpu_seconds(rabbitmq_pid()), "bench": time.process_time()}


def cores_used(before: dict[str, float], after: dict[str, float], elapsed: float) -> dict[str, float]:
    """Cores each process kept busy over ``elapsed`` seconds (the bench: the
    load generator and the settling checks)."""
    used = {k: (after[k] - before[k]) / elapsed for k in before}
    used["all"] = sum(used.values())
    return used


def outbox_backlog(stack) -> int:  # type: ignore[no-untyped-def]
    return int(stack.db.orders.count_documents({"pending_event": {"$exists": True}}))


def outbox_empty(stack) -> bool:  # type: ignore[no-untyped-def]
    # Not a count: nx-27017 counts by scanning every order (0.4 s at 35,000 orders).
    return stack.db.orders.find_one({"pending_event": {"$exists": True}}, projection={"_id": 1}) is None


def settle(stack, run: dict[str, Any], wait: float = 60.0) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Wait (after the load stopped) until every event the level caused is
    confirmed by RabbitMQ, and rate the level by that: a notify answered whose
    event is still queued in the server is not yet absorbed."""
    started = time.perf_counter()
    while not (empty := outbox_empty(stack)) and time.perf_counter() - started < wait:
        time.sleep(0.02)
    drain = time.perf_counter() - started
    absorbed = run["n"] - run["errors"]
    return {**run, "drain_s": drain, "settled": empty,
            "settled_rate": absorbed / (run["elapsed"] + drain) if empty else 0.0}


def recorded(stack, acknowledged: int, skus: int, wait: float = 30.0) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """What the store says after the run: orders paid, events RabbitMQ has not
    confirmed yet, and stock moves still marked in flight on the SKUs (a paid
    order's hold is its sale: nothing should be left)."""
    deadline = time.monotonic() + wait
    names = [f"bench-sku-{k}" for k in range(skus)]
    while True:
        pending = outbox_backlog(stack)
        in_flight = sum(len(sku.get(kind) or {}) for sku in stack.db.skus.find({"_id": {"$in": names}})
                        for kind in ("taking", "giving", "retaking", "holds"))
        if not (pending or in_flight) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    paid = stack.db.orders.count_documents({"status": "paid", "user": {"$ne": "ceiling-probe"}})
    return {"acknowledged": acknowledged, "paid": paid, "event_unconfirmed": pending,
            "holds_unsettled": in_flight, "ok": paid >= acknowledged and not pending and not in_flight}


def run_api(api: Api, levels: list[int], seconds: float) -> tuple[list[dict[str, Any]], dict[str, Any],
                                                                 dict[str, Any]]:
    results: list[dict[str, Any]] = []
    with running_stack(api=api.name) as stack:
        # Up to PER_SECOND a second per level, then the profile pass, then the warm-up.
        per_level = int(PER_SECOND * seconds)
        pool = collections.deque(stack.seed_orders(per_level * (len(levels) + 1) + 200, skus=SKUS))
        # Orders the store-ceiling probe flips back and forth (not notified: not counted as paid).
        probe_ids = [order_id for order_id, _ in stack.seed_orders(2000)]
        stack.db.orders.update_many({"_id": {"$in": probe_ids}}, {"$set": {"user": "ceiling-probe"}})
        builder = Builder(api.name, stack.started_env)
        try:
            def next_batch(n: int) -> list[Notify]:
                # Built just before use: v3's signatures are only good for 5 minutes.
                return builder.build([pool.popleft() for _ in range(min(len(pool), n))])

            warm = settle(stack, asyncio.run(load(stack.base_url, api, next_batch(200), 8, 2)))  # warm-up
            acknowledged = warm["n"] - warm["errors"]
            for c in levels:
                batch = next_batch(per_level)
                before, t0 = cpu_by_process(stack), time.perf_counter()
                r = settle(stack, asyncio.run(load(stack.base_url, api, batch, c, seconds)))
                r["cores"] = cores_used(before, cpu_by_process(stack), time.perf_counter() - t0)
                # The store's ceiling for the same kind of write, same client, same concurrency, same run.
                r["store_ceiling"] = asyncio.run(store_ceiling(stack.mongo.url, "bench", probe_ids, c, seconds))
                r["ratio"] = r["settled_rate"] / r["store_ceiling"] if r["store_ceiling"] else 0.0
                results.append(r)
                acknowledged += r["n"] - r["errors"]
                print(f"  {api.name} concurrency {c}: answered {r['rate']:.0f}/s, p99 {r.get('p99', 0):.1f} ms, "
                      f"errors {r['errors']}; last event confirmed {r['drain_s']:.2f} s after the last answer: "
                      f"settled {r['settled_rate']:.0f}/s; the store alone {r['store_ceiling']:.0f} writes/s "
                      f"(ratio {r['ratio']:.0%}); cores used: "
                      + ", ".join(f"{k} {v:.2f}" for k, v in r["cores"].items())
                      + f" (the generator's own {r['generator_cpu_share']:.2f})"
                      f"{' (ran out of prepared notifies)' if r['ran_out'] else ''}", flush=True)
            best = max(results, key=lambda r: r["settled_rate"] if not r["errors"] else 0)
            prof = profile(stack, api, next_batch(per_level), int(best["concurrency"]), seconds)
            acknowledged += prof["n"] - prof["errors"]
        finally:
            builder.close()
        check = recorded(stack, acknowledged, SKUS)
    return results, prof, check


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--api", default="v2,v3", help="which WeChat Pay APIs to measure, comma-separated")
    parser.add_argument("--levels", default="1,2,4,8,16,32,64")
    parser.add_argument("--seconds", type=float, default=6.0)
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    apis = [a.strip() for a in args.api.split(",") if a.strip()]
    unknown = [a for a in apis if a not in APIS]
    if unknown or not apis:
        parser.error(f"--api takes v2 and/or v3, got {args.api!r}")
    results: list[dict[str, Any]] = []
    profiles: dict[str, dict[str, Any]] = {}
    checks: dict[str, dict[str, Any]] = {}
    for name in apis:
        levels_run, profiles[name], checks[name] = run_api(APIS[name], levels, args.seconds)
        results += levels_run
    rows = [[r["api"], r["concurrency"], r["rate"], r["settled_rate"], r["store_ceiling"], f"{r['ratio']:.0%}",
             r["drain_s"], r["errors"], r.get("p50", 0.0), r.get("p99", 0.0)] for r in results]
    print(table(rows, ["api", "concurrency", "answered/s", "settled/s", "store writes/s", "ratio", "confirms lag s",
                       "errors", "p50 ms", "p99 ms"]))
    for name in apis:
        prof, check = profiles[name], checks[name]
        print(f"\n{name}: profile at concurrency {prof['concurrency']} ({prof['rate']:.0f}/s): server process CPU "
              f"{prof.get('server_cpu_share', 0):.0%}, nx-27017 (MongoDB) CPU {prof.get('mongo_cpu_share', 0):.0%}")
        print(f"  paypush code is on the stack in {prof.get('own_code_on_stack', 0)}% of samples "
              "(inclusive); by library of the leaf frame:")
        for cat, share in dict(prof.get("by_library", {})).items():
            print(f"  {share:5.1f}%  {cat}")
        print("  hottest leaf functions:")
        for leaf, share in prof.get("hottest", []):
            print(f"  {share:5.1f}%  {leaf}")
        print(f"  store after the run: {check['paid']} orders paid for {check['acknowledged']} acknowledged "
              f"notifies, {check['event_unconfirmed']} events unconfirmed, {check['holds_unsettled']} stock moves "
              f"still in flight: {'ok' if check['ok'] else 'NOT OK'}")
    save("notify_throughput", {"apis": apis, "levels": results, "profile": profiles, "recorded": checks})
    plot(results, apis)
    if not all(check["ok"] for check in checks.values()):
        sys.exit("an acknowledged notify left no paid order, an event unconfirmed or a stock move in flight")


def plot(results: list[dict[str, Any]], apis: list[str]) -> None:
    fig, ax = new_plot()
    ax2 = ax.twinx()
    for name in apis:
        mine = [r for r in results if r["api"] == name]
        c = [r["concurrency"] for r in mine]
        colour = APIS[name].colour
        ax.plot(c, [r["settled_rate"] for r in mine], "o-", color=colour, label=f"{name} settled/s")
        ax.plot(c, [r["rate"] for r in mine], "^:", color=colour, alpha=0.5, label=f"{name} answered/s")
        ax2.plot(c, [r.get("p99", 0) for r in mine], "s--", color=colour, alpha=0.6, label=f"{name} p99 (ms)")
    ax.axhline(300, color="grey", ls=":", lw=1, label="target: 300/s")
    ax.set_xscale("log", base=2)
    ax.set_ylim(bottom=0)
    ax2.set_ylim(bottom=0)
    ax.set_xlabel("concurrent notifies in flight")
    ax.set_ylabel("notifies per second: settled (solid), answered (dotted)")
    ax2.set_ylabel("p99 latency, ms (dashed)")
    handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, fontsize=8)
    ax.set_title(f"Notify throughput, one process, embedded MongoDB: API {' and '.join(apis)}")
    save_plot(fig, "notify_throughput")


if __name__ == "__main__":
    main()
