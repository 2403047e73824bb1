"""The pay page's reconnect rules (static/js/pay.js), for the benchmarks' stand-in pages.

A load client that reconnects on other rules than the page measures another
storm than real pages make, so this is pay.js's rules in Python: the same
constants under the same names (milliseconds where pay.js counts them so), and
its ``retryDelay`` and failure count. tests/test_page_rules.py reads the
constants out of pay.js and runs its ``retryDelay`` under Node against
``retry_delay``: changing one side only fails there.

A stand-in page's loop, as pay.js's: on each loss, ``failures += 1`` if
``counts_as_failure(code)``; stop if not ``retries(code)``; poll every
``POLL_SECONDS`` once ``failures >= POLL_AFTER_FAILURES``; wait
``retry_delay(failures, code, rng)``, then reconnect; once live, ``failures = 0``
and no more polling.
"""

from __future__ import annotations

import random

POLL_MS = 2000
POLL_AFTER_FAILURES = 2
FIRST_RETRY_MS = 1000
MAX_RETRY_MS = 15000
RESTART_SPREAD_MS = 12000
CLOSE_LOGIN = 4401
CLOSE_NOT_FOUND = 4404
CLOSE_GOING_AWAY = 1001

POLL_SECONDS = POLL_MS / 1000


def counts_as_failure(closed_with: int | None) -> bool:
    """Whether losing the connection this way counts toward ``POLL_AFTER_FAILURES``:
    any way but the server going away (a planned stop)."""
    return closed_with != CLOSE_GOING_AWAY


def retries(closed_with: int | None) -> bool:
    """False for 4404 (not the shopper's order: the page goes to the failure page).
    4401 is retried: the page reads its order, which sends it to log in only if
    the session has really ended."""
    return closed_with != CLOSE_NOT_FOUND


def retry_delay(failures: int, closed_with: int | None, rng: random.Random) -> float:
    """Seconds until the next attempt, as pay.js's ``retryDelay``.

    ``failures``: attempts failed in a row, this loss included when it counts
    (``counts_as_failure``); ``closed_with``: the close code, None when the
    connection never opened. One draw from ``rng`` per call, as the page makes
    one ``Math.random()``.
    """
    if closed_with == CLOSE_GOING_AWAY:
        return rng.random() * RESTART_SPREAD_MS / 1000
    if failures < 1:
        raise ValueError(f"a loss that is no planned stop counts as a failure: failures={failures}")
    return rng.random() * min(MAX_RETRY_MS, FIRST_RETRY_MS * 2 ** (failures - 1)) / 1000
