"""Tens of thousands of waiting pay pages from this one machine.

Each page is a bare WebSocket client (an asyncio protocol, a few KiB): the
upgrade with the login cookie, then it reads frames, answers the server's
pings, and notes when it hears its order's state. A fleet process holds up to
FLEET_SOCKETS of them (the 20,000-file limit) from its own loopback /16,
each connection from an address of it (one address pair runs out of
ephemeral ports near 28k, and see ``Fleet.source``).

A page whose socket closes comes back by the pay page's own rules
(``bench/page_rules.py``, kept in step with static/js/pay.js by a test),
including a 1001 from a process that is stopping. What a page reports:
when it first heard "paid" (from an event, or from the state a reconnect
reads), and each (re)connection's time, so the restart curve can be drawn.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import gc
import json
import multiprocessing as mp
import os
import random
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any

from bench import page_rules

FLEET_SOCKETS = 19_000
OPEN_CONCURRENCY = 400

KEY = base64.b64encode(b"paypush-bench-ws").decode()


@dataclass
class FleetJob:
    host: str
    port: int
    cookie: str
    order_ids: list[str]
    source: str  # this fleet's loopback /16, e.g. 127.2 (each connection picks an address in it)
    seed: int


class Page(asyncio.Protocol):
    """One pay page's socket; reconnects by the page's rules when it closes."""

    def __init__(self, fleet: Fleet, order_id: str):
        self.fleet = fleet
        self.order_id = order_id
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.upgraded = False
        self.live = False
        self.failures = 0
        self.close_code: int | None = None
        self.over = True  # this connection attempt has been dealt with
        self.polling: asyncio.Task[None] | None = None

    # -- the socket ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buffer, self.upgraded = b"", False
        transport.write(self.fleet.upgrade_request(self.order_id))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head, self.buffer = self.buffer[:end], self.buffer[end + 4:]
            if not head.startswith(b"HTTP/1.1 101"):
                self.fleet.failed(head.split(b"\r\n", 1)[0].decode(errors="replace")[:40])
                self._lost()
                return
            self.upgraded = True
        while len(self.buffer) >= 2:
            first, second = self.buffer[0], self.buffer[1]
            length, at = second & 0x7F, 2
            if length == 126:
                if len(self.buffer) < 4:
                    return
                length, at = struct.unpack(">H", self.buffer[2:4])[0], 4
            elif length == 127:
                if len(self.buffer) < 10:
                    return
                length, at = struct.unpack(">Q", self.buffer[2:10])[0], 10
            if len(self.buffer) < at + length:
                return
            payload, self.buffer = self.buffer[at:at + length], self.buffer[at + length:]
            self._frame(first & 0x0F, payload)

    def _frame(self, opcode: int, payload: bytes) -> None:
        if opcode == 0x1:
            event = json.loads(payload)
            if not self.live:  # the first message is the order's state: the page is live
                self.live = True
                self.failures = 0
                self.fleet.connected(self)
            if event.get("status") == "paid":
                self.fleet.heard_paid(self.order_id)
        elif opcode == 0x9:
            self._send(0xA, payload)  # pong
        elif opcode == 0x8:
            self.close_code = struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else 1005
            if self.transport is not None:
                self._send(0x8, payload[:2])
                self.transport.close()

    def _send(self, opcode: int, payload: bytes) -> None:
        assert self.transport is not None and len(payload) < 126
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.transport.write(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.over and not self.live and not self.fleet.stopping:
            self.fleet.failed("closed after the upgrade, before the state" if self.upgraded
                              else "closed before the upgrade")
        self._lost()

    def _lost(self) -> None:
        if self.over:
            return
        self.over = True
        if self.transport is not None:
            self.transport.close()
            self.transport = None
        was_live, self.live = self.live, False
        if self.fleet.stopping:
            return
        if was_live:
            self.fleet.dropped(self, self.close_code)
        # As the page: a server going away (1001) is no failure of ours; 4404 ends it.
        if not page_rules.retries(self.close_code):
            return
        self.failures += page_rules.counts_as_failure(self.close_code)
        delay = page_rules.retry_delay(self.failures, self.close_code, self.fleet.rng)
        asyncio.get_running_loop().call_later(delay, self.fleet.connect, self)
        if self.failures >= page_rules.POLL_AFTER_FAILURES and self.polling is None:
            self.polling = asyncio.get_running_loop().create_task(self._poll())

    async def _poll(self) -> None:
        """While the socket stays down the page reads its order every few seconds."""
        try:
            while not self.live and not self.fleet.stopping:
                await asyncio.sleep(page_rules.POLL_SECONDS)
                if self.live or self.fleet.stopping:
                    break
                status = await self.fleet.read_status(self.order_id)
                if status == "paid":
                    self.fleet.heard_paid(self.order_id)
        finally:
            self.polling = None


class Fleet:
    def __init__(self, job: FleetJob):
        self.job = job
        self.rng = random.Random(job.seed)
        self.pages = [Page(self, order_id) for order_id in job.order_ids]
        self.stopping = False
        self.heard: dict[str, float] = {}
        self.connections: list[float] = []  # when each (re)connection became live
        self.drops: dict[int, int] = {}
        self.failures: dict[str, int] = {}  # why attempts did not become live, by reason
        self.live = 0
        self._request_head = (f"Host: {job.host}:{job.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                              f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n"
                              f"Origin: http://{job.host}:{job.port}\r\nCookie: {job.cookie}\r\n\r\n").encode()
        self._gate = asyncio.Semaphore(OPEN_CONCURRENCY)

    def upgrade_request(self, order_id: str) -> bytes:
        return f"GET /ws/pay?orderId={order_id} HTTP/1.1\r\n".encode() + self._request_head

    def connect(self, page: Page) -> None:
        asyncio.get_running_loop().create_task(self._connect(page))

    async def _connect(self, page: Page) -> None:
        if self.stopping:
            return
        page.over, page.close_code = False, None
        async with self._gate:
            try:
                await asyncio.get_running_loop().create_connection(lambda: page, sock=await self.socket_to_server())
            except OSError as exc:
                self.failed(f"connect: {errno.errorcode.get(exc.errno or 0, exc)}")
                page._lost()

    def source(self) -> str:
        """A loopback address of this fleet's own /16 for each connection, as
        pages come from many browsers. From one address, a page coming back
        reused its old port (loopback reuses TIME_WAIT ports: tcp_tw_reuse=2),
        so it had the same addresses as before, and SO_REUSEPORT's hash sent
        every page of a stopped process to the same one survivor."""
        return f"{self.job.source}.{self.rng.randrange(256)}.{self.rng.randrange(1, 255)}"

    async def socket_to_server(self) -> socket.socket:
        """A socket connected to the server from this fleet's source address.

        The source port is chosen at connect() (IP_BIND_ADDRESS_NO_PORT), unique
        per address pair, not by bind(): bind(port 0) searches the whole range
        for a port no socket holds, TIME_WAIT included, and with 15,000 pages on
        one address that search took 83 % of a client's CPU (py-spy) and made a
        restart storm look three times slower than the server was."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_BIND_ADDRESS_NO_PORT, 1)
            sock.setblocking(False)
            sock.bind((self.source(), 0))
            await asyncio.get_running_loop().sock_connect(sock, (self.job.host, self.job.port))
        except BaseException:
            sock.close()
            raise
        return sock

    async def read_status(self, order_id: str) -> str | None:
        """GET /api/orders/<id> as the page's poll does; the status, or None."""
        try:
            reader, writer = await asyncio.open_connection(sock=await self.socket_to_server())
        except OSError:
            return None
        try:
            writer.write(f"GET /api/orders/{order_id} HTTP/1.1\r\nHost: {self.job.host}:{self.job.port}\r\n"
                         f"Cookie: {self.job.cookie}\r\nConnection: close\r\n\r\n".encode())
            reply = await asyncio.wait_for(reader.read(), 30)
        except (OSError, TimeoutError):
            return None
        finally:
            writer.close()
        head, _, body = reply.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            return None
        try:
            return str(json.loads(body).get("status"))
        except ValueError:
            return None

    def connected(self, page: Page) -> None:
        self.live += 1
        self.connections.append(time.time())

    def dropped(self, page: Page, code: int | None) -> None:
        self.live -= 1
        self.drops[code or 0] = self.drops.get(code or 0, 0) + 1

    def failed(self, reason: str) -> None:
        self.failures[reason] = self.failures.get(reason, 0) + 1

    def heard_paid(self, order_id: str) -> None:
        self.heard.setdefault(order_id, time.time())


async def _run(job: FleetJob, commands: Any, reports: Any) -> None:
    fleet = Fleet(job)
    for page in fleet.pages:
        fleet.connect(page)
    loop = asyncio.get_running_loop()
    while True:
        command = await loop.run_in_executor(None, commands.get)
        if command == "freeze":
            # Every page is open: the client's own collector must not stall it
            # while latencies are measured (a load client's pause is not paypush's).
            gc.collect()
            gc.freeze()
        elif command == "report":
            reports.put({"live": fleet.live, "pages": len(fleet.pages), "heard": dict(fleet.heard),
                         "connections": list(fleet.connections), "drops": dict(fleet.drops),
                         "failures": dict(fleet.failures)})
        elif command == "stop":
            fleet.stopping = True
            for page in fleet.pages:
                if page.transport is not None:
                    page.transport.close()
            reports.put({"stopped": True})
            return


def _main(job: FleetJob, commands: Any, reports: Any) -> None:
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(_run(job, commands, reports))


class Fleets:
    """Client processes, each holding its pages and reporting on request."""

    def __init__(self, jobs: list[FleetJob]):
        ctx = mp.get_context("spawn")
        self.channels = [(ctx.Queue(), ctx.Queue()) for _ in jobs]
        self.procs = [ctx.Process(target=_main, args=(job, c, r), daemon=True)
                      for job, (c, r) in zip(jobs, self.channels, strict=True)]
        for proc in self.procs:
            proc.start()

    def report(self) -> dict[str, Any]:
        for commands, _ in self.channels:
            commands.put("report")
        parts = [reports.get(timeout=120) for _, reports in self.channels]
        heard: dict[str, float] = {}
        connections: list[float] = []
        drops: dict[int, int] = {}
        failures: dict[str, int] = {}
        for part in parts:
            for reason, n in part["failures"].items():
                failures[reason] = failures.get(reason, 0) + n
            heard.update(part["heard"])
            connections += part["connections"]
            for code, n in part["drops"].items():
                drops[code] = drops.get(code, 0) + n
        return {"live": sum(p["live"] for p in parts), "pages": sum(p["pages"] for p in parts), "heard": heard,
                "connections": sorted(connections), "drops": drops, "failures": failures}

    def freeze(self) -> None:
        for commands, _ in self.channels:
            commands.put("freeze")

    def stop(self) -> None:
        for commands, _ in self.channels:
            commands.put("stop")
        for _, reports in self.channels:
            reports.get(timeout=120)
        for proc in self.procs:
            proc.join(30)


def jobs_for(host: str, port: int, cookie: str, order_ids: list[str]) -> list[FleetJob]:
    """One client process per FLEET_SOCKETS pages, each from its own loopback /16."""
    count = max(1, -(-len(order_ids) // FLEET_SOCKETS))
    return [FleetJob(host, port, cookie, order_ids[i::count], f"127.{i + 2}", seed=i) for i in range(count)]
