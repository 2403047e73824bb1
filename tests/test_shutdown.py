"""SIGTERM in the middle of traffic: stop accepting, close sockets with 1001,
finish what is in flight, exit within 10 s, lose nothing."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import pytest
from pymongo import MongoClient
from pymongo.database import Database

from server.composition.container import Services, open_services
from server.domain.order_request import Line
from server.infra.timeout_queues import DEPLOYMENT_HEADER
from tests.support.notify_client import signed_notify
from tests.support.processes import ServerProcess, base_env
from tests.support.shopper import Shopper
from tests.support.sockets import PageSocket
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import eventually

ORDERS = 120
OVERDUE = 1500


async def notify(base_url: str, order: dict) -> str:  # type: ignore[type-arg]
    try:
        async with aiohttp.ClientSession() as http, http.post(
                base_url + "/wxpay/notify", data=signed_notify(order),
                timeout=aiohttp.ClientTimeout(total=15)) as resp:
            body = await resp.read()
            return "SUCCESS" if b"SUCCESS" in body else "FAIL"
    except (TimeoutError, aiohttp.ClientError):
        return "NO ANSWER"


@pytest.mark.gen_test(timeout=120)
async def test_sigterm_under_traffic_loses_nothing(tmp_path: Path, mongo_url: str, amqp_url: str) -> None:
    db_name = f"t{uuid.uuid4().hex[:12]}"
    env = base_env(tmp_path / "var", MONGO_URL=mongo_url, MONGO_DB=db_name, AMQP_URL=amqp_url, SANDBOX="1",
                   MAX_UNPAID_ORDERS_PER_USER=str(ORDERS),
                   COOKIE_SECRET="shutdown-" + uuid.uuid4().hex)
    server = ServerProcess(env).start()
    db: Database[dict[str, Any]] = MongoClient(mongo_url)[db_name]
    db.skus.insert_one({"_id": "bulk", "name": "Bulk item", "price": 100, "stock": 10_000, "holds": {}})
    shopper = await Shopper.logged_in(server.base_url, "demo", "demo-pass-123")
    try:
        orders = [await shopper.order([("bulk", 1)]) for _ in range(ORDERS)]
        sock = await PageSocket.open(server.base_url, orders[0]["id"], shopper)
        assert (await sock.next_event())["status"] == "unpaid"

        async def staggered(i: int, order: dict) -> str:  # type: ignore[type-arg]
            await asyncio.sleep(i * 0.01)
            return await notify(server.base_url, order)

        traffic = asyncio.gather(*(staggered(i, o) for i, o in enumerate(orders)))
        # Mid-traffic: some notifies recorded, most still to come (they are spread over 1.2 s).
        await eventually(lambda: db.orders.count_documents({"status": "paid"}) >= 10, every=0.02,
                         message="the first notifies recorded")
        server.send(signal.SIGTERM)
        replies = await traffic
        # Orchestrators kill after a grace period: the process must be gone
        # within 10 s of the signal (stop() raises TimeoutExpired otherwise).
        code = await asyncio.get_running_loop().run_in_executor(None, lambda: server.stop(timeout=10))
    finally:
        await shopper.close()

    assert code == 0, server.output
    assert "Traceback" not in server.output, server.output
    while (event := await sock.next()) is not None:  # order 0 may have been paid first
        assert event["type"] == "paid"
    assert sock.close_code == 1001
    succeeded = [o for o, r in zip(orders, replies, strict=True) if r == "SUCCESS"]
    assert 0 < len(succeeded) < ORDERS, replies  # the signal really landed mid-traffic
    for order in succeeded:  # SUCCESS was only said for what is recorded
        doc = db.orders.find_one({"_id": order["id"]})
        assert doc is not None
        assert doc["status"] == "paid" and "paid" in doc["logs"]

    # WeChat retries the rest against the next process: everything ends paid, once.
    again = ServerProcess(env).start()
    try:
        retried = await asyncio.gather(*(notify(again.base_url, o) for o in orders))
        assert set(retried) == {"SUCCESS"}
        await eventually(lambda: db.orders.count_documents({"pending_event": {"$exists": True}}) == 0,
                         within=10, message="every order's event published (outbox empty)")
    finally:
        assert again.stop() == 0, again.output
    assert db.orders.count_documents({"status": "paid"}) == ORDERS
    assert db.orders.count_documents({"pending_event": {"$exists": True}}) == 0  # every event published
    sku = db.skus.find_one({"_id": "bulk"})
    assert sku is not None
    assert sku["stock"] == 10_000 - ORDERS


# --- SIGTERM whatever RabbitMQ is doing -------------------------------------

def through_proxy(tmp_path: Path, mongo_url: str, amqp_url: str, proxy: TcpProxy, **extra: str) -> dict[str, str]:
    """A sandbox server whose RabbitMQ link goes through ``proxy``, on this session's vhost."""
    vhost = amqp_url.rsplit("/", 1)[1]
    return base_env(tmp_path / "var", MONGO_URL=mongo_url, MONGO_DB=f"t{uuid.uuid4().hex[:12]}",
                    AMQP_URL=f"amqp://guest:guest@127.0.0.1:{proxy.port}/{vhost}", SANDBOX="1",
                    COOKIE_SECRET="shutdown-" + uuid.uuid4().hex, **extra)


async def started(server: ServerProcess) -> ServerProcess:
    # In a thread: the proxy lives on this event loop and must keep forwarding meanwhile.
    return await asyncio.get_running_loop().run_in_executor(None, server.start)


async def stopped_within_10s(server: ServerProcess) -> int:
    """SIGTERM, then the exit code; TimeoutExpired if the process is still there 10 s later."""
    server.send(signal.SIGTERM)
    return await asyncio.get_running_loop().run_in_executor(None, lambda: server.stop(timeout=10))


def kill(server: ServerProcess) -> None:
    if server.proc is not None and server.proc.poll() is None:
        server.proc.kill()
        server.proc.communicate()


async def metric(server: ServerProcess, name: str) -> float | None:
    async with aiohttp.ClientSession() as http, http.get(server.base_url + "/metrics") as resp:
        for line in (await resp.text()).splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return None


async def readiness(server: ServerProcess) -> dict:  # type: ignore[type-arg]
    async with aiohttp.ClientSession() as http, http.get(server.base_url + "/readyz") as resp:
        return await resp.json()  # type: ignore[no-any-return]


class Flapping:
    """The link to RabbitMQ up for a moment, then cut, over and over."""

    def __init__(self, proxy: TcpProxy, up: float = 1.2, down: float = 0.4):
        self.proxy, self.up, self.down = proxy, up, down
        self.cuts = 0
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.up)
            await self.proxy.cut()
            self.cuts += 1
            await asyncio.sleep(self.down)
            await self.proxy.restore()

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@pytest.mark.parametrize("broker", ["up", "down", "black-holed", "flapping"])
@pytest.mark.gen_test(timeout=90)
async def test_sigterm_exits_within_10s_whatever_rabbitmq_does(
        broker: str, tmp_path: Path, mongo_url: str, amqp_url: str) -> None:
    proxy = await TcpProxy(5672).start()
    server = ServerProcess(through_proxy(tmp_path, mongo_url, amqp_url, proxy))
    flapping: Flapping | None = None
    try:
        await started(server)
        if broker == "down":  # connection refused, and the server knows it
            await proxy.cut()
            await eventually(lambda: _rabbitmq_down(server), message="/readyz reports RabbitMQ down")
        elif broker == "black-holed":  # the connection looks fine and nothing answers
            proxy.stall()
        elif broker == "flapping":
            flapping = Flapping(proxy)

            async def reconnected() -> bool:
                return (await metric(server, "paypush_rabbitmq_reconnects") or 0) >= 1

            await eventually(reconnected, within=30,  # the link really went down and came back
                             message="paypush_rabbitmq_reconnects at 1 or more")
        code = await stopped_within_10s(server)
    finally:
        if flapping is not None:
            await flapping.stop()
        kill(server)
        await proxy.close()
    assert code == 0, server.output
    assert "Traceback" not in server.output, server.output
    assert "paypush stopped" in server.output, server.output
    if flapping is not None:
        assert flapping.cuts >= 1


async def _rabbitmq_down(server: ServerProcess) -> bool:
    return (await readiness(server)).get("rabbitmq") == "down"


@pytest.mark.gen_test(timeout=90)
async def test_no_order_is_closed_after_sigterm(tmp_path: Path, mongo_url: str, amqp_url: str) -> None:
    """The sweeper is mid-pass over many overdue orders, with RabbitMQ
    black-holed (the state in which stopping used to hang), when SIGTERM
    arrives: at most the one close it is in the middle of ends after the
    'shutting down' line, and the rest stay for the next process."""
    proxy = await TcpProxy(5672).start()
    env = through_proxy(tmp_path, mongo_url, amqp_url, proxy, SWEEP_INTERVAL_SECONDS="0.2",
                        SWEEP_GRACE_SECONDS="0")
    client: MongoClient[dict[str, Any]] = MongoClient(mongo_url)
    db = client[env["MONGO_DB"]]
    server = ServerProcess(env)
    try:
        await started(server)
        proxy.stall()
        past = time.time() - 3600
        db.orders.insert_many([
            {"_id": f"overdue{i:05d}", "user": "demo", "status": "unpaid", "pay_money": 100,
             "items": [{"sku_id": "fan-silk", "name": "Silk fan", "price": 100, "num": 1}],
             "created_at": past - 60, "expires_at": past} for i in range(OVERDUE)])

        async def sweeping() -> bool:
            return db.orders.count_documents({"status": "closed"}) > 0

        await eventually(sweeping, message="the sweeper closing overdue orders")
        code = await stopped_within_10s(server)
    finally:
        kill(server)
        await proxy.close()
    assert code == 0, server.output
    lines = server.output.splitlines()
    signalled = next(i for i, line in enumerate(lines) if "SIGTERM received: shutting down" in line)
    closes = [i for i, line in enumerate(lines)
              if "server.domain.orders: order overdue" in line and " closed: " in line]
    assert any(i < signalled for i in closes)  # the sweeper was at work
    assert len([i for i in closes if i > signalled]) <= 1, server.output  # only the close in flight
    assert db.orders.count_documents({"status": "unpaid"}) > 0  # and there was more it could have done
    client.drop_database(env["MONGO_DB"])
    client.close()


# --- the in-flight count ------------------------------------------------------

@pytest.mark.gen_test(timeout=60)
async def test_an_aborted_upload_does_not_hold_up_shutdown(http_server, http_port: int,  # type: ignore[no-untyped-def]
                                                          services: Services) -> None:
    """A notify whose sender gives up half-way through the body is no longer
    in flight once the connection is gone: a stop does not wait for it."""
    _, writer = await asyncio.open_connection("127.0.0.1", http_port)
    writer.write(b"POST /wxpay/notify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/xml\r\n"
                 b"Content-Length: 1000\r\n\r\n<xml><return_code>")
    await writer.drain()

    async def uploading() -> bool:
        return services.requests_in_flight == 1

    await eventually(uploading, message="the half-sent notify counted in flight")  # the server reads the body
    writer.close()
    await writer.wait_closed()
    assert await services.finish_in_flight(within=5.0) == 0  # nothing left running to cut off


@pytest.mark.gen_test(timeout=60)
async def test_a_deadline_arriving_after_sigterm_is_left_for_the_next_process(
        test_settings, mongo_url: str, amqp_url: str) -> None:  # type: ignore[no-untyped-def]
    # A deployment name of its own: its queue holds nothing but this test's message.
    cfg = dataclasses.replace(test_settings, deployment=f"s{uuid.uuid4().hex[:8]}")
    svc = await open_services(cfg, mongo_url)
    await svc.start_workers()
    try:
        order = await svc.orders.create("demo", [Line("fan-silk", 1)])
        await svc.store.orders.update_one({"_id": order["_id"]}, {"$set": {"expires_at": time.time() - 60}})
        svc.stop_taking_work()  # what SIGTERM does first
        # Its deadline message, as the delay queue would dead-letter it (consumer still subscribed).
        await svc.bus.publish_to_queue(svc.timeout_queues.timeout_queue, order["_id"].encode(),
                                       {DEPLOYMENT_HEADER: svc.timeout_queues.deployment_id})

        async def delivered_and_left() -> bool:
            return svc.timeout_stats["left_at_shutdown"] == 1

        await eventually(delivered_and_left, message="the deadline message delivered and left unacked")
        assert (await svc.orders.get(order["_id"]) or {}).get("status") == "unpaid"
    finally:
        await svc.store.client.drop_database(cfg.mongo_db)
        await svc.close()
    # Unacked, it went back to the queue when the connection closed: the next process gets it.
    connection = await aio_pika.connect(amqp_url)
    try:
        queue = await (await connection.channel()).declare_queue(svc.timeout_queues.timeout_queue, passive=True)
        message = await queue.get(no_ack=True, fail=False)
        assert message is not None and message.body == order["_id"].encode()
        await queue.delete(if_unused=False, if_empty=False)
    finally:
        await connection.close()
