"""Two paypush deployments (two MongoDB databases) on one RabbitMQ vhost:
neither may swallow the other's order deadlines."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from server.composition.container import Services, open_services
from server.domain.order_request import Line
from server.infra.timeout_queues import TimeoutQueues
from settings import ConfigError, from_environ
from tests.support.waiting import eventually

ORDERS = 8

# Deadlines at 2 s; the sweepers (every 60 s, 120 s grace) cannot be what closes anything here.
SETTINGS = {"order_timeout_seconds": 2, "sim_close_min_age_seconds": 0.0, "timeout_retry_delays": (1, 2),
            "active_query_after_seconds": 1000.0,
            "max_unpaid_orders_per_user": 1000}  # one shopper stands in for many


@pytest.fixture
def extra_settings() -> dict[str, object]:
    return dict(SETTINGS)


async def other_deployment(services: Services, mongo_url: str, **changes: Any) -> Services:
    """A second deployment: its own database, the same vhost (and, in sandbox,
    the first one's simulator, which holds no trade for either)."""
    cfg = dataclasses.replace(services.settings, mongo_db=f"t{uuid.uuid4().hex[:12]}", **changes)
    other = await open_services(cfg, mongo_url)
    await other.start_workers()
    return other


async def place(svc: Services) -> list[str]:
    return [(await svc.orders.create("demo", [Line("fan-silk", 1)]))["_id"] for _ in range(ORDERS)]


def all_closed(svc: Services, ids: list[str]) -> Callable[[], Any]:
    async def check() -> bool:
        return await svc.store.orders.count_documents({"_id": {"$in": ids}, "status": "closed"}) == len(ids)

    return check


async def close(svc: Services) -> None:
    await svc.store.client.drop_database(svc.settings.mongo_db)
    await svc.close()


@pytest.mark.gen_test(timeout=90)
async def test_deployments_on_the_same_queue_names_pass_each_other_deadlines_on(
        http_server, services: Services, mongo_url: str) -> None:  # type: ignore[no-untyped-def]
    """Misconfigured (no DEPLOYMENT on either): both consume queue.ordertimeout.
    Each still closes all of its orders by their deadline messages, and the
    one that took the other's says so."""
    other = await other_deployment(services, mongo_url)
    try:
        mine, theirs = await place(services), await place(other)
        await eventually(all_closed(services, mine), message="the first deployment's orders closed", within=40)
        await eventually(all_closed(other, theirs), message="the second deployment's orders closed", within=40)
        assert services.timeout_stats["foreign"] + other.timeout_stats["foreign"] >= 1  # they did meet
    finally:
        await close(other)


@pytest.mark.gen_test(timeout=90)
async def test_a_deployment_with_its_own_name_has_its_own_deadline_queues(
        http_server, services: Services, mongo_url: str, amqp_url: str) -> None:  # type: ignore[no-untyped-def]
    name = f"b{uuid.uuid4().hex[:8]}"
    other = await other_deployment(services, mongo_url, deployment=name)
    try:
        assert other.timeout_queues.delay_queue == f"queue.ordercreate.{name}"
        assert other.timeout_queues.timeout_queue == f"queue.ordertimeout.{name}"
        assert services.timeout_queues.timeout_queue == "queue.ordertimeout"  # the default keeps DESIGN's names
        mine, theirs = await place(services), await place(other)
        await eventually(all_closed(services, mine), message="the default deployment's orders closed", within=30)
        await eventually(all_closed(other, theirs), message=f"deployment {name}'s orders closed", within=30)
        assert other.timeout_stats["foreign"] == 0  # nothing of the first deployment ever reached it
        assert other.timeout_stats["received"] >= ORDERS
    finally:
        await close(other)
    # Its topology is really separate: the dead-letter route of its delay queue ends in its own queue.
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        await channel.declare_queue(f"queue.ordertimeout.{name}", passive=True)
        await channel.declare_queue(f"queue.ordertimeout.{name}.retry.1s", passive=True)
    finally:
        await connection.close()


@pytest.mark.gen_test(timeout=30)
async def test_a_named_deployment_keeps_the_changed_timeout_handling(services: Services) -> None:
    name = f"c{uuid.uuid4().hex[:8]}"
    first = await TimeoutQueues.declare(services.bus, 1234, (1,), name)
    again = await TimeoutQueues.declare(services.bus, 1234, (1,), name)
    changed = await TimeoutQueues.declare(services.bus, 4321, (1,), name)
    assert first.delay_queue == again.delay_queue == f"queue.ordercreate.{name}"
    assert changed.delay_queue == f"queue.ordercreate.{name}.ttl4321000"
    assert changed.timeout_queue == f"queue.ordertimeout.{name}"
    assert services.bus.is_open


@pytest.mark.parametrize("value", ["Shop", "a.b", "-x", "x" * 33, "shop two"])
def test_a_deployment_name_that_would_not_make_clean_queue_names_is_refused(value: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="DEPLOYMENT"):
        from_environ({"VAR_DIR": str(tmp_path), "DEPLOYMENT": value})
    assert from_environ({"VAR_DIR": str(tmp_path), "DEPLOYMENT": "shop-2"}).deployment == "shop-2"
