"""The pay page's connection in Chromium: lost, refused or unreachable, it
retries with backoff, polls meanwhile, and still reaches the success page;
closed by a stopping server (1001), it comes back without polling."""

from __future__ import annotations

import asyncio
import re
import threading
import urllib.request
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Page, expect

from bench import page_rules
from server.infra.embedded_mongo import free_port
from tests.e2e.conftest import (
    connections_seen,
    log_in,
    order_and_open_pay_page,
    pay_with_simulator,
    server_env,
    stopped_cleanly,
    watch_connection,
)
from tests.support.notify_client import signed_notify
from tests.support.processes import ServerProcess
from tests.support.stomp import WEB_STOMP_URL, BrowserUser
from tests.support.tcp_proxy import TcpProxy

PAID = re.compile(r"/paysuccess\.html\?money=")


class StompProxy:
    """A TCP forwarder to RabbitMQ's Web STOMP that the test can cut, running on
    a thread of its own (Playwright's sync API holds this thread's event loop)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.proxy = TcpProxy(urlsplit(WEB_STOMP_URL).port or 15674)
        self.url = WEB_STOMP_URL.replace(f":{urlsplit(WEB_STOMP_URL).port}/", f":{self.proxy.port}/")
        self._run(self.proxy.start())

    def _run(self, coro: Coroutine[Any, Any, Any]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=10)

    def cut(self) -> None:
        """Drop the open connections and refuse new ones."""
        self._run(self.proxy.cut())

    def restore(self) -> None:
        self._run(self.proxy.restore())

    def close(self) -> None:
        self._run(self.proxy.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def stomp_proxy() -> Iterator[StompProxy]:
    proxy = StompProxy()
    yield proxy
    proxy.close()


@pytest.fixture(scope="module")
def odd_server(tmp_path_factory: pytest.TempPathFactory, mongo_url: str, amqp_url: str,
               stomp_user: BrowserUser, stomp_proxy: StompProxy) -> Iterator[ServerProcess]:
    """A server the browser reaches as 127.0.0.1 while its PUBLIC_URL names
    localhost (as when WeChat's notifies come in under another name than the
    shop's), that allows one socket per user, and whose pages reach Web STOMP
    through a proxy the test can cut."""
    port = free_port()
    env = server_env(tmp_path_factory.mktemp("odd-var"), mongo_url, amqp_url, stomp_user,
                     PUBLIC_URL=f"http://localhost:{port}", MAX_SOCKETS_PER_USER="1", STOMP_URL=stomp_proxy.url)
    proc = ServerProcess(env, port=port).start()
    yield proc
    stopped_cleanly(proc)


@pytest.mark.e2e
def test_socket_goes_to_the_pages_own_host_not_public_urls(page: Page, odd_server: ServerProcess) -> None:
    # createNative's push.ws says ws://localhost:...; the login cookie is
    # 127.0.0.1's, and so is the Origin the server accepts.
    log_in(page, odd_server.base_url)
    order_and_open_pay_page(page, odd_server.base_url, "tea-longjing")
    expect(page.locator("#pay")).to_have_attribute("data-connection", "ws")
    pay_with_simulator(page)
    expect(page).to_have_url(PAID, timeout=10000)


@pytest.mark.e2e
def test_refused_socket_falls_back_to_polling_and_still_reaches_success(
        page: Page, odd_server: ServerProcess) -> None:
    log_in(page, odd_server.base_url)
    order_and_open_pay_page(page, odd_server.base_url, "tea-longjing")
    expect(page.locator("#pay")).to_have_attribute("data-connection", "ws")  # holds the one socket allowed

    second = page.context.new_page()
    order_and_open_pay_page(second, odd_server.base_url, "mug-celadon")
    # Each socket is upgraded, then closed with 4429: refused, not live, so the
    # failures add up to polling instead of starting over at every upgrade.
    expect(second.locator("#pay")).to_have_attribute("data-connection", "polling", timeout=10000)
    expect(second.locator("#state")).to_have_text("Waiting for payment… (checking every few seconds)")
    pay_with_simulator(second)
    expect(second).to_have_url(PAID, timeout=10000)
    expect(page.locator("#pay")).to_have_attribute("data-connection", "ws")  # the first page never noticed


@pytest.mark.e2e
def test_page_comes_back_live_after_its_server_restarts_and_shows_a_payment_made_meanwhile(
        page: Page, tmp_path: Path, mongo_url: str, amqp_url: str, stomp_user: BrowserUser) -> None:
    first = ServerProcess(server_env(tmp_path / "var", mongo_url, amqp_url, stomp_user)).start()
    second: ServerProcess | None = None
    try:
        # The page's timers on Playwright's clock: they run as usual until the
        # test pauses them, which keeps the page away for as long as it needs.
        page.clock.install()
        log_in(page, first.base_url)
        order_and_open_pay_page(page, first.base_url, "tea-longjing")
        pay = page.locator("#pay")
        expect(pay).to_have_attribute("data-connection", "ws")
        watch_connection(page)
        order_reads: list[str] = []
        page.on("request", lambda req: order_reads.append(req.url) if "/api/orders/" in req.url else None)
        page.clock.pause_at(page.evaluate("Date.now()"))

        stopped_cleanly(first)  # SIGTERM: the page's socket is closed with 1001 Going Away
        expect(page.locator("body")).to_have_attribute("data-seen", "ws retrying")
        expect(page.locator("#state")).to_have_text("Reconnecting…")
        # Its attempt comes within the restart spread, and finds no server: refused.
        page.clock.run_for(page_rules.RESTART_SPREAD_MS)
        expect(page.locator("body")).to_have_attribute("data-entered", "2")  # the stop, then the refusal
        # The stop was no failure of the page's: one refused attempt after it does not start polling.
        expect(pay).to_have_attribute("data-connection", "retrying")

        # The same port, database and cookie secret: a deploy's restart.
        second = ServerProcess(first.env, port=first.port).start()
        # WeChat's notify, as WeChat sends it (the simulator's trades went with
        # the old process), while the page's next attempt waits on the paused clock.
        order = page.request.get(f"{second.base_url}/api/orders/{pay.get_attribute('data-order-id')}")
        notify = urllib.request.Request(second.base_url + "/wxpay/notify", data=signed_notify(order.json()),
                                        headers={"Content-Type": "text/xml"})
        with urllib.request.urlopen(notify, timeout=10) as resp:
            assert b"SUCCESS" in resp.read()
        page.clock.resume()
        expect(page).to_have_url(PAID, timeout=10000)
        # Back over its socket, whose first message was the order's state: the page never polled.
        assert connections_seen(page) == "ws retrying ws"
        assert not order_reads, order_reads
    finally:
        if second is not None:
            stopped_cleanly(second)
        elif first.proc is not None and first.proc.poll() is None:
            first.stop()


@pytest.mark.e2e
def test_stomp_page_reconnects_after_losing_the_broker_and_still_reaches_success(
        page: Page, odd_server: ServerProcess, stomp_proxy: StompProxy) -> None:
    requested: list[str] = []
    page.on("request", lambda req: requested.append(req.url))
    log_in(page, odd_server.base_url)
    order_and_open_pay_page(page, odd_server.base_url, "tea-longjing", "&push=stomp")
    expect(page.locator("#pay")).to_have_attribute("data-connection", "stomp")
    watch_connection(page)
    stomp_proxy.cut()
    try:
        expect(page.locator("#pay")).to_have_attribute("data-connection", "polling", timeout=10000)
        expect(page.locator("#state")).to_have_text("Waiting for payment… (checking every few seconds)")
    finally:
        stomp_proxy.restore()
    expect(page.locator("body")).to_have_attribute("data-seen", "stomp retrying polling stomp", timeout=20000)
    assert len([url for url in requested if "/vendor/stompjs/" in url]) == 1, "the STOMP client is loaded once"
    pay_with_simulator(page)
    expect(page).to_have_url(PAID, timeout=10000)
