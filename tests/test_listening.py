"""paypush's listener: at most ``limit`` connections opening at a time, the
rest waiting in the kernel's accept queue, and none of them lost.

A connection opens from its accept until its first request is handled (a pay
page's: until its state is sent). Every test here runs on the real server
and app, on an unused port, with real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import aiohttp
import pytest

from server.composition.listening import Listener
from tests.support.shopper import Shopper
from tests.support.sockets import PageSocket
from tests.support.waiting import eventually


@contextlib.contextmanager
def idle_connection(base_url: str) -> Iterator[socket.socket]:
    """A client that connects and sends nothing (a preconnect, or slowloris)."""
    host, port = base_url.split("//")[1].split(":")
    sock = socket.create_connection((host, int(port)))
    try:
        yield sock
    finally:
        sock.close()


async def get(base_url: str, path: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(base_url + path) as resp:
        return resp.status


@pytest.mark.gen_test(timeout=30)
async def test_a_request_stops_counting_once_answered_not_when_its_connection_closes(
        listener: Listener, base_url: str) -> None:
    listener.opening_seconds = 600  # only the answer may end the opening here
    async with aiohttp.ClientSession() as http:  # keeps its connection alive after the answer
        async with http.get(base_url + "/healthz") as resp:
            assert resp.status == 200
        await eventually(lambda: listener.opening == 0, message="the answered connection no longer opening")


@pytest.mark.gen_test(timeout=30)
async def test_a_page_counts_as_opening_until_its_state_is_sent(listener: Listener, base_url: str,
                                                                shopper: Shopper) -> None:
    listener.opening_seconds = 600
    order = await shopper.order([("fan-silk", 1)])
    page = await PageSocket.open(base_url, order["id"], shopper)
    assert (await page.next_event())["type"] == "status"
    await eventually(lambda: listener.opening == 0, message="the page no longer opening once its state came")
    page.close()


@pytest.mark.gen_test(timeout=30)
async def test_a_refused_page_stops_counting_too(listener: Listener, base_url: str) -> None:
    listener.opening_seconds = 600
    page = await PageSocket.open(base_url, "20261129" + "0" * 24)  # no login cookie
    assert await page.next() is None and page.close_code == 4401
    await eventually(lambda: listener.opening == 0, message="the refused page no longer opening")


@pytest.mark.gen_test(timeout=30)
async def test_at_the_limit_it_stops_accepting_and_the_queued_connection_is_served_after(
        listener: Listener, base_url: str) -> None:
    listener.limit = 1
    listener.opening_seconds = 600
    with idle_connection(base_url) as idle:
        await eventually(lambda: not listener.accepting, message="accepting stopped with one connection opening")
        assert listener.paused == 1 and listener.opening == 1
        queued = asyncio.ensure_future(get(base_url, "/healthz"))  # waits in the kernel's accept queue
        await eventually(lambda: listener.paused == 1 and not listener.accepting,
                         message="still stopped while the first connection is opening")
        idle.close()
    assert await asyncio.wait_for(queued, 20) == 200
    await eventually(lambda: listener.accepting and listener.opening == 0,
                     message="accepting again, nothing opening")


@pytest.mark.gen_test(timeout=30)
async def test_a_connection_that_sends_nothing_cannot_stop_accepting_for_long(listener: Listener,
                                                                               base_url: str) -> None:
    listener.limit = 1
    listener.opening_seconds = 0.5
    with idle_connection(base_url):
        assert await get(base_url, "/healthz") == 200  # accepted once the idle one stopped counting
        assert listener.paused >= 1


@pytest.mark.gen_test(timeout=30)
async def test_a_request_that_is_no_page_stops_counting_once_its_headers_are_read(listener: Listener,
                                                                                   base_url: str) -> None:
    """A notify still waiting for its body (or on RabbitMQ) holds no page out."""
    listener.opening_seconds = 600
    with idle_connection(base_url) as slow:
        slow.sendall(b"POST /wxpay/notify HTTP/1.1\r\nHost: shop\r\nContent-Length: 100\r\n\r\n")
        await eventually(lambda: listener.opening == 0, message="the notify without its body no longer opening")
        listener.limit = 1  # the one slot is free: the notify does not hold it
        assert await asyncio.wait_for(get(base_url, "/healthz"), 10) == 200
