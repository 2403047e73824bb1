"""Unpaid orders close at their deadline; paid-at-the-last-second orders end paid."""

from __future__ import annotations

import asyncio
import functools
import random
import subprocess
import time
import uuid

import pytest

from server.composition.container import Services
from server.infra.timeout_queues import DELAY_QUEUE, TimeoutQueues
from tests.support.notify_client import post_notify, signed_notify
from tests.support.rabbit import close_connections_on, vhost_of
from tests.support.shopper import Shopper
from tests.support.sockets import PageSocket
from tests.support.timeout_helpers import SETTINGS, final_order, log_kinds, no_markers_of, stock_total, trade
from tests.support.waiting import eventually
from workers.sweeper import sweep_once


@pytest.fixture
def extra_settings() -> dict[str, object]:
    return dict(SETTINGS)


# Deadlines far off, in queues of their own: the messages these tests leave
# behind expire where no later test's worker takes them.
UNHURRIED = {**SETTINGS, "order_timeout_seconds": 120, "deployment": f"t{uuid.uuid4().hex[:8]}"}


@pytest.mark.gen_test(timeout=60)
async def test_unpaid_order_is_closed_with_stock_back_and_the_page_told(
        shopper: Shopper, base_url: str, services: Services) -> None:
    before = await stock_total(services)
    order = await shopper.order([("mug-celadon", 2)])
    await shopper.create_native(order["id"])
    sock = await PageSocket.open(base_url, order["id"], shopper)
    assert (await sock.next_event())["status"] == "unpaid"
    assert await sock.next(within=20) == {"type": "closed", "order_id": order["id"], "status": "closed",
                                          "total_fee": 7800}
    closed = await shopper.get_order(order["id"])
    assert closed["status"] == "closed"
    assert [e["kind"] for e in closed["logs"]] == ["created", "closed"]
    assert (await trade(shopper, order["id"]))["trade_state"] == "CLOSED"
    assert await stock_total(services) == before
    await eventually(functools.partial(no_markers_of, services, [order["id"]]),
                     message="the SKU carries nothing of the closed order (its markers tidied)")


@pytest.mark.gen_test(timeout=60)
async def test_order_without_a_wechat_trade_is_closed_locally(shopper: Shopper, services: Services) -> None:
    before = await stock_total(services)
    order = await shopper.order([("fan-silk", 1)])
    assert (await final_order(shopper, order["id"]))["status"] == "closed"
    assert await stock_total(services) == before


@pytest.mark.gen_test(timeout=60)
async def test_payment_with_lost_notify_is_found_by_the_timeout_worker(
        shopper: Shopper, base_url: str, services: Services) -> None:
    order = await shopper.order([("tea-longjing", 1)])
    native = await shopper.create_native(order["id"])
    sock = await PageSocket.open(base_url, order["id"], shopper)
    await sock.next()
    status, paid_trade = await shopper.request("POST", "/sandbox/wxpay/pay",
                                               {"code_url": native["code_url"], "notify": {"drop": True}})
    assert status == 200
    assert (await sock.next_event(within=20))["type"] == "paid"
    paid = await shopper.get_order(order["id"])
    assert paid["status"] == "paid" and paid["transaction_id"] == paid_trade["transaction_id"]
    assert [e["kind"] for e in paid["logs"]] == ["created", "paid"]
    assert "found by order query" in paid["logs"][1]["remarks"]


@pytest.mark.gen_test(timeout=60)
async def test_closeorder_refused_as_too_young_is_retried_until_it_closes(
        shopper: Shopper, services: Services) -> None:
    assert services.simulator is not None  # the test settings run the sandbox
    services.simulator.trades.close_min_age_seconds = 4.0
    order = await shopper.order([("fan-silk", 1)])
    await shopper.create_native(order["id"])
    closed = await final_order(shopper, order["id"], within=30)
    assert closed["status"] == "closed"
    assert services.timeouts.outcomes["later"] >= 1  # refused at least once, then accepted
    assert (await trade(shopper, order["id"]))["trade_state"] == "CLOSED"


# The race is driven by hand once every order has its QR; deadline messages
# due at 2 s would close orders while the 50 QRs are still being asked for.
@pytest.mark.parametrize("extra_settings", [UNHURRIED])
@pytest.mark.gen_test(timeout=120)
async def test_notify_and_timeout_racing_end_paid_xor_closed(extra_settings: dict[str, object], shopper: Shopper,
                                                             services: Services) -> None:
    before = await stock_total(services)
    rng = random.Random(7)
    orders = [await shopper.order([("tea-longjing", 1)]) for _ in range(50)]
    natives = {o["id"]: await shopper.create_native(o["id"]) for o in orders}
    # Due now: the race is between the shopper paying and the deadline handler.
    await services.store.orders.update_many({"status": "unpaid"}, {"$set": {"expires_at": time.time()}})

    async def pay(order_id: str) -> None:
        await asyncio.sleep(rng.random() * 0.05)
        await shopper.request("POST", "/sandbox/wxpay/pay", {"code_url": natives[order_id]["code_url"]})

    async def settle(order_id: str) -> None:
        await asyncio.sleep(rng.random() * 0.05)
        await services.timeouts.settle(order_id)

    await asyncio.gather(*(f(o["id"]) for o in orders for f in (pay, settle)))
    outcomes = {"paid": 0, "closed": 0}
    for o in orders:
        final = await final_order(shopper, o["id"])
        kinds = [e["kind"] for e in final["logs"]]
        wechat = (await trade(shopper, o["id"]))["trade_state"]
        if final["status"] == "paid":
            assert kinds.count("paid") == 1 and "closed" not in kinds, kinds
            assert wechat == "SUCCESS"
        else:
            assert final["status"] == "closed"
            assert kinds.count("closed") == 1 and "paid" not in kinds, kinds
            assert wechat == "CLOSED"
        outcomes[final["status"]] += 1
    print(f"race outcomes over 50 orders: {outcomes}")
    assert await stock_total(services) == before


@pytest.mark.gen_test(timeout=60)
async def test_sweeper_and_queue_on_the_same_orders_close_each_once(shopper: Shopper, services: Services) -> None:
    before = await stock_total(services)
    orders = [await shopper.order([("card-sticker", 1)]) for _ in range(3)]
    await services.store.orders.update_many({"status": "unpaid"}, {"$set": {"expires_at": time.time() - 10}})
    await asyncio.gather(sweep_once(services.orders, services.timeouts, grace=0),
                         *(services.timeouts.settle(o["id"]) for o in orders),
                         sweep_once(services.orders, services.timeouts, grace=0))
    for o in orders:
        assert (await shopper.get_order(o["id"]))["status"] == "closed"
        assert sorted(await log_kinds(services, o["id"])) == ["closed", "created"]
    assert await stock_total(services) == before
    sku = await services.store.skus.find_one({"_id": "card-sticker"})
    assert sku is not None and sku["stock"] == 5
    await eventually(functools.partial(no_markers_of, services, [o["id"] for o in orders]),
                     message="the SKU carries nothing of the closed orders (their markers tidied)")


@pytest.mark.gen_test(timeout=60)
async def test_sweeper_closes_an_order_whose_deadline_message_never_existed(
        shopper: Shopper, services: Services) -> None:
    order = await shopper.order([("fan-silk", 1)])
    # The broker is fine; the deadline message is what went missing.
    channel = await services.bus.connection.channel()
    queue = await channel.declare_queue(services.timeout_queues.delay_queue, passive=True)
    await queue.purge()
    await channel.close()
    assert await sweep_once(services.orders, services.timeouts, grace=0) == 0  # not overdue yet
    await services.store.orders.update_one({"_id": order["id"]}, {"$set": {"expires_at": time.time() - 1}})
    assert await sweep_once(services.orders, services.timeouts, grace=0) == 1
    assert (await shopper.get_order(order["id"]))["status"] == "closed"


@pytest.mark.gen_test(timeout=60)
async def test_paid_after_close_is_compensated_not_lost(shopper: Shopper, base_url: str,
                                                        services: Services) -> None:
    """WeChat reports a payment for an order we already closed (the trade was
    created as we closed locally): the money is real, the order ends paid."""
    before = await stock_total(services)
    order = await shopper.order([("fan-silk", 2)])
    await final_order(shopper, order["id"])  # closed with no WeChat trade
    status, reply = await post_notify(base_url, signed_notify(order))
    assert (status, reply["return_code"]) == (200, "SUCCESS")
    paid = await shopper.get_order(order["id"])
    assert paid["status"] == "paid"
    kinds = [e["kind"] for e in paid["logs"]]
    assert kinds == ["created", "closed", "paid"]
    assert "compensation" in paid["logs"][2]["remarks"]
    _, reply = await post_notify(base_url, signed_notify(order))
    assert reply["return_code"] == "SUCCESS"
    assert await stock_total(services) == before


@pytest.mark.gen_test(timeout=30)
async def test_changed_timeout_does_not_crash_on_the_existing_delay_queue(services: Services) -> None:
    first = await TimeoutQueues.declare(services.bus, 1234, (1,))
    again = await TimeoutQueues.declare(services.bus, 1234, (1,))
    other = await TimeoutQueues.declare(services.bus, 4321, (1,))
    # The default name exists already (declared at start-up with this session's
    # timeout, never 1234 s or 4321 s): each new TTL gets a sibling of its own.
    channel = await services.bus.connection.channel()
    await channel.declare_queue(DELAY_QUEUE, passive=True)
    await channel.close()
    assert first.delay_queue == again.delay_queue == f"{DELAY_QUEUE}.ttl1234000"
    assert other.delay_queue == f"{DELAY_QUEUE}.ttl4321000"
    assert services.bus.is_open


def list_queues(vhost: str) -> dict[str, tuple[str, str]]:
    """name -> (durable, persistent messages) on ``vhost``."""
    out = subprocess.run(["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name", "durable", "messages_persistent"],
                         check=True, capture_output=True, text=True, timeout=60).stdout
    rows = (line.split("	") for line in out.splitlines())
    return {row[0]: (row[1], row[2]) for row in rows if len(row) == 3 and row[0] != "name"}


# Queues of its own: what the worker has in flight is this order's message
# and nothing another test left behind.
@pytest.mark.parametrize("extra_settings", [{**SETTINGS, "deployment": f"r{uuid.uuid4().hex[:8]}"}])
@pytest.mark.gen_test(timeout=90)
async def test_connection_dropped_before_ack_redelivers_and_processes_once(
        extra_settings: dict[str, object], shopper: Shopper, services: Services) -> None:
    order = await shopper.order([("fan-silk", 1)])
    await shopper.create_native(order["id"])
    await shopper.request("POST", "/sandbox/wxpay/control", {"api_delay": 15})
    loop = asyncio.get_running_loop()
    # The deadline passes at 2 s; the worker then takes the message and sits in orderquery (15 s).
    await eventually(lambda: services.deadline_messages.count == 1, within=10,
                     message="the deadline message taken by the worker (in flight, unacked)")
    closed_connections = await loop.run_in_executor(
        None, close_connections_on, vhost_of(services.settings.amqp_url), "test: drop before ack")
    assert closed_connections >= 1
    await shopper.request("POST", "/sandbox/wxpay/control", {"api_delay": 0})
    closed = await final_order(shopper, order["id"], within=30)
    assert closed["status"] == "closed"
    assert services.timeout_stats["redelivered"] >= 1
    # The first delivery may still be in its slow orderquery: it too must
    # have been handled to the end before "closed once" means anything.
    await eventually(lambda: services.deadline_messages.count == 0,
                     message="every delivery of the deadline message handled to the end")
    assert sorted(await log_kinds(services, order["id"])) == ["closed", "created"]
    assert (await trade(shopper, order["id"]))["trade_state"] == "CLOSED"


# A deadline far enough off that the message is still in the delay queue
# when rabbitmqctl, slow on a busy machine, gets to list it.
@pytest.mark.parametrize("extra_settings", [UNHURRIED])
@pytest.mark.gen_test(timeout=60)
async def test_deadline_messages_are_kept_as_a_broker_restart_keeps_them(
        extra_settings: dict[str, object], shopper: Shopper, services: Services) -> None:
    """What survives a RabbitMQ restart is a persistent message in a durable
    queue; the broker is shared, so that is checked on the broker itself rather
    than by restarting it under everybody else's connections."""
    await shopper.order([("fan-silk", 1)])
    vhost = vhost_of(services.settings.amqp_url)
    delay_queue = services.timeout_queues.delay_queue

    async def delay_queue_row() -> tuple[str, str] | None:
        listed = await asyncio.get_running_loop().run_in_executor(None, list_queues, vhost)
        durable, persistent = listed.get(delay_queue, ("false", "0"))
        return (durable, persistent) if int(persistent) >= 1 else None

    durable, _ = await eventually(delay_queue_row, every=0.2,
                                  message=f"a persistent message in {delay_queue} (durable, persistent)")
    assert durable == "true"
