"""Work done after a reply goes out in batches (server.lifecycle.Batches):
one item at once when quiet, many per round trip when busy, a bounded queue,
and callers that wait for room instead of overflowing it."""

from __future__ import annotations

import asyncio

import pytest

from server.lifecycle import Batches
from tests.support.waiting import eventually


class Gate:
    """A handler that records each batch and holds it until let through."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.open = asyncio.Event()

    async def handle(self, batch: list[int]) -> None:
        self.batches.append(batch)
        await self.open.wait()


@pytest.mark.gen_test(timeout=10)
async def test_what_arrives_while_a_batch_is_handled_goes_out_together_in_order() -> None:
    gate = Gate()
    batches = Batches("test", gate.handle, max_batch=3)
    assert batches.add(1)
    await eventually(lambda: gate.batches == [[1]], message="the first item handled alone, at once")
    for item in range(2, 9):
        assert batches.add(item)
    gate.open.set()
    assert await batches.drain(5)
    assert gate.batches == [[1], [2, 3, 4], [5, 6, 7], [8]]
    await batches.close()


@pytest.mark.gen_test(timeout=10)
async def test_a_full_queue_refuses_and_a_waiting_caller_gets_in_once_there_is_room() -> None:
    gate = Gate()
    batches = Batches("test", gate.handle, max_batch=2, limit=2)
    batches.add(0)
    await eventually(lambda: gate.batches == [[0]], message="the first batch held at the gate")
    assert batches.add(1) and batches.add(2)
    assert not batches.add(3), "the queue is full"
    assert batches.refused == 1
    assert not await batches.put(3, wait=0.05), "no room came within the wait"
    waiting = asyncio.ensure_future(batches.put(3, wait=5))
    await eventually(lambda: batches._room.is_set() is False, message="the caller waits for room")
    assert not waiting.done()
    gate.open.set()
    assert await waiting, "room came when the held batch went and the next was taken"
    assert await batches.drain(5)
    assert sorted(x for b in gate.batches for x in b) == [0, 1, 2, 3]
    await batches.close()


@pytest.mark.gen_test(timeout=10)
async def test_a_failing_batch_is_logged_and_the_next_ones_still_go(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[list[int]] = []

    async def handle(batch: list[int]) -> None:
        seen.append(batch)
        if batch == [1]:
            raise ConnectionError("store down")

    batches = Batches("test", handle, swallow=(ConnectionError,))
    batches.add(1)
    await eventually(lambda: seen == [[1]], message="the first batch tried")
    batches.add(2)
    assert await batches.drain(5)
    assert seen == [[1], [2]]
    assert "a batch of 1 failed: ConnectionError: store down" in caplog.text
    await batches.close()


@pytest.mark.gen_test(timeout=10)
async def test_drain_gives_up_after_its_time_while_a_batch_hangs() -> None:
    gate = Gate()
    batches = Batches("test", gate.handle)
    batches.add(1)
    await eventually(lambda: gate.batches == [[1]], message="the batch held at the gate")
    assert not await batches.drain(0.05)
    await batches.close()
