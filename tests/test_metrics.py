"""/metrics counts what happened, in Prometheus text format; probes answer."""

from __future__ import annotations

import gc
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from server.infra.embedded_mongo import free_port
from tests.support.metrics import sample
from tests.support.notify_client import post_notify, signed_notify
from tests.support.processes import ServerProcess, base_env
from tests.support.shopper import Shopper
from tests.support.sockets import PageSocket
from tests.support.waiting import eventually


@pytest.mark.gen_test(timeout=30)
async def test_metrics_follow_a_payment(shopper: Shopper, base_url: str) -> None:
    order = await shopper.order([("fan-silk", 1)])
    sock = await PageSocket.open(base_url, order["id"], shopper)
    await sock.next()
    await post_notify(base_url, signed_notify(order))
    await post_notify(base_url, b"<xml><sign>forged</sign></xml>")
    assert (await sock.next_event())["type"] == "paid"

    async def metrics_once_published() -> str | None:  # the outbox entry is cleared just after the confirm
        status, text = await shopper.request("GET", "/metrics")
        assert status == 200
        return text if sample(text, "paypush_outbox_backlog") == 0 else None

    text = await eventually(metrics_once_published, message="paypush_outbox_backlog back to 0", within=5,
                            every=0.05)
    assert sample(text, "paypush_open_sockets") == 1
    assert sample(text, "paypush_notifies_total", 'outcome="acknowledged"') == 1
    assert sample(text, "paypush_notifies_total", 'outcome="rejected"') == 1
    assert sample(text, "paypush_orders_total", 'transition="created"') == 1
    assert sample(text, "paypush_orders_total", 'transition="paid"') == 1
    assert sample(text, "paypush_pushes_total") == 2  # the state, then paid
    assert sample(text, "paypush_push_latency_seconds_count") == 1
    assert sample(text, "paypush_outbox_backlog") == 0
    assert sample(text, "paypush_rabbitmq_reconnects") == 0  # nothing cut this test's link
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


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def test_outside_sandbox_metrics_have_their_own_listener(tmp_path: Path, mongo_url: str, amqp_url: str) -> None:
    metrics_port = free_port()
    env = base_env(tmp_path / "var", MONGO_URL=mongo_url, MONGO_DB=f"t{uuid.uuid4().hex[:12]}", AMQP_URL=amqp_url,
                   WXPAY_APPID="wx1234567890abcdef", WXPAY_MCH_ID="1900000109", WXPAY_KEY="k" * 32,
                   COOKIE_SECRET="metrics-" + uuid.uuid4().hex, STOMP_PASSCODE="p" * 16,
                   PUBLIC_URL="https://shop.example.com", METRICS_PORT=str(metrics_port))
    server = ServerProcess(env).start()
    try:
        assert http_get(server.base_url + "/metrics")[0] == 404
        assert http_get(server.base_url + "/healthz")[0] == 200
        status, text = http_get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert status == 200 and sample(text, "paypush_open_sockets") == 0
        assert http_get(f"http://127.0.0.1:{metrics_port}/healthz")[0] == 404  # metrics only
    finally:
        assert server.stop() == 0, server.output
    assert "SANDBOX MODE" not in server.output
    assert f"metrics on http://127.0.0.1:{metrics_port}/metrics" in server.output
