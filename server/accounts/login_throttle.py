"""Login throttling: password guessing is slowed, then refused, and the scrypt
work strangers can make this process do is bounded.

Three failure budgets, each checked before the password is:

- per (username, client address): 5 failures free, then each further one
  doubles the wait before the next try (1 s, 2 s, 4 s ... at most 15 min);
  forgotten a day after the last failure, cleared by a success. This is what
  stops guessing one account from one place.
- per client address, whatever the username: a leaky bucket of 20 failures,
  one forgiven every 30 s. This stops spraying one password over many accounts.
- per username, from clients not known to have logged in as that user (no
  device cookie, no recent success from that address): a leaky bucket of 10,
  one forgiven every 30 s. This slows guessing one account from many
  addresses. It never applies to the real user's known browser or address,
  and it drains in five minutes, so an attacker cannot lock anyone out with it.

An attempt is counted as a failure when it starts and given back if it
succeeds, so parallel attempts cannot all slip past a budget before the first
one fails. IPv6 clients are counted per /64, which is what one subscriber gets.

And, whoever asks: at most ``checks_per_second`` password checks (about 50 ms
of scrypt each) start per second in this process, with a burst of one second's
worth; past that the login is refused as busy rather than queued.

State is per process, in memory: refusing costs nothing (no database round
trip while under attack), the scrypt budget is per process by nature, and a
restart forgets only budgets. With N processes behind a load balancer an
attacker gets N times each budget, which the doubling waits turn into a few
more tries, not N times as many.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from server.accounts import users
from server.domain.errors import Busy, LimitReached
from server.infra.store import Store

log = logging.getLogger(__name__)

K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True)
class LoginLimits:
    pair_free: int = 5
    pair_first_wait: float = 1.0
    pair_max_wait: float = 900.0
    pair_forget_after: float = 86400.0
    client_burst: int = 20
    client_forgive_every: float = 30.0
    user_burst: int = 10
    user_forgive_every: float = 30.0
    known_for: float = 30 * 86400.0
    checks_per_second: float = 10.0
    max_entries: int = 50_000  # per table; the least recently used go first


class LoginRefused(LimitReached):
    """Too many failures: try again after ``retry_after`` seconds."""

    def __init__(self, retry_after: float, message: str):
        super().__init__(message, max(1, math.ceil(retry_after)))


class LoginBusy(Busy):
    """The process checks no more passwords this second."""

    def __init__(self, retry_after: float, message: str):
        super().__init__(message, max(1, math.ceil(retry_after)))


class _Lru(Generic[K, V]):
    def __init__(self, max_entries: int):
        self._items: OrderedDict[K, V] = OrderedDict()
        self._max = max_entries

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self._max:
            self._items.popitem(last=False)

    def pop(self, key: K) -> None:
        self._items.pop(key, None)

    def __len__(self) -> int:
        return len(self._items)


class _Leaky:
    """Failures that drain at one per ``every`` seconds."""

    __slots__ = ("at", "level")

    def __init__(self, now: float):
        self.level = 0.0
        self.at = now

    def drain(self, now: float, every: float) -> float:
        self.level = max(0.0, self.level - (now - self.at) / every)
        self.at = now
        return self.level

    def wait(self, now: float, burst: int, every: float) -> float:
        over = self.drain(now, every) + 1 - burst
        return over * every if over > 0 else 0.0


class _Backoff:
    __slots__ = ("failures", "last")

    def __init__(self) -> None:
        self.failures = 0
        self.last = 0.0


@dataclass
class Attempt:
    """What one login attempt was counted against, to give back on success."""

    username: str
    client: str
    counted_for_user: bool


def client_key(address: str) -> str:
    """IPv6 addresses by /64: one subscriber's whole prefix is one client."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class LoginThrottle:
    def __init__(self, limits: LoginLimits | None = None, clock: Callable[[], float] = time.monotonic):
        self.limits = limits or LoginLimits()
        self._clock = clock
        n = self.limits.max_entries
        self._pairs: _Lru[tuple[str, str], _Backoff] = _Lru(n)
        self._clients: _Lru[str, _Leaky] = _Lru(n)
        self._users: _Lru[str, _Leaky] = _Lru(n)
        self._known: _Lru[tuple[str, str], float] = _Lru(n)
        self._checks = _Leaky(clock())  # its level is password checks started
        self.outcomes: Counter[str] = Counter()

    def start(self, username: str, address: str, device_known: bool) -> Attempt:
        """Count an attempt (as a failure until it succeeds) or raise LoginRefused."""
        lim, now = self.limits, self._clock()
        username, client = username[:64], client_key(address)
        known = device_known or self._is_known(username, client, now)
        pair = self._pairs.get((username, client))
        if pair is not None and now - pair.last > lim.pair_forget_after:
            self._pairs.pop((username, client))
            pair = None
        waits = [self._pair_wait(pair, now)]
        client_bucket = self._clients.get(client) or _Leaky(now)
        waits.append(client_bucket.wait(now, lim.client_burst, lim.client_forgive_every))
        user_bucket = None
        if not known:
            user_bucket = self._users.get(username) or _Leaky(now)
            waits.append(user_bucket.wait(now, lim.user_burst, lim.user_forgive_every))
        if max(waits) > 0:
            self.outcomes["refused"] += 1
            raise LoginRefused(max(waits), "too many failed logins")
        # One second's worth of checks may start at once; after that, checks_per_second.
        burst = max(1.0, lim.checks_per_second)
        over = self._checks.drain(now, 1 / lim.checks_per_second) + 1 - burst
        if over > 0:
            self.outcomes["busy"] += 1
            raise LoginBusy(over / lim.checks_per_second, "too many logins right now")
        self._checks.level += 1

        pair = pair or _Backoff()
        pair.failures += 1
        pair.last = now
        self._pairs.put((username, client), pair)
        client_bucket.level += 1
        self._clients.put(client, client_bucket)
        if user_bucket is not None:
            user_bucket.level += 1
            self._users.put(username, user_bucket)
        return Attempt(username, client, counted_for_user=user_bucket is not None)

    def succeeded(self, attempt: Attempt) -> None:
        """The password was right: this attempt was no failure, and the address is known now."""
        self.outcomes["ok"] += 1
        self._give_back(attempt)
        self._pairs.pop((attempt.username, attempt.client))
        self._known.put((attempt.username, attempt.client), self._clock())

    def abandoned(self, attempt: Attempt) -> None:
        """The check could not be made (storage down): no evidence either way."""
        self._give_back(attempt)
        pair = self._pairs.get((attempt.username, attempt.client))
        if pair is not None:
            pair.failures = max(0, pair.failures - 1)

    def _give_back(self, attempt: Attempt) -> None:
        lim, now = self.limits, self._clock()
        for bucket, every in ((self._clients.get(attempt.client), lim.client_forgive_every),
                              (self._users.get(attempt.username) if attempt.counted_for_user else None,
                               lim.user_forgive_every)):
            if bucket is not None:
                bucket.level = max(0.0, bucket.drain(now, every) - 1)

    def failed(self, attempt: Attempt) -> None:
        """Wrong password (already counted): say so once a budget starts to bite."""
        lim, now = self.limits, self._clock()
        self.outcomes["failed"] += 1
        pair = self._pairs.get((attempt.username, attempt.client))
        if pair is not None and pair.failures >= lim.pair_free:
            log.warning("login: %d failures for %r from %s; next try in %.0f s", pair.failures,
                        attempt.username, attempt.client, self._pair_wait(pair, now))
        bucket = self._clients.get(attempt.client)
        if bucket is not None and bucket.wait(now, lim.client_burst, lim.client_forgive_every) > 0:
            log.warning("login: client %s is out of failed-login budget", attempt.client)
        bucket = self._users.get(attempt.username) if attempt.counted_for_user else None
        if bucket is not None and bucket.wait(now, lim.user_burst, lim.user_forgive_every) > 0:
            log.warning("login: %r is out of failed-login budget for unknown clients", attempt.username)

    def _pair_wait(self, pair: _Backoff | None, now: float) -> float:
        lim = self.limits
        if pair is None or pair.failures < lim.pair_free:
            return 0.0
        wait = min(lim.pair_first_wait * 2 ** (pair.failures - lim.pair_free), lim.pair_max_wait)
        return max(0.0, pair.last + wait - now)

    def _is_known(self, username: str, client: str, now: float) -> bool:
        seen = self._known.get((username, client))
        return seen is not None and now - seen < self.limits.known_for


async def log_in(throttle: LoginThrottle, store: Store, username: str, password: str, address: str,
                 device_known: bool) -> bool:
    """Check the password within the throttle's budgets; raises LoginRefused."""
    attempt = throttle.start(username, address, device_known)
    try:
        ok = await users.authenticate(store, username, password)
    except BaseException:
        throttle.abandoned(attempt)
        raise
    if ok:
        throttle.succeeded(attempt)
    else:
        throttle.failed(attempt)
    return ok


class Logins:
    """Logging in as the pages need it: a password check within the throttle's budgets."""

    def __init__(self, throttle: LoginThrottle, store: Store):
        self.throttle = throttle
        self.store = store

    async def log_in(self, username: str, password: str, address: str, device_known: bool) -> bool:
        """True when the password is right; raises LoginRefused or LoginBusy instead of checking it."""
        return await log_in(self.throttle, self.store, username, password, address, device_known)
