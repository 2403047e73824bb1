"""How many shoppers can wait on a pay page? Memory per waiting browser.

Native route: paypush server RSS growth per open /ws/pay socket.
STOMP route: RabbitMQ memory growth per Web STOMP subscriber (rabbitmqctl status).
Baseline: a bare Tornado WebSocket server holding the same number of sockets.
Clients live in separate processes. Run: python bench/waiting_browsers.py [--sizes 1000,5000,10000]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import itertools

from bench.clients import ClientFleet, Job, split
from bench.harness import (
    RESULTS,
    ROOT,
    cookie,
    ensure_rabbitmq_sockets,
    new_plot,
    rabbitmq_memory_kib,
    rss_kib,
    running_stack,
    save,
    save_plot,
    table,
)
from server.infra.embedded_mongo import free_port
from server.push.tokens import PushTokens

PROCS = 4


def settle() -> None:
    time.sleep(3)  # let allocators and the broker's stats catch up


def grow(levels: list[int], order_ids: list[str], make_job, measure) -> list[tuple[int, int]]:  # type: ignore[no-untyped-def]
    """Open sockets level by level (cumulatively); returns (sockets, memory KiB) points."""
    settle()
    points = [(0, measure())]
    fleets, opened = [], 0
    for level in levels:
        batch = order_ids[opened:level]
        fleet = ClientFleet([make_job(part) for part in split(batch, PROCS) if part])
        opened += fleet.start()
        fleets.append(fleet)
        settle()
        points.append((opened, measure()))
        print(f"  {opened} open: {points[-1][1]} KiB", flush=True)
    for fleet in fleets:
        fleet.stop()
    return points


def per_socket(points: list[tuple[int, int]]) -> list[tuple[int, float]]:
    """Growth since no sockets were open, divided by the sockets open."""
    base = points[0][1]
    return [(n, (kib - base) / n) for n, kib in points[1:]]


def marginal(points: list[tuple[int, int]]) -> list[tuple[int, float]]:
    """Growth from one level to the next, per added socket: the cost of one
    more waiting browser, without start-up costs (pools, caches) spread in."""
    return [(n1, (k1 - k0) / (n1 - n0)) for (n0, k0), (n1, k1) in itertools.pairwise(points)]


BARE = '''
import asyncio, tornado.web, tornado.websocket, sys
class H(tornado.websocket.WebSocketHandler):
    def check_origin(self, origin): return True
    def open(self): self.write_message('{"type": "status"}')
async def main():
    tornado.web.Application([("/ws/pay", H)]).listen(int(sys.argv[1]), "127.0.0.1")
    await asyncio.Event().wait()
asyncio.run(main())
'''


def bare_tornado(levels: list[int]) -> list[tuple[int, int]]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", BARE, str(port)])
    try:
        time.sleep(1.5)
        ids = [f"o{i}" for i in range(levels[-1])]
        return grow(levels, ids, lambda part: Job("ws", part, base_url=f"http://127.0.0.1:{port}"),
                    lambda: rss_kib(proc.pid))
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1000,5000,10000")
    parser.add_argument("--native-only", action="store_true", help="skip the STOMP route (quick check)")
    args = parser.parse_args()
    levels = [int(x) for x in args.sizes.split(",")]
    ensure_rabbitmq_sockets(levels[-1] + 500)
    results: dict[str, object] = {"levels": levels}

    print("bare Tornado WebSocket server:", flush=True)
    bare = bare_tornado(levels)
    with running_stack() as stack:
        orders = [o for o, _ in stack.seed_orders(levels[-1])]
        print("paypush native route (/ws/pay):", flush=True)
        native = grow(levels, orders, lambda part: Job("ws", part, base_url=stack.base_url, cookie=cookie()),
                      lambda: rss_kib(stack.server_pid))
        tokens = PushTokens(stack.env()["COOKIE_SECRET"])
        dest = {o: f"/exchange/paynotify/{tokens.routing_key(o)}" for o in orders}
        passcode = stack.env()["STOMP_PASSCODE"]
        if args.native_only:
            print("native:", per_socket(native), "marginal", marginal(native))
            print("bare:", per_socket(bare), "marginal", marginal(bare))
            return
        print("STOMP route (RabbitMQ Web STOMP):", flush=True)
        stomp = grow(levels, orders, lambda part: Job("stomp", part, destinations=dest, passcode=passcode),
                     rabbitmq_memory_kib)

    results.update(bare=bare, native=native, stomp=stomp)
    rows = []
    for (n, b), (_, nat), (_, st) in zip(per_socket(bare), per_socket(native), per_socket(stomp), strict=True):
        rows.append([n, b, nat, st, st / nat if nat > 0 else float("inf")])
    results["per_socket_kib"] = rows
    print(table(rows, ["sockets", "bare Tornado KiB/socket", "paypush KiB/socket", "RabbitMQ STOMP KiB/sub",
                       "STOMP / native"]))
    save("waiting_browsers", results)
    plot(rows)


def plot(rows: list[list[float]]) -> None:
    fig, ax = new_plot()
    n = [r[0] for r in rows]
    ax.plot(n, [r[1] for r in rows], "o-", label="bare Tornado (server RSS)")
    ax.plot(n, [r[2] for r in rows], "o-", label="paypush /ws/pay (server RSS)")
    ax.plot(n, [r[3] for r in rows], "o-", label="RabbitMQ Web STOMP (broker memory)")
    ax.axhline(16, color="grey", ls="--", lw=1, label="target: 16 KiB")
    ax.set_yscale("log")
    ax.set_xlabel("waiting browsers")
    ax.set_ylabel("memory per waiting browser (KiB, log)")
    ax.set_title("Memory per waiting pay page")
    ax.legend(fontsize=8)
    save_plot(fig, "waiting_browsers")
    print(f"plot: {(RESULTS / 'waiting_browsers.png').relative_to(ROOT)}")


if __name__ == "__main__":
    main()
