"""/metrics counts what happened, in Prometheus text format; probes answer."""

from __future__ import annotations

import asyncio
import gc
import re

import pytest

from tests.notify_client import post_notify, signed_notify
from tests.shopper import Shopper
from tests.sockets import PageSocket


def sample(text: str, name: str, labels: str = "") -> float:
    pattern = re.escape(name) + (re.escape("{" + labels + "}") if labels else "") + r" (\S+)"
    match = re.search("^" + pattern + "$", text, re.M)
    assert match, f"{name}{{{labels}}} missing from /metrics"
    return float(match.group(1))


@pytest.mark.gen_test(timeout=30)
async def test_metrics_follow_a_payment(shopper: Shopper, base_url: str) -> None:
    order = await shopper.order([("fan-silk", 1)])
    sock = await PageSocket.open(base_url, order["id"], shopper)
    await sock.next()
    await post_notify(base_url, signed_notify(order))
    await post_notify(base_url, b"<xml><sign>forged</sign></xml>")
    assert (await sock.next())["type"] == "paid"
    for _ in range(40):  # the outbox entry is cleared just after the publish is confirmed
        status, text = await shopper.request("GET", "/metrics")
        assert status == 200
        if sample(text, "paypush_outbox_backlog") == 0:
            break
        await asyncio.sleep(0.05)
    assert sample(text, "paypush_open_sockets") == 1
    assert sample(text, "paypush_notifies_total", 'outcome="acknowledged"') == 1
    assert sample(text, "paypush_notifies_total", 'outcome="rejected"') == 1
    assert sample(text, "paypush_orders_total", 'transition="created"') == 1
    assert sample(text, "paypush_orders_total", 'transition="paid"') == 1
    assert sample(text, "paypush_pushes_total") == 2  # the state, then paid
    assert sample(text, "paypush_push_latency_seconds_count") == 1
    assert sample(text, "paypush_outbox_backlog") == 0
    assert sample(text, "paypush_rabbitmq_reconnects") >= 0
    assert "paypush_timeout_outcomes" in text


@pytest.mark.gen_test(timeout=30)
async def test_probes(shopper: Shopper) -> None:
    assert await shopper.request("GET", "/healthz") == (200, {"status": "ok"})
    assert await shopper.request("GET", "/readyz") == (200, {"status": "ready", "mongodb": "ok",
                                                             "rabbitmq": "ok"})


@pytest.mark.gen_test(timeout=30)
async def test_metrics_time_garbage_collections(shopper: Shopper) -> None:
    """The server runs in this process: a full collection here is one it must have timed."""
    _, before = await shopper.request("GET", "/metrics")
    gc.collect(2)
    _, after = await shopper.request("GET", "/metrics")
    name = "paypush_gc_pause_seconds_count"
    assert sample(after, name, 'generation="2"') >= sample(before, name, 'generation="2"') + 1
    assert sample(after, "paypush_gc_pause_seconds_sum", 'generation="2"') > 0
