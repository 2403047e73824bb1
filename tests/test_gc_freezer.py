"""The freezer, against CPython's own collector: what it freezes leaves the
full passes, what was already garbage is collected first, and a cycle formed
among frozen objects goes at the next reclaim."""

from __future__ import annotations

import asyncio
import gc
import signal
import uuid
import weakref
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from server.infra.gc_freezer import FREEZE_SECONDS, Freezer
from server.lifecycle import InFlight
from tests.support.processes import ServerProcess, base_env
from tests.support.waiting import eventually


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


@pytest.fixture
def freezer() -> Iterator[Freezer]:
    freezer = Freezer()
    try:
        yield freezer
    finally:
        freezer.release()  # the rest of the suite runs with every object in the collector's sight


def in_collectors_sight(obj: object) -> bool:
    return any(o is obj for o in gc.get_objects())


def cycle() -> tuple[weakref.ref[Node], weakref.ref[Node]]:
    """Two objects pointing at each other and at nothing else: garbage only the collector finds."""
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a), weakref.ref(b)


def test_what_survives_leaves_the_full_passes(freezer: Freezer) -> None:
    survivor = Node()
    assert in_collectors_sight(survivor)
    freezer.freeze_survivors()
    assert not in_collectors_sight(survivor)
    assert gc.get_freeze_count() > 0


def test_garbage_is_collected_before_the_freeze_not_frozen(freezer: Freezer) -> None:
    gc.disable()  # no automatic pass may find it first
    try:
        a, b = cycle()
        assert a() is not None
        assert freezer.freeze_survivors() >= 2
        assert a() is None and b() is None
    finally:
        gc.enable()


def test_a_cycle_formed_after_the_freeze_waits_for_the_reclaim(freezer: Freezer) -> None:
    a, b = Node(), Node()
    freezer.freeze_survivors()
    a.other, b.other = b, a
    ra = weakref.ref(a)
    del a, b
    gc.collect()
    assert ra() is not None, "a full pass collected a frozen cycle"
    assert freezer.reclaim() >= 2
    assert ra() is None
    assert gc.get_freeze_count() > 0, "the reclaim froze the survivors again"


@pytest.mark.gen_test(timeout=10)
async def test_it_freezes_on_its_own_and_reclaims_on_schedule() -> None:
    freezer = Freezer(freeze_every=0.05, reclaim_every=0.5, spread=lambda: 0.0)  # first reclaim after 0.25 s
    stopping = asyncio.Event()
    running = asyncio.get_running_loop().create_task(freezer.run(stopping, InFlight("passes")))
    try:
        pair = [Node(), Node()]
        await eventually(lambda: not in_collectors_sight(pair[0]), message="the pair frozen")
        pair[0].other, pair[1].other = pair[1], pair[0]
        first = weakref.ref(pair[0])
        pair.clear()
        await eventually(lambda: first() is None, message="the frozen cycle collected by a reclaim")
    finally:
        stopping.set()
        await asyncio.wait_for(running, 1.0)
        freezer.release()


async def frozen_objects(base_url: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(base_url + "/metrics") as resp:
        for line in (await resp.text()).splitlines():
            if line.startswith("paypush_gc_frozen_objects "):
                return float(line.split()[1])
    raise AssertionError("no paypush_gc_frozen_objects in /metrics")


@pytest.mark.gen_test(timeout=60)
async def test_a_serving_process_freezes_and_stops_cleanly(tmp_path: Path, mongo_url: str, amqp_url: str) -> None:
    env = base_env(tmp_path / "var", MONGO_URL=mongo_url, MONGO_DB=f"t{uuid.uuid4().hex[:12]}", AMQP_URL=amqp_url,
                   SANDBOX="1", COOKIE_SECRET="freezer-" + uuid.uuid4().hex)
    server = ServerProcess(env).start()
    try:
        await eventually(lambda: frozen_objects(server.base_url), within=FREEZE_SECONDS * 4,
                         message="objects frozen by the serving process")
        server.send(signal.SIGTERM)
        assert await asyncio.get_running_loop().run_in_executor(None, lambda: server.stop(timeout=10)) == 0
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.proc.kill()
            server.proc.communicate()
