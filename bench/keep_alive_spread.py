"""How are the keep-alive pings of one round spread over time?

PushHub.keep_alive pings every pay-page socket once per interval, a few per
tick, so that pings (and the pongs they bring back) never come as one burst
that pushes wait behind. tests/test_push_hub.py checks the shape of a round
(so many sockets per tick, each once); this measures when the ticks really
fall and what each costs: per size, the ticks of one round, sockets per tick,
how late each tick is against its schedule (tick k due k x tick after the
round starts) and the longest a tick held the event loop. In-process, no
network: the sockets are stand-ins that count pings.
Run: python bench/keep_alive_spread.py [--sizes 20,1000,10000 --interval 2.5 --tick 0.1]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import save, table
from server.push.hub import PushHub, Subscriber


class Peer:
    """A socket that answers every ping at once and records when it came."""

    def __init__(self, pings: list[float]):
        self.pings = pings
        self.sub: Subscriber | None = None

    async def send_event(self, event: dict[str, Any]) -> None:
        return None

    def close_from_hub(self, code: int, reason: str) -> None:
        return None

    def ping_peer(self) -> None:
        self.pings.append(time.perf_counter())
        if self.sub is not None:
            self.sub.last_seen = time.monotonic()


def bursts(times: list[float], gap: float) -> list[list[float]]:
    """Pings closer together than ``gap`` belong to one tick."""
    groups: list[list[float]] = []
    for t in times:
        if groups and t - groups[-1][-1] < gap:
            groups[-1].append(t)
        else:
            groups.append([t])
    return groups


async def one_round(sockets: int, interval: float, tick: float) -> dict[str, Any]:
    hub = PushHub(sockets)
    pings: list[float] = []
    for i in range(sockets):
        peer = Peer(pings)
        peer.sub = Subscriber("bench", f"o{i}", f"t{i}", peer)
        hub.subscribe(peer.sub)
    started = time.perf_counter()
    task = asyncio.get_running_loop().create_task(hub.keep_alive(interval, tick=tick))
    while len(pings) < sockets:  # noqa: ASYNC110 - the pings are the measurement; nothing to await
        await asyncio.sleep(tick / 10)
    task.cancel()
    groups = bursts(pings[:sockets], gap=tick / 2)
    late_ms = [(g[0] - started - k * tick) * 1000 for k, g in enumerate(groups, start=1)]
    held_ms = [(g[-1] - g[0]) * 1000 for g in groups]
    return {"sockets": sockets, "interval_s": interval, "tick_s": tick, "ticks": len(groups),
            "per_tick_max": max(len(g) for g in groups), "round_s": pings[sockets - 1] - started,
            "late_ms_max": max(late_ms), "late_ms_mean": sum(late_ms) / len(late_ms),
            "held_ms_max": max(held_ms)}


async def main(sizes: list[int], interval: float, tick: float) -> None:
    rows = [await one_round(n, interval, tick) for n in sizes]
    print(table([[r["sockets"], r["ticks"], r["per_tick_max"], r["round_s"], r["late_ms_mean"],
                  r["late_ms_max"], r["held_ms_max"]] for r in rows],
                ["sockets", "ticks", "per tick", "round s", "late ms mean", "late ms max", "tick held loop ms"]))
    print("saved", save("keep_alive_spread", {"interval_s": interval, "tick_s": tick, "rounds": rows}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="20,1000,10000")
    parser.add_argument("--interval", type=float, default=2.5)
    parser.add_argument("--tick", type=float, default=0.1)
    args = parser.parse_args()
    asyncio.run(main([int(s) for s in args.sizes.split(",")], args.interval, args.tick))
