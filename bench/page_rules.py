"""The pay page's reconnect rules (static/js/pay.js), for load clients that
must come back as real pages do. Placeholder until the page's rules change."""

from __future__ import annotations

import random

FIRST_RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 15.0
POLL_AFTER_FAILURES = 2
POLL_SECONDS = 2.0


def retry_delay(failures: int, closed_with: int | None, rng: random.Random) -> float:
    ceiling = min(MAX_RETRY_SECONDS, FIRST_RETRY_SECONDS * 2 ** (max(1, failures) - 1))
    return ceiling * (0.5 + rng.random() / 2)
