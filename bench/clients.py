"""Browser stand-ins that run in their own processes: pay-page WebSockets on
paypush, and STOMP subscribers on RabbitMQ's Web STOMP. Each records when it
heard "paid" (wall clock, same machine as the sender)."""

from __future__ import annotations

import asyncio
import gc
import json
import multiprocessing as mp
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

OPEN_CONCURRENCY = 200
STOMP_URL = "ws://127.0.0.1:15674/ws"


@dataclass
class Job:
    kind: str  # "ws" or "stomp"
    order_ids: list[str]
    base_url: str = ""
    cookie: str = ""
    destinations: dict[str, str] = field(default_factory=dict)  # order_id -> STOMP destination
    passcode: str = ""


def _frame(command: str, headers: dict[str, str], body: str = "") -> str:
    return "\n".join([command, *(f"{k}:{v}" for k, v in headers.items()), "", body]) + "\x00"


async def _open_ws(http: aiohttp.ClientSession, job: Job, order_id: str) -> aiohttp.ClientWebSocketResponse:
    ws_url = "ws" + job.base_url[4:] + f"/ws/pay?orderId={order_id}"
    ws = await http.ws_connect(ws_url, headers={"Cookie": job.cookie, "Origin": job.base_url},
                               autoping=True, heartbeat=None, max_msg_size=65536)
    first = await ws.receive_str(timeout=60)
    assert json.loads(first)["type"] == "status", first
    return ws


async def _open_stomp(http: aiohttp.ClientSession, job: Job, order_id: str) -> aiohttp.ClientWebSocketResponse:
    ws = await http.ws_connect(STOMP_URL, protocols=("v12.stomp",), heartbeat=None, max_msg_size=65536)
    await ws.send_str(_frame("CONNECT", {"accept-version": "1.2", "host": "/", "login": "webguest",
                                         "passcode": job.passcode, "heart-beat": "0,0"}))
    reply = await ws.receive_str(timeout=60)
    assert reply.startswith("CONNECTED"), reply[:200]
    await ws.send_str(_frame("SUBSCRIBE", {"id": "s0", "destination": job.destinations[order_id],
                                           "receipt": "r0"}))
    reply = await ws.receive_str(timeout=60)
    assert reply.startswith("RECEIPT"), reply[:200]
    return ws


def _paid(kind: str, data: str) -> bool:
    if kind == "ws":
        return json.loads(data).get("type") == "paid"
    return data.startswith("MESSAGE") and '"paid"' in data


async def _run(job: Job, ready: Any, stop: Any, out: Any) -> None:
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    heard: dict[str, float] = {}
    async with aiohttp.ClientSession(connector=connector) as http:
        gate = asyncio.Semaphore(OPEN_CONCURRENCY)
        opener = _open_ws if job.kind == "ws" else _open_stomp

        async def open_one(order_id: str) -> tuple[str, aiohttp.ClientWebSocketResponse]:
            async with gate:
                return order_id, await opener(http, job, order_id)

        sockets = await asyncio.gather(*(open_one(o) for o in job.order_ids))
        # From here on a client only listens. Its own collector walking 5,000
        # sockets' objects stalled it for 300 ms, which showed up as push
        # latency that was not paypush's (BENCHMARKS.md, issue 16).
        gc.collect()
        gc.freeze()
        ready.put(len(sockets))

        async def listen(order_id: str, ws: aiohttp.ClientWebSocketResponse) -> None:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT and _paid(job.kind, msg.data):
                    heard.setdefault(order_id, time.time())

        listeners = [asyncio.create_task(listen(o, ws)) for o, ws in sockets]
        while not stop.is_set():  # noqa: ASYNC110 - a multiprocessing.Event, not an asyncio one
            await asyncio.sleep(0.1)
        for task in listeners:
            task.cancel()
        await asyncio.gather(*(ws.close() for _, ws in sockets), return_exceptions=True)
    out.put(heard)


def _main(job: Job, ready: Any, stop: Any, out: Any) -> None:
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(_run(job, ready, stop, out))


class ClientFleet:
    """Processes holding sockets open until told to stop."""

    def __init__(self, jobs: list[Job]):
        ctx = mp.get_context("spawn")
        self.ready, self.out, self.stop_event = ctx.Queue(), ctx.Queue(), ctx.Event()
        self.procs = [ctx.Process(target=_main, args=(j, self.ready, self.stop_event, self.out), daemon=True)
                      for j in jobs]

    def start(self, timeout: float = 600) -> int:
        for p in self.procs:
            p.start()
        return sum(self.ready.get(timeout=timeout) for _ in self.procs)

    def stop(self, timeout: float = 120) -> dict[str, float]:
        self.stop_event.set()
        heard: dict[str, float] = {}
        for _ in self.procs:
            heard.update(self.out.get(timeout=timeout))
        for p in self.procs:
            p.join(timeout)
        return heard


def split(items: list[str], parts: int) -> list[list[str]]:
    return [items[i::parts] for i in range(parts)]
