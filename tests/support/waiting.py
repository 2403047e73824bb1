"""The one way a test waits: for a condition that can fail, with a name.

A test never sleeps and then looks: on a slow machine that passes without
having seen anything. It waits for what it expects, and when that does not
come, it fails saying what it waited for and what it saw last.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")


def _timed_out(message: str, within: float, last: object) -> AssertionError:
    return AssertionError(f"not within {within:g} s: {message} (last seen: {last!r})")


@overload
async def eventually(condition: Callable[[], Awaitable[T | None]], *, message: str,
                     within: float = ..., every: float = ...) -> T: ...


@overload
async def eventually(condition: Callable[[], T | None], *, message: str,
                     within: float = ..., every: float = ...) -> T: ...


async def eventually(condition: Callable[[], Any], *, message: str, within: float = 20.0,
                     every: float = 0.1) -> Any:
    """Call ``condition`` (plain or async) until it returns something truthy,
    and return that; fail after ``within`` seconds with ``message``, which
    says what was awaited."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if loop.time() >= deadline:
            raise _timed_out(message, within, result)
        await asyncio.sleep(every)


def eventually_blocking(condition: Callable[[], T | None], *, message: str, within: float = 20.0,
                        every: float = 0.1) -> T:
    """:func:`eventually` for code with no event loop: fixtures and tests that
    drive server processes (and ``ServerProcess.start``, run in threads)."""
    deadline = time.monotonic() + within
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise _timed_out(message, within, result)
        time.sleep(every)
